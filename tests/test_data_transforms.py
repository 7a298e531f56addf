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
