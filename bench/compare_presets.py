"""Benchmark: does semi-supervised training beat supervised training? Presets side by side on CamVid.

Every run uses the same data, seed, data order, model (UperNet-128 on the ImageNet EfficientNet-Lite0, frames
at 240x180, crop 160, batch 4 labeled + 4 unlabeled) and step count, and evaluates the *final* model on val.
Each run writes `bench/results/<split>-<preset>[-<tag>]-<steps>.json` with its figures (val mIoU and per-class
IoU, pseudo-label accuracy and confident ratio over training, per-class confident pseudo-labels and the wrong share
of them, s/step), the exact command, the git commit and the machine. Runs are independent: run them one at a time,
on different machines, or resume one cut off (its training state is in `--output_dir`); a run whose result file
exists is skipped. `python bench/results_table.py` turns the files into the README's Results table.

    python bench/compare_presets.py --steps 4000 --split 1_8 --presets supervised fixmatch maskmatch
    python bench/compare_presets.py --steps 4000 --presets maskmatch --tag fixed-thr -- --class_thresholds fixed

Flags after `--` go to `maskmatch-train` unchanged (ablations); name such runs with `--tag`. Use the 240x180
copy made by `bench/resize_camvid.py` for speed (`--camvid .camvid240`): evaluation sees the same pixels as
`--resize 180` on the original frames.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from results_table import LOADER_FLAGS

from maskmatch_hf.hardware import process_device, resolve_mixed_precision
from maskmatch_hf.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CURVE_POINTS = 10


def machine() -> dict[str, str | int]:
    """Where a run trained: CPU, core count, GPU, library versions."""
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next(
            (line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line), cpu
        )
    return {
        "cpu": cpu,
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def git_commit() -> str:
    """HEAD of this checkout, `+dirty` with uncommitted package changes. `BENCH_GIT_COMMIT` overrides it for
    copies of the tree whose `.git` is not the one the code came from (e.g. a tree shipped to a GPU machine)."""
    if os.environ.get("BENCH_GIT_COMMIT"):
        return os.environ["BENCH_GIT_COMMIT"]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "maskmatch_hf"], cwd=ROOT, capture_output=True, text=True
        )
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def curve(history: list[dict[str, float]], name: str) -> list[list[float]] | None:
    """`[step, mean]` of `name` over `CURVE_POINTS` equal chunks of training (chunk end step)."""
    entries = [entry for entry in history if name in entry]
    if not entries:
        return None
    chunks = np.array_split(np.arange(len(entries)), min(CURVE_POINTS, len(entries)))
    return [[entries[c[-1]]["step"], float(np.mean([entries[i][name] for i in c]))] for c in chunks]


def per_class_curves(history: list[dict[str, float]], prefix: str) -> dict[str, list[list[float]] | None]:
    """[`curve`] of each `<prefix>/<label>` in the history, by label."""
    names = sorted({key for entry in history for key in entry if key.startswith(f"{prefix}/")})
    return {name.split("/", 1)[1]: curve(history, name) for name in names}


def train_argv(args: argparse.Namespace, preset: str, output_dir: Path) -> list[str]:
    camvid = args.camvid
    return [
        "--dataset_name", str(camvid),
        "--labeled_ids", str(camvid / f"splits/{args.split}/labeled.txt"),
        "--unlabeled_ids", str(camvid / f"splits/{args.split}/unlabeled.txt"),
        "--segmenter", "upernet", "--backbone", "efficientnet-lite0", "--pretrained_backbone",
        "--upernet_hidden_size", "128", "--preset", preset,
        "--resize", "180", "--crop_size", "160", "--per_device_train_batch_size", "4",
        "--max_train_steps", str(args.steps), "--eval_steps", str(max(1, args.steps // 4)),
        "--checkpointing_steps", str(max(1, args.steps // 10)), "--checkpoints_total_limit", "1",
        "--seed", str(args.seed), "--output_dir", str(output_dir), "--resume_from_checkpoint", "latest",
        "--mixed_precision", args.mixed_precision,
        *args.train_args,
    ]  # fmt: skip


def run(args: argparse.Namespace, preset: str) -> Path:
    """Train one preset (resuming its state if any) and write its result file."""
    name = "-".join([args.split, preset.replace("+", "_"), *([args.tag] if args.tag else []), str(args.steps)])
    result_path = args.results_dir / f"{name}.json"
    if result_path.exists() and not args.force:
        print(f"{result_path} exists: skipped")
        return result_path
    output_dir = args.output_dir / name
    argv = train_argv(args, preset, output_dir)
    train_main(argv)
    results = json.loads((output_dir / "all_results.json").read_text())
    history = json.loads((output_dir / "training_history.json").read_text())
    config = json.loads((output_dir / "config.json").read_text())
    final = history["eval"][-1]
    record = {
        "name": name,
        "split": args.split,
        "preset": preset,
        "tag": args.tag,
        "steps": args.steps,
        "seed": args.seed,
        "mixed_precision": args.mixed_precision,
        "final_val_mean_iou": final["mean_iou"],
        "final_val_per_class_iou": dict(
            zip([config["id2label"][str(i)] for i in range(len(final["per_category_iou"]))], final["per_category_iou"])
        ),  # fmt: skip
        "final_val_mean_accuracy": final["mean_accuracy"],
        "final_val_overall_accuracy": final["overall_accuracy"],
        # Pixel counts of the final model on val, rows true and columns predicted classes (id2label order).
        "final_val_confusion_matrix": final.get("confusion_matrix"),
        "val_mean_iou_curve": [[e["step"], e["mean_iou"]] for e in history["eval"]],
        "best_val_mean_iou": results.get("best_eval_mean_iou"),
        "pseudo_label_accuracy_curve": curve(history["train"], "pseudo_label_accuracy"),
        "confident_pseudo_label_accuracy_curve": curve(history["train"], "confident_pseudo_label_accuracy"),
        "confident_ratio_curve": curve(history["train"], "confident_ratio"),
        "confident_ratio_per_class_curve": per_class_curves(history["train"], "confident_ratio"),
        "confident_wrong_ratio_per_class_curve": per_class_curves(history["train"], "confident_wrong_ratio"),
        "seconds_per_step": results.get("train_seconds_per_step"),
        "maskmatch_config": {k: v for k, v in config.items() if k not in ("segmenter_config", "id2label", "label2id")},
        "command": shlex.join([sys.executable, "-m", "maskmatch_hf.train", *argv]),
        "bench_command": shlex.join([sys.executable, *sys.argv]),
        "git_commit": git_commit(),
        "machine": machine(),
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{name}: final val mIoU {100 * record['final_val_mean_iou']:.2f} -> {result_path}")
    return result_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--camvid", type=Path, default=ROOT.parent / "shared/data/camvid")
    parser.add_argument("--split", default="1_8", help="A folder of CamVid's splits/: 1_8, 1_4 or 1_2.")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--presets", nargs="+", default=["supervised", "fixmatch", "maskmatch"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--mixed_precision",
        choices=["no", "fp16", "bf16", "auto"],
        default="auto",
        help="Autocast dtype. Default auto: bf16 where the device has native bfloat16 (1.7x faster CPU steps there, "
        "val mIoU held on a pair of runs), else no (fp32). Result files record the resolved value.",
    )
    parser.add_argument("--tag", help="Name for a run with extra training flags (ablations).")
    parser.add_argument("--results_dir", type=Path, default=RESULTS)
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/bench_presets"))
    parser.add_argument("--force", action="store_true", help="Re-run presets whose result file exists.")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then extra maskmatch-train flags.")
    args = parser.parse_args()
    args.train_args = [a for a in args.train_args if a != "--"]
    args.mixed_precision = resolve_mixed_precision(args.mixed_precision, process_device())
    # Flags that change the recipe need a tag; how the data is loaded does not.
    recipe_flags = [a for a in args.train_args if a.startswith("--") and a not in LOADER_FLAGS]
    if recipe_flags and not args.tag:
        parser.error(f"runs with extra training flags ({' '.join(recipe_flags)}) need a --tag")
    for preset in args.presets:
        record = json.loads(run(args, preset).read_text())
        accuracy = (record["pseudo_label_accuracy_curve"] or [[0, float("nan")]])[-1][1]
        confident = (record["confident_ratio_curve"] or [[0, float("nan")]])[-1][1]
        print(
            f"{record['name']:<40} val mIoU {100 * record['final_val_mean_iou']:6.2f}  PL acc {100 * accuracy:5.1f}"
            f"  confident {100 * confident:5.1f}%  {record['seconds_per_step'] or float('nan'):.3f} s/step"
        )


if __name__ == "__main__":
    main()
