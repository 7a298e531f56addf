"""Checks run before training starts, so that bad data fails in seconds with the file named, not mid-run.

Images and masks are fully decoded (a truncated file fails here, not mid-run), masks to check their size and
the label values they hold after the label mapping; evaluation images must be large enough for the model at
the evaluation size. Sets larger than `validation_samples` are checked on that many evenly spaced rows
(streams: their first rows).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import numpy as np
from datasets import Dataset, IterableDataset
from tqdm.auto import tqdm

from .data import IMAGE_COLUMN, LABEL_COLUMN, DataValidationError, LabelMapping, SegmentationData
from .data_transforms import Resize, decode_image, decode_label, describe_cell


def check_example(
    example: dict[str, Any],
    row: str,
    num_labels: int,
    label_mapping: LabelMapping,
    require_label: bool,
    min_side: int = 1,
    resize: Resize | None = None,
) -> None:
    """Raises `DataValidationError` naming the file of `example` (described as `row`) if it is unusable.

    `min_side`: the smallest side the image may have after `resize` (the evaluation size).
    """
    if example[IMAGE_COLUMN] is None:
        raise DataValidationError(f"Missing image in {row}.")
    image_name = describe_cell(example[IMAGE_COLUMN], row)
    image_size = decode_image(example[IMAGE_COLUMN], fallback=row).size
    size = resize(image_size) if resize else image_size
    if min(size) < min_side:
        raise DataValidationError(
            f"Image {image_name} is evaluated at {size[0]}x{size[1]} (width x height), smaller than the {min_side} "
            "px per side the model needs: use a larger `resize` (or none) or larger images."
        )
    label = example.get(LABEL_COLUMN)
    if label is None:
        if require_label:
            raise DataValidationError(f"Missing mask for image {image_name}.")
        return
    label_name = describe_cell(label, f"mask of {image_name}")
    mask = decode_label(label, fallback=label_name)
    labels = np.asarray(mask)
    if labels.ndim != 2:
        raise DataValidationError(f"Mask {label_name} has shape {labels.shape}: masks must be single-channel.")
    if mask.size != image_size:
        raise DataValidationError(
            f"Size mismatch: image {image_name} is {image_size[0]}x{image_size[1]} but mask {label_name} is "
            f"{mask.size[0]}x{mask.size[1]} (width x height)."
        )
    values = label_mapping(np.unique(labels))
    bad = values[((values < 0) | (values >= num_labels)) & (values != label_mapping.ignore_index)]
    if bad.size:
        raise DataValidationError(
            f"Mask {label_name} holds label(s) {sorted(set(bad.tolist()))} outside [0, {num_labels}) after "
            f"label mapping (ignore_index {label_mapping.ignore_index}); set `void_label`, `label_map`, "
            "`do_reduce_labels` or `id2label` to match the dataset."
        )


def _rows(dataset: Dataset | IterableDataset, max_rows: int | None) -> tuple[Iterable[tuple[int, dict]], int]:
    """(row number, example) pairs to check and how many: evenly spaced rows, or the first ones of a stream."""
    if isinstance(dataset, IterableDataset):
        if max_rows is None:
            raise ValueError("Validating a streamed dataset needs `validation_samples`.")
        return enumerate(itertools.islice(dataset, max_rows)), max_rows
    count = len(dataset) if max_rows is None else min(max_rows, len(dataset))
    rows = np.unique(np.linspace(0, len(dataset) - 1, count).round().astype(int)) if count else []
    return ((int(i), dataset[int(i)]) for i in rows), len(rows)


def validate_split(
    dataset: Dataset | IterableDataset,
    name: str,
    num_labels: int,
    label_mapping: LabelMapping,
    require_label: bool,
    validation_samples: int | None = None,
    show_progress: bool = True,
    min_side: int = 1,
    resize: Resize | None = None,
) -> int:
    """Checks up to `validation_samples` rows (all when None) of one split; returns how many were checked.

    `min_side` and `resize` are passed to [`check_example`].
    """
    rows, total = _rows(dataset, validation_samples)
    checked = 0
    for row, example in tqdm(rows, total=total, desc=f"Checking {name}", disable=not show_progress):
        check_example(example, f"row {row} of {name}", num_labels, label_mapping, require_label, min_side, resize)
        checked += 1
    if checked == 0:
        raise DataValidationError(f"The {name} is empty.")
    return checked


def validate_segmentation_data(
    data: SegmentationData,
    num_labels: int | None = None,
    validation_samples: int | None = 2000,
    require_unlabeled: bool = True,
    show_progress: bool = True,
    eval_min_side: int = 1,
    eval_resize: Resize | None = None,
) -> None:
    """Checks the labeled, unlabeled and eval sets of `data`; raises `DataValidationError` on the first problem.

    `num_labels` defaults to `len(data.id2label)`. Evaluation images, resized by `eval_resize`, must have sides
    of at least `eval_min_side` pixels. Call it on every process before the first step: each one then fails the
    same way, instead of some waiting forever for the others at the first collective.
    """
    num_labels = num_labels or data.num_labels
    if num_labels is None:
        raise ValueError("`num_labels` is unknown: pass it or give the data an `id2label`.")
    splits = [("labeled", data.labeled, True)]
    if data.unlabeled is not None or require_unlabeled:
        splits.append(("unlabeled", data.unlabeled, False))
    if data.eval is not None:
        splits.append(("eval", data.eval, True))
    for key, dataset, require_label in splits:
        name = f"{key} set ({data.sources.get(key, 'unknown source')})"
        if dataset is None:
            raise DataValidationError(f"The {name} is empty.")
        validate_split(
            dataset,
            name,
            num_labels,
            data.label_mapping,
            require_label,
            validation_samples,
            show_progress,
            min_side=eval_min_side if key == "eval" else 1,
            resize=eval_resize if key == "eval" else None,
        )
