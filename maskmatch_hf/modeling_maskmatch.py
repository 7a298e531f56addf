"""MaskMatch segmentation model: a SegFormer / UperNet (or any transformers segmenter) wrapper whose logits are
always at input resolution, with multi-scale inference and UniMatch-style feature perturbation.

This file ships inside checkpoints as remote code, so it imports only torch, transformers and its siblings.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModelForSemanticSegmentation,
    PreTrainedConfig,
    PreTrainedModel,
    SegformerForSemanticSegmentation,
    UperNetForSemanticSegmentation,
)
from transformers.modeling_outputs import SemanticSegmenterOutput

from .configuration_efficientnet_lite import EfficientNetLiteConfig
from .configuration_maskmatch import MaskMatchConfig
from .modeling_efficientnet_lite import EfficientNetLiteBackbone  # noqa: F401  (registers the backbone)


def resize_maps(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of `(batch, channels, h, w)` maps to `size` (a no-op when already there)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return nn.functional.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """`(height, width)` of a positive int or pair of ints."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"`{name}` must be a positive int or (height, width) pair, got {value!r}.")
    return int(pair[0]), int(pair[1])


def _window_starts(length: int, window: int, stride: int) -> list[int]:
    """Offsets of `window`-long windows every `stride` covering `length`, the last one flush with the end."""
    if length <= window:
        return [0]
    return [*range(0, length - window, stride), length - window]


def sliding_window_probabilities(
    model: nn.Module,
    pixel_values: torch.FloatTensor,
    window_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
) -> torch.FloatTensor:
    """Class probabilities of any segmenter from overlapping windows (for images larger than the training crop).

    Windows of `window_size` (int or `(height, width)`; shrunk to the image where it is smaller) every `stride`
    (default: 2/3 of the window, as UniMatch evaluates), the last row / column flush with the image's edge. Each
    window's logits are resized to the window and softmaxed; where windows overlap their probabilities are
    averaged. A window covering the image gives whole-image inference. Returns float32
    `(batch_size, num_labels, height, width)`; runs in the model's current mode.
    """
    height, width = pixel_values.shape[-2:]
    window_h, window_w = _pair(window_size, "window_size")
    if stride is None:
        stride_h, stride_w = max(1, 2 * window_h // 3), max(1, 2 * window_w // 3)
    else:
        stride_h, stride_w = _pair(stride, "stride")
    if stride_h > window_h or stride_w > window_w:
        raise ValueError(f"The stride {(stride_h, stride_w)} must not exceed the window {(window_h, window_w)}.")
    window_h, window_w = min(window_h, height), min(window_w, width)
    if (window_h, window_w) == (height, width):  # one window: whole-image inference, nothing to average
        return resize_maps(model(pixel_values=pixel_values).logits.float(), (height, width)).softmax(dim=1)
    tops, lefts = _window_starts(height, window_h, stride_h), _window_starts(width, window_w, stride_w)
    total = None
    for top in tops:
        for left in lefts:
            window = pixel_values[..., top : top + window_h, left : left + window_w]
            probs = resize_maps(model(pixel_values=window).logits.float(), (window_h, window_w)).softmax(dim=1)
            if total is None:
                total = probs.new_zeros(probs.shape[:2] + (height, width))
            total[..., top : top + window_h, left : left + window_w] += probs
    rows, cols = total.new_zeros(height), total.new_zeros(width)
    for top in tops:
        rows[top : top + window_h] += 1
    for left in lefts:
        cols[left : left + window_w] += 1
    return total / (rows[:, None] * cols[None, :])


def multiscale_probabilities(
    model: nn.Module,
    pixel_values: torch.FloatTensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window_size: int | Sequence[int] | None = None,
    window_stride: int | Sequence[int] | None = None,
) -> torch.FloatTensor:
    """Class probabilities of any segmenter averaged over input scales (and horizontal flips).

    Each view's logits are resized to the view (SegFormer's come at 1/4), softmaxed, resized back to
    `pixel_values`' size and averaged. With `window_size`, each view (at each scale) is segmented by
    [`sliding_window_probabilities`] with `window_stride`. Returns float32 `(batch_size, num_labels, height,
    width)`. Runs in the model's current mode; call under `torch.no_grad()` and `eval()` for inference.
    """
    if window_stride is not None and window_size is None:
        raise ValueError("`window_stride` needs a `window_size`.")
    size = tuple(pixel_values.shape[-2:])
    views = [pixel_values, pixel_values.flip(-1)] if flip else [pixel_values]
    total = None
    for scale in scales:
        scaled_size = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
        for flipped, view in enumerate(views):
            probs = sliding_window_probabilities(
                model, resize_maps(view, scaled_size), window_size or scaled_size, window_stride
            )
            probs = resize_maps(probs, size)
            probs = probs.flip(-1) if flipped else probs
            total = probs if total is None else total + probs
    num_views = len(scales) * len(views)
    return total / num_views if num_views > 1 else total


def _use_local_backbone_config(segmenter_config: PreTrainedConfig) -> None:
    """Rebuild a nested EfficientNet-Lite backbone config with this module's config class.

    Remote code loads the config and the model modules into separate folders, each with its own copy of
    `configuration_efficientnet_lite`; `AutoBackbone` is keyed by config class, so it only knows the copy
    imported next to this file.
    """
    backbone = getattr(segmenter_config, "backbone_config", None)
    is_lite = getattr(backbone, "model_type", None) == EfficientNetLiteConfig.model_type
    if is_lite and type(backbone) is not EfficientNetLiteConfig:
        segmenter_config.backbone_config = EfficientNetLiteConfig.from_dict(backbone.to_dict())


class MaskMatchPreTrainedModel(PreTrainedModel):
    config_class = MaskMatchConfig
    base_model_prefix = "maskmatch"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def _init_weights(self, module: nn.Module) -> None:
        # Every parameter lives in the wrapped segmenter, which knows how to initialise its own modules.
        self.segmenter._init_weights(module)


class MaskMatchForSemanticSegmentation(MaskMatchPreTrainedModel):
    """A semantic segmenter trained with MaskMatch.

    Wraps the transformers model described by `config.segmenter_config` under `self.segmenter`, so its weights
    keep their stock names and can be exported as a stock checkpoint with [`save_segmenter_pretrained`].
    """

    def __init__(self, config: MaskMatchConfig, segmenter: PreTrainedModel | None = None) -> None:
        super().__init__(config)
        _use_local_backbone_config(config.segmenter_config)
        self.segmenter = (
            segmenter
            if segmenter is not None
            else AutoModelForSemanticSegmentation.from_config(config.segmenter_config)
        )
        self.post_init()

    def forward(
        self,
        pixel_values: torch.FloatTensor,
        labels: torch.LongTensor | None = None,
        feature_perturbation: bool = False,
        **kwargs: Any,
    ) -> SemanticSegmenterOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
            Images normalized with `config.image_mean` / `config.image_std`.
        labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
            Class indices in `[0, num_labels)`, or `config.ignore_index` for void pixels.
        feature_perturbation (`bool`, defaults to `False`):
            Decode the encoder features after channel dropout `config.fp_dropout` instead of the clean ones
            (UniMatch's feature perturbation). SegFormer and UperNet segmenters only.

        Returns: `logits` `(batch_size, num_labels, height, width)` at the resolution of `pixel_values`, and the
        pixel cross-entropy `loss` when `labels` are given.
        """
        if feature_perturbation:
            features = self.encoder_features(pixel_values)
            perturbed = [nn.functional.dropout2d(f, self.config.fp_dropout, training=True) for f in features]
            logits = self.segmenter.decode_head(perturbed)
        else:
            logits = self.segmenter(pixel_values=pixel_values).logits
        logits = resize_maps(logits, pixel_values.shape[-2:])

        loss = None
        if labels is not None:
            if labels.shape != logits.shape[:1] + logits.shape[2:]:
                raise ValueError(
                    f"`labels` must have shape {tuple(logits.shape[:1] + logits.shape[2:])} to match "
                    f"`pixel_values`, got {tuple(labels.shape)}."
                )
            loss = nn.functional.cross_entropy(logits.float(), labels, ignore_index=self.config.ignore_index)
        return SemanticSegmenterOutput(loss=loss, logits=logits)

    def encoder_features(self, pixel_values: torch.FloatTensor) -> tuple[torch.Tensor, ...]:
        """The multi-level encoder features the decode head consumes, each `(batch_size, channels, h, w)`."""
        if isinstance(self.segmenter, SegformerForSemanticSegmentation):
            return self.segmenter.segformer(pixel_values, output_hidden_states=True).hidden_states
        if isinstance(self.segmenter, UperNetForSemanticSegmentation):
            return self.segmenter.backbone(pixel_values).feature_maps
        raise ValueError(
            f"Feature perturbation needs a SegFormer or UperNet segmenter, got {type(self.segmenter).__name__}."
        )

    def ensemble_probabilities(
        self,
        pixel_values: torch.FloatTensor,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        window_size: int | Sequence[int] | None = None,
        window_stride: int | Sequence[int] | None = None,
    ) -> torch.FloatTensor:
        """Class probabilities averaged over input scales (and horizontal flips), optionally from sliding windows;
        see [`multiscale_probabilities`]."""
        return multiscale_probabilities(self, pixel_values, scales, flip, window_size, window_stride)

    @classmethod
    def from_segmenter_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        config_kwargs: dict[str, Any] | None = None,
        **from_pretrained_kwargs: Any,
    ) -> MaskMatchForSemanticSegmentation:
        """Wrap a stock SegFormer / UperNet checkpoint (local dir or Hub id), keeping its weights.

        `from_pretrained_kwargs` go to `AutoModelForSemanticSegmentation.from_pretrained` (e.g. `id2label`,
        `ignore_mismatched_sizes=True` to replace the classifier for a new label set); `config_kwargs` set
        MaskMatch hyperparameters.
        """
        segmenter = AutoModelForSemanticSegmentation.from_pretrained(
            pretrained_model_name_or_path, **from_pretrained_kwargs
        )
        config = MaskMatchConfig(segmenter_config=segmenter.config, **(config_kwargs or {}))
        return cls(config, segmenter=segmenter)

    def save_segmenter_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Export the wrapped segmenter as a stock transformers checkpoint (no MaskMatch code needed to load)."""
        self.segmenter.config.id2label = dict(self.config.id2label)
        self.segmenter.config.label2id = dict(self.config.label2id)
        self.segmenter.save_pretrained(save_directory, **kwargs)


AutoModelForSemanticSegmentation.register(MaskMatchConfig, MaskMatchForSemanticSegmentation, exist_ok=True)

__all__ = [
    "MaskMatchForSemanticSegmentation",
    "MaskMatchPreTrainedModel",
    "multiscale_probabilities",
    "resize_maps",
    "sliding_window_probabilities",
]
