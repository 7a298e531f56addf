"""Score a semantic segmenter on a labeled split: the `maskmatch-evaluate` command and its library functions.

```bash
maskmatch-evaluate --model_name_or_path outputs/camvid-maskmatch --dataset_name ../shared/data/camvid \
    --split val --resize 180
# several processes:
accelerate launch --num_processes 2 -m maskmatch_hf.evaluation --model_name_or_path ... --dataset_name ...
```

prints mIoU, mean accuracy, overall accuracy and a per-class IoU / accuracy table, and writes them to a JSON file
with the keys of evaluate's `mean_iou`. Works with MaskMatch checkpoints and stock SegFormer / UperNet ones, on
any labeled split training accepts (Hub id, local dataset, parquet, imagefolder with `metadata.jsonl`, paired
folders such as SegNet's `test/` + `testannot/`), streamed or not, whole images or sliding windows, with
multi-scale / flip test-time augmentation.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from .configuration_maskmatch import IMAGENET_MEAN, IMAGENET_STD
from .data import DataConfig, build_label_mapping, is_camvid, load_labeled_split
from .data_loaders import eval_dataloader
from .data_transforms import EvalTransform, Resize
from .data_validation import check_example, validate_split
from .errors import MaskMatchUsageError, check_local_or_hub, rename_deprecated_flags, report_usage_errors
from .metrics import SegmentationMetric, scores_from_confusion_matrix
from .modeling_maskmatch import multiscale_probabilities
from .predict import (
    DEPRECATED_FLAGS,
    DTYPES,
    add_ensemble_arguments,
    add_window_arguments,
    check_window_arguments,
    load_segmenter,
)

logger = logging.getLogger(__name__)

# DataConfig fields that describe an evaluation split (the others select training data).
DATA_FLAGS = (
    "dataset_name",
    "dataset_config_name",
    "image_column",
    "label_column",
    "ignore_index",
    "do_reduce_labels",
    "void_label",
    "label_map",
    "cache_dir",
)
# Same-size images share a forward pass: 4 per pass scores CamVid val 10% faster than 1 on 2 CPU cores, and far
# faster on a GPU; larger batches gained nothing more on CPU (issue 10).
DEFAULT_EVAL_BATCH_SIZE = 4
SCORE_KEYS = ("mean_iou", "mean_accuracy", "overall_accuracy", "per_category_iou", "per_category_accuracy")

__all__ = ["evaluate_checkpoint", "evaluate_segmenter", "format_scores", "main"]


@torch.no_grad()
def evaluate_segmenter(
    model: PreTrainedModel,
    loader: torch.utils.data.DataLoader,
    accelerator: Accelerator | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window_size: int | Sequence[int] | None = None,
    window_stride: int | Sequence[int] | None = None,
    ignore_index: int = 255,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Scores of `model` (evaluate's `mean_iou` keys, plus `num_images` and the `(C, C)` int64 numpy
    `confusion_matrix`, rows reference and columns predicted classes) over an [`eval_dataloader`].

    Predictions are [`multiscale_probabilities`] with the given scales, flip and sliding window. With an
    `accelerator` running several processes, each scores its share of the loader and the confusion matrices are
    summed: call it on every process.
    """
    was_training = model.training
    model.eval()
    device = accelerator.device if accelerator is not None else model.device
    metric = SegmentationMetric(model.config.num_labels, ignore_index=ignore_index)
    num_images = torch.zeros((), dtype=torch.int64, device=device)
    try:
        total = len(loader)
    except TypeError:  # a stream: its length is unknown
        total = None
    for batches in tqdm(loader, total=total, desc="eval", unit="batch", leave=False, disable=not show_progress):
        for batch in batches:
            pixel_values = batch["pixel_values"].to(device, model.dtype)
            with accelerator.autocast() if accelerator is not None else contextlib.nullcontext():
                probabilities = multiscale_probabilities(model, pixel_values, scales, flip, window_size, window_stride)
            metric.update(probabilities.argmax(dim=1), batch["labels"].to(device), accelerator=accelerator)
            num_images += len(pixel_values)
    model.train(was_training)
    confusion = metric.confusion_matrix().cpu().numpy()
    if accelerator is not None and accelerator.num_processes > 1:
        num_images = accelerator.reduce(num_images, reduction="sum")
    return {**scores_from_confusion_matrix(confusion), "confusion_matrix": confusion, "num_images": int(num_images)}


def _checked_loader(
    dataset: Any,
    source: str,
    num_labels: int,
    transform: EvalTransform,
    batch_size: int,
    num_workers: int,
    validation_samples: int | None,
    streaming: bool,
    accelerator: Accelerator,
) -> torch.utils.data.DataLoader:
    """The loader of an evaluation split, after training's start-up check of its first `validation_samples`
    rows; a streamed split is also checked example by example."""
    label_mapping = transform.label_mapping
    validate_split(
        dataset,
        f"evaluation set ({source})",
        num_labels,
        label_mapping,
        require_label=True,
        validation_samples=validation_samples,
        show_progress=accelerator.is_local_main_process,
    )
    check = functools.partial(check_example, num_labels=num_labels, label_mapping=label_mapping, require_label=True)
    return eval_dataloader(
        dataset,
        transform,
        batch_size,
        accelerator.process_index,
        accelerator.num_processes,
        num_workers,
        pin_memory=accelerator.device.type == "cuda",
        check_example=check if streaming else None,
    )


def evaluate_checkpoint(
    model_name_or_path: str | os.PathLike,
    data_config: DataConfig,
    split: str | None = None,
    streaming: bool = False,
    resize: Resize | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window_size: int | Sequence[int] | None = None,
    window_stride: int | Sequence[int] | None = None,
    batch_size: int = DEFAULT_EVAL_BATCH_SIZE,
    num_workers: int = 0,
    validation_samples: int | None = 2000,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    accelerator: Accelerator | None = None,
) -> dict[str, Any]:
    """Scores a checkpoint (MaskMatch or stock SegFormer / UperNet; local dir or Hub id) on a labeled split.

    The split is `split` of `data_config.dataset_name` (default: 'test', 'validation' or 'val'), read with the
    columns and label conventions of `data_config` as in training, optionally streamed. Images (and masks) are
    resized by `resize` (as training's `--resize`; default: original size) and normalized with the checkpoint's
    image processor statistics. Up to `validation_samples` rows are checked before anything is scored, with
    training's checks against the model's classes; a streamed split is also checked example by example.

    Returns evaluate's `mean_iou` keys (per-category values as arrays, NaN for classes absent from predictions
    and references), `confusion_matrix`, `num_images`, `class_names` and a description of the `split`. With
    several processes (`accelerate launch`) each scores its share; call it on every process.
    """
    if streaming and validation_samples is None:
        raise ValueError("A streamed split is checked on its first `validation_samples` rows: give a number.")
    accelerator = accelerator or Accelerator()
    check_local_or_hub(str(model_name_or_path), "--model_name_or_path")
    dataset, source = load_labeled_split(data_config, split, streaming)
    label_mapping = build_label_mapping(data_config, is_camvid(data_config.dataset_name))
    model, image_processor = load_segmenter(model_name_or_path, accelerator.device, dtype, trust_remote_code)
    num_labels = model.config.num_labels
    transform = EvalTransform(
        image_mean=tuple(getattr(image_processor, "image_mean", None) or IMAGENET_MEAN),
        image_std=tuple(getattr(image_processor, "image_std", None) or IMAGENET_STD),
        resize=resize,
        label_mapping=label_mapping,
    )
    loader = _checked_loader(
        dataset, source, num_labels, transform, batch_size, num_workers, validation_samples, streaming, accelerator
    )
    scores = evaluate_segmenter(
        model,
        loader,
        accelerator,
        scales,
        flip,
        window_size,
        window_stride,
        label_mapping.ignore_index,
        show_progress=accelerator.is_local_main_process,
    )
    class_names = [model.config.id2label.get(i, str(i)) for i in range(num_labels)]
    return {**scores, "class_names": class_names, "split": source}


def format_scores(results: dict[str, Any]) -> str:
    """The summary line and a per-class IoU / accuracy table (in %) of [`evaluate_checkpoint`]'s results."""
    width = max(len("class"), *(len(name) for name in results["class_names"]))

    def percent(value: float) -> str:
        return "n/a" if math.isnan(value) else f"{100 * value:.2f}"

    lines = [
        f"{results['split']}: {results['num_images']} images",
        f"mIoU {percent(results['mean_iou'])} | mean accuracy {percent(results['mean_accuracy'])} | "
        f"overall accuracy {percent(results['overall_accuracy'])}",
        "",
        f"{'class':<{width}}  {'IoU':>6}  {'accuracy':>8}",
    ]
    for name, iou, accuracy in zip(
        results["class_names"], results["per_category_iou"], results["per_category_accuracy"]
    ):
        lines.append(f"{name:<{width}}  {percent(iou):>6}  {percent(accuracy):>8}")
    return "\n".join(lines)


def _to_json(value: Any) -> Any:
    """Arrays to lists and NaN to None (JSON has no NaN)."""
    if isinstance(value, np.ndarray):
        return [_to_json(v) for v in value.tolist()]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, DataConfig]:
    parser = argparse.ArgumentParser(
        prog="maskmatch-evaluate",
        description="Score a MaskMatch or stock SegFormer / UperNet checkpoint on a labeled split (mIoU).",
    )
    parser.add_argument("--model_name_or_path", required=True, help="Checkpoint directory or Hub id.")
    data = parser.add_argument_group("data (as in training)")
    DataConfig.add_arguments(data, only=DATA_FLAGS)
    data.add_argument("--split", help="Split to score; default: 'test', 'validation' or 'val', the first present.")
    data.add_argument("--streaming", action="store_true", help="Stream the split (`IterableDataset`).")
    data.add_argument(
        "--resize",
        type=Resize.from_flag,
        help="Shorter side in px (e.g. 180) or scale (e.g. 0.5) of images and masks, as training's --resize; "
        "default: original size.",
    )
    data.add_argument("--validation_samples", type=int, default=2000, help="Rows checked before scoring.")
    inference = parser.add_argument_group("inference")
    add_ensemble_arguments(inference)
    add_window_arguments(inference)
    inference.add_argument(
        "--batch_size",
        type=int,
        default=DEFAULT_EVAL_BATCH_SIZE,
        help="Images per forward pass (per process); images of different sizes never share one.",
    )
    inference.add_argument("--num_workers", type=int, default=0, help="DataLoader workers per process.")
    inference.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="Default: the checkpoint's dtype.")
    inference.add_argument(
        "--trust_remote_code", action="store_true", help="Allow model code shipped with the checkpoint to run."
    )
    parser.add_argument("--output_file", default="eval_results.json", help="Where to write the scores (JSON).")
    args = parser.parse_args(rename_deprecated_flags(sys.argv[1:] if argv is None else argv, DEPRECATED_FLAGS))
    if args.dataset_name is None:
        raise MaskMatchUsageError("--dataset_name is required.")
    if args.batch_size < 1 or args.num_workers < 0 or min(args.ensemble_scales) <= 0:
        raise MaskMatchUsageError(
            "--batch_size must be at least 1, --num_workers non-negative and every --ensemble_scales value positive."
        )
    if args.validation_samples is not None and args.validation_samples < 1:
        raise MaskMatchUsageError("--validation_samples must be at least 1.")
    check_window_arguments(args)
    return args, DataConfig.from_namespace(args)


@report_usage_errors
def main(argv: Sequence[str] | None = None) -> int:
    """`maskmatch-evaluate`: 0, or 1 when the checkpoint, the data or a setting is unusable (the message says why)."""
    args, data_config = parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    accelerator = Accelerator()
    try:
        results = evaluate_checkpoint(
            args.model_name_or_path,
            data_config,
            split=args.split,
            streaming=args.streaming,
            resize=args.resize,
            scales=args.ensemble_scales,
            flip=args.ensemble_flip,
            window_size=args.window_size,
            window_stride=args.window_stride,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            validation_samples=args.validation_samples,
            dtype=DTYPES.get(args.dtype),
            trust_remote_code=args.trust_remote_code,
            accelerator=accelerator,
        )
    except OSError as error:  # an unloadable checkpoint or unreadable data: the user's to fix
        raise MaskMatchUsageError(str(error)) from error
    if accelerator.is_main_process:
        settings = {
            "model_name_or_path": str(args.model_name_or_path),
            "resize": None if args.resize is None else vars(args.resize),
            "ensemble_scales": args.ensemble_scales,
            "ensemble_flip": args.ensemble_flip,
            "window_size": args.window_size,
            "window_stride": args.window_stride,
        }
        keys = (*SCORE_KEYS, "confusion_matrix", "class_names", "num_images", "split")
        output = {key: _to_json(results[key]) for key in keys}
        Path(args.output_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_file).write_text(json.dumps({**output, **settings}, indent=2) + "\n")
        print(format_scores(results))
        print(f"\nScores written to {args.output_file}")
    # Every rank leaves together and the process group is torn down before the interpreter exits: a rank that
    # exits while gloo still holds its peer's connection can abort the other one ("terminate called ...").
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
