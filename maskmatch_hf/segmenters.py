"""Build the model a training run starts from: a MaskMatch checkpoint, a stock segmenter, or a fresh config."""

from __future__ import annotations

import itertools
import logging
import re
from pathlib import Path
from typing import Any

from transformers import AutoConfig, PreTrainedConfig, ResNetConfig, SegformerConfig, UperNetConfig

from .configuration_efficientnet_lite import EfficientNetLiteConfig
from .configuration_maskmatch import MaskMatchConfig
from .errors import MaskMatchUsageError, check_local_or_hub
from .modeling_maskmatch import MaskMatchForSemanticSegmentation

logger = logging.getLogger(__name__)

# Mix Transformer encoder sizes of the SegFormer paper (decoder width 256 for b0/b1, 768 above).
SEGFORMER_VARIANTS: dict[str, dict[str, Any]] = {
    "b0": {"hidden_sizes": [32, 64, 160, 256], "depths": [2, 2, 2, 2], "decoder_hidden_size": 256},
    "b1": {"hidden_sizes": [64, 128, 320, 512], "depths": [2, 2, 2, 2], "decoder_hidden_size": 256},
    "b2": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 4, 6, 3], "decoder_hidden_size": 768},
}
BACKBONES = ("efficientnet-lite0", "resnet18", "resnet50")


def backbone_config(name: str, **overrides: Any) -> PreTrainedConfig:
    """Config of an UperNet backbone with feature maps at strides 4, 8, 16 and 32."""
    if name == "efficientnet-lite0":
        return EfficientNetLiteConfig(**overrides)
    if name in ("resnet18", "resnet50"):
        layout = {
            "resnet18": {"layer_type": "basic", "depths": [2, 2, 2, 2], "hidden_sizes": [64, 128, 256, 512]},
            "resnet50": {"layer_type": "bottleneck", "depths": [3, 4, 6, 3], "hidden_sizes": [256, 512, 1024, 2048]},
        }[name]
        return ResNetConfig(**{**layout, "out_features": ["stage1", "stage2", "stage3", "stage4"], **overrides})
    raise ValueError(f"`backbone` must be one of {list(BACKBONES)}, got {name!r}.")


def new_segmenter_config(
    segmenter: str,
    variant: str = "b0",
    backbone: str = "efficientnet-lite0",
    hidden_size: int = 256,
    overrides: dict[str, Any] | None = None,
) -> PreTrainedConfig:
    """A fresh SegFormer (`variant` b0-b2) or UperNet (`backbone`, decoder width `hidden_size`) config.

    `overrides` set any field of the segmenter config; for UperNet a nested `backbone_config` dict overrides
    backbone fields (e.g. a tiny width for tests).
    """
    overrides = dict(overrides or {})
    if segmenter == "segformer":
        if variant not in SEGFORMER_VARIANTS:
            raise ValueError(f"`segmenter_variant` must be one of {list(SEGFORMER_VARIANTS)}, got {variant!r}.")
        return SegformerConfig(**{**SEGFORMER_VARIANTS[variant], **overrides})
    if segmenter == "upernet":
        backbone_overrides = overrides.pop("backbone_config", {})
        return UperNetConfig(
            backbone_config=backbone_config(backbone, **backbone_overrides),
            **{"hidden_size": hidden_size, "use_auxiliary_head": False, **overrides},
        )
    raise ValueError(f"`segmenter` must be 'segformer' or 'upernet', got {segmenter!r}.")


def load_pretrained_config(model_name_or_path: str) -> PreTrainedConfig:
    """The config of the checkpoint a run starts from; a path or repo that cannot be read is a user error."""
    check_local_or_hub(model_name_or_path, "--model_name_or_path")
    try:
        return AutoConfig.from_pretrained(model_name_or_path)
    except OSError as error:
        where = "" if Path(model_name_or_path).exists() else "no such local path, and as a Hub repo id: "
        raise MaskMatchUsageError(f"--model_name_or_path {model_name_or_path}: {where}{error}") from error


def pretrained_id2label(model_name_or_path: str | None) -> dict[int, str] | None:
    """The class names of a checkpoint, or None without one (or with transformers' placeholders `LABEL_<i>`)."""
    if not model_name_or_path:
        return None
    id2label = {int(i): name for i, name in load_pretrained_config(model_name_or_path).id2label.items()}
    if all(re.fullmatch(r"LABEL_\d+", name) for name in id2label.values()):
        return None
    return id2label


def minimum_input_side(segmenter_config: PreTrainedConfig) -> int:
    """The smallest image side, in pixels, the segmenter accepts.

    SegFormer's spatial-reduction convolutions (kernel `sr_ratio`) need at least `sr_ratio` pixels at their stage;
    the other segmenters take any size.
    """
    if not isinstance(segmenter_config, SegformerConfig):
        return 1

    def fits(side: int) -> bool:
        for patch_size, stride, sr_ratio in zip(
            segmenter_config.patch_sizes, segmenter_config.strides, segmenter_config.sr_ratios
        ):
            side = (side + 2 * (patch_size // 2) - patch_size) // stride + 1  # overlapping patch embedding
            if side < sr_ratio:
                return False
        return True

    return next(side for side in itertools.count(1) if fits(side))


def load_model_for_training(
    model_name_or_path: str | None,
    id2label: dict[int, str],
    maskmatch_kwargs: dict[str, Any],
    segmenter: str = "segformer",
    segmenter_variant: str = "b0",
    backbone: str = "efficientnet-lite0",
    upernet_hidden_size: int = 256,
    segmenter_overrides: dict[str, Any] | None = None,
    pretrained_backbone: bool = False,
) -> MaskMatchForSemanticSegmentation:
    """The model a run starts from, with the dataset's labels and the run's MaskMatch hyperparameters.

    `model_name_or_path` may be a MaskMatch checkpoint (hyperparameters given in `maskmatch_kwargs` override
    its own) or a stock SegFormer / UperNet checkpoint, which is wrapped; a classifier of another size is
    re-initialised. Without it, a fresh segmenter is built, optionally on the ImageNet EfficientNet-Lite0
    backbone (`pretrained_backbone`).
    """
    label_kwargs = {"id2label": id2label, "label2id": {name: i for i, name in id2label.items()}}
    if model_name_or_path:
        config = load_pretrained_config(model_name_or_path)
        if isinstance(config, MaskMatchConfig):
            # A new config (not from_pretrained kwargs, which are set after construction) so that the labels
            # reach the nested segmenter config and the hyperparameters are validated.
            config = MaskMatchConfig.from_dict({**config.to_dict(), **label_kwargs, **maskmatch_kwargs})
            return MaskMatchForSemanticSegmentation.from_pretrained(
                model_name_or_path, config=config, ignore_mismatched_sizes=True
            )
        return MaskMatchForSemanticSegmentation.from_segmenter_pretrained(
            model_name_or_path, config_kwargs=maskmatch_kwargs, ignore_mismatched_sizes=True, **label_kwargs
        )
    if pretrained_backbone and (segmenter != "upernet" or backbone != "efficientnet-lite0"):
        raise ValueError("`pretrained_backbone` is available for `--segmenter upernet --backbone efficientnet-lite0`.")
    segmenter_config = new_segmenter_config(
        segmenter, segmenter_variant, backbone, upernet_hidden_size, segmenter_overrides
    )
    model = MaskMatchForSemanticSegmentation(
        MaskMatchConfig(segmenter_config=segmenter_config, **label_kwargs, **maskmatch_kwargs)
    )
    if pretrained_backbone:
        from .convert_efficientnet_lite import load_efficientnet_lite0_weights

        load_efficientnet_lite0_weights(model.segmenter.backbone)
        logger.info("Loaded ImageNet EfficientNet-Lite0 weights into the UperNet backbone.")
    return model
