"""Benchmark: does the offline ImageNet EfficientNet-Lite0 backbone help? Supervised UperNet on CamVid 1/8.

Trains the `supervised` preset twice with the same schedule, data order and seed: once from the converted
ImageNet weights, once from random initialisation, and prints both val mIoU.

    python bench/pretrained_backbone.py [--camvid ../shared/data/camvid] [--steps 500] [--output_dir outputs/bench]

CPU, 2 cores: about 0.2 s per step plus ~20 s per evaluation, so ~5 minutes for both runs at 500 steps.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from maskmatch_hf.train import main as train_main


def run(camvid: Path, output_dir: Path, steps: int, pretrained: bool, seed: int) -> tuple[float, float]:
    argv = [
        "--dataset_name", str(camvid),
        "--labeled_ids", str(camvid / "splits/1_8/labeled.txt"),
        "--unlabeled_ids", str(camvid / "splits/1_8/unlabeled.txt"),
        "--segmenter", "upernet", "--backbone", "efficientnet-lite0", "--upernet_hidden_size", "128",
        "--preset", "supervised",
        "--resize", "180", "--crop_size", "160", "--per_device_train_batch_size", "4",
        "--learning_rate", "2e-4", "--head_learning_rate_multiplier", "10",
        "--max_train_steps", str(steps), "--eval_steps", str(steps),
        "--seed", str(seed), "--output_dir", str(output_dir),
    ]  # fmt: skip
    if pretrained:
        argv.append("--pretrained_backbone")
    start = time.perf_counter()
    train_main(argv)
    seconds = time.perf_counter() - start
    results = json.loads((output_dir / "all_results.json").read_text())
    return 100 * results["final_eval_mean_iou"], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--camvid", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/camvid")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/bench_pretrained_backbone"))
    args = parser.parse_args()
    rows = []
    for pretrained in (True, False):
        name = "imagenet" if pretrained else "random"
        miou, seconds = run(args.camvid, args.output_dir / name, args.steps, pretrained, args.seed)
        rows.append((name, miou, seconds))
    print(f"\nsupervised UperNet-EfficientNet-Lite0, CamVid 1/8 (46 labeled), 240x180, {args.steps} steps")
    print(f"{'backbone init':<15}{'val mIoU':>10}{'seconds':>10}")
    for name, miou, seconds in rows:
        print(f"{name:<15}{miou:>10.2f}{seconds:>10.0f}")
    print(f"ratio imagenet / random mIoU: {rows[0][1] / rows[1][1]:.2f}")


if __name__ == "__main__":
    main()
