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


def multiscale_probabilities(
    model: nn.Module, pixel_values: torch.FloatTensor, scales: Sequence[float] = (1.0,), flip: bool = False
) -> torch.FloatTensor:
    """Class probabilities of any segmenter averaged over input scales (and horizontal flips).

    Each view's logits are resized to the view (SegFormer's come at 1/4), softmaxed, resized back to
    `pixel_values`' size and averaged. Returns float32 `(batch_size, num_labels, height, width)`. Runs in the
    model's current mode; call under `torch.no_grad()` and `eval()` for inference.
    """
    size = tuple(pixel_values.shape[-2:])
    views = [pixel_values, pixel_values.flip(-1)] if flip else [pixel_values]
    total = None
    for scale in scales:
        scaled_size = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
        for flipped, view in enumerate(views):
            logits = model(pixel_values=resize_maps(view, scaled_size)).logits.float()
            probs = resize_maps(resize_maps(logits, scaled_size).softmax(dim=1), size)
            probs = probs.flip(-1) if flipped else probs
            total = probs if total is None else total + probs
    return total / (len(scales) * len(views))


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
        self, pixel_values: torch.FloatTensor, scales: Sequence[float] = (1.0,), flip: bool = False
    ) -> torch.FloatTensor:
        """Class probabilities averaged over input scales (and horizontal flips); see [`multiscale_probabilities`]."""
        return multiscale_probabilities(self, pixel_values, scales, flip)

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
]
