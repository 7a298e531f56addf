"""Bad input through `maskmatch-train` / `maskmatch-predict`: a clear error naming the flag or file, exit code 1
(2 for a model `maskmatch-predict` cannot load), no traceback, and no training step where it can be caught up front.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from maskmatch_hf import MaskMatchForSemanticSegmentation, MaskMatchObjective
from maskmatch_hf import predict as predict_module
from maskmatch_hf import train as train_module
from maskmatch_hf.data import CAMVID_ID2LABEL
from maskmatch_hf.data_loaders import InfiniteShardedBatchSampler
from maskmatch_hf.data_transforms import WeakAugmentation
from maskmatch_hf.errors import MaskMatchUsageError, rename_deprecated_flags

from .conftest import make_camvid_like, tiny_model, train_argv


@pytest.fixture
def no_training_step(monkeypatch):
    """Fails the test if a training step starts."""

    def forbidden(self, *args, **kwargs):
        raise AssertionError("a training step ran")

    monkeypatch.setattr(MaskMatchObjective, "forward", forbidden)


def train_error(capsys, *argv: str) -> str:
    """Runs `maskmatch-train` in-process, expects exit code 1 and returns its one-line error (no traceback)."""
    code = train_module.main(list(argv))
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    # Progress bars share stderr: the message is on a line of its own, after their control characters.
    [message] = [line[line.index("error: ") :] for line in re.split(r"[\r\n]", err) if "error: " in line]
    return message


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize(
    "flag",
    [
        ("--per_device_train_batch_size", "0"),
        ("--per_device_train_batch_size", "-1"),
        ("--per_device_unlabeled_batch_size", "0"),
        ("--per_device_eval_batch_size", "0"),
        ("--learning_rate", "-1"),
        ("--learning_rate", "nan"),
        ("--head_learning_rate_multiplier", "0"),
        ("--crop_size", "0"),
        ("--resize", "0"),
        ("--scale_range", "0", "2"),
        ("--eval_ensemble_scales", "1", "-0.5"),
        ("--gradient_accumulation_steps", "0"),
        ("--max_train_steps", "0"),
        ("--eval_steps", "0"),
        ("--checkpointing_steps", "-5"),
        ("--validation_samples", "0"),
        ("--weight_decay", "-0.1"),
        ("--num_warmup_steps", "-1"),
        ("--decoded_image_cache_mb", "-1"),
    ],
    ids=lambda flag: " ".join(flag),
)
def test_non_positive_sizes_and_rates_fail_before_anything_is_loaded(camvid_like, tmp_path, capsys, flag):
    output_dir = tmp_path / "out"
    message = train_error(capsys, *train_argv(camvid_like, output_dir), *flag)
    assert message.startswith(f"error: {flag[0]} must be ")
    assert not output_dir.exists()  # before the output dir, data and model


def test_zero_batch_size_never_waits_for_a_full_batch():
    with pytest.raises(MaskMatchUsageError, match="batch size must be at least 1"):
        InfiniteShardedBatchSampler(num_samples=4, batch_size=0, seed=0)


def test_invalid_hyperparameter_and_crop_too_small_for_the_model(camvid_like, tmp_path, capsys, no_training_step):
    message = train_error(capsys, *train_argv(camvid_like, tmp_path / "a"), "--mask_ratio", "1.5")
    assert message == "error: Invalid MaskMatch setting: `mask_ratio` must be in [0, 1), got 1.5."
    # The tiny SegFormer needs 9 px per side; a 3-scale teacher sees 8 px crops at scale 0.75 as 6 px.
    argv = [*train_argv(camvid_like, tmp_path / "b"), "--crop_size", "8"]
    message = train_error(capsys, *argv, "--ensemble_scales", "0.75", "1", "1.25")
    assert "--crop_size 8 is too small for this model" in message and "--crop_size 12 or more" in message
    assert "--crop_size 9 or more" in train_error(capsys, *argv)  # the default single-scale teacher


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--per_device_train_batch_size", "1"], "--per_device_train_batch_size 1 puts 1 image in the labeled pass"),
        (
            ["--preset", "unimatch", "--per_device_unlabeled_batch_size", "1"],
            "an unlabeled batch of 1 puts 1 image in the feature-perturbed pass",
        ),
    ],
    ids=["labeled", "feature-perturbed"],
)
def test_upernet_pass_of_one_image_is_refused_before_training(
    camvid_like, tmp_path, capsys, no_training_step, flags, expected
):
    """UperNet's pyramid pooling BatchNorm cannot normalize one 1x1 map: said up front, not by PyTorch at step 0."""
    upernet = ["--segmenter", "upernet", "--segmenter_config", "{}", "--upernet_hidden_size", "8"]
    message = train_error(capsys, *train_argv(camvid_like, tmp_path / "out"), *upernet, *flags)
    assert message.startswith(f"error: {expected}, and this segmenter needs at least 2 per pass")


@pytest.mark.parametrize(
    "broken",
    ["train/f000.png", "trainannot/f001.png", "train/f007.png", "val/f001.png"],
    ids=["labeled image", "labeled mask", "unlabeled image", "eval image"],
)
def test_truncated_png_is_named_by_the_start_up_check(camvid_like, tmp_path, capsys, no_training_step, broken):
    truncate(camvid_like / broken)
    message = train_error(capsys, *train_argv(camvid_like, tmp_path / "out"))
    kind = "mask" if "annot" in broken else "image"
    assert message.startswith(f"error: Unreadable {kind} {camvid_like / broken}: ") and "truncated" in message
    assert not list((tmp_path / "out").glob("step_*"))


def test_bad_labels_fail_before_training(camvid_like, tmp_path, capsys, no_training_step):
    Image.fromarray(np.full((48, 64), 40, dtype=np.uint8)).save(camvid_like / "trainannot" / "f002.png")
    message = train_error(capsys, *train_argv(camvid_like, tmp_path / "out"))
    assert message.startswith(f"error: Mask {camvid_like / 'trainannot' / 'f002.png'} holds label(s) [40] outside")


def test_decode_error_after_start_up_names_the_file(camvid_like, tmp_path, capsys):
    # Only row 0 of each split is checked up front: the broken eval image is met at evaluation, after training.
    truncate(camvid_like / "val" / "f002.png")
    argv = train_argv(camvid_like, tmp_path / "out", "--max_train_steps", "1", "--validation_samples", "1")
    message = train_error(capsys, *argv)
    assert message.startswith(f"error: Unreadable image {camvid_like / 'val' / 'f002.png'}: ")

    weak_view = WeakAugmentation(crop_size=16)
    with pytest.raises(MaskMatchUsageError, match="Unreadable image .*f002.png: image file is truncated"):
        weak_view({"image": {"path": str(camvid_like / "val" / "f002.png"), "bytes": None}}, seed=0)


def test_non_empty_output_dir_needs_overwrite_and_nothing_stale_survives(camvid_like, tmp_path, capsys, monkeypatch):
    output_dir = tmp_path / "out"
    first = train_argv(camvid_like, output_dir, "--max_train_steps", "2", "--checkpointing_steps", "1")
    assert train_module.main(first) == 0
    released = (output_dir / "model.safetensors").read_bytes()

    # A fresh run into the finished run's dir is refused before anything is touched.
    second = train_argv(camvid_like, output_dir, "--max_train_steps", "1", "--seed", "7")
    with monkeypatch.context() as patch:
        patch.setattr(MaskMatchObjective, "forward", lambda *args, **kwargs: pytest.fail("a training step ran"))
        message = train_error(capsys, *second)
    assert f"--output_dir {output_dir} is not empty" in message and "--overwrite_output_dir" in message
    assert (output_dir / "model.safetensors").read_bytes() == released
    assert sorted(p.name for p in output_dir.glob("step_*")) == ["step_1", "step_2"]

    # --overwrite_output_dir starts over: the old training states go, the results describe the new weights.
    assert train_module.main([*second, "--overwrite_output_dir"]) == 0
    assert not list(output_dir.glob("step_*"))
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["train_steps"] == 1 and results["best_step"] == 1
    assert (output_dir / "model.safetensors").read_bytes() != released
    best = load_file(output_dir / "best_model" / "model.safetensors")
    assert all(np.array_equal(best[k], v) for k, v in load_file(output_dir / "model.safetensors").items())

    # Nothing of the first run is left to resume.
    message = train_error(capsys, *second, "--resume_from_checkpoint", "latest")
    assert "holds no complete training state to resume" in message


def test_missing_or_unloadable_model_path(camvid_like, tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no retries against an unreachable Hub
    output_dir = tmp_path / "out"
    message = train_error(capsys, *train_argv(camvid_like, output_dir), "--model_name_or_path", "/no/such/dir")
    assert message == "error: --model_name_or_path /no/such/dir: the local path does not exist."
    assert not output_dir.exists()
    message = train_error(capsys, *train_argv(camvid_like, output_dir), "--model_name_or_path", "not/there")
    assert message.startswith("error: --model_name_or_path not/there: no such local path, and as a Hub repo id: ")

    Image.new("RGB", (16, 16)).save(tmp_path / "x.png")
    argv = ["--inputs", str(tmp_path / "x.png"), "--output_dir", str(tmp_path / "pred")]
    assert predict_module.main(["--model_name_or_path", "/no/such/dir", *argv]) == 2
    assert "Cannot load the model: --model_name_or_path /no/such/dir: the local path does not exist." in caplog.text
    assert not (tmp_path / "pred").exists()


def test_eval_image_smaller_than_the_model_needs_is_caught_up_front(camvid_like, tmp_path, capsys, no_training_step):
    # 64x48 frames at --resize 0.125 are 8x6; the tiny SegFormer needs 9 px per side.
    message = train_error(capsys, *train_argv(camvid_like, tmp_path / "out"), "--resize", "0.125")
    assert f"Image {camvid_like / 'val' / 'f000.png'} is evaluated at 8x6" in message
    assert "smaller than the 9 px per side the model needs" in message


def test_read_only_output_dir_is_refused_before_step_0(camvid_like, tmp_path, capsys, monkeypatch, no_training_step):
    output_dir = tmp_path / "read_only"
    output_dir.mkdir()
    output_dir.chmod(0o555)
    if os.geteuid() == 0:  # root writes through permission bits: answer as the kernel does for anyone else
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != output_dir and real_access(path, mode))
    try:
        message = train_error(capsys, *train_argv(camvid_like, output_dir))
    finally:
        output_dir.chmod(0o755)
    assert message == f"error: --output_dir {output_dir} is not writable."


def test_incomplete_training_state_is_named_and_the_previous_one_suggested(camvid_like, tmp_path, capsys, monkeypatch):
    output_dir = tmp_path / "out"
    argv = train_argv(camvid_like, output_dir, "--checkpointing_steps", "1", "--checkpoints_total_limit", "3")
    assert train_module.main([*argv, "--max_train_steps", "3"]) == 0
    (output_dir / "step_3" / "model.safetensors").unlink()

    resume = [*argv, "--max_train_steps", "4", "--resume_from_checkpoint"]
    with monkeypatch.context() as patch:
        patch.setattr(MaskMatchObjective, "forward", lambda *args, **kwargs: pytest.fail("a training step ran"))
        for state in ("latest", str(output_dir / "step_3")):
            message = train_error(capsys, *resume, state)
            assert message == (
                f"error: Training state {output_dir / 'step_3'} is incomplete (missing model.safetensors): resume "
                f"from the previous one with --resume_from_checkpoint {output_dir / 'step_2'}."
            )
    assert train_module.main([*resume, str(output_dir / "step_2")]) == 0
    assert json.loads((output_dir / "all_results.json").read_text())["train_steps"] == 4


def test_segnet_folder_not_named_camvid(tmp_path, caplog):
    # CamVid in the SegNet layout under another name: recognised by its label values (0-10, void 11).
    data = make_camvid_like(tmp_path / "street_frames")
    with caplog.at_level("INFO"):
        assert train_module.main(train_argv(data, tmp_path / "camvid_run", "--max_train_steps", "1")) == 0
    assert "mask value 11 (void label)" in caplog.text
    model = MaskMatchForSemanticSegmentation.from_pretrained(tmp_path / "camvid_run")
    assert model.config.id2label == CAMVID_ID2LABEL

    # Another SegNet-layout dataset (labels 0-3, no void): the class names come from the starting checkpoint.
    other = tmp_path / "other_frames"
    shutil.copytree(data, other)
    for mask in other.glob("*annot/*.png"):
        Image.fromarray(np.asarray(Image.open(mask)) % 4).save(mask)
    names = {0: "road", 1: "car", 2: "sky", 3: "tree"}
    tiny_model("segformer", id2label=names).save_pretrained(tmp_path / "checkpoint")
    caplog.clear()
    with caplog.at_level("INFO"):
        argv = train_argv(other, tmp_path / "other_run", "--max_train_steps", "1")
        assert train_module.main([*argv, "--model_name_or_path", str(tmp_path / "checkpoint")]) == 0
    assert "4 classes (road, car, sky, tree)" in caplog.text and "set `void_label`" in caplog.text
    assert MaskMatchForSemanticSegmentation.from_pretrained(tmp_path / "other_run").config.id2label == names


def test_without_class_names_the_error_says_where_to_get_them(tmp_path, capsys, no_training_step):
    data = make_camvid_like(tmp_path / "frames")
    for mask in data.glob("*annot/*.png"):
        Image.fromarray(np.asarray(Image.open(mask)) % 4).save(mask)
    message = train_error(capsys, *train_argv(data, tmp_path / "out"))
    assert message.startswith("error: No class names: pass --id2label")


def test_bugs_keep_their_traceback(camvid_like, tmp_path, monkeypatch):
    def broken(config):
        raise RuntimeError("a bug")

    monkeypatch.setattr(train_module, "load_segmentation_data", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        train_module.main(train_argv(camvid_like, tmp_path / "out"))


def test_console_scripts_print_the_message_alone(camvid_like, tmp_path):
    """Real processes, as the installed `maskmatch-train` / `maskmatch-predict` run."""
    command = [sys.executable, "-m", "maskmatch_hf.train", *train_argv(camvid_like, tmp_path / "out")]
    result = subprocess.run([*command, "--per_device_train_batch_size", "0"], capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (1, "error: --per_device_train_batch_size must be positive, got 0.\n")

    # `--model`, the deprecated name of `--model_name_or_path`: it still works, and the warning reaches the user.
    command = [sys.executable, "-m", "maskmatch_hf.predict", "--model", "/no/such/dir", "--inputs", str(tmp_path)]
    result = subprocess.run([*command, "--output_dir", str(tmp_path / "pred")], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--model_name_or_path /no/such/dir: the local path does not exist." in result.stderr
    assert "FutureWarning: --model is deprecated" in result.stderr and "use --model_name_or_path" in result.stderr


def test_rename_deprecated_flags_warns_and_keeps_values():
    renames = {"--model": "--model_name_or_path", "--scales": "--ensemble_scales"}
    argv = ["--model", "m", "--scales=0.5", "1", "--model_name_or_path_x", "--", "--model"]
    with pytest.warns(FutureWarning) as caught:
        renamed = rename_deprecated_flags(argv, renames)
    assert renamed == [
        "--model_name_or_path", "m", "--ensemble_scales=0.5", "1", "--model_name_or_path_x", "--", "--model"
    ]  # fmt: skip
    assert [str(w.message) for w in caught] == [
        "--model is deprecated and will be removed in a future release; use --model_name_or_path instead.",
        "--scales is deprecated and will be removed in a future release; use --ensemble_scales instead.",
    ]
    assert caught[0].filename == __file__  # the warning points at the caller, not at the helper
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rename_deprecated_flags(["--model_name_or_path", "m", "--ensemble_scales=1"], renames) == [
            "--model_name_or_path", "m", "--ensemble_scales=1"
        ]  # fmt: skip
