"""`data.py`: sources, selection of labeled / unlabeled rows, label conventions (CPU, offline)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, List
from datasets import Image as ImageFeature
from PIL import Image

from maskmatch_hf.data import (
    CAMVID_ID2LABEL,
    DataConfig,
    DataValidationError,
    LabelMapping,
    load_segmentation_data,
    read_id_list,
    row_ids,
)
from maskmatch_hf.data_loaders import (
    infinite_dataloader,
)
from maskmatch_hf.data_transforms import EvalTransform, WeakAugmentation
from maskmatch_hf.data_validation import validate_segmentation_data

from .data_helpers import (
    CAMVID,
    PALETTE,
    block_labels,
    classification_dataset,
    make_paired,
    write_pair,
)


def test_paired_folders_camvid_layout(mini_camvid: Path):
    data = load_segmentation_data(DataConfig(dataset_name=str(mini_camvid), labeled_fraction=0.5))
    assert (len(data.labeled), len(data.unlabeled), len(data.eval)) == (2, 2, 1)
    assert data.id2label == CAMVID_ID2LABEL and data.num_labels == 11
    validate_segmentation_data(data, show_progress=False)
    raw = np.asarray(Image.open(data.eval[0]["label"]["path"]))
    labels = EvalTransform(label_mapping=data.label_mapping)(data.eval[0])["labels"].numpy()
    assert (raw == 11).any()
    np.testing.assert_array_equal(labels == 255, raw == 11)
    np.testing.assert_array_equal(labels[raw != 11], raw[raw != 11])


def test_imagefolder_with_metadata(tmp_path: Path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        write_pair(tmp_path / "data/images", tmp_path / "data/masks", f"f{i}", block_labels(rng, 16, 24))
        rows.append({"file_name": f"images/f{i}.png", "label_file_name": f"masks/f{i}.png"})
    (tmp_path / "data/metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    config = DataConfig(dataset_name=str(tmp_path / "data"), labeled_fraction=0.5, cache_dir=str(tmp_path / "cache"))
    data = load_segmentation_data(config)
    assert (len(data.labeled), len(data.unlabeled), data.eval) == (2, 2, None)
    validate_segmentation_data(data, num_labels=4, show_progress=False)
    batch = next(iter(infinite_dataloader(data.labeled, 2, WeakAugmentation(crop_size=16), seed=0)))
    assert batch["pixel_values"].shape == (2, 3, 16, 16) and batch["labels"].shape == (2, 16, 16)


@pytest.mark.parametrize("storage", ["parquet", "save_to_disk"])
def test_parquet_and_saved_datasets_with_other_column_names(tmp_path: Path, storage: str):
    make_paired(tmp_path / "raw", num_images=6)
    images, masks = sorted((tmp_path / "raw/train").glob("*.png")), sorted((tmp_path / "raw/trainannot").glob("*"))
    features = Features({"pixels": ImageFeature(), "mask": ImageFeature(), "name": ClassLabel(names=["x"])})
    dataset = Dataset.from_dict(
        {"pixels": [str(p) for p in images], "mask": [str(p) for p in masks], "name": [0] * 6}, features=features
    )
    if storage == "parquet":
        dataset.to_parquet(str(tmp_path / "ds/train.parquet"))
    else:
        dataset.save_to_disk(str(tmp_path / "ds"))
    (tmp_path / "labeled.txt").write_text("img03\nimg01\n")
    (tmp_path / "id2label.json").write_text(json.dumps({str(i): f"class{i}" for i in range(4)}))
    config = DataConfig(
        dataset_name=str(tmp_path / "ds"),
        image_column="pixels",
        label_column="mask",
        labeled_ids=str(tmp_path / "labeled.txt"),
        id2label=str(tmp_path / "id2label.json"),
        cache_dir=str(tmp_path / "cache"),
    )
    data = load_segmentation_data(config)
    assert row_ids(data.labeled, None, "") == ["img03", "img01"]
    assert row_ids(data.unlabeled, None, "") == ["img00", "img02", "img04", "img05"]
    assert data.labeled.column_names == ["image", "label"] and data.num_labels == 4
    validate_segmentation_data(data, show_progress=False)


def test_class_label_feature_gives_id2label_and_array_masks_work(tmp_path: Path):
    labels = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.int64)
    make_paired(tmp_path / "raw", num_images=1)
    features = Features({"image": ImageFeature(), "label": List(List(ClassLabel(names=["a", "b", "c"])))})
    image = str(next((tmp_path / "raw/train").iterdir()))
    Image.fromarray(PALETTE[labels]).save(image)
    Dataset.from_dict({"image": [image], "label": [labels.tolist()]}, features=features).save_to_disk(
        str(tmp_path / "ds")
    )
    data = load_segmentation_data(DataConfig(dataset_name=str(tmp_path / "ds"), unlabeled_split="train"))
    assert data.id2label == {0: "a", 1: "b", 2: "c"}
    validate_segmentation_data(data, show_progress=False)
    np.testing.assert_array_equal(EvalTransform()(data.labeled[0])["labels"].numpy(), labels)


def test_camvid_id_list_gives_exact_stems():
    config = DataConfig(
        dataset_name=str(CAMVID),
        labeled_ids=str(CAMVID / "splits/1_8/labeled.txt"),
        unlabeled_ids=str(CAMVID / "splits/1_8/unlabeled.txt"),
    )
    data = load_segmentation_data(config)
    assert row_ids(data.labeled, None, "") == read_id_list(CAMVID / "splits/1_8/labeled.txt")
    assert row_ids(data.unlabeled, None, "") == read_id_list(CAMVID / "splits/1_8/unlabeled.txt")
    assert len(data.eval) == 101 and data.label_mapping.label_map == {11: 255}


def test_labeled_fraction_is_seeded_and_disjoint(tmp_path: Path):
    root = make_paired(tmp_path / "data", num_images=10)

    def split(seed: int) -> tuple[list[str], list[str]]:
        data = load_segmentation_data(DataConfig(dataset_name=str(root), labeled_fraction=0.3, split_seed=seed))
        return row_ids(data.labeled, None, ""), row_ids(data.unlabeled, None, "")

    labeled, unlabeled = split(0)
    assert split(0) == (labeled, unlabeled) and split(1)[0] != labeled
    assert len(labeled) == 3 and not set(labeled) & set(unlabeled)
    assert sorted(labeled + unlabeled) == [f"img{i:02d}" for i in range(10)]


def test_config_from_namespace():
    namespace = argparse.Namespace(dataset_name="x", streaming=True, learning_rate=1e-3)
    assert DataConfig.from_namespace(namespace) == DataConfig(dataset_name="x", streaming=True)


# Labels


def test_label_mapping():
    raw = np.array([0, 1, 5, 11, 255])
    np.testing.assert_array_equal(LabelMapping(do_reduce_labels=True)(raw), [255, 0, 4, 10, 255])
    np.testing.assert_array_equal(LabelMapping(label_map={11: 255, 5: 0})(raw), [0, 1, 0, 255, 255])


def test_void_label_and_label_map_from_config(tmp_path: Path):
    root = make_paired(tmp_path / "data", num_images=2)
    data = load_segmentation_data(DataConfig(dataset_name=str(root), void_label=3, label_map='{"2": 0}'))
    assert data.label_mapping == LabelMapping(255, False, {2: 0, 3: 255})
    assert data.id2label is None and data.unlabeled is None


# Unknown columns, ids and splits


def test_missing_column_lists_available_ones(tmp_path: Path):
    root = make_paired(tmp_path / "data", num_images=2)
    with pytest.raises(DataValidationError, match=r"\['mask'\] not found .* available columns: \['image', 'label'\]"):
        load_segmentation_data(DataConfig(dataset_name=str(root), label_column="mask"))


def test_unknown_ids_and_splits(tmp_path: Path):
    root = make_paired(tmp_path / "data", num_images=2)
    (tmp_path / "ids.txt").write_text("img01\nimg99\n")
    with pytest.raises(DataValidationError, match="img99"):
        load_segmentation_data(DataConfig(dataset_name=str(root), labeled_ids=str(tmp_path / "ids.txt")))
    with pytest.raises(DataValidationError, match=r"available splits: \['train'\]"):
        load_segmentation_data(DataConfig(dataset_name=str(root), eval_split="test"))


# Streamed unlabeled data


def test_streamed_unlabeled_dataset_without_labels(tmp_path: Path):
    root = make_paired(tmp_path / "data", num_images=4)
    classification_dataset(tmp_path / "raw").save_to_disk(str(tmp_path / "unlabeled"))
    config = DataConfig(dataset_name=str(root), unlabeled_dataset_name=str(tmp_path / "unlabeled"), streaming=True)
    with pytest.raises(
        DataValidationError, match=r"\['image'\] not found .* available columns: \['pixels', 'label'\]"
    ):
        load_segmentation_data(config)
    config.unlabeled_image_column = "pixels"
    with pytest.raises(DataValidationError, match="not segmentation masks"):
        load_segmentation_data(DataConfig(dataset_name=str(tmp_path / "unlabeled"), image_column="pixels"))
    data = load_segmentation_data(config)
    validate_segmentation_data(data, num_labels=4, validation_samples=10, show_progress=False)
    transform = WeakAugmentation(crop_size=16, return_pixel_mask=True)
    batch = next(iter(infinite_dataloader(data.unlabeled, 4, transform, seed=1)))
    assert set(batch) == {"pixel_values", "pixel_mask"} and batch["pixel_mask"].shape == (4, 16, 16)
