"""`data_transforms.py`: the weak view, resize and the eval transform."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskmatch_hf.data import (
    DataConfig,
    load_segmentation_data,
)
from maskmatch_hf.data_transforms import EvalTransform, Resize, WeakAugmentation

from .data_helpers import (
    MEAN,
    PALETTE,
    STD,
    block_labels,
)


def test_crop_padding():
    labels = np.ones((10, 20), dtype=np.uint8)
    image = Image.fromarray(PALETTE[labels])
    transform = WeakAugmentation(crop_size=32, scale_range=(1.0, 1.0), return_pixel_mask=True)
    for seed in range(5):
        out = transform({"image": image, "label": Image.fromarray(labels)}, seed)
        mask = out["pixel_mask"]
        assert out["pixel_values"].shape == (3, 32, 32) and mask.dtype == torch.bool
        assert mask.sum() == 10 * 20
        assert (out["labels"][~mask] == 255).all() and (out["labels"][mask] == 1).all()
        assert (out["pixel_values"][:, ~mask] == 0).all() and (out["pixel_values"][:, mask] != 0).all()


def test_weak_augmentation_keeps_image_and_labels_aligned():
    rng = np.random.default_rng(0)
    labels = block_labels(rng, 48, 64)
    example = {"image": Image.fromarray(PALETTE[labels]), "label": Image.fromarray(labels)}
    transform = WeakAugmentation(crop_size=40, image_mean=MEAN, image_std=STD, return_pixel_mask=True)
    palette = torch.tensor(PALETTE, dtype=torch.float32) / 255
    for seed in range(8):
        out = transform(example, seed)
        colours = out["pixel_values"].permute(1, 2, 0) * torch.tensor(STD) + torch.tensor(MEAN)
        predicted = torch.cdist(colours.reshape(-1, 3), palette).argmin(1).reshape(colours.shape[:2])
        valid = out["labels"] != 255
        assert torch.equal(valid, out["pixel_mask"])
        agreement = (predicted[valid] == out["labels"][valid]).float().mean()
        mirrored = (predicted.flip(-1)[valid] == out["labels"][valid]).float().mean()
        assert agreement > 0.9 and mirrored < 0.7, (seed, agreement, mirrored)


def test_resize_and_eval_transform(mini_camvid: Path):
    data = load_segmentation_data(DataConfig(dataset_name=str(mini_camvid)))
    transform = EvalTransform(resize=Resize(shorter_side=90), label_mapping=data.label_mapping)
    out = transform(data.eval[0])
    assert out["pixel_values"].shape == (3, 90, 120) and out["labels"].shape == (90, 120)
    assert Resize(scale=0.5)((480, 360)) == (240, 180)
    with pytest.raises(ValueError):
        Resize()


@pytest.mark.parametrize("ratio", [0.6, 1.0, 1.37, 2.0])
def test_weak_view_resamples_only_the_crop_window(ratio: float):
    """The weak view resizes the crop window alone, with the pixels of rescaling the whole image then cropping."""
    labels = block_labels(np.random.default_rng(1), 60, 80)
    x, y = np.meshgrid(np.linspace(0, 255, 80), np.linspace(0, 255, 60))  # colour = position
    image = Image.fromarray(np.stack([x, y, np.full_like(x, 128)], axis=-1).round().astype(np.uint8))
    width, height = round(80 * ratio), round(60 * ratio)
    full_image = np.asarray(image.resize((width, height), Image.BILINEAR), dtype=np.float32) / 255
    full_labels = np.asarray(Image.fromarray(labels).resize((width, height), Image.NEAREST))
    scale = {"scale_range": (ratio, ratio), "hflip_prob": 0.0}
    transform = WeakAugmentation(crop_size=48, image_mean=MEAN, image_std=STD, return_pixel_mask=True, **scale)
    for seed in range(4):
        out = transform({"image": image, "label": Image.fromarray(labels)}, seed)
        rows, cols = (np.flatnonzero(out["pixel_mask"].numpy().any(axis=a)) for a in (1, 0))
        window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        colours = (out["pixel_values"].permute(1, 2, 0).numpy() * STD + MEAN)[window]
        # Where the window's first pixel lies in the rescaled image: its colour says so.
        top, left = np.unravel_index(np.abs(full_image - colours[0, 0]).sum(-1).argmin(), full_image.shape[:2])
        h, w = colours.shape[:2]
        assert np.abs(colours - full_image[top : top + h, left : left + w]).max() < 2.5 / 255, seed
        # NEAREST may round exact ties the other way in the window's coordinates: a few boundary pixels.
        mismatch = (out["labels"].numpy()[window] != full_labels[top : top + h, left : left + w]).mean()
        assert mismatch < 0.03, (seed, mismatch)
