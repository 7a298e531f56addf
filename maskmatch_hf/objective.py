"""The MaskMatch training objective: teacher pseudo-labels, strong / CutMix / masked student views, and losses."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from .augment import cutmix, cutmix_box_mask, strong_augment
from .masking import mask_images, random_patch_mask
from .modeling_maskmatch import MaskMatchForSemanticSegmentation


@dataclass
class MaskMatchObjectiveOutput(ModelOutput):
    """
    loss (`torch.FloatTensor` of shape `()`):
        `L_x + lambda_s * L_s + lambda_mask * L_mask + lambda_fp * L_fp`, over the terms the preset enables;
        differentiable with respect to the student only.
    logs (`dict[str, float]`):
        Each active loss term (`loss_x`, `loss_s`, `loss_mask`, `loss_fp`), `loss`, `confident_ratio`, and
        `pseudo_label_accuracy` / `confident_pseudo_label_accuracy` when the unlabeled labels are passed.
    """

    loss: torch.FloatTensor | None = None
    logs: dict[str, float] | None = None


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


class MaskMatchObjective(nn.Module):
    """Holds the student and its teacher and computes one semi-supervised training step's loss.

    The teacher is the student itself in eval mode without grad (`config.teacher="shared"`) or an EMA copy
    (`"ema"`, call [`update_teacher`] after each optimizer step). Wrap this module, not the student, with
    `accelerator.prepare` so each step is a single DDP forward.

    BatchNorm running statistics are updated by the labeled pass only (weak unlabeled views join it for
    feature perturbation); strong and masked views normalize with their batch statistics without updating the
    running ones, unless `config.unlabeled_updates_bn_stats`.
    """

    def __init__(self, student: MaskMatchForSemanticSegmentation) -> None:
        super().__init__()
        student.config.check_hyperparameters()
        self.student = student
        self.ema_teacher = None
        if student.config.teacher == "ema":
            self.ema_teacher = copy.deepcopy(student).requires_grad_(False).eval()

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
    def update_teacher(self) -> None:
        """EMA step `teacher = m * teacher + (1 - m) * student` for parameters and float buffers (BatchNorm
        statistics); integer buffers are copied. Does nothing for the shared teacher."""
        if self.ema_teacher is None:
            return
        momentum = self.config.ema_momentum
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
        """
        config = self.config
        components = config.components
        ignore_index = config.ignore_index
        terms: dict[str, torch.Tensor] = {}
        stats: dict[str, torch.Tensor] = {}

        if not components.unlabeled:
            logits = self.student(pixel_values=pixel_values).logits
            terms["loss_x"] = pixel_cross_entropy(logits, labels, ignore_index)
            return self._output(terms, stats)
        if unlabeled_pixel_values is None:
            raise ValueError(f"The `{config.preset}` preset needs `unlabeled_pixel_values`.")

        batch_u = unlabeled_pixel_values.shape[0]
        device = unlabeled_pixel_values.device
        real = self._real_pixels(unlabeled_pixel_values, unlabeled_pixel_mask)
        if cutmix_pixel_values is None:
            partner_values, partner_real = unlabeled_pixel_values.roll(1, 0), real.roll(1, 0)
            teacher_input = unlabeled_pixel_values
        else:
            partner_values = cutmix_pixel_values
            partner_real = self._real_pixels(cutmix_pixel_values, cutmix_pixel_mask)
            teacher_input = torch.cat([unlabeled_pixel_values, cutmix_pixel_values])

        # Teacher: pseudo-labels of the complete weak views; padding becomes void.
        confidence, pseudo = self.teacher_probabilities(teacher_input).max(dim=1)
        if cutmix_pixel_values is None:
            partner_confidence, partner_pseudo = confidence.roll(1, 0), pseudo.roll(1, 0)
        else:
            confidence, partner_confidence = confidence.split(batch_u)
            pseudo, partner_pseudo = pseudo.split(batch_u)
        pseudo = pseudo.masked_fill(~real, ignore_index)
        partner_pseudo = partner_pseudo.masked_fill(~partner_real, ignore_index)
        confident = confidence >= config.confidence_threshold

        # Student inputs: strong views with CutMix, and the patch-masked strong view.
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
        height, width = unlabeled_pixel_values.shape[-2:]
        student_views, view_targets = [], []
        first_strong = None
        for _ in range(components.strong_views):
            strong = strong_augment(unlabeled_pixel_values, **augment)
            first_strong = strong if first_strong is None else first_strong
            box = cutmix_box_mask(batch_u, height, width, config.cutmix_prob, generator=generator, device=device)
            student_views.append(cutmix(box, strong, strong_augment(partner_values, **augment)))
            view_targets.append(
                (
                    cutmix(box, pseudo, partner_pseudo),
                    cutmix(box, confident, partner_confidence >= config.confidence_threshold),
                )
            )
        if components.masked_modeling:
            hidden = random_patch_mask(
                batch_u,
                height,
                width,
                config.mask_patch_size,
                config.mask_ratio,
                generator=generator,
                device=device,
            )
            student_views.append(mask_images(first_strong, hidden))

        # Student pass 1 (updates BatchNorm statistics): labeled images, plus weak views for feature perturbation.
        batch_x = pixel_values.shape[0]
        if components.feature_perturbation:
            output = self.student(
                pixel_values=torch.cat([pixel_values, unlabeled_pixel_values]), feature_perturbation=True
            )
            terms["loss_fp"] = pixel_cross_entropy(output.perturbed_logits[batch_x:], pseudo, ignore_index, confident)
            logits_x = output.logits[:batch_x]
        else:
            logits_x = self.student(pixel_values=pixel_values).logits
        terms["loss_x"] = pixel_cross_entropy(logits_x, labels, ignore_index)

        # Student pass 2 (BatchNorm statistics frozen): all strong and masked views as one batch.
        with frozen_batchnorm_statistics(self.student, enabled=not config.unlabeled_updates_bn_stats):
            view_logits = self.student(pixel_values=torch.cat(student_views)).logits.split(batch_u)
        terms["loss_s"] = torch.stack(
            [
                pixel_cross_entropy(logits, target, ignore_index, weight)
                for logits, (target, weight) in zip(view_logits, view_targets)
            ]
        ).mean()
        if components.masked_modeling:
            terms["loss_mask"] = pixel_cross_entropy(view_logits[-1], pseudo, ignore_index, confident)

        stats["confident_ratio"] = (confident & real).sum() / real.sum().clamp_min(1)
        if unlabeled_labels is not None:
            known = (unlabeled_labels != ignore_index) & real
            correct = (pseudo == unlabeled_labels) & known
            stats["pseudo_label_accuracy"] = correct.sum() / known.sum().clamp_min(1)
            stats["confident_pseudo_label_accuracy"] = (correct & confident).sum() / (
                known & confident
            ).sum().clamp_min(1)
        return self._output(terms, stats)

    @staticmethod
    def _real_pixels(pixel_values: torch.Tensor, pixel_mask: torch.BoolTensor | None) -> torch.BoolTensor:
        if pixel_mask is None:
            return torch.ones(
                pixel_values.shape[:1] + pixel_values.shape[2:], dtype=torch.bool, device=pixel_values.device
            )
        return pixel_mask.bool()

    def _output(self, terms: dict[str, torch.Tensor], stats: dict[str, torch.Tensor]) -> MaskMatchObjectiveOutput:
        weights = {
            "loss_x": 1.0,
            "loss_s": self.config.lambda_s,
            "loss_mask": self.config.lambda_mask,
            "loss_fp": self.config.lambda_fp,
        }
        terms = {name: terms[name] for name in weights if name in terms}
        loss = sum(weights[name] * value for name, value in terms.items())
        names = ["loss", *terms, *stats]
        values = torch.stack(
            [loss.detach(), *(t.detach() for t in terms.values()), *(s.float() for s in stats.values())]
        )
        return MaskMatchObjectiveOutput(loss=loss, logs=dict(zip(names, values.tolist())))
