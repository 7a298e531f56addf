"""Random patch masks for the masked-modeling view."""

from __future__ import annotations

import math

import torch


def random_patch_mask(
    batch_size: int,
    height: int,
    width: int,
    patch_size: int,
    mask_ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.BoolTensor:
    """Hide exactly `round(mask_ratio * num_patches)` random `patch_size` patches of each image.

    Patches tile the image from the top-left corner; border patches are cropped. Returns a `(batch_size,
    height, width)` bool mask, True where the pixel is hidden.
    """
    rows, cols = math.ceil(height / patch_size), math.ceil(width / patch_size)
    num_patches = rows * cols
    num_hidden = round(mask_ratio * num_patches)
    noise = torch.rand(batch_size, num_patches, generator=generator, device=device)
    hidden_ids = noise.argsort(dim=1)[:, :num_hidden]
    patches = torch.zeros(batch_size, num_patches, dtype=torch.bool, device=noise.device)
    patches.scatter_(1, hidden_ids, True)
    pixels = patches.view(batch_size, rows, cols).repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2)
    return pixels[:, :height, :width]


def mask_images(pixel_values: torch.Tensor, mask: torch.BoolTensor) -> torch.Tensor:
    """Set hidden pixels to 0, the dataset mean colour in normalized space. `mask` is `(batch, height, width)`."""
    return pixel_values.masked_fill(mask.unsqueeze(1), 0.0)
