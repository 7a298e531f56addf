"""End-to-end training: outputs, resume after a crash, config files, two processes (bad input: test_errors.py)."""

import json
import shutil
import textwrap

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from PIL import Image
from safetensors.torch import load_file

from maskmatch_hf import MaskMatchForSemanticSegmentation, MaskMatchObjective
from maskmatch_hf.errors import MaskMatchUsageError
from maskmatch_hf.train import (
    build_accelerator,
    build_scheduler,
    main,
    parameter_groups,
    parse_args,
    validate_arguments,
    warmup_steps,
)

from .conftest import make_camvid_like, run_on_two_processes, tiny_model, train_argv


def test_training_writes_model_card_plot_and_results(camvid_like, tmp_path, capsys):
    output_dir = tmp_path / "out"
    main(train_argv(camvid_like, output_dir, "--max_train_steps", "4", "--eval_steps", "2", "--with_tracking"))
    printed = capsys.readouterr().out
    assert "val mIoU" in printed and str(output_dir.resolve()) in printed

    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "all_results.json", "README.md",
                 "training_curves.png", "modeling_maskmatch.py"):  # fmt: skip
        assert (output_dir / name).is_file(), name
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["train_steps"] == 4 and 0 <= results["best_eval_mean_iou"] <= 1
    assert len(results["best_eval_per_category_iou"]) == 11
    final_eval = json.loads((output_dir / "training_history.json").read_text())["eval"][-1]
    confusion = np.array(final_eval["confusion_matrix"])  # pixel counts: rows true, columns predicted classes
    assert confusion.shape == (11, 11) and confusion.sum() > 0
    union = confusion.sum(0) + confusion.sum(1) - confusion.diagonal()
    present = union > 0
    iou = np.array(final_eval["per_category_iou"])
    np.testing.assert_allclose(iou[present], confusion.diagonal()[present] / union[present])
    assert 0 <= results["final_confident_ratio"] <= 1 and 0 <= results["final_pseudo_label_accuracy"] <= 1
    card = (output_dir / "README.md").read_text()
    assert "pipeline_tag: image-segmentation" in card and f"{100 * results['best_eval_mean_iou']:.2f}" in card
    assert "| sky |" in card and "library_name: transformers" in card and "model-index:" in card
    assert "- mini_camvid" in card and "non-commercial" in card and "shorter side" not in card
    with Image.open(output_dir / "training_curves.png") as plot:
        assert plot.size[0] > 400 and len(np.unique(np.asarray(plot.convert("L")))) > 10
    assert list(output_dir.glob("**/events.out.tfevents.*")), "tensorboard logs"

    model = MaskMatchForSemanticSegmentation.from_pretrained(output_dir)
    assert model.config.preset == "maskmatch" and model.config.id2label[0] == "sky"
    assert model.config.mask_patch_size == 8


@pytest.mark.parametrize("accumulation", ["1", "2"])
def test_resume_after_a_crash_matches_an_uninterrupted_run(camvid_like, tmp_path, monkeypatch, accumulation):
    common = ("--gradient_accumulation_steps", accumulation, "--max_train_steps", "4", "--checkpointing_steps", "2",
              "--eval_steps", "2", "--preset", "unimatch+maskmatch", "--teacher", "ema",
              "--ema_momentum", "0.5", "--class_thresholds", "adaptive", "--unlabeled_rampup_steps", "3",
              "--logit_adjustment", "0.5", "--distribution_alignment", "1")  # fmt: skip
    main(train_argv(camvid_like, tmp_path / "straight", *common))

    crashed = tmp_path / "crashed"
    calls = {"n": 0}
    original = MaskMatchObjective.update_teacher

    def crash_at_third_step(self, step=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash")
        original(self, step)

    monkeypatch.setattr(MaskMatchObjective, "update_teacher", crash_at_third_step)
    with pytest.raises(KeyboardInterrupt):
        main(train_argv(camvid_like, crashed, *common))
    monkeypatch.setattr(MaskMatchObjective, "update_teacher", original)
    assert sorted(p.name for p in crashed.glob("step_*")) == ["step_2"]

    main(train_argv(camvid_like, crashed, *common, "--resume_from_checkpoint", "latest"))
    straight_state = load_file(tmp_path / "straight" / "step_4" / "model.safetensors")
    resumed_state = load_file(crashed / "step_4" / "model.safetensors")
    assert straight_state.keys() == resumed_state.keys()
    assert any("ema_teacher" in key for key in straight_state) and "class_confidence" in straight_state
    assert straight_state["labeled_class_pixels"].sum() > 0 and straight_state["teacher_class_mass"][-1] > 0
    for key in straight_state:
        assert torch.equal(straight_state[key], resumed_state[key]), key
    straight = json.loads((tmp_path / "straight" / "all_results.json").read_text())
    resumed = json.loads((crashed / "all_results.json").read_text())
    assert straight.pop("train_seconds_per_step") > 0 and resumed.pop("train_seconds_per_step") > 0  # wall time
    assert straight == resumed
    history = json.loads((crashed / "training_history.json").read_text())
    assert [entry["step"] for entry in history["train"]] == [1, 2, 3, 4]
    assert history == json.loads((tmp_path / "straight" / "training_history.json").read_text())


def test_resume_under_other_hyperparameters_is_refused_naming_them(camvid_like, tmp_path, capsys):
    """A state resumed after a default changed (or with a flag left out) would not continue exactly."""
    output_dir = tmp_path / "out"
    common = ("--max_train_steps", "2", "--checkpointing_steps", "2", "--confident_share_cap", "1")
    main(train_argv(camvid_like, output_dir, *common))
    assert json.loads((output_dir / "step_2" / "maskmatch_recipe.json").read_text())["confident_share_cap"] == 1
    resumed = ("--max_train_steps", "4", "--resume_from_checkpoint", "latest")
    capsys.readouterr()
    assert main(train_argv(camvid_like, output_dir, *resumed, "--confident_share_cap", "0")) == 1
    message = capsys.readouterr().err
    assert "was saved with --confident_share_cap 1.0 (now 0.0)" in message and "Traceback" not in message
    assert not (output_dir / "step_4").exists()
    main(train_argv(camvid_like, output_dir, *common[2:], *resumed))  # the saved values: resumed
    assert (output_dir / "step_4").is_dir()


def test_polynomial_schedule_decays_each_group_from_its_own_base_lr():
    argv = ["--dataset_name", "x", "--output_dir", "o", "--max_train_steps", "20", "--learning_rate", "3e-4"]
    args = parse_args([*argv, "--num_warmup_steps", "0.1"]).training
    assert warmup_steps(args) == 2 and warmup_steps(parse_args([*argv, "--num_warmup_steps", "5"]).training) == 5
    assert warmup_steps(parse_args(argv).training) == 1  # the default: 5% of the steps
    optimizer = torch.optim.AdamW(parameter_groups(tiny_model(), args), lr=args.learning_rate)
    scheduler = build_scheduler(optimizer, args, num_processes=1)
    for step in range(20):
        factor = step / 2 if step < 2 else (1 - (step - 2) / 18) ** 0.9
        encoder_lr, head_lr = (group["lr"] for group in optimizer.param_groups)
        assert encoder_lr == pytest.approx(3e-4 * factor, rel=1e-9, abs=1e-15)
        assert head_lr == pytest.approx(3e-3 * factor, rel=1e-9, abs=1e-15)
        optimizer.step()
        scheduler.step()
    assert [group["lr"] for group in optimizer.param_groups] == [0.0, 0.0]


def test_bf16_mixed_precision_trains(camvid_like, tmp_path):
    output_dir = tmp_path / "out"
    main(train_argv(camvid_like, output_dir, "--max_train_steps", "2", "--mixed_precision", "bf16",
                    "--preset", "unimatch+maskmatch"))  # fmt: skip
    results = json.loads((output_dir / "all_results.json").read_text())
    assert np.isfinite(results["train_loss"]) and 0 <= results["best_eval_mean_iou"] <= 1
    state = load_file(output_dir / "model.safetensors")
    assert all(tensor.dtype != torch.bfloat16 for tensor in state.values())  # master weights stay float32


@pytest.mark.parametrize("native", [True, False])
def test_auto_mixed_precision_is_bf16_only_where_native(tmp_path, monkeypatch, caplog, native):
    """`--mixed_precision auto` trains in bf16 on a CPU with native bfloat16 and in float32 elsewhere, where bf16 is
    emulated and slow; an explicit bf16 there is kept, with a warning."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    loop = parse_args(["--dataset_name", "d", "--output_dir", str(tmp_path), "--mixed_precision", "auto"]).training
    assert build_accelerator(loop).mixed_precision == ("bf16" if native else "no")
    AcceleratorState._reset_state(reset_partial_state=True)
    loop = parse_args(["--dataset_name", "d", "--output_dir", str(tmp_path), "--mixed_precision", "bf16"]).training
    with caplog.at_level("WARNING"):
        assert build_accelerator(loop).mixed_precision == "bf16"
    assert ("no native bfloat16" in caplog.text) is not native


def test_config_file_supplies_flags_and_rejects_unknown_keys(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "dataset_name: somewhere\npreset: fixmatch\nmask_ratio: 0.5\noutput_dir: out\nresize: 180\n"
        "pretrained_backbone: true\nensemble_scales: [1, 1.5]\n"
    )
    args = parse_args(["--config", str(config), "--mask_ratio", "0.6"])
    assert (args.data.dataset_name, args.maskmatch.preset, args.maskmatch.mask_ratio) == ("somewhere", "fixmatch", 0.6)
    assert args.data.resize.shorter_side == 180 and args.model.pretrained_backbone
    assert args.maskmatch.ensemble_scales == [1.0, 1.5]
    config.write_text("dataset_name: somewhere\nmask_ratoi: 0.5\noutput_dir: out\n")
    with pytest.raises(SystemExit):
        parse_args(["--config", str(config)])


DISTRIBUTED_SCRIPT = textwrap.dedent(
    """
    import faulthandler, hashlib, json, sys
    import torch
    import torch.distributed as dist
    import maskmatch_hf.train as train_module
    from maskmatch_hf.data_transforms import WeakAugmentation, open_image

    # A hung rank prints where it waits, and the test fails. 29 s on a quiet 2-core machine; over 150 s when other
    # CPU-bound jobs share the cores, hence the margin.
    faulthandler.dump_traceback_later(400, exit=True)
    seen = []
    original_call = WeakAugmentation.__call__

    def recording_call(self, example, seed):
        seen.append((self.return_pixel_mask, hashlib.md5(open_image(example["image"]).tobytes()).hexdigest()))
        return original_call(self, example, seed)

    WeakAugmentation.__call__ = recording_call
    original_finish = train_module.finish

    def checking_finish(run, data):
        # Runs while the process group is still up (the trainer tears it down after `finish`).
        student = run.student
        rank, world = dist.get_rank(), dist.get_world_size()
        flat = torch.cat([p.detach().flatten() for p in student.parameters()])
        everyone = [torch.zeros_like(flat) for _ in range(world)]
        dist.all_gather(everyone, flat)
        assert all(torch.equal(everyone[0], other) for other in everyone), "weights differ across ranks"
        per_rank = [None] * world
        dist.all_gather_object(per_rank, seen)
        if rank == 0:
            for unlabeled in (False, True):
                # Within one pass over the data (5 images for the shorter streamed share) ranks never overlap.
                shares = [set([h for u, h in samples if u == unlabeled][:5]) for samples in per_rank]
                assert all(shares), "a rank read no data"
                assert not shares[0] & shares[1], f"ranks read the same images (unlabeled={unlabeled})"
            print("DISTRIBUTED OK", json.dumps([len(s) for s in per_rank]))
        return original_finish(run, data)

    train_module.finish = checking_finish
    train_module.main(sys.argv[1:])
    """
)


@pytest.mark.parametrize("streaming", [False, True])
def test_two_processes_train_on_disjoint_data(tmp_path, streaming):
    camvid_like = make_camvid_like(tmp_path / "mini_camvid", num_train=12)
    (camvid_like / "labeled.txt").write_text("".join(f"f{i:03d}\n" for i in range(6)))
    unlabeled_batch = "1"
    if streaming:
        # 11 streamed images over 2 ranks (6 / 5), 6 read per rank: the shorter stream repeats, nothing hangs.
        (camvid_like / "train" / "f011.png").unlink()
        (camvid_like / "trainannot" / "f011.png").unlink()
        unlabeled_batch = "2"
    script = tmp_path / "dist_train.py"
    script.write_text(DISTRIBUTED_SCRIPT)
    output_dir = tmp_path / "out"
    extra = ["--max_train_steps", "3", "--checkpointing_steps", "3", "--eval_steps", "3",
             "--per_device_train_batch_size", "1", "--per_device_unlabeled_batch_size", unlabeled_batch,
             "--class_thresholds", "adaptive"]  # fmt: skip
    # (adaptive class thresholds: the class confidences are summed over the processes)
    if streaming:
        extra += ["--streaming", "--unlabeled_split", "train"]
    result = run_on_two_processes([str(script), *train_argv(camvid_like, output_dir), *extra], timeout=500)
    assert "DISTRIBUTED OK" in result.stdout
    state = load_file(output_dir / "step_3" / "model.safetensors")
    model = MaskMatchForSemanticSegmentation.from_pretrained(output_dir)
    loaded = {f"student.{k}": v for k, v in model.state_dict().items()}
    assert all(torch.equal(state[k], loaded[k]) for k in loaded if k in state)


def test_streamed_labeled_data_trains_resumes_exactly_and_evaluates_with_windows(camvid_like, tmp_path):
    def argv(output_dir, *extra):
        flags = train_argv(camvid_like, output_dir, "--max_train_steps", "4", "--checkpointing_steps", "2",
                           "--eval_steps", "2", "--streaming_labeled", "--train_split", "val", "--streaming",
                           "--unlabeled_split", "train", "--eval_window_size", "32", "--eval_window_stride", "16",
                           *extra)  # fmt: skip
        index = flags.index("--labeled_ids")  # the streamed labeled set is a whole split
        return flags[:index] + flags[index + 2 :]

    main(argv(tmp_path / "straight"))
    results = json.loads((tmp_path / "straight" / "all_results.json").read_text())
    assert results["train_steps"] == 4 and 0 <= results["best_eval_mean_iou"] <= 1
    results.pop("train_seconds_per_step")  # wall time

    # Resume from the step-2 state in a fresh output dir: the streams pick up where they were.
    shutil.copytree(tmp_path / "straight" / "step_2", tmp_path / "resumed" / "step_2")
    main(argv(tmp_path / "resumed", "--resume_from_checkpoint", "latest"))
    straight = load_file(tmp_path / "straight" / "step_4" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "step_4" / "model.safetensors")
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
    resumed_results = json.loads((tmp_path / "resumed" / "all_results.json").read_text())
    assert resumed_results.pop("train_seconds_per_step") > 0 and resumed_results == results

    with pytest.raises(MaskMatchUsageError, match="--eval_window_stride needs --eval_window_size"):
        validate_arguments(parse_args(argv(tmp_path / "x", "--eval_window_stride", "64")))  # larger than the window


def test_checkpoint_steps_and_state_markers(tmp_path):
    from maskmatch_hf.train import checkpoint_step, is_complete_state, training_states

    assert checkpoint_step(tmp_path / "step_12") == 12 and checkpoint_step("step_x") is checkpoint_step("best") is None
    for step, marker in ((3, "history.json"), (5, "state_complete.json"), (7, None)):  # 3: saved before the rename
        (tmp_path / f"step_{step}").mkdir()
        if marker:
            (tmp_path / f"step_{step}" / marker).write_text(json.dumps({"step": step}))
    (tmp_path / "step_9.tmp").mkdir()
    states = training_states(tmp_path)
    assert [step for step, _ in states] == [3, 5, 7]
    assert [is_complete_state(path) for _, path in states] == [True, True, False]


def test_evaluation_batches_same_size_images_by_default():
    """One image per forward pass was the old default; same-size images share one now (issue 10)."""
    assert parse_args(["--output_dir", "out", "--dataset_name", "d"]).training.per_device_eval_batch_size == 4


def test_training_uses_the_fused_adamw(camvid_like, tmp_path, monkeypatch):
    """One fused AdamW kernel instead of per-tensor ones: 3x faster optimizer steps on CPU (issue 10)."""
    built = []

    class RecordingAdamW(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    main(train_argv(camvid_like, tmp_path / "out", "--max_train_steps", "1", "--preset", "supervised"))
    assert len(built) == 1 and built[0].defaults["fused"] is True
