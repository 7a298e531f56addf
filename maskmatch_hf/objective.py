"""The MaskMatch training objective: teacher pseudo-labels, strong / CutMix / masked student views, and losses."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers import UperNetForSemanticSegmentation
from transformers.utils import ModelOutput

from .augment import cutmix, cutmix_box_mask, strong_augment
from .masking import mask_images, random_patch_mask
from .modeling_maskmatch import MaskMatchForSemanticSegmentation


@dataclass
class MaskMatchObjectiveOutput(ModelOutput):
    """
    loss (`torch.FloatTensor` of shape `()`):
        `L_x + w * (lambda_s * L_s + lambda_mask * L_mask + lambda_fp * L_fp)`, over the terms the preset
        enables, `w` the ramp-up factor at this step; differentiable with respect to the student only.
    logs (`dict[str, float]`):
        Each active loss term (`loss_x`, `loss_s`, `loss_mask`, `loss_fp`), `loss`, and for semi-supervised
        presets `unlabeled_weight`, `confident_ratio`, `confident_ratio/<label>` (share of pixels confidently
        pseudo-labeled as each class), `threshold/<label>` (adaptive thresholds), and, when the unlabeled labels
        are passed, `pseudo_label_accuracy`, `confident_pseudo_label_accuracy` and `confident_wrong_ratio/<label>`
        (share of pixels confidently and wrongly pseudo-labeled as each class).
    """

    loss: torch.FloatTensor | None = None
    logs: dict[str, float] | None = None


@dataclass
class PseudoLabels:
    """The teacher's targets for a batch of weak views: `labels` `(B, H, W)` (void on padding) and `confident`
    (False on padding)."""

    labels: torch.LongTensor
    confident: torch.BoolTensor


def pixel_cross_entropy(
    logits: torch.Tensor, target: torch.LongTensor, ignore_index: int, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy summed over `weight`ed pixels and divided by the number of non-void pixels.

    With `weight` = confident-pixel mask this is UniMatch's unlabeled loss: unconfident pixels add nothing but
    still count in the denominator. `logits` `(B, C, H, W)`, `target` `(B, H, W)`.
    """
    valid = target != ignore_index
    per_pixel = nn.functional.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="none")
    weight = valid if weight is None else valid & weight
    return (per_pixel * weight).sum() / valid.sum().clamp_min(1)


@contextmanager
def frozen_batchnorm_statistics(module: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Normalize with batch statistics but leave BatchNorm running statistics (the eval-mode teacher) untouched."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    norms = norms if enabled else []
    for norm in norms:
        norm.track_running_stats = False
    try:
        yield
    finally:
        for norm in norms:
            norm.track_running_stats = True


def prefers_channels_last(model: MaskMatchForSemanticSegmentation) -> bool:
    """Whether `model` trains faster in channels-last memory format: convolutional segmenters (UperNet).

    Measured with `bench/step_cost.py` (UperNet-128 on EfficientNet-Lite0, CPU, one thread): a training step is
    6-9% faster in float32; SegFormer, mostly attention and reshapes, keeps the default format.
    """
    return isinstance(model.segmenter, UperNetForSemanticSegmentation)


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes when training is distributed (a no-op on one process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor


class MaskMatchObjective(nn.Module):
    """Holds the student and its teacher and computes one semi-supervised training step's loss.

    The teacher is the student itself in eval mode without grad (`config.teacher="shared"`) or an EMA copy
    (`"ema"`, call [`update_teacher`] after each optimizer step). Wrap this module, not the student, with
    `accelerate.prepare` so each step is a single DDP forward.

    Each kind of student input is its own BatchNorm batch (labeled crops, strong/CutMix views, masked views,
    weak views for feature perturbation), so no kind changes another's normalization, and only the labeled pass
    updates the running statistics the eval-mode teacher uses (all passes do with
    `config.unlabeled_updates_bn_stats`).

    With `config.class_thresholds="adaptive"` the objective keeps the running per-class confidence
    `class_confidence` as a buffer; with a prior-based correction (`config.uses_class_frequencies`) the count of
    labeled pixels per class `labeled_class_pixels`, and with distribution alignment the running mean of the
    teacher's class probabilities `teacher_class_mass`. All are saved and restored with the training state.

    `channels_last` (default: [`prefers_channels_last`], i.e. for UperNet segmenters) puts the student's (and EMA
    teacher's) weights in channels-last memory format, which convolutions then follow: the same values and
    results, a faster layout. Saved checkpoints are unaffected.
    """

    def __init__(self, student: MaskMatchForSemanticSegmentation, channels_last: bool | None = None) -> None:
        super().__init__()
        student.config.check_hyperparameters()
        self.channels_last = prefers_channels_last(student) if channels_last is None else channels_last
        if self.channels_last:
            student.to(memory_format=torch.channels_last)
        self.student = student
        self.ema_teacher = None
        if student.config.teacher == "ema":
            self.ema_teacher = copy.deepcopy(student).requires_grad_(False).eval()
        num_labels = student.config.num_labels
        self.register_buffer("class_confidence", torch.full((num_labels,), student.config.confidence_threshold))
        self.register_buffer("labeled_class_pixels", torch.zeros(num_labels))
        # Decayed sums of the teacher's per-class mean probability (first entries) and of their weights (last).
        self.register_buffer("teacher_class_mass", torch.zeros(num_labels + 1))

    @property
    def config(self):
        return self.student.config

    @property
    def teacher(self) -> MaskMatchForSemanticSegmentation:
        return self.ema_teacher if self.ema_teacher is not None else self.student

    def train(self, mode: bool = True) -> MaskMatchObjective:
        super().train(mode)
        if self.ema_teacher is not None:
            self.ema_teacher.eval()
        return self

    @torch.no_grad()
    def update_teacher(self, step: int | None = None) -> None:
        """EMA step `teacher = m * teacher + (1 - m) * student` after optimizer step `step` (0-based), with
        `m = config.teacher_momentum(step)`, for parameters and float buffers (BatchNorm statistics); integer
        buffers are copied. Does nothing for the shared teacher."""
        if self.ema_teacher is None:
            return
        momentum = self.config.teacher_momentum(step)
        for teacher_tensor, student_tensor in zip(
            [*self.ema_teacher.parameters(), *self.ema_teacher.buffers()],
            [*self.student.parameters(), *self.student.buffers()],
        ):
            if teacher_tensor.is_floating_point():
                teacher_tensor.lerp_(student_tensor.detach(), 1.0 - momentum)
            else:
                teacher_tensor.copy_(student_tensor)

    @torch.no_grad()
    def teacher_probabilities(self, pixel_values: torch.FloatTensor) -> torch.FloatTensor:
        """The teacher's class probabilities `(B, C, H, W)`, ensembled over `config.teacher_scales` (and flips)."""
        teacher = self.teacher
        was_training = teacher.training
        teacher.eval()
        try:
            return teacher.ensemble_probabilities(
                pixel_values, scales=self.config.teacher_scales, flip=self.config.teacher_flip
            )
        finally:
            teacher.train(was_training)

    @torch.no_grad()
    def class_thresholds(
        self, confidence: torch.Tensor, prediction: torch.LongTensor, real: torch.BoolTensor | None = None
    ) -> torch.Tensor:
        """Per-class confidence thresholds `(C,)` for this step.

        `fixed`: `confidence_threshold` for every class. `adaptive`: first moves the running per-class mean
        confidence `m_c` towards this batch's, over the `real` pixels (default: all; classes the teacher predicts
        nowhere keep theirs; summed over processes), then returns `confidence_threshold * m / max(m)`.
        """
        config = self.config
        if config.class_thresholds == "fixed":
            return self.class_confidence.new_full(self.class_confidence.shape, config.confidence_threshold)
        num_labels = self.class_confidence.numel()
        weight = torch.ones_like(confidence, dtype=torch.float) if real is None else real.float()
        sums = torch.zeros(2, num_labels, device=confidence.device)
        sums[0].index_add_(0, prediction.flatten(), (confidence.float() * weight).flatten())
        sums[1].index_add_(0, prediction.flatten(), weight.flatten())
        sums = _all_reduce_sum(sums)
        seen = sums[1] > 0
        batch_mean = sums[0] / sums[1].clamp_min(1)
        momentum = config.class_threshold_momentum
        updated = momentum * self.class_confidence + (1 - momentum) * batch_mean
        self.class_confidence.copy_(torch.where(seen, updated, self.class_confidence))
        return config.confidence_threshold * self.class_confidence / self.class_confidence.max().clamp_min(1e-6)

    @torch.no_grad()
    def count_labeled_pixels(self, labels: torch.LongTensor) -> None:
        """Adds the batch's labeled pixels per class (void left out; summed over processes) to the running count."""
        num_labels = self.labeled_class_pixels.numel()
        # Void falls in an extra last bin, which is dropped (no boolean indexing: no wait on an accelerator).
        counts = torch.zeros(num_labels + 1, device=labels.device)
        counts.index_add_(0, labels.clamp(max=num_labels).flatten(), torch.ones(labels.numel(), device=labels.device))
        self.labeled_class_pixels += _all_reduce_sum(counts[:-1])

    def labeled_class_frequencies(self) -> torch.Tensor:
        """`pi`: the labeled pixels' class frequencies so far, add-one smoothed (a class not seen yet is not 0)."""
        counts = self.labeled_class_pixels
        return (counts + 1) / (counts.sum() + counts.numel())

    @torch.no_grad()
    def update_teacher_marginal(self, probabilities: torch.FloatTensor, real: torch.BoolTensor) -> None:
        """Moves `p_bar`, the running mean of the teacher's class probabilities, towards this batch's (real pixels,
        summed over processes)."""
        weight = real.unsqueeze(1).to(probabilities.dtype)
        sums = _all_reduce_sum(torch.cat([(probabilities * weight).sum(dim=(0, 2, 3)), weight.sum().view(1)]))
        batch = torch.cat([sums[:-1] / sums[-1].clamp_min(1), sums.new_ones(1)])
        momentum = self.config.distribution_alignment_momentum
        self.teacher_class_mass.mul_(momentum).add_((1 - momentum) * batch)

    def teacher_marginal(self) -> torch.Tensor:
        """`p_bar` (bias-corrected: the decayed sum over the decayed weight)."""
        mass = self.teacher_class_mass
        return mass[:-1] / mass[-1].clamp_min(torch.finfo(mass.dtype).tiny)

    def adjusted_probabilities(self, probabilities: torch.FloatTensor) -> torch.FloatTensor:
        """The teacher's probabilities `(B, C, ...)` as the pseudo-labels use them: with logit adjustment
        `softmax(log p - tau_la * log pi)`, with distribution alignment `p * (pi / p_bar) ** tau_da` renormalized,
        with `logit_adjusted_unlabeled_loss` also `+ tau * log pi` on the log-probabilities (the posterior)."""
        config = self.config
        if not (config.logit_adjustment or config.distribution_alignment or config.logit_adjusted_unlabeled_loss):
            return probabilities
        log_pi = self.labeled_class_frequencies().log()
        shift = -config.logit_adjustment * log_pi
        if config.logit_adjusted_unlabeled_loss:
            shift = shift + config.logit_adjusted_loss * log_pi
        if config.distribution_alignment:
            log_p_bar = self.teacher_marginal().clamp_min(torch.finfo(probabilities.dtype).tiny).log()
            shift = shift + config.distribution_alignment * (log_pi - log_p_bar)
        shift = shift.view(1, -1, *([1] * (probabilities.dim() - 2)))
        return (probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log() + shift).softmax(dim=1)

    def posterior_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits + tau * log(pi)` (`tau` = `config.logit_adjusted_loss`): what the logit-adjusted loss fits to
        the labels; the logits themselves when that is off."""
        tau = self.config.logit_adjusted_loss
        if not tau:
            return logits
        return logits.float() + tau * self.labeled_class_frequencies().log().view(1, -1, 1, 1)

    def labeled_cross_entropy(self, logits: torch.Tensor, labels: torch.LongTensor) -> torch.Tensor:
        """`L_x`: [`pixel_cross_entropy`] of the student's [`posterior_logits`]."""
        return pixel_cross_entropy(self.posterior_logits(logits), labels, self.config.ignore_index)

    def unlabeled_cross_entropy(self, logits: torch.Tensor, target: PseudoLabels) -> torch.Tensor:
        """An unlabeled term: [`pixel_cross_entropy`] over the confident pseudo-labels, of the [`posterior_logits`]
        with `config.logit_adjusted_unlabeled_loss`, else of the logits."""
        if self.config.logit_adjusted_unlabeled_loss:
            logits = self.posterior_logits(logits)
        return pixel_cross_entropy(logits, target.labels, self.config.ignore_index, target.confident)

    @torch.no_grad()
    def cap_confident_share(
        self,
        confidence: torch.Tensor,
        prediction: torch.LongTensor,
        confident: torch.BoolTensor,
        real: torch.BoolTensor,
    ) -> torch.BoolTensor:
        """Keeps, per class `c`, at most `confident_share_cap * pi_c * n` of the `confident` pixels (the most
        confident ones), `n` the batch's `real` pixels (`confident` is False on padding)."""
        num_labels = self.labeled_class_pixels.numel()
        limits = (self.config.confident_share_cap * self.labeled_class_frequencies() * real.sum()).floor()
        # Unconfident pixels fall in an extra last bucket, which keeps none. Sorting by confidence, then stably by
        # bucket, ranks each pixel within its class, with no per-class loop and no wait on an accelerator.
        bucket = torch.where(confident, prediction, num_labels).flatten()
        by_confidence = confidence.flatten().argsort(descending=True, stable=True)
        order = by_confidence[bucket[by_confidence].argsort(stable=True)]
        counts = torch.bincount(bucket, minlength=num_labels + 1)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=order.device) - (counts.cumsum(0) - counts)[bucket[order]]
        return (rank < torch.cat([limits, limits.new_zeros(1)])[bucket]).view_as(confident)

    def pseudo_labels(
        self, pixel_values: torch.FloatTensor, real: torch.BoolTensor
    ) -> tuple[PseudoLabels, torch.Tensor]:
        """The teacher's pseudo-labels of complete weak views `(B, 3, H, W)` and this step's class thresholds.

        Crop padding (`real` False) becomes void; the running class confidences see real pixels only.
        """
        probabilities = self.teacher_probabilities(pixel_values)
        if self.config.distribution_alignment:
            self.update_teacher_marginal(probabilities, real)
        confidence, prediction = self.adjusted_probabilities(probabilities).max(dim=1)
        thresholds = self.class_thresholds(confidence, prediction, real)
        confident = (confidence >= thresholds[prediction]) & real
        if self.config.confident_share_cap:
            confident = self.cap_confident_share(confidence, prediction, confident, real)
        labels = prediction.masked_fill(~real, self.config.ignore_index)
        return PseudoLabels(labels, confident), thresholds

    def forward(
        self,
        pixel_values: torch.FloatTensor,
        labels: torch.LongTensor,
        unlabeled_pixel_values: torch.FloatTensor | None = None,
        unlabeled_pixel_mask: torch.BoolTensor | None = None,
        unlabeled_labels: torch.LongTensor | None = None,
        cutmix_pixel_values: torch.FloatTensor | None = None,
        cutmix_pixel_mask: torch.BoolTensor | None = None,
        generator: torch.Generator | None = None,
        step: int | None = None,
    ) -> MaskMatchObjectiveOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(B, 3, H, W)`): weak views of labeled images, normalized.
        labels (`torch.LongTensor` of shape `(B, H, W)`): their labels, `config.ignore_index` for void.
        unlabeled_pixel_values (`torch.FloatTensor` of shape `(B_u, 3, H_u, W_u)`): weak views of unlabeled
            images. Required unless the preset is `supervised`, which ignores every unlabeled input.
        unlabeled_pixel_mask (`torch.BoolTensor` of shape `(B_u, H_u, W_u)`, *optional*): True on real pixels,
            False on crop padding (excluded from every unlabeled loss).
        unlabeled_labels (`torch.LongTensor` of shape `(B_u, H_u, W_u)`, *optional*): true labels of the
            unlabeled images, used for monitoring pseudo-label accuracy only, never in the loss.
        cutmix_pixel_values, cutmix_pixel_mask (*optional*): a second unlabeled batch, shaped like the first,
            whose strong views are pasted into the first one's. Defaults to the first batch rolled by one image.
        generator (`torch.Generator`, *optional*): source of every random draw (on the batch's device).
        step (`int`, *optional*): the 0-based optimizer step, for the unlabeled loss ramp-up
            (`config.unlabeled_rampup_steps`); None means full weight.
        """
        config = self.config
        if config.uses_class_frequencies:
            self.count_labeled_pixels(labels)
        if not config.components.unlabeled:
            logits = self.student(pixel_values=pixel_values).logits
            return self._output({"loss_x": self.labeled_cross_entropy(logits, labels)}, {}, step)
        if unlabeled_pixel_values is None:
            raise ValueError(f"The `{config.preset}` preset needs `unlabeled_pixel_values`.")

        # Teacher: pseudo-labels of the complete weak views (and of the CutMix partners, when given).
        real = self._real_pixels(unlabeled_pixel_values, unlabeled_pixel_mask)
        if cutmix_pixel_values is None:
            pseudo, thresholds = self.pseudo_labels(unlabeled_pixel_values, real)
            partner_values = unlabeled_pixel_values.roll(1, 0)
            partner_pseudo = PseudoLabels(pseudo.labels.roll(1, 0), pseudo.confident.roll(1, 0))
        else:
            partner_values = cutmix_pixel_values
            partner_real = self._real_pixels(cutmix_pixel_values, cutmix_pixel_mask)
            both, thresholds = self.pseudo_labels(
                torch.cat([unlabeled_pixel_values, partner_values]), torch.cat([real, partner_real])
            )
            pseudo, partner_pseudo = (
                PseudoLabels(*pair) for pair in zip(both.labels.chunk(2), both.confident.chunk(2))
            )

        terms = self._student_losses(
            pixel_values, labels, unlabeled_pixel_values, partner_values, pseudo, partner_pseudo, generator
        )
        stats = self._pseudo_label_stats(pseudo, real, thresholds, unlabeled_labels)
        return self._output(terms, stats, step)

    def _student_losses(
        self,
        pixel_values: torch.FloatTensor,
        labels: torch.LongTensor,
        weak: torch.FloatTensor,
        partner_weak: torch.FloatTensor,
        pseudo: PseudoLabels,
        partner_pseudo: PseudoLabels,
        generator: torch.Generator | None,
    ) -> dict[str, torch.Tensor]:
        """Student passes and their losses; each kind of view is its own BatchNorm batch."""
        config = self.config
        components = config.components
        batch_u, _, height, width = weak.shape
        augment = {
            "image_mean": config.image_mean,
            "image_std": config.image_std,
            "color_jitter": config.color_jitter,
            "color_jitter_prob": config.color_jitter_prob,
            "grayscale_prob": config.grayscale_prob,
            "blur_prob": config.blur_prob,
            "blur_sigma": config.blur_sigma,
            "generator": generator,
        }
        strong_views, strong_targets, first_strong = [], [], None
        for _ in range(components.strong_views):
            strong = strong_augment(weak, **augment)
            first_strong = strong if first_strong is None else first_strong
            box = cutmix_box_mask(batch_u, height, width, config.cutmix_prob, generator=generator, device=weak.device)
            strong_views.append(cutmix(box, strong, strong_augment(partner_weak, **augment)))
            strong_targets.append(
                PseudoLabels(
                    cutmix(box, pseudo.labels, partner_pseudo.labels),
                    cutmix(box, pseudo.confident, partner_pseudo.confident),
                )
            )

        # Labeled crops: the only pass that updates BatchNorm running statistics (the eval-mode teacher's).
        terms = {"loss_x": self.labeled_cross_entropy(self.student(pixel_values=pixel_values).logits, labels)}
        with frozen_batchnorm_statistics(self.student, enabled=not config.unlabeled_updates_bn_stats):
            strong_logits = self.student(pixel_values=torch.cat(strong_views)).logits.split(batch_u)
            terms["loss_s"] = torch.stack(
                [self.unlabeled_cross_entropy(logits, target) for logits, target in zip(strong_logits, strong_targets)]
            ).mean()
            if components.masked_modeling:
                num_masked = config.num_masked_images(batch_u)
                hidden = random_patch_mask(
                    num_masked, height, width, config.mask_patch_size, config.mask_ratio, generator, weak.device
                )
                masked_logits = self.student(pixel_values=mask_images(first_strong[:num_masked], hidden)).logits
                terms["loss_mask"] = self.unlabeled_cross_entropy(
                    masked_logits, PseudoLabels(pseudo.labels[:num_masked], pseudo.confident[:num_masked])
                )
            if components.feature_perturbation:
                perturbed_logits = self.student(pixel_values=weak, feature_perturbation=True).logits
                terms["loss_fp"] = self.unlabeled_cross_entropy(perturbed_logits, pseudo)
        return terms

    @torch.no_grad()
    def _pseudo_label_stats(
        self,
        pseudo: PseudoLabels,
        real: torch.BoolTensor,
        thresholds: torch.Tensor,
        unlabeled_labels: torch.LongTensor | None,
    ) -> dict[str, torch.Tensor]:
        """Confident ratio overall and per class, adaptive thresholds, and accuracy against true labels."""
        config = self.config
        num_real = real.sum().clamp_min(1)
        confident = pseudo.confident
        stats = {"confident_ratio": confident.sum() / num_real}
        # Counted without boolean indexing, which would wait for an accelerator to know the result's size.
        # Void labels (crop padding) fall in an extra last bin, which is dropped.
        labels = pseudo.labels.clamp(max=config.num_labels).flatten()
        counts = torch.zeros(config.num_labels + 1, device=labels.device)
        per_class = counts.index_add_(0, labels, confident.flatten().float())[:-1] / num_real
        for index, name in sorted(config.id2label.items()):
            stats[f"confident_ratio/{name}"] = per_class[index]
        if config.class_thresholds == "adaptive":
            for index, name in sorted(config.id2label.items()):
                stats[f"threshold/{name}"] = thresholds[index]
        if unlabeled_labels is not None:
            known = (unlabeled_labels != config.ignore_index) & real
            correct = (pseudo.labels == unlabeled_labels) & known
            stats["pseudo_label_accuracy"] = correct.sum() / known.sum().clamp_min(1)
            stats["confident_pseudo_label_accuracy"] = (correct & confident).sum() / (
                known & confident
            ).sum().clamp_min(1)
            # A class's confident pseudo-labels that are wrong, as a share of the pixels: the drift of a rare class
            # shows here first (a class's precision is 1 - this / its confident share, over any window).
            wrong = (confident & known & ~correct).flatten().float()
            per_class_wrong = torch.zeros_like(counts).index_add_(0, labels, wrong)[:-1] / num_real
            for index, name in sorted(config.id2label.items()):
                stats[f"confident_wrong_ratio/{name}"] = per_class_wrong[index]
        return stats

    @staticmethod
    def _real_pixels(pixel_values: torch.Tensor, pixel_mask: torch.BoolTensor | None) -> torch.BoolTensor:
        if pixel_mask is None:
            return torch.ones(
                pixel_values.shape[:1] + pixel_values.shape[2:], dtype=torch.bool, device=pixel_values.device
            )
        return pixel_mask.bool()

    def _output(
        self, terms: dict[str, torch.Tensor], stats: dict[str, torch.Tensor], step: int | None
    ) -> MaskMatchObjectiveOutput:
        config = self.config
        ramp = config.unlabeled_weight(step)
        weights = {
            "loss_x": 1.0,
            "loss_s": ramp * config.lambda_s,
            "loss_mask": ramp * config.lambda_mask,
            "loss_fp": ramp * config.lambda_fp,
        }
        terms = {name: terms[name] for name in weights if name in terms}
        loss = sum(weights[name] * value for name, value in terms.items())
        # One transfer to the host for all the logs (the step's only synchronization with an accelerator).
        values = torch.stack(
            [loss.detach(), *(t.detach().float() for t in terms.values()), *(s.float() for s in stats.values())]
        ).tolist()
        logs = dict(zip(["loss", *terms], values))
        if config.components.unlabeled:
            logs["unlabeled_weight"] = ramp
        logs.update(zip(stats, values[1 + len(terms) :]))
        return MaskMatchObjectiveOutput(loss=loss, logs=logs)
