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
_YIQ_TO_RGB = tuple(map(tuple, torch.linalg.inv(torch.tensor(_RGB_TO_YIQ, dtype=torch.float64)).tolist()))
_CONSTANTS: dict[tuple, torch.Tensor] = {}


def constant(values: Sequence, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """The tensor of `values` on `device`, made once per (values, device, dtype) and then reused.

    Building it from Python data at every call would copy it to an accelerator each time, and that copy waits for
    all the work queued there (the teacher's passes), so the host could not queue the next steps meanwhile.
    Treat the result as read-only.
    """
    values = tuple(tuple(float(v) for v in row) if isinstance(row, Sequence) else float(row) for row in values)
    key = (values, torch.device(device), dtype)
    tensor = _CONSTANTS.get(key)
    if tensor is None:
        with torch.inference_mode(False):  # usable outside inference mode too
            tensor = torch.tensor(values, device=device, dtype=dtype)
        _CONSTANTS[key] = tensor
    return tensor


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
    weights = constant(_LUMA, images.device, images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def rotate_hue(images: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate the chroma of RGB images by `turns` (fraction of a full turn, per image) in YIQ space.

    One 3x3 colour matrix per image, `YIQ^-1 @ rotation(I, Q) @ YIQ`, applied in a single pass.
    """
    to_yiq = constant(_RGB_TO_YIQ, images.device, images.dtype)
    from_yiq = constant(_YIQ_TO_RGB, images.device, images.dtype)
    cos, sin = torch.cos(2 * math.pi * turns), torch.sin(2 * math.pi * turns)
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    rotation = torch.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], dim=1).view(-1, 3, 3)
    matrices = from_yiq @ rotation @ to_yiq
    batch, channels, height, width = images.shape
    return torch.bmm(matrices, images.reshape(batch, channels, height * width)).view(batch, channels, height, width)


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
    batch, device, dtype = pixel_values.shape[0], pixel_values.device, pixel_values.dtype
    mean = constant(image_mean, device, dtype).view(1, 3, 1, 1)
    std = constant(image_std, device, dtype).view(1, 3, 1, 1)
    images = pixel_values.mul(std).add_(mean).clamp_(0, 1)  # the only copy: every later step works in place

    brightness, contrast, saturation, hue = color_jitter
    jitter = _bernoulli(color_jitter_prob, batch, generator, device)

    def factors(strength: float, center: float = 1.0) -> torch.Tensor:
        """Per-image draws in `[center - strength, center + strength]` (`center` where not jittered)."""
        drawn = _uniform(center - strength, center + strength, batch, generator, device)
        return _per_image(torch.where(jitter, drawn, torch.full_like(drawn, center)))

    # Brightness, contrast and saturation scale the image: their factors are non-negative, as in torchvision.
    # Blending towards gray with factor f is `lerp(gray, image, f)`, i.e. `image.lerp_(gray, 1 - f)`.
    images.mul_(factors(brightness).clamp_min(0)).clamp_(0, 1)
    gray_mean = grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
    images.lerp_(gray_mean.expand_as(images), 1 - factors(contrast).clamp_min(0)).clamp_(0, 1)
    images.lerp_(grayscale(images).expand_as(images), 1 - factors(saturation).clamp_min(0)).clamp_(0, 1)
    # Hue rotates both ways: a signed fraction of a turn in [-hue, hue].
    images = rotate_hue(images, factors(hue, center=0.0).view(-1)).clamp_(0, 1)

    to_gray = _per_image(_bernoulli(grayscale_prob, batch, generator, device))
    images = torch.where(to_gray, grayscale(images).expand_as(images), images)

    blur = _per_image(_bernoulli(blur_prob, batch, generator, device))
    sigmas = _uniform(blur_sigma[0], blur_sigma[1], batch, generator, device)
    images = torch.where(blur, gaussian_blur(images, sigmas, max_sigma=blur_sigma[1]), images)
    return images.sub_(mean).div_(std)


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
