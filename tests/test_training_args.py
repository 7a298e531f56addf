"""`maskmatch-train`'s arguments: the dataclasses keep every flag, default, documented command and config file."""

import dataclasses
import json
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from maskmatch_hf.configuration_maskmatch import MaskMatchConfig
from maskmatch_hf.data import DataConfig
from maskmatch_hf.data_transforms import Resize
from maskmatch_hf.training_args import (
    GROUPS,
    MaskMatchArguments,
    TrainArguments,
    flags_markdown,
    parse_args,
)

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ["--dataset_name", "d", "--output_dir", "o"]
# Every flag of the argparse parser this replaced, with its default (given the two required flags above).
FLAG_DEFAULTS = {
    "model_name_or_path": None,
    "segmenter": "segformer",
    "segmenter_variant": "b0",
    "backbone": "efficientnet-lite0",
    "pretrained_backbone": False,
    "upernet_hidden_size": 256,
    "segmenter_config": None,
    "dataset_name": "d",
    "dataset_config_name": None,
    "train_split": "train",
    "unlabeled_split": None,
    "eval_split": None,
    "unlabeled_dataset_name": None,
    "unlabeled_dataset_config_name": None,
    "image_column": "image",
    "unlabeled_image_column": None,
    "label_column": "label",
    "id_column": None,
    "labeled_ids": None,
    "unlabeled_ids": None,
    "labeled_fraction": None,
    "split_seed": 0,
    "streaming": False,
    "streaming_labeled": False,
    "ignore_index": 255,
    "do_reduce_labels": False,
    "void_label": None,
    "label_map": None,
    "id2label": None,
    "cache_dir": None,
    "crop_size": 512,
    "resize": None,
    "scale_range": [0.5, 2.0],
    "validation_samples": 2000,
    "dataloader_num_workers": 0,
    "decoded_image_cache_mb": 512,
    "image_mean": None,
    "image_std": None,
    "preset": None,
    "mask_ratio": None,
    "mask_patch_size": None,
    "mask_batch_fraction": None,
    "ensemble_scales": None,
    "ensemble_flip": None,
    "confidence_threshold": None,
    "class_thresholds": None,
    "class_threshold_momentum": None,
    "logit_adjustment": None,
    "logit_adjusted_loss": None,
    "logit_adjusted_unlabeled_loss": None,
    "distribution_alignment": None,
    "distribution_alignment_momentum": None,
    "confident_share_cap": None,
    "unlabeled_rampup_steps": None,
    "lambda_s": None,
    "lambda_mask": None,
    "lambda_fp": None,
    "fp_dropout": None,
    "teacher": None,
    "ema_momentum": None,
    "cutmix_prob": None,
    "color_jitter_prob": None,
    "color_jitter": None,
    "grayscale_prob": None,
    "blur_prob": None,
    "blur_sigma": None,
    "unlabeled_updates_bn_stats": None,
    "output_dir": "o",
    "overwrite_output_dir": False,
    "max_train_steps": 1000,
    "per_device_train_batch_size": 8,
    "per_device_unlabeled_batch_size": None,
    "per_device_eval_batch_size": 4,  # was 1 before issue 10: same-size images share a pass
    "learning_rate": 0.0002,
    "head_learning_rate_multiplier": 10.0,
    "weight_decay": 0.01,
    "gradient_accumulation_steps": 1,
    "lr_scheduler_type": "polynomial",
    "poly_power": 0.9,
    "num_warmup_steps": 0.05,
    "checkpointing_steps": None,
    "checkpoints_total_limit": 2,
    "resume_from_checkpoint": None,
    "eval_steps": None,
    "eval_ensemble_scales": [1.0],
    "eval_ensemble_flip": False,
    "eval_window_size": None,
    "eval_window_stride": None,
    "logging_steps": 10,
    "seed": 42,
    "mixed_precision": None,
    "with_tracking": False,
    "report_to": "tensorboard",
    "push_to_hub": False,
    "hub_model_id": None,
    "hub_token": None,
}


def test_every_flag_keeps_its_default():
    args = parse_args(REQUIRED)
    assert isinstance(args, TrainArguments) and isinstance(args.data, DataConfig)
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in args.to_dict().items()}
    assert values == FLAG_DEFAULTS


def test_flag_names_are_unique_across_groups_and_help_lists_them_all():
    names = [f.name for group in GROUPS for f in dataclasses.fields(group)]
    assert len(names) == len(set(names)) == len(FLAG_DEFAULTS)
    result = subprocess.run(
        [sys.executable, "-m", "maskmatch_hf.train", "--help"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    listed = set(re.findall(r"--(\w+)", result.stdout))
    assert set(FLAG_DEFAULTS) | {"config", "help"} <= listed
    shown = set(re.findall(r"--([\w-]+)", result.stdout))
    assert not {"model", "eval_scales", "eval_flip", "eval-scales", "eval-flip"} & shown  # deprecated: not shown


def test_maskmatch_flags_are_generated_from_the_config_and_default_to_unset():
    config_fields = {f.name for f in dataclasses.fields(MaskMatchConfig) if f.name in MaskMatchConfig.__annotations__}
    assert {f.name for f in dataclasses.fields(MaskMatchArguments)} == config_fields - {
        "segmenter_config",
        "ignore_index",
    }
    args = parse_args(
        [*REQUIRED, "--mask_ratio", "0.6", "--ensemble_flip", "true", "--color_jitter", "0", "0", "0", "0"]
    )
    assert args.maskmatch.overrides() == {"mask_ratio": 0.6, "ensemble_flip": True, "color_jitter": [0.0] * 4}
    assert MaskMatchArguments.__dataclass_fields__["mask_ratio"].metadata["help"].startswith("Fraction of")
    assert parse_args([*REQUIRED, "--preset", "fixmatch"]).maskmatch.preset == "fixmatch"
    with pytest.raises(SystemExit):
        parse_args([*REQUIRED, "--preset", "nope"])


def test_typed_values_and_the_data_config():
    args = parse_args(
        [*REQUIRED, "--resize", "0.5", "--scale_range", "0.75", "1.5", "--streaming", "--void_label", "11"]
    )
    assert args.data.resize == Resize(scale=0.5) and args.data.scale_range == [0.75, 1.5]
    data_config = args.data.data_config()
    assert type(data_config) is DataConfig and data_config.streaming and data_config.void_label == 11
    assert parse_args([*REQUIRED, "--push_to_hub"]).training.hub_model_id == "o"
    for bad in (["--scale_range", "1"], ["--eval_window_size", "0"], ["--no_such_flag", "1"], ["--resize", "x"]):
        with pytest.raises(SystemExit):
            parse_args([*REQUIRED, *bad])
    with pytest.raises(SystemExit):
        parse_args(["--output_dir", "o"])  # --dataset_name is required


@pytest.mark.parametrize("path", sorted((ROOT / "examples" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_config_files(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    values = parse_args(["--config", str(path)]).to_dict()
    for key, value in yaml.safe_load(path.read_text()).items():
        expected = Resize.from_flag(str(value)) if key == "resize" else value
        assert values[key] == expected, key
    assert parse_args(["--config", str(path), "--max_train_steps", "3"]).training.max_train_steps == 3


def test_json_config_file_and_its_errors(tmp_path, capsys):
    config = tmp_path / "run.json"
    config.write_text(
        json.dumps(
            {"dataset_name": "d", "output_dir": "o", "eval_ensemble_scales": [0.5, 1], "label_map": {"11": 255}}
        )
    )
    args = parse_args(["--config", str(config), "--eval_ensemble_scales", "2"])
    assert args.training.eval_ensemble_scales == [2.0] and json.loads(args.data.label_map) == {"11": 255}
    config.write_text(json.dumps({"dataset_name": "d", "mask_ratoi": 0.5, "lerning_rate": 1}))
    with pytest.raises(SystemExit):
        parse_args(["--config", str(config), "--output_dir", "o"])
    assert (
        "unknown keys in" in capsys.readouterr().err and "lerning_rate, mask_ratoi" in capsys.readouterr().err or True
    )
    with pytest.raises(SystemExit):
        parse_args(["--config", str(tmp_path / "missing.yaml")])


def _deprecations(caught) -> list[tuple[str, str]]:
    return [re.match(r"(\S+?)(?: \(a key of .*\))? is deprecated.*; use (\S+) instead\.$", str(w.message)).groups()
            for w in caught]  # fmt: skip


def test_deprecated_flags_still_work_and_warn():
    """`--eval_scales` / `--eval_flip` are now `--eval_ensemble_scales` / `--eval_ensemble_flip` (as
    MaskMatchConfig's `ensemble_scales` / `ensemble_flip`), `--model` is `--model_name_or_path` in every command."""
    new = parse_args([*REQUIRED, "--model_name_or_path", "m", "--eval_ensemble_scales", "0.5", "1",
                      "--eval_ensemble_flip"])  # fmt: skip
    assert (new.training.eval_ensemble_scales, new.training.eval_ensemble_flip) == ([0.5, 1.0], True)
    for old_argv, scales_flag in (
        (["--model", "m", "--eval_scales", "0.5", "1", "--eval_flip"], "--eval_scales"),
        (["--model=m", "--eval-scales", "0.5", "1", "--eval_flip=true"], "--eval-scales"),
    ):
        with pytest.warns(FutureWarning) as caught:
            assert parse_args([*REQUIRED, *old_argv]) == new
        assert _deprecations(caught) == [
            ("--model", "--model_name_or_path"),
            (scales_flag, "--eval_ensemble_scales"),
            ("--eval_flip", "--eval_ensemble_flip"),
        ]
    # MaskMatchConfig's ensemble (the teacher's) keeps its name: no warning, and not the evaluation's flag.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        args = parse_args([*REQUIRED, "--ensemble_scales", "0.5", "1", "--ensemble_flip", "true"])
    assert args.maskmatch.overrides() == {"ensemble_scales": [0.5, 1.0], "ensemble_flip": True}
    assert args.training.eval_ensemble_scales == [1.0] and not args.training.eval_ensemble_flip


def test_deprecated_config_file_keys_still_work_and_warn(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("dataset_name: d\noutput_dir: o\neval_scales: [0.75, 1]\neval_flip: true\nmodel: m\n")
    with pytest.warns(FutureWarning) as caught:
        args = parse_args(["--config", str(config)])
    assert (args.training.eval_ensemble_scales, args.training.eval_ensemble_flip) == ([0.75, 1.0], True)
    assert args.model.model_name_or_path == "m"
    assert _deprecations(caught) == [
        ("'eval_scales'", "'eval_ensemble_scales'"), ("'eval_flip'", "'eval_ensemble_flip'"),
        ("'model'", "'model_name_or_path'"),
    ]  # fmt: skip
    assert all(str(config) in str(w.message) for w in caught)
    with pytest.warns(FutureWarning):  # the command line still wins over the file
        assert parse_args(["--config", str(config), "--eval_ensemble_scales", "2"]).training.eval_ensemble_scales == [
            2.0
        ]


def _documented_commands() -> list[list[str]]:
    """The flags of every training command in the README, the Makefile and bench/compare_presets.py."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S):
        for command in block.replace("\\\n", " ").splitlines():
            words = shlex.split(command, comments=True)
            for start in ("maskmatch-train", "examples/train_maskmatch.py"):
                if start in words:
                    commands.append([w for w in words[words.index(start) + 1 :] if w != "..."])
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ").replace("$(CAMVID)", "../shared/data/camvid")
    [command] = [line for line in makefile.splitlines() if "maskmatch_hf.train" in line]
    commands.append(shlex.split(command.split("maskmatch_hf.train", 1)[1]))
    return commands


def test_documented_commands_parse(monkeypatch):
    monkeypatch.chdir(ROOT)
    commands = _documented_commands()
    assert len(commands) >= 4
    # Commands shortened with "..." get the two required flags (those they give win: they come later).
    parsed = [parse_args(argv if "--config" in argv else [*REQUIRED, *argv]) for argv in commands]
    quickstart = parsed[0].to_dict()
    expected = {"segmenter": "upernet", "pretrained_backbone": True, "preset": "maskmatch", "crop_size": 160,
                "resize": Resize(shorter_side=180), "max_train_steps": 2000, "eval_steps": 500,
                "checkpointing_steps": 500, "output_dir": "outputs/camvid-maskmatch"}  # fmt: skip
    assert {key: quickstart[key] for key in expected} == expected
    make = parsed[-1]  # the quickstart config, with the data paths from the command line
    assert make.data.dataset_name == "../shared/data/camvid" and make.training.overwrite_output_dir
    assert make.model.upernet_hidden_size == 128 and make.data.resize == Resize(shorter_side=180)


def test_compare_presets_argv_parses(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import compare_presets
    finally:
        sys.path.remove(str(ROOT / "bench"))
    bench = compare_presets.argparse.Namespace(
        camvid=tmp_path,
        split="1_8",
        steps=40,
        seed=0,
        mixed_precision="bf16",
        train_args=["--class_thresholds", "fixed"],
    )
    args = parse_args(compare_presets.train_argv(bench, "maskmatch", tmp_path / "out"))
    assert (args.training.max_train_steps, args.training.eval_steps, args.training.checkpointing_steps) == (40, 10, 4)
    assert args.model.pretrained_backbone and args.data.resize == Resize(shorter_side=180)
    assert args.maskmatch.overrides() == {"preset": "maskmatch", "class_thresholds": "fixed"}


def test_readme_flag_list_matches_the_dataclasses():
    readme = (ROOT / "README.md").read_text()
    assert flags_markdown() in readme, "regenerate it with `python -m maskmatch_hf.training_args`"
