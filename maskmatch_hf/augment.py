"""Strong views on batched, normalized image tensors: photometric jitter, grayscale, blur and CutMix.

Everything runs on the batch's device with per-image random parameters drawn from an optional
`torch.Generator`, so a training step is reproducible and needs no data-loader round trip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

_LUMA = (0.299, 0.587, 0.114)
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def _uniform(
    low: float, high: float, size: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    return low + (high - low) * torch.rand(size, generator=generator, device=device)


def _bernoulli(prob: float, size: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(size, generator=generator, device=device) < prob


def _per_image(values: torch.Tensor) -> torch.Tensor:
    """Shape a `(batch,)` vector to broadcast over `(batch, 3, height, width)`."""
    return values.view(-1, 1, 1, 1)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """Luma of RGB images in [0, 1], `(batch, 1, height, width)`."""
    weights = torch.tensor(_LUMA, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def rotate_hue(images: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate the chroma of RGB images by `turns` (fraction of a full turn, per image) in YIQ space."""
    to_yiq = torch.tensor(_RGB_TO_YIQ, device=images.device, dtype=images.dtype)
    yiq = torch.einsum("ij,bjhw->bihw", to_yiq, images)
    cos, sin = _per_image(torch.cos(2 * math.pi * turns)), _per_image(torch.sin(2 * math.pi * turns))
    i, q = yiq[:, 1:2], yiq[:, 2:3]
    yiq = torch.cat([yiq[:, :1], i * cos - q * sin, i * sin + q * cos], dim=1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_yiq), yiq)


def gaussian_blur(images: torch.Tensor, sigmas: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Blur each image with its own Gaussian `sigmas[b]` (pixels), as two separable grouped convolutions."""
    batch, channels, height, width = images.shape
    radius = math.ceil(3 * max_sigma)
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernels = torch.exp(-0.5 * (offsets.view(1, -1) / sigmas.view(-1, 1)) ** 2)
    kernels = (kernels / kernels.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)
    flat = images.reshape(1, batch * channels, height, width)
    flat = nn.functional.pad(flat, (radius, radius, 0, 0), mode="replicate")
    flat = nn.functional.conv2d(flat, kernels.view(batch * channels, 1, 1, -1), groups=batch * channels)
    flat = nn.functional.pad(flat, (0, 0, radius, radius), mode="replicate")
    flat = nn.functional.conv2d(flat, kernels.view(batch * channels, 1, -1, 1), groups=batch * channels)
    return flat.view(batch, channels, height, width)


def strong_augment(
    pixel_values: torch.Tensor,
    image_mean: Sequence[float],
    image_std: Sequence[float],
    color_jitter: Sequence[float] = (0.5, 0.5, 0.5, 0.25),
    color_jitter_prob: float = 0.8,
    grayscale_prob: float = 0.2,
    blur_prob: float = 0.5,
    blur_sigma: Sequence[float] = (0.1, 2.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Photometric strong view of normalized `(batch, 3, height, width)` images; geometry is untouched.

    Per image: colour jitter (brightness, contrast, saturation, hue) with `color_jitter_prob`, grayscale with
    `grayscale_prob`, Gaussian blur with `blur_prob`. Works in [0, 1] RGB and returns normalized images.
    """
    batch, device = pixel_values.shape[0], pixel_values.device
    mean = torch.tensor(image_mean, device=device, dtype=pixel_values.dtype).view(1, 3, 1, 1)
    std = torch.tensor(image_std, device=device, dtype=pixel_values.dtype).view(1, 3, 1, 1)
    images = (pixel_values * std + mean).clamp(0, 1)

    brightness, contrast, saturation, hue = color_jitter
    jitter = _bernoulli(color_jitter_prob, batch, generator, device)

    def factors(strength: float, center: float = 1.0) -> torch.Tensor:
        """Per-image draws in `[center - strength, center + strength]` (`center` where not jittered)."""
        drawn = _uniform(center - strength, center + strength, batch, generator, device)
        return _per_image(torch.where(jitter, drawn, torch.full_like(drawn, center)))

    # Brightness, contrast and saturation scale the image: their factors are non-negative, as in torchvision.
    images = (images * factors(brightness).clamp_min(0)).clamp(0, 1)
    gray_mean = grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
    images = torch.lerp(gray_mean.expand_as(images), images, factors(contrast).clamp_min(0)).clamp(0, 1)
    images = torch.lerp(grayscale(images).expand_as(images), images, factors(saturation).clamp_min(0)).clamp(0, 1)
    # Hue rotates both ways: a signed fraction of a turn in [-hue, hue].
    images = rotate_hue(images, factors(hue, center=0.0).view(-1)).clamp(0, 1)

    to_gray = _per_image(_bernoulli(grayscale_prob, batch, generator, device))
    images = torch.where(to_gray, grayscale(images).expand_as(images), images)

    blur = _per_image(_bernoulli(blur_prob, batch, generator, device))
    sigmas = _uniform(blur_sigma[0], blur_sigma[1], batch, generator, device)
    images = torch.where(blur, gaussian_blur(images, sigmas, max_sigma=blur_sigma[1]), images)
    return (images - mean) / std


def cutmix_box_mask(
    batch_size: int,
    height: int,
    width: int,
    prob: float = 0.5,
    area_range: tuple[float, float] = (0.02, 0.4),
    aspect_range: tuple[float, float] = (0.3, 1 / 0.3),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.BoolTensor:
    """One random box per image (with probability `prob`, else none), `(batch, height, width)`, True inside.

    The box covers a uniform fraction `area_range` of the image with aspect ratio in `aspect_range`, as in
    UniMatch, clipped to the image.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    area = _uniform(*area_range, batch_size, generator, device) * height * width
    aspect = _uniform(*aspect_range, batch_size, generator, device)
    box_h = (area * aspect).sqrt().floor().clamp(1, height)
    box_w = (area / aspect).sqrt().floor().clamp(1, width)
    top = (torch.rand(batch_size, generator=generator, device=device) * (height - box_h + 1)).floor()
    left = (torch.rand(batch_size, generator=generator, device=device) * (width - box_w + 1)).floor()
    rows = torch.arange(height, device=device).view(1, -1, 1)
    cols = torch.arange(width, device=device).view(1, 1, -1)
    inside_rows = (rows >= top.view(-1, 1, 1)) & (rows < (top + box_h).view(-1, 1, 1))
    inside_cols = (cols >= left.view(-1, 1, 1)) & (cols < (left + box_w).view(-1, 1, 1))
    active = _bernoulli(prob, batch_size, generator, device).view(-1, 1, 1)
    return inside_rows & inside_cols & active


def cutmix(box: torch.BoolTensor, tensor: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """Paste `partner` into `tensor` inside `box`. Works for images `(B, C, H, W)` and maps `(B, H, W)` alike."""
    shape = (box.shape[0],) + (1,) * (tensor.dim() - 3) + tuple(box.shape[1:])
    return torch.where(box.view(shape), partner, tensor)
