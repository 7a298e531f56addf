import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from maskmatch_hf import PRESETS, MaskMatchForSemanticSegmentation, MaskMatchObjective
from maskmatch_hf.objective import pixel_cross_entropy

from .conftest import NUM_LABELS, tiny_model

B, H, W = 2, 32, 32


def structured_images(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of 8x8 blocks whose colour encodes the block's class, so labels are learnable."""
    blocks = torch.randint(0, NUM_LABELS, (B, H // 8, W // 8), generator=generator)
    labels = blocks.repeat_interleave(8, 1).repeat_interleave(8, 2)
    palette = torch.randn(NUM_LABELS, 3, generator=torch.Generator().manual_seed(99))
    images = palette[labels].permute(0, 3, 1, 2) + 0.3 * torch.randn(B, 3, H, W, generator=generator)
    return images, labels


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    pixel_values, labels = structured_images(generator)
    unlabeled_pixel_values, _ = structured_images(generator)
    return {"pixel_values": pixel_values, "labels": labels, "unlabeled_pixel_values": unlabeled_pixel_values}


def run(objective: MaskMatchObjective, seed: int = 0, **inputs):
    return objective(**{**batch(), **inputs}, generator=torch.Generator().manual_seed(seed))


class ForwardRecorder:
    """Records every call of the student: batch size, grad mode, train mode and feature perturbation."""

    def __init__(self, model):
        self.calls = []
        model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.calls.append(
            {
                "batch": kwargs["pixel_values"].shape[0],
                "size": tuple(kwargs["pixel_values"].shape[-2:]),
                "grad": torch.is_grad_enabled(),
                "training": module.training,
                "fp": kwargs.get("feature_perturbation", False),
            }
        )


EXPECTED_TERMS = {
    "supervised": {"loss_x"},
    "fixmatch": {"loss_x", "loss_s"},
    "unimatch": {"loss_x", "loss_s", "loss_fp"},
    "maskmatch": {"loss_x", "loss_s", "loss_mask"},
    "unimatch+maskmatch": {"loss_x", "loss_s", "loss_mask", "loss_fp"},
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_preset_turns_on_exactly_its_terms(preset):
    model = tiny_model(preset=preset, ensemble_scales=[0.75, 1.0, 1.25])
    recorder = ForwardRecorder(model)
    objective = MaskMatchObjective(model).train()
    output = run(objective)
    terms = {name for name in output.logs if name.startswith("loss_")}
    assert terms == EXPECTED_TERMS[preset]
    components = PRESETS[preset]
    teacher_calls = [call for call in recorder.calls if not call["grad"]]
    student_calls = [call for call in recorder.calls if call["grad"]]
    assert all(not call["training"] for call in teacher_calls)
    assert all(call["training"] for call in student_calls)
    if not components.unlabeled:
        assert teacher_calls == [] and [c["batch"] for c in student_calls] == [B]
        return
    expected_sizes = {(24, 24), (32, 32), (40, 40)} if components.multiscale_teacher else {(32, 32)}
    assert {call["size"] for call in teacher_calls} == expected_sizes
    # One BatchNorm batch per kind of view: labeled, strong (CutMix), masked, feature-perturbed weak views.
    passes = [(B, False), (components.strong_views * B, False)]
    masked = (model.config.num_masked_images(B), False)  # the first half of the batch by default
    passes += [masked] * components.masked_modeling + [(B, True)] * components.feature_perturbation
    assert [(call["batch"], call["fp"]) for call in student_calls] == passes


def test_loss_combines_terms_with_their_weights():
    objective = MaskMatchObjective(
        tiny_model(preset="unimatch+maskmatch", lambda_s=0.3, lambda_mask=2.0, lambda_fp=0.7, confidence_threshold=0)
    ).train()
    logs = run(objective).logs
    expected = logs["loss_x"] + 0.3 * logs["loss_s"] + 2.0 * logs["loss_mask"] + 0.7 * logs["loss_fp"]
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)
    assert min(logs["loss_s"], logs["loss_mask"], logs["loss_fp"]) > 0


def test_supervised_preset_ignores_the_unlabeled_batch():
    # One fresh objective per call: each call adds its labels to the class counts of the logit-adjusted loss.
    # (`tiny_model` seeds the global generator: the same weights, then the same dropout draws.)
    def objective() -> MaskMatchObjective:
        return MaskMatchObjective(tiny_model(preset="supervised")).train()

    with_unlabeled = run(objective()).loss
    other_unlabeled = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    other = run(objective(), unlabeled_pixel_values=other_unlabeled).loss
    without = objective()(pixel_values=batch()["pixel_values"], labels=batch()["labels"]).loss
    assert with_unlabeled.item() == other.item() == without.item()


def test_semi_supervised_presets_require_unlabeled_data():
    objective = MaskMatchObjective(tiny_model(preset="maskmatch"))
    with pytest.raises(ValueError, match="unlabeled_pixel_values"):
        objective(pixel_values=batch()["pixel_values"], labels=batch()["labels"])


def test_threshold_excludes_low_confidence_pixels():
    logits = torch.randn(1, NUM_LABELS, 4, 4, requires_grad=True)
    target = torch.randint(0, NUM_LABELS, (1, 4, 4))
    target[0, 0, 0] = 255
    confident = torch.zeros(1, 4, 4, dtype=torch.bool)
    confident[0, 1:, :] = True
    loss = pixel_cross_entropy(logits, target, 255, confident)
    loss.backward()
    assert torch.all(logits.grad[0, :, 0, :] == 0)  # unconfident or void pixels get no gradient
    assert torch.all(logits.grad[0, :, 1:, :].abs().sum(0) > 0)
    per_pixel = torch.nn.functional.cross_entropy(logits.detach(), target, ignore_index=255, reduction="none")
    assert loss.item() == pytest.approx((per_pixel[0, 1:].sum() / 15).item(), rel=1e-5)


@pytest.mark.parametrize("threshold", [0.3, 0.6])
def test_confident_ratio_and_unlabeled_losses_follow_the_threshold(monkeypatch, threshold):
    objective = MaskMatchObjective(tiny_model(preset="maskmatch", confidence_threshold=threshold)).train()
    probs = torch.full((B, NUM_LABELS, H, W), 0.1)
    probs[:, 0, : H // 2] = 0.7  # confident top half
    probs[:, 0, H // 2 :] = 0.4  # unconfident bottom half
    monkeypatch.setattr(objective, "teacher_probabilities", lambda pixel_values: probs)
    logs = run(objective, unlabeled_labels=torch.zeros(B, H, W, dtype=torch.long)).logs
    assert logs["confident_ratio"] == pytest.approx(0.5 if threshold == 0.6 else 1.0)
    assert logs["pseudo_label_accuracy"] == pytest.approx(1.0)
    high = MaskMatchObjective(tiny_model(preset="maskmatch", confidence_threshold=0.99)).train()
    monkeypatch.setattr(high, "teacher_probabilities", lambda pixel_values: probs)
    logs = run(high).logs
    assert logs["confident_ratio"] == 0 and logs["loss_s"] == 0 and logs["loss_mask"] == 0


def test_confident_wrong_ratio_counts_each_class_wrong_confident_pixels(monkeypatch):
    """Per predicted class, the share of pixels whose confident pseudo-label the true label contradicts; void and
    unconfident pixels are never counted wrong."""
    objective = MaskMatchObjective(tiny_model(preset="fixmatch", confidence_threshold=0.6)).train()
    probs = torch.full((B, NUM_LABELS, H, W), 0.1)
    probs[:, 0, : H // 2] = 0.7  # class 0, confident: top half
    probs[:, 1, H // 2 :] = 0.7  # class 1, confident: bottom half but its last 4 rows
    probs[:, 1, -4:] = 0.3
    monkeypatch.setattr(objective, "teacher_probabilities", lambda pixel_values: probs)
    truth = torch.zeros(B, H, W, dtype=torch.long)
    truth[:, 2:4] = 2  # 2 confident rows of class 0 are wrong
    truth[:, 4] = 255  # a void row is not judged
    truth[:, H // 2 :] = 1
    truth[:, -4:] = 3  # unconfident, wrong: not counted
    logs = run(objective, unlabeled_labels=truth).logs
    names = objective.config.id2label
    assert logs[f"confident_wrong_ratio/{names[0]}"] == pytest.approx(2 / H)
    assert logs[f"confident_wrong_ratio/{names[1]}"] == 0
    assert logs[f"confident_ratio/{names[0]}"] == pytest.approx(0.5)
    assert f"confident_wrong_ratio/{names[0]}" not in run(objective).logs  # only with the true labels


def test_padding_pixels_are_excluded_from_unlabeled_losses():
    objective = MaskMatchObjective(tiny_model(preset="maskmatch", confidence_threshold=0)).train()
    logs = run(objective, unlabeled_pixel_mask=torch.zeros(B, H, W, dtype=torch.bool)).logs
    assert logs["loss_s"] == 0 and logs["loss_mask"] == 0 and logs["confident_ratio"] == 0


def test_step_is_reproducible_with_a_generator():
    def step(seed: int) -> dict[str, float]:
        objective = MaskMatchObjective(tiny_model(preset="unimatch+maskmatch", confidence_threshold=0)).train()
        torch.manual_seed(0)  # the student's own dropout; every augmentation draws from the generator
        return run(objective, seed=seed).logs

    assert step(5) == step(5)
    assert step(5) != step(6)


@pytest.mark.parametrize("teacher", ["shared", "ema"])
def test_no_gradient_reaches_the_teacher(teacher):
    model = tiny_model(preset="unimatch+maskmatch", teacher=teacher, confidence_threshold=0)
    objective = MaskMatchObjective(model).train()
    recorder = ForwardRecorder(objective.teacher)
    output = run(objective)
    output.loss.backward()
    teacher_calls = [call for call in recorder.calls if not call["training"]]
    assert teacher_calls and all(not call["grad"] for call in teacher_calls)
    assert all(p.grad is not None for p in objective.student.parameters() if p.requires_grad)
    if teacher == "ema":
        assert all(not p.requires_grad and p.grad is None for p in objective.ema_teacher.parameters())
        assert not objective.ema_teacher.training


def test_ema_update_matches_its_formula():
    objective = MaskMatchObjective(tiny_model("upernet", teacher="ema", ema_momentum=0.9))
    with torch.no_grad():
        for parameter in objective.student.parameters():
            parameter.add_(torch.randn_like(parameter))
        for buffer in objective.student.buffers():
            if buffer.is_floating_point():
                buffer.add_(1.0)
    teacher_before = {k: v.clone() for k, v in objective.ema_teacher.state_dict().items()}
    student = objective.student.state_dict()
    objective.update_teacher()
    for name, value in objective.ema_teacher.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.9 * teacher_before[name] + 0.1 * student[name])
        else:
            assert torch.equal(value, student[name])


@pytest.mark.parametrize("updates", [False, True])
def test_only_labeled_passes_update_batchnorm_statistics(updates):
    """Strong, masked and feature-perturbed passes leave the running statistics to the labeled pass."""
    objective = MaskMatchObjective(
        tiny_model("upernet", preset="unimatch+maskmatch", unlabeled_updates_bn_stats=updates)
    ).train()
    # The same labeled pass in the student's memory format (another format's kernels differ in the last bits).
    reference = tiny_model("upernet", preset="unimatch+maskmatch").to(memory_format=torch.channels_last).train()
    assert objective.channels_last
    run(objective)
    reference(pixel_values=batch()["pixel_values"])  # the labeled pass alone
    bn_stats = [name for name, _ in reference.named_buffers() if "running" in name]
    assert bn_stats
    same = all(torch.allclose(objective.student.get_buffer(name), reference.get_buffer(name)) for name in bn_stats)
    assert same is not updates


def test_fresh_cutmix_partner_batch_is_used(monkeypatch):
    objective = MaskMatchObjective(tiny_model(preset="fixmatch", cutmix_prob=1.0, confidence_threshold=0)).train()
    seen = []
    original = objective.teacher_probabilities
    monkeypatch.setattr(objective, "teacher_probabilities", lambda x: seen.append(x.shape[0]) or original(x))
    run(objective, cutmix_pixel_values=torch.randn(B, 3, H, W))
    assert seen == [2 * B]


def test_both_segmenters_train_on_a_fixed_batch(segmenter):
    objective = MaskMatchObjective(tiny_model(segmenter, preset="maskmatch", confidence_threshold=0.0)).train()
    optimizer = torch.optim.AdamW(objective.student.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        torch.manual_seed(0)
        output = run(objective, seed=0)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        losses.append(output.logs["loss_x"])
    # Without training the replayed step would give the same loss every time. The tiny UperNet's loss_x falls by
    # 14-16% in 30 steps depending on the CPU's kernels (0.858 of the first on an AVX-512 EPYC), hence 0.9.
    assert losses[-1] < 0.9 * losses[0], losses


def student_logits_by_pass(objective: MaskMatchObjective) -> list[torch.Tensor]:
    """Run one step and return the logits of each grad-enabled (student) pass, in order."""
    outputs = []
    objective.student.register_forward_hook(
        lambda module, args, output: outputs.append(output.logits.detach()) if torch.is_grad_enabled() else None
    )
    run(objective, seed=3)
    return outputs


def test_strong_views_are_normalized_apart_from_masked_views():
    """The strong-view pass of `maskmatch` is exactly `fixmatch`'s: masked views are their own BatchNorm batch."""
    fixmatch = student_logits_by_pass(MaskMatchObjective(tiny_model("upernet", preset="fixmatch")).train())
    maskmatch = student_logits_by_pass(MaskMatchObjective(tiny_model("upernet", preset="maskmatch")).train())
    assert len(fixmatch) == 2 and len(maskmatch) == 3
    torch.testing.assert_close(maskmatch[1], fixmatch[1])


@pytest.mark.parametrize(
    ("segmenter", "fraction", "num_masked"),
    [("segformer", 1.0, 4), ("segformer", 0.5, 2), ("segformer", 0.3, 2), ("segformer", 0.1, 1), ("upernet", 0.1, 2)],
)
def test_mask_batch_fraction_trains_the_masked_view_of_the_first_images(monkeypatch, segmenter, fraction, num_masked):
    """The masked pass holds the first `ceil(fraction * B_u)` strong views (UperNet: 2 at least), masked, and
    `L_mask` is their loss against those images' pseudo-labels; the other terms see the whole batch."""
    batch_u = 4
    model = tiny_model(segmenter, preset="maskmatch", mask_batch_fraction=fraction, confidence_threshold=0.65)
    objective = MaskMatchObjective(model).train()
    probs = torch.full((batch_u, NUM_LABELS, H, W), 0.1)
    probs[:, 0] = 0.7
    probs[1::2, 0, : H // 2] = 0.2  # images 1 and 3: their top half unconfident
    probs[1::2, 1, : H // 2] = 0.6  # and pseudo-labeled class 1
    monkeypatch.setattr(objective, "teacher_probabilities", lambda pixel_values: probs)
    passes = []
    model.register_forward_hook(
        lambda module, args, kwargs, output: (
            passes.append((kwargs["pixel_values"], output.logits)) if torch.is_grad_enabled() else None
        ),
        with_kwargs=True,
    )
    unlabeled = torch.randn(batch_u, 3, H, W, generator=torch.Generator().manual_seed(1))
    logs = run(objective, unlabeled_pixel_values=unlabeled).logs
    (_, strong_logits), (masked_input, masked_logits) = passes[1:]
    assert strong_logits.shape[0] == batch_u and masked_input.shape[0] == num_masked
    pseudo_labels = probs.argmax(dim=1)[:num_masked]
    confident = probs.amax(dim=1)[:num_masked] >= 0.65
    expected = pixel_cross_entropy(masked_logits, pseudo_labels, 255, confident)
    assert logs["loss_mask"] == pytest.approx(expected.item(), rel=1e-5)
    assert (masked_input == 0).float().mean() > 0.5  # the masked view: 70% of its patches hidden
    assert logs["confident_ratio"] == pytest.approx(0.75)  # all four images


def test_unlabeled_losses_ramp_up_linearly():
    objective = MaskMatchObjective(
        tiny_model(preset="maskmatch", confidence_threshold=0.0, unlabeled_rampup_steps=10)
    ).train()
    for step, weight in [(0, 0.0), (5, 0.5), (10, 1.0), (50, 1.0), (None, 1.0)]:
        torch.manual_seed(0)
        logs = run(objective, step=step).logs
        assert logs["unlabeled_weight"] == weight
        expected = logs["loss_x"] + weight * (logs["loss_s"] + 0.5 * logs["loss_mask"])
        assert logs["loss"] == pytest.approx(expected, rel=1e-5)
        assert logs["loss_s"] > 0


def test_ema_momentum_ramps_from_a_copy_of_the_student():
    objective = MaskMatchObjective(tiny_model("upernet", teacher="ema", ema_momentum=0.99))
    with torch.no_grad():
        for parameter in objective.student.parameters():
            parameter.add_(1.0)
    objective.update_teacher(step=0)  # momentum min(1 - 1/1, 0.99) = 0: the teacher becomes the student
    for teacher, student in zip(objective.ema_teacher.parameters(), objective.student.parameters()):
        assert torch.equal(teacher, student)
    assert [objective.config.teacher_momentum(step) for step in (1, 9, 99, 10_000)] == [0.5, 0.9, 0.99, 0.99]


@pytest.mark.parametrize("mode", ["fixed", "adaptive"])
def test_class_thresholds_follow_the_running_class_confidence(monkeypatch, mode):
    objective = MaskMatchObjective(
        tiny_model(preset="fixmatch", confidence_threshold=0.95, class_thresholds=mode, class_threshold_momentum=0.0)
    ).train()
    probs = torch.full((B, NUM_LABELS, H, W), 0.0)
    probs[:, 0, : H // 2] = torch.tensor([0.8, 1.0]).repeat(H // 4).view(-1, 1)  # class 0: mean 0.9, top half
    probs[:, 1, H // 2 :] = torch.tensor([0.4, 0.6]).repeat(H // 4).view(-1, 1)  # class 1: mean 0.5, bottom half
    monkeypatch.setattr(objective, "teacher_probabilities", lambda pixel_values: probs)
    logs = run(objective).logs
    names = objective.config.id2label
    if mode == "fixed":
        assert logs["confident_ratio"] == pytest.approx(0.25) and f"threshold/{names[0]}" not in logs
        return
    # m = (0.9, 0.5, 0.95, 0.95): classes never predicted keep their start value, the global threshold.
    torch.testing.assert_close(objective.class_confidence, torch.tensor([0.9, 0.5, 0.95, 0.95]))
    assert logs[f"threshold/{names[0]}"] == pytest.approx(0.9, abs=1e-4)
    assert logs[f"threshold/{names[1]}"] == pytest.approx(0.5, abs=1e-4)
    # Above its class threshold: the 1.0 rows of class 0 and the 0.6 rows of class 1.
    assert logs["confident_ratio"] == pytest.approx(0.5)
    assert logs[f"confident_ratio/{names[0]}"] == pytest.approx(0.25)
    assert logs[f"confident_ratio/{names[1]}"] == pytest.approx(0.25)
    assert logs[f"confident_ratio/{names[2]}"] == 0


@pytest.mark.parametrize("tau", [0.0, 1.0])
def test_logit_adjustment_shifts_pseudo_labels_towards_rare_labeled_classes(monkeypatch, tau):
    objective = MaskMatchObjective(
        tiny_model(preset="fixmatch", confidence_threshold=0.6, logit_adjustment=tau, logit_adjusted_loss=0.0)
    )
    probs = torch.zeros(B, NUM_LABELS, H, W)
    probs[:, 0], probs[:, 1] = 0.7, 0.3  # the teacher prefers class 0 everywhere
    monkeypatch.setattr(objective, "teacher_probabilities", lambda pixel_values: probs)
    labels = torch.zeros(B, H, W, dtype=torch.long)
    labels[:, :4] = 1  # 1/8 of the labeled pixels are class 1, 7/8 class 0 ...
    labels[:, -4:] = 255  # ... and void pixels are not counted
    logs = run(objective, labels=labels).logs
    names = objective.config.id2label
    if tau == 0:
        assert not objective.labeled_class_pixels.any() and logs[f"confident_ratio/{names[0]}"] == 1
        return
    counts = torch.tensor([24.0, 4.0, 0.0, 0.0]) * B * W
    torch.testing.assert_close(objective.labeled_class_pixels, counts)
    prior = (counts + 1) / (counts.sum() + NUM_LABELS)
    expected = (probs[0, :, 0, 0].clamp_min(torch.finfo().tiny).log() - prior.log()).softmax(0)
    assert expected.argmax() == 1 and expected[1] > 0.6  # 0.3 / (1/8) beats 0.7 / (7/8)
    torch.testing.assert_close(objective.adjusted_probabilities(probs)[0, :, 0, 0], expected)
    assert logs[f"confident_ratio/{names[1]}"] == 1 and logs[f"confident_ratio/{names[0]}"] == 0
    run(objective, labels=labels)  # the count accumulates over steps
    torch.testing.assert_close(objective.labeled_class_pixels, 2 * counts)


def test_distribution_alignment_maps_the_teacher_marginal_onto_the_labeled_one(monkeypatch):
    model = tiny_model(preset="fixmatch", confidence_threshold=0.8, distribution_alignment=1.0)
    model.config.distribution_alignment_momentum = 0.5
    objective = MaskMatchObjective(model)
    probs = torch.zeros(B, NUM_LABELS, H, W)
    probs[:, 0], probs[:, 1] = 0.7, 0.3
    probs[..., W // 2 :] = 0.25  # crop padding: left out of the running marginal
    real = torch.ones(B, H, W, dtype=torch.bool)
    real[..., W // 2 :] = False
    monkeypatch.setattr(objective, "teacher_probabilities", lambda pixel_values: probs)
    labels = torch.zeros(B, H, W, dtype=torch.long)
    labels[:, :4] = 1  # labeled pixels: 7/8 class 0, 1/8 class 1
    logs = run(objective, labels=labels, unlabeled_pixel_mask=real).logs
    torch.testing.assert_close(objective.teacher_marginal(), torch.tensor([0.7, 0.3, 0.0, 0.0]))
    # A teacher predicting its own marginal everywhere is mapped onto the labeled frequencies (about 7/8, 1/8).
    pi = objective.labeled_class_frequencies()
    torch.testing.assert_close(objective.adjusted_probabilities(probs)[0, :, 0, 0], pi)
    assert logs["confident_ratio"] == pytest.approx(1.0)  # 0.875 >= 0.8, class 0 as before alignment
    probs[:, 0, :, : W // 2], probs[:, 1, :, : W // 2] = 0.5, 0.5
    run(objective, labels=labels, unlabeled_pixel_mask=real)
    # Bias-corrected running mean with momentum 0.5: (0.5 * 0.5 * first + 0.5 * second) / (1 - 0.5 ** 2).
    torch.testing.assert_close(objective.teacher_marginal(), torch.tensor([1.7 / 3, 1.3 / 3, 0.0, 0.0]))


@pytest.mark.parametrize("preset", ["supervised", "maskmatch"])
def test_logit_adjusted_loss_adds_tau_log_prior_to_the_labeled_logits_only(preset):
    objective = MaskMatchObjective(tiny_model(preset=preset, logit_adjusted_loss=0.5))
    inputs = batch()
    logs = run(objective).logs
    counts = torch.bincount(inputs["labels"].flatten(), minlength=NUM_LABELS).float()
    torch.testing.assert_close(objective.labeled_class_pixels, counts)  # counted in every preset
    pi = (counts + 1) / (counts.sum() + NUM_LABELS)
    logits = torch.randn(B, NUM_LABELS, H, W)
    target = inputs["labels"].clone()
    target[:, :3] = 255
    expected = nn.functional.cross_entropy(logits + 0.5 * pi.log().view(1, -1, 1, 1), target, ignore_index=255)
    torch.testing.assert_close(objective.labeled_cross_entropy(logits, target), expected)
    plain = run(MaskMatchObjective(tiny_model(preset=preset, logit_adjusted_loss=0.0))).logs
    assert logs["loss_x"] != plain["loss_x"] and set(logs) == set(plain)
    if preset == "maskmatch":  # same weights and pseudo-labels at step 0: the unlabeled terms are unchanged
        for term in ("loss_s", "loss_mask"):
            assert logs[term] == pytest.approx(plain[term])


def test_logit_adjusted_unlabeled_loss_puts_pseudo_labels_and_unlabeled_terms_in_the_posterior_frame(monkeypatch):
    """The teacher's argmax and confidence come from `log p + tau log pi`, and each unlabeled term is the
    cross-entropy of the student's `logits + tau log pi`, as `L_x`."""
    tau = 0.5
    model = tiny_model(
        preset="maskmatch", confidence_threshold=0.6, logit_adjusted_loss=tau, logit_adjusted_unlabeled_loss=True
    )
    objective = MaskMatchObjective(model).train()
    probs = torch.zeros(B, NUM_LABELS, H, W)
    probs[:, 0], probs[:, 1] = 0.45, 0.55  # the balanced teacher prefers class 1 by a little ...
    monkeypatch.setattr(objective, "teacher_probabilities", lambda pixel_values: probs)
    labels = torch.zeros(B, H, W, dtype=torch.long)
    labels[:, :4] = 1  # ... which is 1/8 of the labeled pixels (class 0: 7/8)
    student = []
    model.register_forward_hook(
        lambda module, args, output: student.append(output.logits) if torch.is_grad_enabled() else None
    )
    logs = run(objective, labels=labels).logs
    names = objective.config.id2label
    prior = objective.labeled_class_frequencies()
    posterior = (probs[0, :, 0, 0].log() + tau * prior.log()).softmax(0)
    assert posterior.argmax() == 0 and posterior[0] > 0.6  # 0.45 * (7/8) ** 0.5 beats 0.55 * (1/8) ** 0.5
    torch.testing.assert_close(objective.adjusted_probabilities(probs)[0, :, 0, 0], posterior)
    assert logs[f"confident_ratio/{names[0]}"] == 1 and logs[f"confident_ratio/{names[1]}"] == 0
    masked_logits = student[-1]
    target = torch.zeros(masked_logits.shape[0], H, W, dtype=torch.long)
    expected = nn.functional.cross_entropy(masked_logits + tau * prior.log().view(1, -1, 1, 1), target)
    assert logs["loss_mask"] == pytest.approx(expected.item(), rel=1e-5)
    plain = nn.functional.cross_entropy(masked_logits, target)
    assert abs(plain.item() - expected.item()) > 1e-3  # the adjustment matters here


def test_logit_adjusted_unlabeled_loss_needs_the_logit_adjusted_loss():
    with pytest.raises(ValueError, match="`logit_adjusted_unlabeled_loss` needs the logit-adjusted loss"):
        tiny_model(preset="maskmatch", logit_adjusted_loss=0.0, logit_adjusted_unlabeled_loss=True)


def test_default_teacher_is_one_pass_over_the_weak_views():
    """Single scale, no flip by default (issue 10: the 3-scale ensemble cost 3.3x for no better pseudo-labels)."""
    model = tiny_model(preset="maskmatch")
    recorder = ForwardRecorder(model)
    run(MaskMatchObjective(model).train())
    teacher_calls = [(call["batch"], call["size"]) for call in recorder.calls if not call["grad"]]
    assert teacher_calls == [(B, (H, W))]


def conv_weights(model) -> list[torch.Tensor]:
    """Convolution weights whose layout tells the memory format (not 1x1, not depthwise)."""
    return [p for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[-1] > 1]


@pytest.mark.parametrize(
    "segmenter, channels_last, expected",
    [("upernet", None, True), ("upernet-efficientnet-lite", None, True), ("segformer", None, False),
     ("upernet", False, False), ("segformer", True, True)],
)  # fmt: skip
def test_convolutional_segmenters_train_in_channels_last(segmenter, channels_last, expected):
    objective = MaskMatchObjective(tiny_model(segmenter, teacher="ema"), channels_last=channels_last)
    assert objective.channels_last is expected
    for model in (objective.student, objective.ema_teacher):
        weights = conv_weights(model)
        assert weights and all(w.is_contiguous(memory_format=torch.channels_last) is expected for w in weights)


@pytest.mark.parametrize("segmenter", ["upernet", "upernet-efficientnet-lite"])
def test_channels_last_changes_the_layout_not_the_step(segmenter, tmp_path):
    results = []
    for channels_last in (False, True):
        objective = MaskMatchObjective(
            tiny_model(segmenter, preset="unimatch+maskmatch", confidence_threshold=0), channels_last=channels_last
        ).train()
        torch.manual_seed(0)
        output = run(objective)
        output.loss.backward()
        results.append((output.logs, [p.grad for p in objective.student.parameters()]))
    (logs, grads), (logs_cl, grads_cl) = results
    assert logs_cl == pytest.approx(logs, rel=1e-4, abs=1e-6)
    scale = max(float(grad.abs().max()) for grad in grads)  # float rounding differs between the layouts
    for grad, grad_cl in zip(grads, grads_cl):
        torch.testing.assert_close(grad_cl, grad, rtol=1e-3, atol=1e-3 * scale)
    # A channels-last student saves and loads like any other.
    objective.student.save_pretrained(tmp_path)
    loaded = MaskMatchForSemanticSegmentation.from_pretrained(tmp_path).state_dict()
    for name, value in objective.student.state_dict().items():
        assert torch.equal(loaded[name], value)


class HostRoundTrips(TorchDispatchMode):
    """Records the ops that make an accelerator wait: results whose size or value the host must know (boolean
    indexing, `nonzero`, `.item()`) and tensors built from Python data (`torch.tensor(...)`, copied to the
    device each time)."""

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        indices = args[1] if name in ("aten.index", "aten.index_put", "aten.index_put_") else []
        boolean_index = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)
        if boolean_index or name in ("aten.nonzero", "aten.masked_select", "aten._local_scalar_dense", "aten.item",
                                     "aten.lift_fresh"):  # fmt: skip
            self.found.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("thresholds", ["fixed", "adaptive"])
def test_a_step_waits_for_the_device_only_for_its_logs(thresholds):
    """Nothing in a step needs the host to see device values until the logs come back in one transfer."""
    objective = MaskMatchObjective(
        tiny_model("upernet", preset="unimatch+maskmatch", class_thresholds=thresholds, teacher="ema")
    ).train()
    inputs = {
        "unlabeled_pixel_mask": torch.ones(B, H, W, dtype=torch.bool),
        "unlabeled_labels": torch.zeros(B, H, W, dtype=torch.long),
        "step": 3,
    }
    run(objective, **inputs)  # constants are made once, at the first step
    with HostRoundTrips() as recorder:
        output = run(objective, **inputs)
        output.loss.backward()
        objective.update_teacher(3)
    assert recorder.found == []
    assert {"pseudo_label_accuracy", "unlabeled_weight", "confident_ratio"} <= set(output.logs)


@pytest.mark.parametrize("cap", [0.0, 2.0])
def test_confident_share_cap_keeps_the_most_confident_pixels_of_a_drifting_class(monkeypatch, cap):
    objective = MaskMatchObjective(
        tiny_model(preset="fixmatch", confidence_threshold=0.9, confident_share_cap=cap, logit_adjusted_loss=0.0)
    )
    probs = torch.zeros(B, NUM_LABELS, H, W)
    probs[:, 0] = 1.0  # class 0 everywhere, fully confident ...
    rows = torch.linspace(0.91, 0.99, H // 2).view(-1, 1)
    probs[:, 0, : H // 2], probs[:, 1, : H // 2] = 1 - rows, rows  # ... but class 1, confident, in the top half
    monkeypatch.setattr(objective, "teacher_probabilities", lambda pixel_values: probs)
    labels = torch.zeros(B, H, W, dtype=torch.long)
    labels[:, :2] = 1  # class 1 is 1/16 of the labeled pixels
    logs = run(objective, labels=labels).logs
    names = objective.config.id2label
    if cap == 0:  # off: every confident pixel counts, and no class frequencies are kept
        assert logs[f"confident_ratio/{names[1]}"] == 0.5 and not objective.labeled_class_pixels.any()
        return
    pi = objective.labeled_class_frequencies()
    assert pi[1] == pytest.approx((2 * B * W + 1) / (B * H * W + NUM_LABELS))
    # Class 1 keeps floor(2 * pi_1 * n) pixels, its most confident ones (the bottom rows of the top half) ...
    limit = int(2 * pi[1] * B * H * W)
    assert logs[f"confident_ratio/{names[1]}"] == pytest.approx(limit / (B * H * W))
    pseudo, _ = objective.pseudo_labels(batch()["unlabeled_pixel_values"], torch.ones(B, H, W, dtype=torch.bool))
    kept = pseudo.confident & (pseudo.labels == 1)
    assert kept[:, H // 2 - 1].all() and not kept[:, 0].any()
    # ... while class 0, at 1/2 of the pixels and 15/16 of the labels, is under its cap: all of it counts.
    assert logs[f"confident_ratio/{names[0]}"] == 0.5
    # The cap counts real pixels only: with the second image all padding, class 1 keeps half as many.
    real = torch.ones(B, H, W, dtype=torch.bool)
    real[1:] = False
    pseudo, _ = objective.pseudo_labels(batch()["unlabeled_pixel_values"], real)
    kept = pseudo.confident & (pseudo.labels == 1)
    assert kept.sum() == int(2 * pi[1] * H * W) and not pseudo.confident[1:].any()
