"""EfficientNet-Lite configuration (a transformers backbone config).

This file ships as remote code inside checkpoints, so it imports only `transformers` and `huggingface_hub`.
"""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin

# Output strides of the feature maps a dense-prediction head (UperNet, FPN) usually wants.
DEFAULT_FEATURE_STRIDES = (4, 8, 16, 32)


@strict
class EfficientNetLiteConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""
    Configuration of an EfficientNet-Lite model (Tan & Le, 2019; the "Lite" edge variants of the TensorFlow
    release). The defaults build EfficientNet-Lite0: ReLU6, no squeeze-excitation, a stem of 32 channels and a
    head of 1280 channels that are not scaled by `width_coefficient`, and TensorFlow "SAME" padding so that
    weights ported from TensorFlow compute exactly what they computed there.

    The stem is stage `"stem"` (stride 2); each of the seven MBConv groups is a stage `"stage1"` ... `"stage7"`
    (Lite0: strides 2, 4, 8, 16, 16, 32, 32; channels 16, 24, 40, 80, 112, 192, 320). Without
    `out_features`/`out_indices`, the backbone returns the last stage at each output stride 4, 8, 16 and 32
    (Lite0: `["stage2", "stage3", "stage5", "stage7"]`, channels 24, 40, 112, 320).

    Args:
        num_channels (`int`, *optional*, defaults to 3):
            Number of input channels.
        stem_channels (`int`, *optional*, defaults to 32):
            Output channels of the stride-2 3x3 stem convolution (not scaled by `width_coefficient`).
        kernel_sizes (`list[int]`, *optional*, defaults to `(3, 3, 5, 3, 5, 5, 3)`):
            Depthwise kernel size of each stage.
        out_channels (`list[int]`, *optional*, defaults to `(16, 24, 40, 80, 112, 192, 320)`):
            Output channels of each stage before scaling by `width_coefficient`.
        strides (`list[int]`, *optional*, defaults to `(1, 2, 2, 2, 1, 2, 1)`):
            Stride of the first block of each stage.
        num_block_repeats (`list[int]`, *optional*, defaults to `(1, 2, 2, 3, 3, 4, 1)`):
            Number of MBConv blocks of each stage before scaling by `depth_coefficient` (the first and last
            stages are never scaled in the Lite variants).
        expand_ratios (`list[int]`, *optional*, defaults to `(1, 6, 6, 6, 6, 6, 6)`):
            Inverted-bottleneck expansion ratio of each stage.
        width_coefficient (`float`, *optional*, defaults to 1.0):
            Channel multiplier of the stages (Lite0/1: 1.0, Lite2: 1.1, Lite3: 1.2, Lite4: 1.4).
        depth_coefficient (`float`, *optional*, defaults to 1.0):
            Block-count multiplier of the stages (Lite0: 1.0, Lite1: 1.1, Lite2: 1.2, Lite3: 1.4, Lite4: 1.8).
        depth_divisor (`int`, *optional*, defaults to 8):
            Scaled channel counts are rounded to a multiple of this.
        hidden_dim (`int`, *optional*, defaults to 1280):
            Channels of the 1x1 head convolution of the image classifier (not scaled).
        hidden_act (`str`, *optional*, defaults to `"relu6"`):
            Activation function (a key of `transformers.activations.ACT2FN`).
        batch_norm_eps (`float`, *optional*, defaults to 1e-3):
            Epsilon of the batch normalization layers (the TensorFlow value the weights were trained with).
        batch_norm_momentum (`float`, *optional*, defaults to 0.1):
            Momentum of the batch normalization layers in the PyTorch convention. The ImageNet weights were
            trained with TensorFlow's 0.99 decay (0.01 here); 0.1 lets the running statistics, which the eval-mode
            teacher normalizes with, follow fine-tuning and measured better on CamVid (README, Results).
        dropout_rate (`float`, *optional*, defaults to 0.2):
            Dropout before the classifier of the image-classification model.
        drop_connect_rate (`float`, *optional*, defaults to 0.2):
            Stochastic-depth rate of the residual blocks, growing linearly from 0 at the first block.
        out_features (`list[str]`, *optional*):
            Stage names whose outputs the backbone returns (see above for the default).
        out_indices (`list[int]`, *optional*):
            Indices into `stage_names` of the stages the backbone returns (alternative to `out_features`).

    Example:

    ```python
    >>> from maskmatch_hf.configuration_efficientnet_lite import EfficientNetLiteConfig
    >>> config = EfficientNetLiteConfig()
    >>> config.out_features
    ['stage2', 'stage3', 'stage5', 'stage7']
    ```
    """

    model_type = "efficientnet_lite"

    num_channels: int = 3
    stem_channels: int = 32
    kernel_sizes: list[int] | tuple[int, ...] = (3, 3, 5, 3, 5, 5, 3)
    out_channels: list[int] | tuple[int, ...] = (16, 24, 40, 80, 112, 192, 320)
    strides: list[int] | tuple[int, ...] = (1, 2, 2, 2, 1, 2, 1)
    num_block_repeats: list[int] | tuple[int, ...] = (1, 2, 2, 3, 3, 4, 1)
    expand_ratios: list[int] | tuple[int, ...] = (1, 6, 6, 6, 6, 6, 6)
    width_coefficient: float | int = 1.0
    depth_coefficient: float | int = 1.0
    depth_divisor: int = 8
    hidden_dim: int = 1280
    hidden_act: str = "relu6"
    batch_norm_eps: float | int = 1e-3
    batch_norm_momentum: float | int = 0.1
    dropout_rate: float | int = 0.2
    drop_connect_rate: float | int = 0.2

    def __post_init__(self, **kwargs):
        for name in ("kernel_sizes", "out_channels", "strides", "num_block_repeats", "expand_ratios"):
            setattr(self, name, list(getattr(self, name)))
        kwargs.pop("stage_names", None)  # derived from the stage lists, never taken from a saved config
        self.stage_names = ["stem"] + [f"stage{idx}" for idx in range(1, len(self.out_channels) + 1)]
        out_features = kwargs.pop("out_features", None)
        out_indices = kwargs.pop("out_indices", None)
        if out_features is None and out_indices is None:
            out_indices = self._default_out_indices()
        self.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)
        super().__post_init__(**kwargs)

    def validate_stage_lists(self):
        """Check that every per-stage list has one entry per stage."""
        lengths = {
            name: len(getattr(self, name))
            for name in ("kernel_sizes", "out_channels", "strides", "num_block_repeats", "expand_ratios")
        }
        if len(set(lengths.values())) != 1:
            raise ValueError(f"Per-stage lists must all have the same length, got {lengths}")

    @property
    def stage_strides(self) -> list[int]:
        """Output stride of every entry of `stage_names` (the stem has stride 2)."""
        strides = [2]
        for stride in self.strides:
            strides.append(strides[-1] * stride)
        return strides

    def _default_out_indices(self) -> list[int]:
        """Indices of the last stage at each of `DEFAULT_FEATURE_STRIDES` that the stage strides reach."""
        strides = self.stage_strides
        return [
            max(idx for idx, stage_stride in enumerate(strides) if stage_stride == target)
            for target in DEFAULT_FEATURE_STRIDES
            if target in strides
        ]


AutoConfig.register("efficientnet_lite", EfficientNetLiteConfig, exist_ok=True)

__all__ = ["EfficientNetLiteConfig"]
