"""The CamVid split the benchmarks read: a SegNet-layout folder and one of its `splits/<name>/` lists."""

from __future__ import annotations

from pathlib import Path

from maskmatch_hf.data import DataConfig, SegmentationData, load_segmentation_data


def load_camvid_split(camvid: Path, split: str) -> SegmentationData:
    """Labeled and unlabeled frames of `camvid/splits/<split>/{labeled,unlabeled}.txt`, with val."""
    splits = camvid / "splits" / split
    return load_segmentation_data(
        DataConfig(
            dataset_name=str(camvid),
            labeled_ids=str(splits / "labeled.txt"),
            unlabeled_ids=str(splits / "unlabeled.txt"),
        )
    )
