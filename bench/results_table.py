"""Render `bench/results/*.json` (written by `bench/compare_presets.py`) as the README's Results table.

Each row is one run: its split, preset and recipe (every setting that differs from today's defaults, so the
command below the table reproduces it with today's code), the final model's val mIoU, its IoU on the five rare
classes, pseudo-label accuracy and confident-pixel ratio over the last tenth of training, s/step and the
machine. The README section between the `results` markers is replaced in place:

    python bench/results_table.py            # rewrite the README section
    python bench/results_table.py --print    # print it instead
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
from pathlib import Path

from maskmatch_hf import MaskMatchConfig
from maskmatch_hf.configuration_efficientnet_lite import EfficientNetLiteConfig

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
# Flags that change how the data is loaded, never what is trained: no tag needed, left out of the recipe.
LOADER_FLAGS = ("--dataloader_num_workers", "--decoded_image_cache_mb")
RARE = ("pole", "sign_symbol", "fence", "pedestrian", "bicyclist")
RECIPE_FIELDS = ("confidence_threshold", "class_thresholds", "teacher", "mask_patch_size", "mask_ratio",
                 "mask_batch_fraction", "ensemble_scales", "unlabeled_rampup_steps", "lambda_mask", "logit_adjustment",
                 "distribution_alignment", "logit_adjusted_loss", "logit_adjusted_unlabeled_loss",
                 "confident_share_cap")  # fmt: skip
SUPERVISED_FIELDS = ("logit_adjusted_loss",)  # the recipe settings that also shape the labeled loss
# Settings added after the first runs: a record without one trained with it off.
ADDED_LATER = {
    "logit_adjustment": 0.0,
    "distribution_alignment": 0.0,
    "logit_adjusted_loss": 0.0,
    "confident_share_cap": 0.0,
    "mask_batch_fraction": 1.0,
    "logit_adjusted_unlabeled_loss": False,
}
BN_FLAG = "--segmenter_config"
SCHEDULE_FLAGS = ("--checkpointing_steps", "--eval_steps")
UNLABELED_TRAINING_FLAGS = ("--per_device_unlabeled_batch_size",)  # shape what is learned, not in the config


def default_bn_momentum(commit: str) -> float:
    """EfficientNet-Lite's default BatchNorm momentum at `commit` (it changed from 0.01 to 0.1)."""
    source = subprocess.run(
        ["git", "show", f"{commit.removesuffix('+dirty')}:maskmatch_hf/configuration_efficientnet_lite.py"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return float(re.search(r"batch_norm_momentum: float \| int = ([\d.]+)", source).group(1))


def bench_argv(record: dict) -> tuple[list[str], list[str]]:
    """compare_presets.py's own arguments and the flags it was given after `--` for training."""
    argv = shlex.split(record["bench_command"])
    return (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])


def extra_flags(record: dict) -> list[str]:
    """The flags given after `--` to compare_presets.py, loader flags left out."""
    extra = bench_argv(record)[1]
    for flag in LOADER_FLAGS:
        while flag in extra:
            index = extra.index(flag)
            del extra[index : index + 2]
    return extra


def recipe_fields(preset: str) -> tuple[str, ...]:
    """The recipe settings `preset` actually uses: for supervised only those of the labeled loss, the ensemble only
    with a multi-scale teacher, the masking settings only with masked modeling."""
    components = MaskMatchConfig(preset=preset).components
    if not components.unlabeled:
        return SUPERVISED_FIELDS
    unused = set()
    if not components.multiscale_teacher:
        unused.add("ensemble_scales")
    if not components.masked_modeling:
        unused |= {"mask_patch_size", "mask_ratio", "mask_batch_fraction", "lambda_mask"}
    return tuple(name for name in RECIPE_FIELDS if name not in unused)


def recipe(record: dict) -> list[str]:
    """Flags that make today's code train this run's recipe: its settings that differ from today's defaults."""
    config, defaults = record["maskmatch_config"], MaskMatchConfig()
    flags = []
    for name in recipe_fields(record["preset"]):
        value, default = config.get(name, ADDED_LATER.get(name)), getattr(defaults, name)
        default = list(default) if isinstance(default, tuple) else default
        if value is not None and value != default:
            flags += [f"--{name}", *map(str, value)] if isinstance(value, list) else [f"--{name}", str(value)]
    extra = extra_flags(record)
    if BN_FLAG in extra:
        momentum = json.loads(extra[extra.index(BN_FLAG) + 1])["backbone_config"]["batch_norm_momentum"]
    else:
        momentum = default_bn_momentum(record["git_commit"])
    if momentum != EfficientNetLiteConfig().batch_norm_momentum:
        flags += [BN_FLAG, json.dumps({"backbone_config": {"batch_norm_momentum": momentum}})]
    if MaskMatchConfig(preset=record["preset"]).components.unlabeled:
        flags += given_flags(record, UNLABELED_TRAINING_FLAGS)
    return flags


def given_flags(record: dict, names: tuple[str, ...]) -> list[str]:
    """The flags among `names` (each with its value) given after `--` to the run."""
    extra, flags = extra_flags(record), []
    for flag in names:
        if flag in extra:
            flags += extra[extra.index(flag) : extra.index(flag) + 2]
    return flags


def schedule_flags(record: dict) -> list[str]:
    """Extra flags that change when the run evaluates or saves, not what it learns (kept in its command)."""
    return given_flags(record, SCHEDULE_FLAGS)


def precision(record: dict) -> str:
    """The run's autocast dtype, "fp32" for none. Records from before compare_presets.py stored it have it in
    their command only, and ran in float32 unless that names one."""
    if "mixed_precision" in record:
        value = record["mixed_precision"]
    else:
        head = bench_argv(record)[0]
        value = head[head.index("--mixed_precision") + 1] if "--mixed_precision" in head else None
    return "fp32" if value in (None, "no") else value


def last(curve: list | None) -> str:
    return "-" if not curve else f"{100 * curve[-1][1]:.1f}"


def command(record: dict, flags: list[str]) -> str:
    argv = ["python", "bench/compare_presets.py", "--camvid", ".camvid240", "--split", record["split"],
            "--steps", str(record["steps"]), "--presets", record["preset"], "--seed", str(record["seed"])]  # fmt: skip
    dtype = precision(record)
    argv += ["--mixed_precision", "no" if dtype == "fp32" else dtype]
    if record["tag"]:
        argv += ["--tag", record["tag"]]
    flags = [*flags, *schedule_flags(record)]
    return shlex.join([*argv, *(["--", *flags] if flags else [])])


def render(records: list[dict]) -> str:
    lines = [
        "| split | preset | recipe (vs. defaults) | seed | steps | val mIoU | rare-class IoU | PL acc. | confident"
        " | s/step | device | precision |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    commands = []
    for record in records:
        flags = recipe(record)
        rare = sum(record["final_val_per_class_iou"][name] for name in RARE) / len(RARE)
        shown = flags[: flags.index(BN_FLAG)] if BN_FLAG in flags else list(flags)
        if BN_FLAG in flags:
            shown.append(f"backbone BN momentum {json.loads(flags[-1])['backbone_config']['batch_norm_momentum']}")
        shown = " ".join(shown)
        device = (
            record["machine"]["gpu"]
            if record["machine"]["gpu"] != "none"
            else f"{record['machine']['cpu_cores']} CPU cores"
        )
        lines.append(
            f"| {record['split'].replace('_', '/')} | {record['preset']} | {shown or 'defaults'} | {record['seed']}"
            f" | {record['steps']} | **{100 * record['final_val_mean_iou']:.2f}** | {100 * rare:.1f}"
            f" | {last(record['pseudo_label_accuracy_curve'])} | {last(record['confident_ratio_curve'])}"
            f" | {record['seconds_per_step']:.3f} | {device} | {precision(record)} |"
        )
        commands.append(f"# {record['name']} (commit {record['git_commit'][:7]})\n{command(record, flags)}")
    body = "\n".join(lines)
    reproduce = "\n".join(commands)
    return (
        f"{START}\n{body}\n\n{seed_summary(records)}\n\nEach row, reproduced with today's code:\n\n"
        f"```bash\n{reproduce}\n```\n{END}"
    )


def seed_summary(records: list[dict]) -> str:
    """Mean, spread and count of the final val mIoU of recipes run more than once (other seeds, or reruns)."""
    groups: dict[tuple, list[float]] = {}
    for record in records:
        key = (record["split"], record["steps"], record["preset"], " ".join(recipe(record)), precision(record))
        groups.setdefault(key, []).append(100 * record["final_val_mean_iou"])
    rows = [
        f"| {split.replace('_', '/')} | {preset} | {flags or 'defaults'} | {dtype} | {len(values)}"
        f" | {statistics.mean(values):.2f} | {min(values):.2f}-{max(values):.2f} |"
        for (split, _, preset, flags, dtype), values in groups.items()
        if len(values) > 1
    ]
    if not rows:
        return "No recipe has been run more than once yet."
    header = "| split | preset | recipe | precision | runs | mean val mIoU | range |\n|---|---|---|---|---|---|---|"
    return "Recipes run more than once (seeds, or GPU reruns of one seed):\n\n" + header + "\n" + "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results_dir", type=Path, default=RESULTS)
    parser.add_argument("--print", action="store_true", help="Print the section instead of rewriting README.md.")
    args = parser.parse_args()
    records = [json.loads(path.read_text()) for path in sorted(args.results_dir.glob("*.json"))]
    order = {"supervised": 0, "fixmatch": 1, "unimatch": 2, "maskmatch": 3, "unimatch+maskmatch": 4}
    records.sort(key=lambda r: (r["split"], r["steps"], order.get(r["preset"], 9), r["seed"], r["tag"] or ""))
    section = render(records)
    if args.print:
        print(section)
        return
    readme = README.read_text()
    if START not in readme or END not in readme:
        raise SystemExit(f"{README} has no {START} ... {END} section to replace.")
    before, rest = readme.split(START, 1)
    README.write_text(before + section + rest.split(END, 1)[1])
    print(f"Results table of {len(records)} runs written to {README}")


if __name__ == "__main__":
    main()
