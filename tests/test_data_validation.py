"""`data_validation.py`: the start-up check and the per-example check of streamed data."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from datasets import IterableDataset
from PIL import Image

from maskmatch_hf.data import (
    DataConfig,
    DataValidationError,
    load_segmentation_data,
)
from maskmatch_hf.data_loaders import (
    infinite_dataloader,
)
from maskmatch_hf.data_transforms import WeakAugmentation
from maskmatch_hf.data_validation import check_example, validate_segmentation_data

from .data_helpers import (
    make_paired,
    take,
)


def _validation_error(tmp_path: Path, corrupt) -> str:
    root = make_paired(tmp_path / "data", num_images=4)
    corrupt(root)
    data = load_segmentation_data(DataConfig(dataset_name=str(root)))
    with pytest.raises(DataValidationError) as error:
        validate_segmentation_data(data, num_labels=4, require_unlabeled=False, show_progress=False)
    return str(error.value)


def test_missing_mask(tmp_path: Path):
    message = _validation_error(tmp_path, lambda root: (root / "trainannot/img01.png").unlink())
    assert "Missing mask" in message and "img01.png" in message


def test_size_mismatch(tmp_path: Path):
    def corrupt(root: Path):
        Image.fromarray(np.zeros((5, 7), dtype=np.uint8)).save(root / "trainannot/img02.png")

    message = _validation_error(tmp_path, corrupt)
    assert "Size mismatch" in message and "img02.png" in message and "7x5" in message


def test_label_out_of_range(tmp_path: Path):
    def corrupt(root: Path):
        mask = np.array(Image.open(root / "trainannot/img03.png"))
        mask[0, 0] = 7
        Image.fromarray(mask).save(root / "trainannot/img03.png")

    message = _validation_error(tmp_path, corrupt)
    assert "img03.png" in message and "[7]" in message
    # The same value is fine once it is the void label.
    root = tmp_path / "data"
    data = load_segmentation_data(DataConfig(dataset_name=str(root), void_label=7))
    validate_segmentation_data(data, num_labels=4, require_unlabeled=False, show_progress=False)


def test_unreadable_image(tmp_path: Path):
    message = _validation_error(tmp_path, lambda root: (root / "train/img00.png").write_bytes(b"not a png"))
    assert "Unreadable image" in message and "img00.png" in message


def test_rgb_mask(tmp_path: Path):
    def corrupt(root: Path):
        Image.open(root / "trainannot/img01.png").convert("RGB").save(root / "trainannot/img01.png")

    message = _validation_error(tmp_path, corrupt)
    assert "single-channel" in message and "img01.png" in message


def test_empty_sets(tmp_path: Path):
    root = make_paired(tmp_path / "data", num_images=3)
    (tmp_path / "empty.txt").write_text("\n")
    data = load_segmentation_data(DataConfig(dataset_name=str(root), labeled_ids=str(tmp_path / "empty.txt")))
    with pytest.raises(DataValidationError, match="labeled set .* is empty"):
        validate_segmentation_data(data, num_labels=4, show_progress=False)
    data = load_segmentation_data(DataConfig(dataset_name=str(root), labeled_fraction=1.0))
    with pytest.raises(DataValidationError, match="unlabeled set .* is empty"):
        validate_segmentation_data(data, num_labels=4, show_progress=False)
    data = load_segmentation_data(DataConfig(dataset_name=str(root)))
    with pytest.raises(DataValidationError, match="unlabeled set .* is empty"):
        validate_segmentation_data(data, num_labels=4, show_progress=False)
    validate_segmentation_data(data, num_labels=4, require_unlabeled=False, show_progress=False)


def test_streamed_labeled_data_is_checked_up_front_and_as_it_is_read(tmp_path: Path):
    root = make_paired(tmp_path / "data", num_images=6)
    make_paired(root, num_images=2, split="val", seed=1)
    Image.fromarray(np.full((24, 40), 9, dtype=np.uint8)).save(root / "trainannot" / "img05.png")  # label 9 of 4
    config = DataConfig(dataset_name=str(root), streaming_labeled=True)
    data = load_segmentation_data(config)
    assert isinstance(data.labeled, IterableDataset) and isinstance(data.eval, IterableDataset)
    assert data.unlabeled is None and set(data.labeled.features) == {"image", "label"}

    validate_segmentation_data(data, num_labels=4, validation_samples=3, require_unlabeled=False, show_progress=False)
    with pytest.raises(DataValidationError, match=r"img05\.png holds label\(s\) \[9\] outside \[0, 4\)"):
        validate_segmentation_data(data, num_labels=4, validation_samples=6, require_unlabeled=False)
    # Past the rows checked up front, the loader checks each example it reads and names the bad one.
    check = functools.partial(check_example, num_labels=4, label_mapping=data.label_mapping, require_label=True)
    loader = infinite_dataloader(data.labeled, 2, WeakAugmentation(crop_size=16), seed=0, check_example=check)
    with pytest.raises(DataValidationError, match=r"img05\.png holds label\(s\) \[9\]"):
        take(loader, 3)

    with pytest.raises(DataValidationError, match=r"\['mask'\] not found in split 'train'"):
        load_segmentation_data(DataConfig(dataset_name=str(root), streaming_labeled=True, label_column="mask"))
    with pytest.raises(ValueError, match="`streaming_labeled` streams all of `train_split`"):
        load_segmentation_data(DataConfig(dataset_name=str(root), streaming_labeled=True, labeled_fraction=0.5))
