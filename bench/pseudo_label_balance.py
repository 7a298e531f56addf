"""Benchmark: how balanced are the teacher's pseudo-labels, with logit adjustment or distribution alignment?

A teacher trained on imbalanced labels absorbs the pixels of rare classes into frequent ones. For each trained
checkpoint and each `tau` of `--method` (`logit_adjustment` or `distribution_alignment`), the teacher (eval mode,
single scale, as in training) labels one training weak view of each unlabeled frame of a CamVid split (rescale
0.5-2.0, crop 160, h-flip), its probabilities adjusted by `MaskMatchObjective.adjusted_probabilities` with the
class frequencies of the split's labeled pixels (and, for distribution alignment, the teacher's mean class
probabilities over all these views, the value its running mean settles at), and the pseudo-labels are scored
against the frames' true labels, which training never sees:

- per class, recall (share of the class's pixels pseudo-labeled as it) and precision, for the argmax and for the
  confident pixels (adjusted max probability >= the threshold, 0.95), which are what the unlabeled losses use;
- pseudo-label mIoU (argmax), confident share and confident accuracy, over all classes.

    python bench/pseudo_label_balance.py --camvid /tmp/camvid240 --checkpoints outputs/a --taus 0 0.5 1 \
        --method distribution_alignment
"""

from __future__ import annotations

import numpy as np
import torch
from teacher_ensemble import teacher_benchmark_parser, unlabeled_weak_views

from maskmatch_hf.data_transforms import decode_label
from maskmatch_hf.modeling_maskmatch import MaskMatchForSemanticSegmentation
from maskmatch_hf.objective import MaskMatchObjective


def count_labeled_pixels(objective: MaskMatchObjective, dataset, mapping) -> None:
    """Feeds every labeled mask to the objective's running count, which then holds what training's converges to."""
    for index in range(len(dataset)):
        objective.count_labeled_pixels(torch.from_numpy(mapping(np.asarray(decode_label(dataset[index]["label"])))))


@torch.no_grad()
def teacher_marginal(objective: MaskMatchObjective, batches) -> torch.Tensor:
    """The teacher's mean class probabilities over the real pixels of all the views."""
    mass = torch.zeros(objective.config.num_labels)
    for batch in batches:
        probabilities = objective.teacher_probabilities(batch["pixel_values"])
        mass += (probabilities * batch["pixel_mask"].unsqueeze(1)).sum(dim=(0, 2, 3))
    return mass / sum(int(batch["pixel_mask"].sum()) for batch in batches)


@torch.no_grad()
def confusions(
    objective: MaskMatchObjective, batches, method: str, taus: list[float], threshold: float
) -> dict[float, tuple[torch.Tensor, torch.Tensor]]:
    """Per tau of `method`, confusion matrices (true x pseudo-label) over all real, non-void pixels and over the
    confident ones. The teacher runs once per batch; only the adjustment changes with tau."""
    num_labels = objective.config.num_labels
    results = {tau: tuple(torch.zeros(num_labels, num_labels, dtype=torch.long) for _ in range(2)) for tau in taus}
    for batch in batches:
        teacher = objective.teacher_probabilities(batch["pixel_values"])
        labels = batch["labels"].masked_fill(~batch["pixel_mask"], 255)
        valid = labels != 255
        for tau, (every, sure) in results.items():
            setattr(objective.config, method, tau)
            confidence, prediction = objective.adjusted_probabilities(teacher).max(dim=1)
            pairs = labels[valid] * num_labels + prediction[valid]
            every += torch.bincount(pairs, minlength=num_labels**2).view(num_labels, num_labels)
            confident = (confidence >= threshold)[valid]
            sure += torch.bincount(pairs[confident], minlength=num_labels**2).view(num_labels, num_labels)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = teacher_benchmark_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--taus", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0])
    parser.add_argument("--method", choices=["logit_adjustment", "distribution_alignment"], default="logit_adjustment")
    args = parser.parse_args(argv)
    data, batches = unlabeled_weak_views(args)
    print(
        f"pseudo-labels of {len(data.unlabeled)} unlabeled frames of CamVid {args.split} (one training weak view "
        f"each, crop {args.crop_size}), confident: adjusted max probability >= {args.threshold:g}\n"
    )
    for checkpoint in args.checkpoints:
        model = MaskMatchForSemanticSegmentation.from_pretrained(checkpoint).eval()
        names = [model.config.id2label[index] for index in range(model.config.num_labels)]
        objective = MaskMatchObjective(model, channels_last=False)
        count_labeled_pixels(objective, data.labeled, data.label_mapping)
        counts = objective.labeled_class_pixels
        if args.method == "distribution_alignment":
            marginal = teacher_marginal(objective, batches)
            objective.teacher_class_mass.copy_(torch.cat([marginal, marginal.new_ones(1)]))
        results = confusions(objective, batches, args.method, args.taus, args.threshold)
        print(f"{checkpoint} ({args.method})\n")
        print("| tau | PL mIoU | confident | confident accuracy |")
        print("|---|---|---|---|")
        for tau, (every, sure) in results.items():
            iou = every.diag() / (every.sum(0) + every.sum(1) - every.diag()).clamp_min(1)
            confident, total = sure.sum(), every.sum()
            print(
                f"| {tau:g} | {100 * iou.mean():.2f} | {100 * confident / total:.2f}% "
                f"| {100 * sure.diag().sum() / confident.clamp_min(1):.2f}% |"
            )
        print("\nper class, confident recall / precision (argmax recall / precision), %:\n")
        print("| class | labeled share | unlabeled share | " + " | ".join(f"tau {tau:g}" for tau in results) + " |")
        print("|---|---|---|" + "---|" * len(results))
        all_pixels = next(iter(results.values()))[0]  # true x pseudo-label, the same true labels for every tau
        unlabeled_share = all_pixels.sum(1) / all_pixels.sum()
        for index, name in enumerate(names):
            cells = []
            for every, sure in results.values():
                recall = 100 * sure[index, index] / every[index].sum().clamp_min(1)
                precision = 100 * sure[index, index] / sure[:, index].sum().clamp_min(1)
                argmax_recall = 100 * every[index, index] / every[index].sum().clamp_min(1)
                argmax_precision = 100 * every[index, index] / every[:, index].sum().clamp_min(1)
                cells.append(f"{recall:.1f} / {precision:.1f} ({argmax_recall:.1f} / {argmax_precision:.1f})")
            shares = f"{100 * counts[index] / counts.sum():.2f}% | {100 * unlabeled_share[index]:.2f}%"
            print(f"| {name} | {shares} | " + " | ".join(cells) + " |")
        print("\nwhere each class's wrong confident pseudo-labels come from: their true classes (most first), in % of")
        print("the class's confident pseudo-labels:\n")
        print("| class | " + " | ".join(f"tau {tau:g}" for tau in results) + " |")
        print("|---|" + "---|" * len(results))
        for index, name in enumerate(names):
            cells = [error_sources(sure, index, names) for _, sure in results.values()]
            print(f"| {name} | " + " | ".join(cells) + " |")
        print()


def error_sources(confident: torch.Tensor, predicted: int, names: list[str], top: int = 2) -> str:
    """The `top` true classes of the confident pixels pseudo-labeled `predicted` but not truly it, as shares of
    all its confident pixels (`confident`: true x pseudo-label counts)."""
    column = confident[:, predicted].clone()
    total = column.sum().clamp_min(1)
    column[predicted] = 0
    ranked = [int(index) for index in column.argsort(descending=True)[:top] if column[index] > 0]
    return ", ".join(f"{names[index]} {100 * column[index] / total:.1f}" for index in ranked) or "-"


if __name__ == "__main__":
    main()
