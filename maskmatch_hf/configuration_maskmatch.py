"""MaskMatch configuration: the wrapped segmenter's config plus every MaskMatch hyperparameter.

This file ships inside checkpoints as remote code, so it imports only transformers and its siblings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig, UperNetConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_efficientnet_lite import EfficientNetLiteConfig  # noqa: F401  (registers the backbone config)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TEACHERS = ("shared", "ema")
CLASS_THRESHOLDS = ("fixed", "adaptive")


@dataclass(frozen=True)
class PresetComponents:
    """Which parts of the training objective a preset switches on."""

    unlabeled: bool
    strong_views: int
    feature_perturbation: bool
    masked_modeling: bool
    multiscale_teacher: bool


PRESETS: dict[str, PresetComponents] = {
    "supervised": PresetComponents(False, 0, False, False, False),
    "fixmatch": PresetComponents(True, 1, False, False, False),
    "unimatch": PresetComponents(True, 2, True, False, False),
    "maskmatch": PresetComponents(True, 1, False, True, True),
    "unimatch+maskmatch": PresetComponents(True, 2, True, True, True),
}


@strict(accept_kwargs=True)
class MaskMatchConfig(PreTrainedConfig):
    r"""
    Configuration of [`MaskMatchForSemanticSegmentation`]: a nested segmenter config (SegFormer, UperNet with
    any backbone, or any semantic-segmentation config `AutoConfig` knows) plus the MaskMatch training
    hyperparameters, so that every checkpoint records the recipe that produced it.

    Args:
        segmenter_config (`PreTrainedConfig` or `dict`, *optional*):
            Config of the wrapped segmenter. Defaults to a SegFormer-B0 config.
        ignore_index (`int`, defaults to 255):
            Label value ignored by every loss and metric (void).
        image_mean, image_std (`list[float]`):
            Normalization of `pixel_values`; the masked view hides patches by setting them to 0 in this space.
        preset (`str`, defaults to `"maskmatch"`):
            One of `supervised`, `fixmatch`, `unimatch`, `maskmatch`, `unimatch+maskmatch` (see `PRESETS`).
        mask_ratio (`float`, defaults to 0.7):
            Fraction of `mask_patch_size` patches hidden in the masked view, in `[0, 1)`.
        mask_patch_size (`int`, defaults to 16):
            Side in pixels of a masking patch. 16 measured +1.2 and +1.4 val mIoU over 32 on CamVid 1/8 at a 160 px
            crop (2500 and 6400 steps, the README's Results); scale it with the crop.
        mask_batch_fraction (`float`, defaults to 1.0):
            Fraction of the unlabeled batch whose masked view the student trains on, in `(0, 1]`: the first
            `ceil(mask_batch_fraction * B_u)` images of each batch, and never fewer than `minimum_pass_batch_size`
            (2 with UperNet, whose BatchNorm needs two) up to the whole batch. 1.0, a masked view of every unlabeled
            image, is the method as described. The masked pass costs as much as any other student pass: 0.5 halves
            it (maskmatch / fixmatch 1.29x a step instead of 1.43x, `bench/step_cost.py`), but at the 6400-step
            schedule, like for like, it ended 1.4 val mIoU lower on CamVid 1/8 (60.81 vs 62.19, the README's Results).
        ensemble_scales (`list[float]`, defaults to `[1.0]`):
            Input scales whose softmaxes the teacher averages (multi-scale presets only), e.g. `[0.75, 1.0, 1.25]`.
            The default is the single-scale teacher: on CamVid the 3-scale ensemble costs 3.3-3.5x its passes for no
            more accurate pseudo-labels and fewer confident ones (`bench/teacher_ensemble.py`), and it did not
            raise val mIoU in 2500-step runs.
        ensemble_flip (`bool`, defaults to `False`):
            Also average horizontally flipped predictions in the teacher ensemble.
        confidence_threshold (`float`, defaults to 0.95):
            Pseudo-labels count only where the teacher's max probability reaches this value.
        class_thresholds (`str`, defaults to `"fixed"`):
            `fixed`: every class uses `confidence_threshold`. `adaptive`: class `c` uses
            `confidence_threshold * m_c / max_k m_k`, where `m_c` is the running mean confidence of the
            teacher's pixels predicted as `c` (FreeMatch-style self-adaptive class thresholds), so classes the
            teacher is still unsure of get pseudo-labels before their confidence reaches the global threshold.
        class_threshold_momentum (`float`, defaults to 0.99):
            Momentum of the running per-class confidence `m_c` (one update per step).
        logit_adjustment (`float`, defaults to 0.0):
            `tau` of the pseudo-labels' logit adjustment: the teacher's log-probabilities are shifted by
            `-tau * log(pi)`, `pi` the class frequencies of the labeled pixels seen so far, before the argmax and the
            confidence. A teacher trained on imbalanced labels absorbs the pixels of rare classes into frequent
            ones (on CamVid 1/8 it recalls a quarter of the fence pixels of unlabeled frames); `tau = 1` is the
            balanced classifier of post-hoc logit adjustment (Menon et al., 2021). 0 turns it off.
        logit_adjusted_loss (`float`, defaults to 0.5):
            `tau` of the logit-adjusted labeled loss (Menon et al., 2021), in every preset: `L_x` sees
            `logits + tau * log(pi)`, `pi` the labeled pixels' class frequencies, so the model's own logits learn
            the class-balanced posterior. The teacher's pseudo-labels, its argmax, are then balanced, and the
            unlabeled terms train on them with the plain cross-entropy, which favours no class: nothing is shifted
            again at every step, unlike `logit_adjustment`. 0.5 measured on CamVid 1/8 (the README's Results); 0
            turns it off.
        logit_adjusted_unlabeled_loss (`bool`, defaults to `False`):
            Puts the pseudo-labels and the unlabeled terms in the frame of the logit-adjusted loss: under it the
            model's `logits + tau * log(pi)` (`tau` = `logit_adjusted_loss`, which must be on) are the class
            posterior, so the teacher's argmax and confidence are taken from them, and every unlabeled term sees the
            same adjusted logits, as `L_x` does. The model's own logits stay the balanced classifier used at
            inference. Off, pseudo-labels come from the balanced logits themselves, which favour rare classes: more
            of their pixels pass the threshold, at lower precision (`bench/pseudo_label_balance.py --taus -0.5 0`
            scores both: `tau -0.5` is this frame). Trained on CamVid 1/8 (one seed) it ended 1 mIoU below the
            default: the rare classes got half as many confident pseudo-labels.
        distribution_alignment (`float`, defaults to 0.0):
            `tau` of distribution alignment (ReMixMatch, Berthelot et al., 2020): the teacher's probabilities are
            multiplied by `(pi / p_bar) ** tau` and renormalized before the argmax and the confidence, `pi` the
            labeled pixels' class frequencies and `p_bar` the running mean of the teacher's class probabilities on
            real unlabeled pixels (momentum `distribution_alignment_momentum`). Unlike logit adjustment it fades as
            the teacher's own class distribution approaches the labeled one, so pseudo-labels cannot drift towards
            rare classes. 0 turns it off; 1 is ReMixMatch's.
        distribution_alignment_momentum (`float`, defaults to 0.99):
            Momentum of `p_bar` (one update per step, bias-corrected as Adam's moments).
        confident_share_cap (`float`, defaults to 1.0):
            A guard against one class's pseudo-labels drifting (confirmation bias): in each teacher batch, the
            confident pixels pseudo-labeled as class `c` are at most `confident_share_cap * pi_c` of its real pixels,
            `pi` the labeled pixels' class frequencies; past that, only the most confident ones count. On CamVid 1/8
            (6400 steps) the precision of the confident `fence` pseudo-labels fell to 0.47 without it; with 1.0
            it ended at 0.785 on the same seed, and val mIoU rose on both seeds run (61.07 vs 58.81, 62.19 vs
            62.05; README Results). 0 turns it off.
        unlabeled_rampup_steps (`int`, defaults to 0):
            The unlabeled loss weights (`lambda_s`, `lambda_mask`, `lambda_fp`) ramp linearly from 0 at step 0 to
            their full value at this step, while the teacher is still poor. 0 means full weight from the start.
        lambda_s, lambda_mask, lambda_fp (`float`):
            Weights of the strong-view, masked-view and feature-perturbation losses.
        fp_dropout (`float`, defaults to 0.5):
            Channel dropout applied to encoder features for the feature-perturbation loss.
        teacher (`str`, defaults to `"shared"`):
            `shared` (the student itself, eval mode, no grad) or `ema` (an exponential moving average copy).
        ema_momentum (`float`, defaults to 0.999):
            Final momentum of the EMA teacher; at step `t` the momentum is `min(1 - 1 / (t + 1), ema_momentum)`
            (UniMatch V2), so the teacher follows the student closely at first.
        cutmix_prob, color_jitter_prob, grayscale_prob, blur_prob (`float`):
            Per-image probabilities of the strong augmentations.
        color_jitter (`list[float]`, defaults to `[0.5, 0.5, 0.5, 0.25]`):
            Brightness, contrast, saturation and hue jitter strengths.
        blur_sigma (`list[float]`, defaults to `[0.1, 2.0]`):
            Range of the Gaussian blur's standard deviation, in pixels.
        unlabeled_updates_bn_stats (`bool`, defaults to `False`):
            Whether student passes on strong and masked views update BatchNorm running statistics. They are
            far from natural images, and the running statistics are part of the eval-mode teacher, so by default
            only labeled passes update them (see DESIGN.md, measured so far).
    """

    model_type = "maskmatch"
    sub_configs_defaults = {"segmenter_config": SubConfigSpec(config_class=AutoConfig, model_type="segformer")}

    segmenter_config: dict | PreTrainedConfig | None = None
    ignore_index: int = 255
    image_mean: list[float] | tuple[float, ...] = IMAGENET_MEAN
    image_std: list[float] | tuple[float, ...] = IMAGENET_STD
    preset: str = "maskmatch"
    mask_ratio: float | int = 0.7
    mask_patch_size: int = 16
    mask_batch_fraction: float | int = 1.0
    ensemble_scales: list[float | int] | tuple[float | int, ...] = (1.0,)
    ensemble_flip: bool = False
    confidence_threshold: float | int = 0.95
    class_thresholds: str = "fixed"
    class_threshold_momentum: float | int = 0.99
    logit_adjustment: float | int = 0.0
    logit_adjusted_loss: float | int = 0.5
    logit_adjusted_unlabeled_loss: bool = False
    distribution_alignment: float | int = 0.0
    distribution_alignment_momentum: float | int = 0.99
    confident_share_cap: float | int = 1.0
    unlabeled_rampup_steps: int = 0
    lambda_s: float | int = 1.0
    lambda_mask: float | int = 0.5
    lambda_fp: float | int = 0.5
    fp_dropout: float | int = 0.5
    teacher: str = "shared"
    ema_momentum: float | int = 0.999
    cutmix_prob: float | int = 0.5
    color_jitter_prob: float | int = 0.8
    color_jitter: list[float | int] | tuple[float | int, ...] = (0.5, 0.5, 0.5, 0.25)
    grayscale_prob: float | int = 0.2
    blur_prob: float | int = 0.5
    blur_sigma: list[float | int] | tuple[float | int, ...] = (0.1, 2.0)
    unlabeled_updates_bn_stats: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        labels_given = self.id2label is not None or kwargs.get("num_labels") is not None
        if isinstance(self.segmenter_config, PreTrainedConfig):
            # Own a copy: the labels are synchronised below and must not leak into the caller's config.
            self.segmenter_config = self.segmenter_config.__class__.from_dict(self.segmenter_config.to_dict())
        super().__post_init__(**kwargs)
        for name in ("image_mean", "image_std", "ensemble_scales", "color_jitter", "blur_sigma"):
            setattr(self, name, [float(v) for v in getattr(self, name)])
        source = self if labels_given else self.segmenter_config
        id2label = {int(i): name for i, name in source.id2label.items()}
        for config in (self, self.segmenter_config):
            config.id2label = dict(id2label)
            config.label2id = {name: i for i, name in id2label.items()}
        self.check_hyperparameters()

    def check_hyperparameters(self) -> None:
        """Raise a `ValueError` naming the field if a value is one the objective cannot use.

        Runs at construction and again when an objective is built, so later edits are caught too.
        """
        if self.preset not in PRESETS:
            raise ValueError(f"`preset` must be one of {sorted(PRESETS)}, got {self.preset!r}.")
        if self.teacher not in TEACHERS:
            raise ValueError(f"`teacher` must be one of {list(TEACHERS)}, got {self.teacher!r}.")
        if self.class_thresholds not in CLASS_THRESHOLDS:
            raise ValueError(
                f"`class_thresholds` must be one of {list(CLASS_THRESHOLDS)}, got {self.class_thresholds!r}."
            )
        if not 0.0 <= self.class_threshold_momentum < 1.0:
            raise ValueError(f"`class_threshold_momentum` must be in [0, 1), got {self.class_threshold_momentum}.")
        for name in ("logit_adjustment", "logit_adjusted_loss", "distribution_alignment", "confident_share_cap"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"`{name}` must be non-negative, got {getattr(self, name)}.")
        if self.logit_adjusted_unlabeled_loss and not self.logit_adjusted_loss:
            raise ValueError(
                "`logit_adjusted_unlabeled_loss` needs the logit-adjusted loss: set `logit_adjusted_loss`."
            )
        if not 0.0 <= self.distribution_alignment_momentum < 1.0:
            raise ValueError(
                f"`distribution_alignment_momentum` must be in [0, 1), got {self.distribution_alignment_momentum}."
            )
        if self.unlabeled_rampup_steps < 0:
            raise ValueError(f"`unlabeled_rampup_steps` must be non-negative, got {self.unlabeled_rampup_steps}.")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"`mask_ratio` must be in [0, 1), got {self.mask_ratio}.")
        if self.mask_patch_size <= 0:
            raise ValueError(f"`mask_patch_size` must be positive, got {self.mask_patch_size}.")
        if not 0.0 < self.mask_batch_fraction <= 1.0:
            raise ValueError(f"`mask_batch_fraction` must be in (0, 1], got {self.mask_batch_fraction}.")
        if not self.ensemble_scales or any(scale <= 0 for scale in self.ensemble_scales):
            raise ValueError(f"`ensemble_scales` must be non-empty and positive, got {self.ensemble_scales}.")
        if not 0.0 <= self.confidence_threshold <= 1.0:
            raise ValueError(f"`confidence_threshold` must be in [0, 1], got {self.confidence_threshold}.")
        if not 0.0 <= self.ema_momentum <= 1.0:
            raise ValueError(f"`ema_momentum` must be in [0, 1], got {self.ema_momentum}.")
        for name in ("cutmix_prob", "color_jitter_prob", "grayscale_prob", "blur_prob", "fp_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"`{name}` must be a probability in [0, 1], got {getattr(self, name)}.")
        for name in ("lambda_s", "lambda_mask", "lambda_fp"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be non-negative, got {getattr(self, name)}.")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError("`image_mean` and `image_std` must hold 3 values each, with a positive std.")
        if len(self.color_jitter) != 4 or min(self.color_jitter) < 0:
            raise ValueError(f"`color_jitter` must hold 4 non-negative strengths, got {self.color_jitter}.")
        if len(self.blur_sigma) != 2 or not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"`blur_sigma` must be a range (min, max) with 0 < min <= max, got {self.blur_sigma}.")

    @property
    def uses_class_frequencies(self) -> bool:
        """Whether the objective needs the labeled pixels' class frequencies (a prior-based correction is on)."""
        return bool(
            self.logit_adjustment
            or self.logit_adjusted_loss
            or self.distribution_alignment
            or self.confident_share_cap
        )

    @property
    def components(self) -> PresetComponents:
        """The objective's parts switched on by `preset`."""
        return PRESETS[self.preset]

    def unlabeled_weight(self, step: int | None) -> float:
        """Factor on the unlabeled loss weights at `step` (0-based): the linear ramp-up, 1 when `step` is None."""
        if step is None or self.unlabeled_rampup_steps == 0:
            return 1.0
        return min(1.0, step / self.unlabeled_rampup_steps)

    def teacher_momentum(self, step: int | None) -> float:
        """EMA teacher momentum after optimizer step `step` (0-based): `min(1 - 1 / (step + 1), ema_momentum)`."""
        if step is None:
            return self.ema_momentum
        return min(1.0 - 1.0 / (step + 1), self.ema_momentum)

    @property
    def minimum_pass_batch_size(self) -> int:
        """The fewest images one student pass may hold: 2 for UperNet, whose pyramid pooling module normalizes
        1x1 maps with BatchNorm (batch statistics of one value per channel are undefined), else 1."""
        return 2 if isinstance(self.segmenter_config, UperNetConfig) else 1

    def num_masked_images(self, unlabeled_batch_size: int) -> int:
        """How many images of an unlabeled batch get a masked view: `ceil(mask_batch_fraction * B_u)`, and never
        fewer than [`minimum_pass_batch_size`] (up to the whole batch)."""
        wanted = math.ceil(self.mask_batch_fraction * unlabeled_batch_size)
        return max(wanted, min(unlabeled_batch_size, self.minimum_pass_batch_size))

    @property
    def teacher_scales(self) -> list[float]:
        """Scales of the teacher ensemble: `ensemble_scales` for multi-scale presets, else the input scale."""
        return list(self.ensemble_scales) if self.components.multiscale_teacher else [1.0]

    @property
    def teacher_flip(self) -> bool:
        """Whether the teacher ensemble also averages flipped predictions."""
        return self.ensemble_flip and self.components.multiscale_teacher


AutoConfig.register("maskmatch", MaskMatchConfig, exist_ok=True)

__all__ = ["MaskMatchConfig", "PRESETS", "PresetComponents"]
