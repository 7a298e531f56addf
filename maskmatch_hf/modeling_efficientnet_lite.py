"""EfficientNet-Lite in PyTorch, as a transformers backbone and image classifier.

The network mirrors the TensorFlow EfficientNet-Lite release (MBConv blocks without squeeze-excitation, ReLU6,
batch norm with epsilon 1e-3, TensorFlow "SAME" padding) so that its ImageNet weights keep their accuracy.

This file ships as remote code inside checkpoints, so it imports only `torch`, `transformers` and, relatively,
its configuration.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoBackbone, AutoModelForImageClassification, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneMixin, filter_output_hidden_states
from transformers.modeling_outputs import BackboneOutput, ImageClassifierOutputWithNoAttention
from transformers.utils.generic import can_return_tuple

from .configuration_efficientnet_lite import EfficientNetLiteConfig


def round_filters(config: EfficientNetLiteConfig, num_channels: int) -> int:
    """Scale a stage's channel count by `width_coefficient`, rounded to a multiple of `depth_divisor`.

    Rounding never removes more than 10% of the scaled channels (the TensorFlow rule).
    """
    divisor = config.depth_divisor
    scaled = num_channels * config.width_coefficient
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(config: EfficientNetLiteConfig, stage_idx: int) -> int:
    """Number of blocks of stage `stage_idx`: scaled by `depth_coefficient`, except the first and last stage."""
    repeats = config.num_block_repeats[stage_idx]
    if stage_idx in (0, len(config.num_block_repeats) - 1):
        return repeats
    return int(math.ceil(repeats * config.depth_coefficient))


def _cpu_autocast_enabled() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


class EfficientNetLiteSameConv2d(nn.Conv2d):
    """`nn.Conv2d` with TensorFlow "SAME" padding, computed from the input size at every call.

    The output has `ceil(input / stride)` rows and columns; for stride 2 on even sizes the extra padding goes to
    the bottom and right, as in TensorFlow, which is what weights trained there expect.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1
    ) -> None:
        # With stride 1 and an odd kernel "SAME" padding is symmetric, so the convolution pads by itself (no copy).
        static_padding = stride == 1 and kernel_size % 2 == 1
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=(kernel_size - 1) // 2 if static_padding else 0,
            groups=groups,
            bias=False,
        )
        self.static_padding = static_padding

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride)).

        Under CPU autocast, a depthwise convolution that will be differentiated runs in float32: PyTorch's
        bfloat16 depthwise kernels on CPU take longer to differentiate than float32 ones (in channels-last
        training, twice as long as the float32 convolution and its casts; see `bench/step_cost.py`).
        """
        if self.groups > 1 and hidden_state.is_cpu and torch.is_grad_enabled() and _cpu_autocast_enabled():
            with torch.autocast("cpu", enabled=False):
                return self._same_forward(hidden_state.float())
        return self._same_forward(hidden_state)

    def _same_forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        if self.static_padding:
            return super().forward(hidden_state)
        padding = []
        # F.pad takes the last dimension first: (left, right, top, bottom).
        for size, kernel, stride, dilation in zip(
            reversed(hidden_state.shape[-2:]),
            reversed(self.kernel_size),
            reversed(self.stride),
            reversed(self.dilation),
        ):
            out_size = -(-size // stride)
            total = max((out_size - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
            padding += [total // 2, total - total // 2]
        return super().forward(F.pad(hidden_state, padding))


class EfficientNetLiteConvLayer(nn.Module):
    """Convolution (no bias), batch norm and an optional activation."""

    def __init__(
        self,
        config: EfficientNetLiteConfig,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        activation: bool = True,
    ) -> None:
        super().__init__()
        self.convolution = EfficientNetLiteSameConv2d(in_channels, out_channels, kernel_size, stride, groups)
        self.batchnorm = nn.BatchNorm2d(out_channels, eps=config.batch_norm_eps, momentum=config.batch_norm_momentum)
        self.activation = ACT2FN[config.hidden_act] if activation else nn.Identity()

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride))."""
        return self.activation(self.batchnorm(self.convolution(hidden_state)))


class EfficientNetLiteDropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch for a random subset of samples and rescale the rest."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        if not self.training or self.drop_prob == 0.0:
            return hidden_state
        keep_prob = 1.0 - self.drop_prob
        mask = torch.empty(hidden_state.shape[0], 1, 1, 1, dtype=hidden_state.dtype, device=hidden_state.device)
        return hidden_state * mask.bernoulli_(keep_prob) / keep_prob

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


class EfficientNetLiteBlock(nn.Module):
    """MBConv block: 1x1 expansion (skipped when `expand_ratio` is 1), depthwise convolution, linear 1x1 projection,
    and a residual connection with stochastic depth when the input and output shapes agree."""

    def __init__(
        self,
        config: EfficientNetLiteConfig,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        expand_ratio: int,
        drop_prob: float,
    ) -> None:
        super().__init__()
        hidden_channels = in_channels * expand_ratio
        self.expansion = EfficientNetLiteConvLayer(config, in_channels, hidden_channels) if expand_ratio != 1 else None
        self.depthwise = EfficientNetLiteConvLayer(
            config, hidden_channels, hidden_channels, kernel_size, stride, groups=hidden_channels
        )
        self.projection = EfficientNetLiteConvLayer(config, hidden_channels, out_channels, activation=False)
        self.has_residual = stride == 1 and in_channels == out_channels
        self.drop_path = EfficientNetLiteDropPath(drop_prob) if self.has_residual else nn.Identity()

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride))."""
        residual = hidden_state
        if self.expansion is not None:
            hidden_state = self.expansion(hidden_state)
        hidden_state = self.projection(self.depthwise(hidden_state))
        if self.has_residual:
            hidden_state = self.drop_path(hidden_state) + residual
        return hidden_state


class EfficientNetLiteStage(nn.Module):
    """A group of MBConv blocks; only the first one changes stride and channels."""

    def __init__(
        self,
        config: EfficientNetLiteConfig,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        expand_ratio: int,
        drop_probs: list[float],
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EfficientNetLiteBlock(
                config,
                in_channels if idx == 0 else out_channels,
                out_channels,
                kernel_size,
                stride if idx == 0 else 1,
                expand_ratio,
                drop_prob,
            )
            for idx, drop_prob in enumerate(drop_probs)
        )

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride))."""
        for layer in self.layers:
            hidden_state = layer(hidden_state)
        return hidden_state


class EfficientNetLiteEncoder(nn.Module):
    """The stride-2 stem followed by the MBConv stages; returns the output of the stem and of every stage."""

    def __init__(self, config: EfficientNetLiteConfig) -> None:
        super().__init__()
        self.stem = EfficientNetLiteConvLayer(
            config, config.num_channels, config.stem_channels, kernel_size=3, stride=2
        )
        repeats = [round_repeats(config, idx) for idx in range(len(config.out_channels))]
        total_blocks = sum(repeats)
        self.num_features = [config.stem_channels]
        self.stages = nn.ModuleList()
        block_idx = 0
        for stage_idx, num_blocks in enumerate(repeats):
            out_channels = round_filters(config, config.out_channels[stage_idx])
            # The stochastic-depth rate grows linearly with the block index, from 0 at the first block.
            drop_probs = [config.drop_connect_rate * (block_idx + idx) / total_blocks for idx in range(num_blocks)]
            self.stages.append(
                EfficientNetLiteStage(
                    config,
                    self.num_features[-1],
                    out_channels,
                    config.kernel_sizes[stage_idx],
                    config.strides[stage_idx],
                    config.expand_ratios[stage_idx],
                    drop_probs,
                )
            )
            self.num_features.append(out_channels)
            block_idx += num_blocks

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, num_channels, H, W) -> one (B, C_i, H / s_i, W / s_i) map per entry of `config.stage_names`."""
        hidden_state = self.stem(pixel_values)
        hidden_states = (hidden_state,)
        for stage in self.stages:
            hidden_state = stage(hidden_state)
            hidden_states += (hidden_state,)
        return hidden_states


class EfficientNetLitePreTrainedModel(PreTrainedModel):
    """Weight initialization and loading shared by the EfficientNet-Lite models."""

    config: EfficientNetLiteConfig
    base_model_prefix = "efficientnet_lite"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["EfficientNetLiteBlock"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """TensorFlow EfficientNet initialization: He-normal (fan-out) convolutions, uniform(+-1/sqrt(out))
        linear layers; batch norms as in `PreTrainedModel`."""
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            bound = 1.0 / math.sqrt(module.out_features)
            init.uniform_(module.weight, -bound, bound)
            if module.bias is not None:
                init.zeros_(module.bias)
        else:
            super()._init_weights(module)


class EfficientNetLiteBackbone(BackboneMixin, EfficientNetLitePreTrainedModel):
    """EfficientNet-Lite feature extractor for dense prediction heads (UperNet, FPN, ...).

    Returns the feature maps of `config.out_features`; by default the last stage at output strides 4, 8, 16, 32.
    """

    has_attentions = False
    # A classifier checkpoint loads as a backbone: its head is simply not used.
    _keys_to_ignore_on_load_unexpected = [r"^head\.", r"^classifier\."]

    def __init__(self, config: EfficientNetLiteConfig) -> None:
        super().__init__(config)
        self.encoder = EfficientNetLiteEncoder(config)
        self.num_features = self.encoder.num_features
        self.post_init()

    @can_return_tuple
    @filter_output_hidden_states
    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BackboneOutput:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
                Normalized images (for the converted ImageNet weights: ImageNet mean and std).
            output_hidden_states (`bool`, *optional*):
                Also return the outputs of the stem and of every stage.

        Returns:
            `BackboneOutput` whose `feature_maps` holds, per stage of `config.out_features`, a tensor of shape
            `(batch_size, channels, ceil(height / stride), ceil(width / stride))`, with the channels of
            `self.channels`.
        """
        hidden_states = self.encoder(pixel_values)
        feature_maps = tuple(
            hidden_state for stage, hidden_state in zip(self.stage_names, hidden_states) if stage in self.out_features
        )
        return BackboneOutput(feature_maps=feature_maps, hidden_states=hidden_states)


class EfficientNetLiteForImageClassification(EfficientNetLitePreTrainedModel):
    """EfficientNet-Lite with its image-classification head: 1x1 convolution to `config.hidden_dim` channels,
    global average pooling, dropout and a linear classifier (ImageNet: 1000 classes)."""

    def __init__(self, config: EfficientNetLiteConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.encoder = EfficientNetLiteEncoder(config)
        self.head = EfficientNetLiteConvLayer(config, self.encoder.num_features[-1], config.hidden_dim)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.classifier = nn.Linear(config.hidden_dim, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutputWithNoAttention:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
                Normalized images (for the converted ImageNet weights: ImageNet mean and std).
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Class indices in `[0, config.num_labels)`; when given, the classification loss is returned.
            output_hidden_states (`bool`, *optional*):
                Also return the outputs of the stem and of every stage.

        Returns:
            `ImageClassifierOutputWithNoAttention` with `logits` of shape `(batch_size, config.num_labels)`.
        """
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        hidden_states = self.encoder(pixel_values)
        pooled = self.head(hidden_states[-1]).mean(dim=(2, 3))
        logits = self.classifier(self.dropout(pooled))
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        return ImageClassifierOutputWithNoAttention(
            loss=loss, logits=logits, hidden_states=hidden_states if output_hidden_states else None
        )


# Local registration, and `auto_map` entries plus copies of these files in every saved checkpoint so that
# `trust_remote_code=True` loads it without this package.
EfficientNetLiteConfig.register_for_auto_class()
EfficientNetLiteBackbone.register_for_auto_class("AutoBackbone")
EfficientNetLiteForImageClassification.register_for_auto_class("AutoModelForImageClassification")
AutoBackbone.register(EfficientNetLiteConfig, EfficientNetLiteBackbone, exist_ok=True)
AutoModelForImageClassification.register(EfficientNetLiteConfig, EfficientNetLiteForImageClassification, exist_ok=True)

__all__ = [
    "EfficientNetLiteBackbone",
    "EfficientNetLiteForImageClassification",
    "EfficientNetLitePreTrainedModel",
]
