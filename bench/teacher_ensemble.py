"""Benchmark: is the teacher's multi-scale / flip ensemble worth its cost? Pseudo-label accuracy against seconds.

For each trained checkpoint and each ensemble (scales x flip), the teacher (eval mode, no grad, as in training)
labels the weak views of the unlabeled frames of a CamVid split, the views training makes (rescale 0.5-2.0, crop
160, h-flip; one view per frame, the same for every ensemble), and the pseudo-labels are scored against the
frames' true labels, which training never sees:

- accuracy: argmax vs ground truth over the non-void real pixels;
- confident: share of those pixels whose max probability reaches the threshold (0.95), and the accuracy there
  (the pixels the unlabeled losses use);
- mIoU of the pseudo-labels;
- cost: seconds per batch of 4 views (median), and relative to the single-scale teacher.

    python bench/teacher_ensemble.py --camvid /tmp/camvid240 --checkpoints outputs/a outputs/b
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from camvid_split import load_camvid_split

from maskmatch_hf.data import SegmentationData
from maskmatch_hf.data_loaders import collate_segmentation, sample_seed
from maskmatch_hf.data_transforms import Resize, WeakAugmentation
from maskmatch_hf.metrics import SegmentationMetric
from maskmatch_hf.modeling_maskmatch import MaskMatchForSemanticSegmentation

ROOT = Path(__file__).resolve().parents[1]
ENSEMBLES = [
    ((1.0,), False),
    ((1.0,), True),
    ((0.75, 1.0), False),
    ((0.75, 1.0), True),
    ((0.75, 1.0, 1.25), False),
    ((0.75, 1.0, 1.25), True),
]


def weak_views(dataset, mapping, crop_size: int, resize: Resize | None, seed: int, batch_size: int):
    """Batches of one training weak view per frame (with labels and the real-pixel mask), fixed by `seed`."""
    transform = WeakAugmentation(crop_size, resize=resize, label_mapping=mapping, return_pixel_mask=True)
    samples = [transform(dataset[index], sample_seed(seed, index)) for index in range(len(dataset))]
    return [collate_segmentation(samples[i : i + batch_size]) for i in range(0, len(samples), batch_size)]


@torch.no_grad()
def score(model, batches, scales, flip, threshold: float) -> dict[str, float]:
    metric = SegmentationMetric(model.config.num_labels, ignore_index=255)
    known = correct = confident = confident_correct = 0
    seconds = []
    for batch in batches:
        start = time.perf_counter()
        probabilities = model.ensemble_probabilities(batch["pixel_values"], scales=scales, flip=flip)
        seconds.append(time.perf_counter() - start)
        confidence, prediction = probabilities.max(dim=1)
        labels = batch["labels"].masked_fill(~batch["pixel_mask"], 255)
        valid = labels != 255
        hit = (prediction == labels) & valid
        sure = (confidence >= threshold) & valid
        known += int(valid.sum())
        correct += int(hit.sum())
        confident += int(sure.sum())
        confident_correct += int((hit & sure).sum())
        metric.update(prediction, labels)
    return {
        "accuracy": correct / known,
        "confident": confident / known,
        "confident_accuracy": confident_correct / max(confident, 1),
        "miou": float(metric.compute()["mean_iou"]),
        "seconds": statistics.median(seconds),
    }


def teacher_benchmark_parser(description: str) -> argparse.ArgumentParser:
    """The flags of the benchmarks that score trained teachers on the weak views of a split's unlabeled frames."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--camvid", type=Path, default=ROOT.parent / "shared/data/camvid")
    parser.add_argument("--split", default="1_8")
    parser.add_argument("--resize", type=Resize.from_flag, help="As training's --resize (180 for 480x360 frames).")
    parser.add_argument("--checkpoints", nargs="+", required=True, help="MaskMatch checkpoint directories.")
    parser.add_argument("--crop_size", type=int, default=160)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int)
    return parser


def unlabeled_weak_views(args: argparse.Namespace) -> tuple[SegmentationData, list[dict[str, torch.Tensor]]]:
    """The split (after setting `--threads`) and the batches of one weak view per unlabeled frame."""
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_camvid_split(args.camvid, args.split)
    batches = weak_views(data.unlabeled, data.label_mapping, args.crop_size, args.resize, args.seed, args.batch_size)
    return data, batches


def main(argv: list[str] | None = None) -> None:
    args = teacher_benchmark_parser(__doc__.split("\n\n")[0]).parse_args(argv)
    data, batches = unlabeled_weak_views(args)
    print(
        f"teacher ensembles on {len(data.unlabeled)} unlabeled frames of CamVid {args.split} (one training weak view "
        f"each, crop {args.crop_size}, batch {args.batch_size}), {torch.get_num_threads()} threads\n"
    )
    for checkpoint in args.checkpoints:
        model = MaskMatchForSemanticSegmentation.from_pretrained(checkpoint).eval()
        results = {}
        # Two rounds, interleaved, keeping each ensemble's faster median: the machine's load hits all alike.
        for _ in range(2):
            for scales, flip in ENSEMBLES:
                result = score(model, batches, scales, flip, args.threshold)
                previous = results.get((scales, flip))
                if previous is not None:
                    result["seconds"] = min(result["seconds"], previous["seconds"])
                results[scales, flip] = result
        base = results[(1.0,), False]["seconds"]
        print(f"{checkpoint}\n")
        columns = ["scales", "flip", "PL accuracy", f"confident (>= {args.threshold:g})", "confident accuracy"]
        print("| " + " | ".join([*columns, "PL mIoU", "s / batch", "cost"]) + " |")
        print("|---|---|---|---|---|---|---|---|")
        for (scales, flip), r in results.items():
            print(
                f"| {', '.join(f'{s:g}' for s in scales)} | {'yes' if flip else 'no'} | {100 * r['accuracy']:.2f}% "
                f"| {100 * r['confident']:.2f}% | {100 * r['confident_accuracy']:.2f}% | {100 * r['miou']:.2f} "
                f"| {r['seconds']:.3f} | {r['seconds'] / base:.2f}x |"
            )
        print()


if __name__ == "__main__":
    main()
