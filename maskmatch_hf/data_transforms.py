"""Per-sample transforms run in the DataLoader workers: decoding, the weak view, evaluation resizing.

Every transform is `transform(example, seed) -> dict of tensors` and draws its randomness from `seed` alone,
so a sample's augmentation does not depend on the worker that builds it nor on what came before: this is what
makes training resumable at any step (see `data_loaders.py`). PIL / numpy / torch only.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from .configuration_maskmatch import IMAGENET_MEAN, IMAGENET_STD
from .data import IMAGE_COLUMN, LABEL_COLUMN, DataValidationError, LabelMapping


def open_image(value: Any) -> PIL.Image.Image:
    """Opens (lazily: only the header is read) an image cell: `{"bytes", "path"}`, a PIL image or a path."""
    if isinstance(value, PIL.Image.Image):
        return value
    if isinstance(value, dict):
        return PIL.Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
    return PIL.Image.open(value)


def describe_cell(value: Any, fallback: str) -> str:
    """The file name of an image cell, or `fallback` (e.g. "row 3 of ...") when it has none."""
    path = value.get("path") if isinstance(value, dict) else getattr(value, "filename", None)
    if isinstance(value, (str, Path)):
        path = str(value)
    return path or fallback


def decode_image(value: Any, kind: str = "image", fallback: str = "(no file name)") -> PIL.Image.Image:
    """Opens and fully decodes an image cell; a missing, unknown or truncated file raises `DataValidationError`
    naming it (`kind` and, for cells without a file name, `fallback` describe it)."""
    try:
        image = open_image(value)
        image.load()
    except (OSError, ValueError) as error:  # missing file, unknown format, truncated data
        raise DataValidationError(f"Unreadable {kind} {describe_cell(value, fallback)}: {error}") from error
    return image


def decode_label(value: Any, fallback: str = "(no file name)") -> PIL.Image.Image:
    """A mask cell as a decoded single-channel PIL image; masks stored as integer arrays are accepted too."""
    if isinstance(value, (dict, str, PIL.Image.Image)):
        return decode_image(value, "mask", fallback)
    return PIL.Image.fromarray(np.asarray(value, dtype=np.int32))


def decode_example(example: dict[str, Any]) -> dict[str, Any]:
    """`example` with its image (and mask, when it has one) decoded into PIL images, which every transform
    accepts as they are: a decoded example can be kept and transformed again without decoding it again."""
    decoded = dict(example)
    decoded[IMAGE_COLUMN] = decode_image(example[IMAGE_COLUMN])
    if example.get(LABEL_COLUMN) is not None:
        decoded[LABEL_COLUMN] = decode_label(example[LABEL_COLUMN])
    return decoded


def decoded_size(example: dict[str, Any]) -> int:
    """Bytes held by the PIL images of a decoded example (pixels x bands x bytes per band)."""
    images = [value for value in example.values() if isinstance(value, PIL.Image.Image)]
    wide_modes = ("I", "F")  # 32-bit bands; every other mode stores a byte per band
    return sum(
        image.width * image.height * len(image.getbands()) * (4 if image.mode in wide_modes else 1) for image in images
    )


@dataclass(frozen=True)
class Resize:
    """Deterministic resize applied before anything else (train and eval): to a shorter side or by a factor.

    Give exactly one of `shorter_side` (pixels) or `scale` (e.g. 0.5 turns CamVid's 480x360 into 240x180).
    """

    shorter_side: int | None = None
    scale: float | None = None

    def __post_init__(self):
        if (self.shorter_side is None) == (self.scale is None):
            raise ValueError("Resize takes exactly one of `shorter_side` and `scale`.")

    @classmethod
    def from_flag(cls, value: str) -> Resize:
        """`--resize 180` (shorter side in pixels) or `--resize 0.5` (scale factor, any number below 8)."""
        number = float(value)
        return cls(shorter_side=int(number)) if number.is_integer() and number >= 8 else cls(scale=number)

    def __call__(self, size: tuple[int, int]) -> tuple[int, int]:
        """Output (width, height) for an input of (width, height)."""
        scale = self.scale if self.scale is not None else self.shorter_side / min(size)
        return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _normalize(image: PIL.Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(H, W, 3) float32 array, `(x / 255 - mean) / std`."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return (array - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    """Tensor of an (H, W) array, or of an (H, W, C) one as (C, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1) if array.ndim == 3 else array))


@dataclass(frozen=True)
class WeakAugmentation:
    """The weak view: (resize), random rescale, random crop with padding, horizontal flip, normalize.

    The crop window is drawn over the rescaled image and may stick out of it when the image is smaller than
    `crop_size`; the padding is 0 in normalized space (the mean colour) for the image, `ignore_index` for the
    labels and False in `pixel_mask`, which marks real pixels. Labels use NEAREST resampling.

    Returns `pixel_values` (3, H, W) float32, `labels` (H, W) int64 when the example has a mask, and
    `pixel_mask` (H, W) bool when `return_pixel_mask` (unlabeled batches; labeled ones carry the padding as
    `ignore_index` already).
    """

    crop_size: int | tuple[int, int]
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD
    scale_range: tuple[float, float] = (0.5, 2.0)
    hflip_prob: float = 0.5
    resize: Resize | None = None
    label_mapping: LabelMapping = field(default_factory=LabelMapping)
    return_pixel_mask: bool = False

    def __call__(self, example: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(seed)
        crop_h, crop_w = (self.crop_size, self.crop_size) if isinstance(self.crop_size, int) else self.crop_size
        image = decode_image(example[IMAGE_COLUMN])
        label = example.get(LABEL_COLUMN)
        label = None if label is None else decode_label(label)

        # A fixed number of draws, in a fixed order, whatever the image: the view is a function of `seed`.
        ratio = rng.uniform(*self.scale_range)
        base_w, base_h = self.resize(image.size) if self.resize else image.size
        width, height = max(1, round(base_w * ratio)), max(1, round(base_h * ratio))
        top = int(rng.integers(min(0, height - crop_h), max(0, height - crop_h) + 1))
        left = int(rng.integers(min(0, width - crop_w), max(0, width - crop_w) + 1))
        flip = rng.random() < self.hflip_prob

        # Window of the crop inside the rescaled image, and where it lands on the (crop_h, crop_w) canvas.
        box = (max(left, 0), max(top, 0), min(left + crop_w, width), min(top + crop_h, height))
        rows = slice(box[1] - top, box[3] - top)
        cols = slice(box[0] - left, box[2] - left)
        # Resample only the crop window (the rest of the rescaled image would be thrown away): `box` mapped back
        # to the decoded image's coordinates; PIL's filters still read the pixels around it.
        source_box = (
            box[0] * image.width / width,
            box[1] * image.height / height,
            box[2] * image.width / width,
            box[3] * image.height / height,
        )
        window = (box[2] - box[0], box[3] - box[1])
        region = image.resize(window, PIL.Image.BILINEAR, box=source_box)

        pixel_values = np.zeros((crop_h, crop_w, 3), dtype=np.float32)
        pixel_values[rows, cols] = _normalize(region, self.image_mean, self.image_std)
        pixel_mask = np.zeros((crop_h, crop_w), dtype=bool)
        pixel_mask[rows, cols] = True
        arrays = {"pixel_values": pixel_values}
        if self.return_pixel_mask:
            arrays["pixel_mask"] = pixel_mask
        if label is not None:
            labels = np.full((crop_h, crop_w), self.label_mapping.ignore_index, dtype=np.int64)
            region = label.resize(window, PIL.Image.NEAREST, box=source_box)
            labels[rows, cols] = self.label_mapping(np.asarray(region))
            arrays["labels"] = labels
        if flip:
            arrays = {key: array[:, ::-1] for key, array in arrays.items()}
        return {key: _to_tensor(array) for key, array in arrays.items()}


@dataclass(frozen=True)
class EvalTransform:
    """Evaluation: the same `resize` as training (or none), no crop; full images and labels."""

    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD
    resize: Resize | None = None
    label_mapping: LabelMapping = field(default_factory=LabelMapping)

    def __call__(self, example: dict[str, Any], seed: int | None = None) -> dict[str, torch.Tensor]:
        image = decode_image(example[IMAGE_COLUMN])
        size = self.resize(image.size) if self.resize else image.size
        pixel_values = _normalize(image.resize(size, PIL.Image.BILINEAR), self.image_mean, self.image_std)
        outputs = {"pixel_values": _to_tensor(pixel_values)}
        if example.get(LABEL_COLUMN) is not None:
            label = decode_label(example[LABEL_COLUMN]).resize(size, PIL.Image.NEAREST)
            outputs["labels"] = torch.from_numpy(self.label_mapping(np.asarray(label)))
        return outputs
