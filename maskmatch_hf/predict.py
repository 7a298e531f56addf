"""Run a trained segmenter on images: library functions and the `maskmatch-predict` command.

```bash
maskmatch-predict --model_name_or_path outputs/camvid-maskmatch --inputs frames/ street.png \
    --output_dir predictions --ensemble_scales 0.75 1 1.25 --ensemble_flip
```

writes `<stem>_mask.png` (colour label map), `<stem>_overlay.png` (label map over the image), with
`--save_raw_labels` `<stem>_labels.png` (8-bit class ids), and `legend.png` (colour of each class). Works with
MaskMatch checkpoints and stock SegFormer / UperNet ones (e.g. exported with `save_segmenter_pretrained`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForSemanticSegmentation,
    BaseImageProcessor,
    PreTrainedModel,
    SegformerImageProcessorPil,
)
from transformers.hf_argparser import string_to_bool
from transformers.image_utils import load_image
from transformers.models.auto.modeling_auto import MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING

from . import MaskMatchConfig  # noqa: F401  (registers MaskMatch with the auto classes)
from .configuration_maskmatch import IMAGENET_MEAN, IMAGENET_STD
from .data import IMAGE_EXTENSIONS
from .errors import MaskMatchUsageError, check_local_or_hub, rename_deprecated_flags, report_usage_errors
from .pipeline_maskmatch import (
    colorize,
    label_map_at_size,
    label_palette,
    legend,
    multiscale_probabilities,
    overlay,
)

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# The flags of `maskmatch-predict` and `maskmatch-evaluate` before they were named as in `maskmatch-train` and
# `MaskMatchConfig`: still accepted, with a `FutureWarning`.
DEPRECATED_FLAGS = {"--model": "--model_name_or_path", "--scales": "--ensemble_scales", "--flip": "--ensemble_flip"}

__all__ = [
    "colorize",
    "label_palette",
    "legend",
    "load_segmenter",
    "main",
    "overlay",
    "predict_label_maps",
]


def load_segmenter(
    model_name_or_path: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, BaseImageProcessor]:
    """Load a semantic segmenter (MaskMatch, or stock SegFormer / UperNet) and its image processor, in eval mode.

    The config is checked first, so a checkpoint of another kind (e.g. an image classifier) fails at once with a
    `ValueError` naming it. A checkpoint without `preprocessor_config.json` (e.g. one exported with
    `save_segmenter_pretrained`) gets a SegFormer processor that normalizes with the config's `image_mean` /
    `image_std` (ImageNet statistics if absent) and keeps the image size.
    """
    config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    auto_map = getattr(config, "auto_map", None) or {}
    if (
        type(config) not in MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING
        and "AutoModelForSemanticSegmentation" not in auto_map
    ):
        raise ValueError(
            f"{model_name_or_path} is not a semantic segmentation checkpoint: its config is {type(config).__name__} "
            f"(model_type {config.model_type!r}), which AutoModelForSemanticSegmentation cannot load."
        )
    model = AutoModelForSemanticSegmentation.from_pretrained(
        model_name_or_path, config=config, dtype=dtype, trust_remote_code=trust_remote_code
    )
    if device is not None:
        model.to(device)
    model.eval()
    try:
        image_processor = AutoImageProcessor.from_pretrained(model_name_or_path)
    except OSError:
        logger.warning(
            "%s has no image processor config; using a SegFormer one that keeps the image size.", model_name_or_path
        )
        image_processor = SegformerImageProcessorPil(
            do_resize=False,
            image_mean=list(getattr(config, "image_mean", IMAGENET_MEAN)),
            image_std=list(getattr(config, "image_std", IMAGENET_STD)),
            do_reduce_labels=False,
        )
    return model, image_processor


@torch.inference_mode()
def predict_label_maps(
    model: PreTrainedModel,
    image_processor: BaseImageProcessor,
    images: Sequence[Image.Image],
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    batch_size: int = 8,
    window_size: int | Sequence[int] | None = None,
    window_stride: int | Sequence[int] | None = None,
) -> list[np.ndarray]:
    """Predicted class ids, one `(height, width)` int64 array per image at the image's original size.

    Images go through the model `batch_size` at a time (images whose processed sizes differ run in separate
    forward passes). `scales` / `flip` average the softmaxes of rescaled / mirrored views (test-time augmentation,
    [`multiscale_probabilities`]) before the arg-max; `window_size` / `window_stride` segment each view with
    overlapping windows ([`sliding_window_probabilities`]).
    """
    label_maps = []
    for start in range(0, len(images), batch_size):
        batch = [image.convert("RGB") for image in images[start : start + batch_size]]
        pixel_values = [image_processor(images=image, return_tensors="pt")["pixel_values"][0] for image in batch]
        by_shape = defaultdict(list)
        for index, values in enumerate(pixel_values):
            by_shape[values.shape].append(index)
        batch_maps = [None] * len(batch)
        for indices in by_shape.values():
            inputs = torch.stack([pixel_values[i] for i in indices]).to(model.device, model.dtype)
            probabilities = multiscale_probabilities(model, inputs, scales, flip, window_size, window_stride)
            for i, probs in zip(indices, probabilities):
                batch_maps[i] = label_map_at_size(probs, (batch[i].height, batch[i].width))
        label_maps.extend(batch_maps)
    return label_maps


def find_images(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """Image files named in `inputs` (files, or directories searched non-recursively), and inputs that do not exist."""
    images, missing = [], []
    for entry in map(Path, inputs):
        if entry.is_dir():
            images.extend(sorted(p for p in entry.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS))
        elif entry.is_file():
            images.append(entry)
        else:
            missing.append(entry)
    return images, missing


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return number


def add_ensemble_arguments(parser: argparse._ActionsContainer) -> None:
    """`--ensemble_scales` and `--ensemble_flip`: the multi-scale / flip ensemble (test-time augmentation) flags,
    named as `MaskMatchConfig`'s teacher ensemble (formerly `--scales` and `--flip`, see `DEPRECATED_FLAGS`)."""
    parser.add_argument(
        "--ensemble_scales",
        nargs="+",
        type=float,
        default=[1.0],
        help="Input scales whose softmaxes are averaged (e.g. 0.75 1 1.25).",
    )
    parser.add_argument(
        "--ensemble_flip",
        nargs="?",
        const=True,
        default=False,
        type=string_to_bool,
        help="Also average horizontally flipped predictions (`--ensemble_flip` or, as in training, "
        "`--ensemble_flip true`).",
    )


def add_window_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """`--{prefix}window_size` and `--{prefix}window_stride`: sliding-window inference flags."""
    parser.add_argument(
        f"--{prefix}window_size",
        type=_positive_int,
        help="Segment each (rescaled) image with overlapping square windows of this side in px; default: whole image.",
    )
    parser.add_argument(
        f"--{prefix}window_stride",
        type=_positive_int,
        help=f"Step between windows, at most --{prefix}window_size; default: 2/3 of the window.",
    )


def check_window_arguments(args: argparse.Namespace, prefix: str = "") -> None:
    """Raise `MaskMatchUsageError` when the sliding-window flags of [`add_window_arguments`] do not fit together."""
    size, stride = getattr(args, f"{prefix}window_size"), getattr(args, f"{prefix}window_stride")
    if stride is not None and (size is None or stride > size):
        raise MaskMatchUsageError(f"--{prefix}window_stride needs --{prefix}window_size and must not exceed it.")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="maskmatch-predict", description="Segment images with a MaskMatch or stock SegFormer / UperNet model."
    )
    parser.add_argument("--model_name_or_path", required=True, help="Checkpoint directory or Hub id.")
    parser.add_argument(
        "--inputs", nargs="+", required=True, help="Image files and/or directories of images (not recursive)."
    )
    parser.add_argument("--output_dir", required=True, help="Where to write the masks and overlays.")
    add_ensemble_arguments(parser)
    add_window_arguments(parser)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... or auto (cuda when available).")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="Default: the checkpoint's dtype.")
    parser.add_argument(
        "--save_raw_labels", action="store_true", help="Also write <stem>_labels.png holding the class ids."
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="Opacity of the label colours in the overlays.")
    parser.add_argument(
        "--trust_remote_code", action="store_true", help="Allow model code shipped with the checkpoint to run."
    )
    args = parser.parse_args(rename_deprecated_flags(sys.argv[1:] if argv is None else argv, DEPRECATED_FLAGS))
    if args.batch_size < 1 or not min(args.ensemble_scales) > 0:
        raise MaskMatchUsageError("--batch_size must be at least 1 and every --ensemble_scales value positive.")
    check_window_arguments(args)
    return args


def write_prediction(
    image: Image.Image, label_map: np.ndarray, palette: np.ndarray, output_stem: Path, alpha: float, raw: bool
) -> None:
    """Write `<stem>_mask.png`, `<stem>_overlay.png` and, if `raw`, `<stem>_labels.png` (uint16 past 256 classes)."""
    colorize(label_map, palette).save(f"{output_stem}_mask.png")
    overlay(image, label_map, palette, alpha).save(f"{output_stem}_overlay.png")
    if raw:
        ids = label_map.astype(np.uint8 if len(palette) <= 256 else np.uint16)
        Image.fromarray(ids).save(f"{output_stem}_labels.png")


@report_usage_errors
def main(argv: Sequence[str] | None = None) -> int:
    """`maskmatch-predict`: returns 0; 1 for a bad flag or when any input could not be read (the others are still
    written); 2 when the model cannot be loaded (including a local path that does not exist)."""
    args = parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        check_local_or_hub(args.model_name_or_path, "--model_name_or_path")
        model, image_processor = load_segmenter(
            args.model_name_or_path, device, DTYPES.get(args.dtype), args.trust_remote_code
        )
    except (OSError, ValueError) as error:
        logger.error("Cannot load the model: %s", error)
        return 2

    paths, missing = find_images(args.inputs)
    for path in missing:
        logger.error("%s does not exist.", path)
    failed = list(missing)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    id2label = {int(i): name for i, name in model.config.id2label.items()}
    palette = label_palette(model.config.num_labels, id2label)
    legend(id2label, palette).save(output_dir / "legend.png")

    written = 0
    with tqdm(total=len(paths), unit="image", desc="Segmenting") as progress:
        for start in range(0, len(paths), args.batch_size):
            loaded = []
            for path in paths[start : start + args.batch_size]:
                try:
                    loaded.append((path, load_image(str(path))))
                except (OSError, ValueError) as error:
                    logger.error("Cannot read image %s: %s", path, error)
                    failed.append(path)
            label_maps = predict_label_maps(
                model,
                image_processor,
                [image for _, image in loaded],
                args.ensemble_scales,
                args.ensemble_flip,
                args.batch_size,
                args.window_size,
                args.window_stride,
            )
            for (path, image), label_map in zip(loaded, label_maps):
                write_prediction(image, label_map, palette, output_dir / path.stem, args.alpha, args.save_raw_labels)
                written += 1
            progress.update(len(paths[start : start + args.batch_size]))

    logger.info("Wrote %d prediction(s) to %s.", written, output_dir)
    if failed:
        logger.error("%d input(s) failed: %s", len(failed), ", ".join(map(str, failed)))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
