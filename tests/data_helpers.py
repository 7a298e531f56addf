"""Synthetic segmentation data for the data tests: block-label images in the SegNet layout, loaders' helpers."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features
from datasets import Image as ImageFeature
from PIL import Image

CAMVID = Path(os.environ.get("MASKMATCH_CAMVID", Path(__file__).parents[1].parent / "shared/data/camvid"))
# Colour of each class in the synthetic images: the colour of a pixel tells its label.
PALETTE = np.array([[230, 20, 20], [20, 230, 20], [20, 20, 230], [230, 230, 20]], dtype=np.uint8)
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def block_labels(rng: np.random.Generator, height: int, width: int, block: int = 8) -> np.ndarray:
    """Random labels in 0..3, constant over `block` x `block` squares."""
    coarse = rng.integers(0, len(PALETTE), size=(-(-height // block), -(-width // block)))
    return np.kron(coarse, np.ones((block, block), dtype=np.int64))[:height, :width].astype(np.uint8)


def write_pair(image_dir: Path, mask_dir: Path | None, stem: str, labels: np.ndarray) -> None:
    image_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(PALETTE[labels % len(PALETTE)]).save(image_dir / f"{stem}.png")
    if mask_dir is not None:
        mask_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels).save(mask_dir / f"{stem}.png")


def make_paired(root: Path, num_images: int = 10, split: str = "train", seed: int = 0) -> Path:
    """SegNet-layout folders `<split>/` + `<split>annot/` of images of varying sizes (some under 32 px)."""
    rng = np.random.default_rng(seed)
    for i in range(num_images):
        height, width = 16 + 8 * (i % 4), 24 + 8 * (i % 3)
        write_pair(root / split, root / f"{split}annot", f"img{i:02d}", block_labels(rng, height, width))
    return root


def classification_dataset(root: Path, num_images: int = 6) -> Dataset:
    """Images without masks; `label` is an image-level class, as in an imagefolder of class folders."""
    rng = np.random.default_rng(1)
    for i in range(num_images):
        write_pair(root, None, f"u{i}", block_labels(rng, 24, 32))
    paths = sorted(str(p) for p in root.glob("*.png"))
    features = Features({"pixels": ImageFeature(), "label": ClassLabel(names=["street"])})
    return Dataset.from_dict({"pixels": paths, "label": [0] * len(paths)}, features=features)


def stem_transform(example: dict, seed: int) -> dict[str, torch.Tensor]:
    """Test transform exposing which row (digits of the file stem) and which seed a sample came from."""
    row = int("".join(c for c in Path(example["image"]["path"]).stem if c.isdigit()))
    return {"pixel_values": torch.tensor([[[row, seed]]], dtype=torch.float64)}


def take(loader, num_batches: int) -> list[dict[str, torch.Tensor]]:
    return list(itertools.islice(iter(loader), num_batches))


def assert_same_batches(first: list[dict], second: list[dict]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
