"""The issue-10 benchmarks run end to end on a tiny CamVid-like folder (their figures come from real runs)."""

import sys
from pathlib import Path

import pytest
import torch

from .conftest import make_camvid_like, tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


@pytest.fixture
def camvid_split(tmp_path: Path) -> Path:
    root = make_camvid_like(tmp_path / "camvid")
    (root / "splits" / "1_8").mkdir(parents=True)
    (root / "splits" / "1_8" / "labeled.txt").write_text("f000\nf001\n")
    (root / "splits" / "1_8" / "unlabeled.txt").write_text("\n".join(f"f{i:03d}" for i in range(2, 10)) + "\n")
    return root


@pytest.mark.parametrize("native", [True, False])
def test_step_cost_times_every_pass_of_every_setting(camvid_split, capsys, monkeypatch, native):
    """Every mode by default where the device has native bfloat16; the float32 ones only elsewhere."""
    import step_cost

    monkeypatch.setattr(step_cost, "native_bf16", lambda device: native)
    argv = ["--camvid", str(camvid_split), "--presets", "fixmatch", "unimatch+maskmatch", "--steps", "1",
            "--warmup", "0", "--crop_size", "32", "--batch_size", "2", "--upernet_hidden_size", "8"]  # fmt: skip
    step_cost.main(argv)
    printed = capsys.readouterr().out
    assert "| **maskmatch / fixmatch**" not in printed  # only with both presets
    for mode in step_cost.MODES:
        assert (f"Parts of the step, {mode}" in printed) is (native or "bf16" not in mode)
    rows = [
        "student masked: backward",
        "student feature-perturbed: forward",
        "teacher: model passes",
        "strong views + CutMix + masking",
        "data loading + weak view",
        "overhead = step - model passes",
    ]
    for row in rows:
        assert f"| {row} |" in printed


def test_step_cost_trains_the_masked_view_of_the_batch_fraction_it_is_given(camvid_split, capsys):
    import step_cost

    argv = ["--camvid", str(camvid_split), "--presets", "maskmatch", "--steps", "1", "--warmup", "0", "--modes",
            "fp32", "--crop_size", "32", "--batch_size", "4", "--upernet_hidden_size", "8"]  # fmt: skip
    step_cost.main([*argv, "--mask_batch_fraction", "0.5"])
    printed = capsys.readouterr().out
    assert "mask_batch_fraction 0.5," in printed and "| student masked: backward |" in printed
    step_cost.main(argv)
    assert "mask_batch_fraction 1.0," in capsys.readouterr().out  # the config's default


def test_teacher_ensemble_scores_each_ensemble(camvid_split, tmp_path, capsys):
    import teacher_ensemble

    model = tiny_model("upernet", id2label={i: str(i) for i in range(11)})
    model.save_pretrained(tmp_path / "checkpoint")
    teacher_ensemble.main(["--camvid", str(camvid_split), "--checkpoints", str(tmp_path / "checkpoint"),
                           "--crop_size", "32"])  # fmt: skip
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 0.75, 1, 1.25 |")]
    assert len(rows) == 2  # with and without flip


def test_pseudo_label_balance_scores_each_tau(camvid_split, tmp_path, capsys):
    import pseudo_label_balance

    model = tiny_model("upernet", id2label={i: f"c{i}" for i in range(11)})
    model.save_pretrained(tmp_path / "checkpoint")
    pseudo_label_balance.main(["--camvid", str(camvid_split), "--checkpoints", str(tmp_path / "checkpoint"),
                               "--crop_size", "32", "--taus", "0", "1"])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" |")[0] for line in lines if line.startswith(("| 0 |", "| 1 |"))] == ["| 0", "| 1"]
    per_class = [line for line in lines if line.startswith("| ") and line.count("%") == 2 and " / " in line]
    assert len(per_class) == 11 and all(line.count(" / ") == 4 for line in per_class)
    sources = lines[lines.index("| class | tau 0 | tau 1 |") + 2 :][:11]
    assert [line.split(" |")[0] for line in sources] == [f"| c{i}" for i in range(11)]
    pseudo_label_balance.main(["--camvid", str(camvid_split), "--checkpoints", str(tmp_path / "checkpoint"),
                               "--crop_size", "32", "--taus", "0", "--method", "distribution_alignment"])  # fmt: skip
    assert "(distribution_alignment)" in capsys.readouterr().out


def test_error_sources_rank_the_true_classes_of_a_pseudo_label_s_mistakes():
    from pseudo_label_balance import error_sources

    confident = torch.tensor([[5, 0, 0], [0, 8, 6], [0, 0, 3]])  # true x pseudo-label
    assert error_sources(confident, 2, ["a", "b", "c"]) == "b 66.7"  # 6 of its 9 confident pixels are truly b
    assert error_sources(confident, 0, ["a", "b", "c"]) == "-"


def test_results_table_recipe_names_only_settings_the_preset_uses():
    """A setting a preset ignores (the teacher ensemble for fixmatch, everything unlabeled for supervised) is not
    part of its recipe; the precision and the evaluation / checkpoint schedule reach the reproduce command."""
    import json

    import results_table

    results = Path(__file__).resolve().parents[1] / "bench" / "results"
    record = json.loads((results / "1_8-fixmatch-seed1-fixed-cpu-2500.json").read_text())
    old_ensemble = {**record["maskmatch_config"], "ensemble_scales": [0.75, 1.0, 1.25], "mask_patch_size": 8}
    # The record predates `logit_adjusted_loss` (default 0.5 since) and the confident share cap (default 1 since):
    # it ran without them; the cap never touches `supervised`. It masked every unlabeled image, today's default.
    without_laloss = ["--logit_adjusted_loss", "0.0"]
    without_both = [*without_laloss, "--confident_share_cap", "0.0"]
    maskmatch_recipe = ["--mask_patch_size", "8", "--ensemble_scales", "0.75", "1.0", "1.25", *without_both]
    for preset, expected in (
        ("supervised", without_laloss),
        ("fixmatch", without_both),
        ("maskmatch", maskmatch_recipe),
    ):
        assert results_table.recipe({**record, "preset": preset, "maskmatch_config": old_ensemble}) == expected
    half_batch = {**old_ensemble, "mask_batch_fraction": 0.5}
    half_recipe = results_table.recipe({**record, "preset": "maskmatch", "maskmatch_config": half_batch})
    assert half_recipe == [*maskmatch_recipe[:2], "--mask_batch_fraction", "0.5", *maskmatch_recipe[2:]]
    # A training flag that changes what semi-supervised presets learn, with no config field of its own.
    more_unlabeled = {
        **record,
        "bench_command": "python bench/compare_presets.py -- --per_device_unlabeled_batch_size 8",
    }
    assert results_table.recipe(more_unlabeled) == [*without_both, "--per_device_unlabeled_batch_size", "8"]
    assert results_table.recipe({**more_unlabeled, "preset": "supervised"}) == without_laloss
    threshold_zero = {**record, "maskmatch_config": {**record["maskmatch_config"], "confidence_threshold": 0.0}}
    assert results_table.recipe(threshold_zero) == ["--confidence_threshold", "0.0", *without_both]
    assert results_table.precision(record) == "fp32"
    assert "--mixed_precision no" in results_table.command(record, [])
    assert results_table.precision({**record, "mixed_precision": "bf16"}) == "bf16"
    bench_command = "python bench/compare_presets.py --mixed_precision bf16 --tag t -- --eval_steps 800 --lambda_s 2"
    bf16 = {**record, "bench_command": bench_command}
    assert results_table.precision(bf16) == "bf16"
    command = results_table.command(bf16, [])
    assert "--mixed_precision bf16" in command and command.endswith("-- --eval_steps 800")
