"""Train a semantic segmenter with MaskMatch on labeled + unlabeled images, with Accelerate.

Run on one process with `maskmatch-train ...`, on several GPUs with
`accelerate launch examples/train_maskmatch.py ...`. Flags follow transformers'
`run_semantic_segmentation_no_trainer.py` where the concept is the same; `--config FILE` (YAML or JSON)
supplies any of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from accelerate.utils.constants import OPTIMIZER_NAME, RNG_STATE_NAME, SAFE_WEIGHTS_NAME, SCHEDULER_NAME, WEIGHTS_NAME
from datasets import IterableDataset
from tqdm.auto import tqdm
from transformers import SegformerImageProcessorPil, get_scheduler

from .configuration_maskmatch import PRESETS, MaskMatchConfig
from .data import DataConfig, load_segmentation_data, read_json_argument
from .data_loaders import eval_dataloader, infinite_dataloader, sample_seed
from .data_transforms import EvalTransform, Resize, WeakAugmentation
from .data_validation import check_example, validate_segmentation_data
from .errors import MaskMatchUsageError, check_local_or_hub, report_usage_errors
from .evaluation import evaluate_segmenter
from .modeling_maskmatch import MaskMatchForSemanticSegmentation
from .objective import MaskMatchObjective, fused_adamw_kwargs
from .pipeline_maskmatch import save_pipeline
from .predict import add_window_arguments, check_window_arguments
from .reporting import TrainingHistory, plot_training_curves, write_model_card
from .segmenters import (
    BACKBONES,
    SEGFORMER_VARIANTS,
    load_model_for_training,
    minimum_input_side,
    pretrained_id2label,
)

logger = get_logger(__name__)

CHECKPOINT_PREFIX = "step_"
BEST_MODEL_DIR = "best_model"
# Written into a training state after `accelerator.save_state` returns: a state without it was cut short.
STATE_MARKER = "history.json"
# What `accelerator.save_state` writes for this trainer (weights in either format), plus the marker.
STATE_FILES = (f"{OPTIMIZER_NAME}.bin", f"{SCHEDULER_NAME}.bin", "custom_checkpoint_0.pkl", STATE_MARKER)
# Flags that must be positive, or non-negative, when set.
POSITIVE_FLAGS = (
    "max_train_steps",
    "per_device_train_batch_size",
    "per_device_unlabeled_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "crop_size",
    "scale_range",
    "learning_rate",
    "head_learning_rate_multiplier",
    "checkpointing_steps",
    "eval_steps",
    "eval_scales",
    "logging_steps",
    "validation_samples",
    "upernet_hidden_size",
)
NON_NEGATIVE_FLAGS = (
    "weight_decay",
    "poly_power",
    "num_warmup_steps",
    "checkpoints_total_limit",
    "dataloader_num_workers",
    "seed",
)
DEFAULT_WARMUP = 0.05
# MaskMatch hyperparameters settable from the command line (every field of MaskMatchConfig but the nested ones).
MASKMATCH_FIELDS = [
    f
    for f in dataclasses.fields(MaskMatchConfig)
    if f.name in MaskMatchConfig.__annotations__ and f.name not in ("segmenter_config",)
]


def _str2bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "y"):
        return True
    if value.lower() in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def _convert(action: argparse.Action, value: Any) -> Any:
    """Apply a flag's `type` to a value read from a config file, as argparse does for command-line strings."""
    if action.type is None or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [action.type(str(item)) for item in value]
    return action.type(str(value))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML or JSON file whose keys are any of these flags (without --).")

    model = parser.add_argument_group("model")
    model.add_argument("--model_name_or_path", help="MaskMatch or stock SegFormer / UperNet checkpoint to start from.")
    model.add_argument("--segmenter", choices=["segformer", "upernet"], default="segformer")
    model.add_argument("--segmenter_variant", choices=sorted(SEGFORMER_VARIANTS), default="b0")
    model.add_argument("--backbone", choices=BACKBONES, default="efficientnet-lite0", help="UperNet backbone.")
    model.add_argument("--pretrained_backbone", action="store_true", help="ImageNet EfficientNet-Lite0 weights.")
    model.add_argument("--upernet_hidden_size", type=int, default=256)
    model.add_argument(
        "--segmenter_config", help="JSON (inline or file) overriding fields of the fresh segmenter config."
    )

    data = parser.add_argument_group("data")
    DataConfig.add_arguments(data)
    data.add_argument("--crop_size", type=int, default=512, help="Side of the square training crops.")
    data.add_argument("--resize", type=Resize.from_flag, help="Shorter side in px (e.g. 180) or scale (e.g. 0.5).")
    data.add_argument("--scale_range", type=float, nargs=2, default=(0.5, 2.0), help="Random rescale range.")
    data.add_argument("--validation_samples", type=int, default=2000, help="Rows checked per split before training.")
    data.add_argument("--dataloader_num_workers", type=int, default=0)

    method = parser.add_argument_group("MaskMatch (defaults: MaskMatchConfig's, or the checkpoint's)")
    for field in MASKMATCH_FIELDS:
        default = field.default
        if field.name == "ignore_index":
            continue  # a data flag too: one value for labels, losses and metrics
        if field.name == "preset":
            method.add_argument("--preset", choices=sorted(PRESETS))
        elif isinstance(default, bool):
            method.add_argument(f"--{field.name}", type=_str2bool)
        elif isinstance(default, (tuple, list)):
            method.add_argument(f"--{field.name}", type=float, nargs="+")
        else:
            method.add_argument(f"--{field.name}", type=type(default))

    train = parser.add_argument_group("training")
    train.add_argument("--output_dir", required=True)
    train.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="Start from step 0 in a non-empty --output_dir, deleting its training states and best model.",
    )
    train.add_argument("--max_train_steps", type=int, default=1000)
    train.add_argument("--per_device_train_batch_size", type=int, default=8)
    train.add_argument("--per_device_unlabeled_batch_size", type=int, help="Default: the labeled batch size.")
    train.add_argument("--per_device_eval_batch_size", type=int, default=4, help="Same-size images per pass.")
    train.add_argument("--learning_rate", type=float, default=2e-4, help="Encoder / backbone learning rate.")
    train.add_argument("--head_learning_rate_multiplier", type=float, default=10.0, help="Decode head LR factor.")
    train.add_argument("--weight_decay", type=float, default=0.01)
    train.add_argument("--gradient_accumulation_steps", type=int, default=1)
    train.add_argument("--lr_scheduler_type", default="polynomial", help="transformers scheduler name.")
    train.add_argument("--poly_power", type=float, default=0.9, help="Power of the polynomial schedule.")
    train.add_argument(
        "--num_warmup_steps",
        type=float,
        default=DEFAULT_WARMUP,
        help="Linear LR warmup: a number of steps, or a fraction of --max_train_steps when below 1.",
    )
    train.add_argument("--checkpointing_steps", type=int, help="Save the training state every N steps.")
    train.add_argument("--checkpoints_total_limit", type=int, default=2, help="Training states kept (0: all).")
    train.add_argument("--resume_from_checkpoint", help="'latest' or a step_N directory.")
    train.add_argument("--eval_steps", type=int, help="Evaluate every N steps (and always at the end).")
    train.add_argument("--eval_scales", type=float, nargs="+", default=[1.0], help="Multi-scale evaluation.")
    train.add_argument("--eval_flip", action="store_true", help="Average flipped predictions at evaluation.")
    add_window_arguments(train, prefix="eval_")
    train.add_argument("--logging_steps", type=int, default=10)
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], help="Default: accelerate config.")
    train.add_argument("--with_tracking", action="store_true")
    train.add_argument("--report_to", default="tensorboard", help="Tracker(s) for --with_tracking, or 'all'.")
    train.add_argument("--push_to_hub", action="store_true")
    train.add_argument("--hub_model_id")
    train.add_argument("--hub_token")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Flags, with defaults from `--config` when given (flags on the command line win)."""
    parser = build_parser()
    config_only = argparse.ArgumentParser(add_help=False)
    config_only.add_argument("--config")
    known, _ = config_only.parse_known_args(argv)
    if known.config:
        path = Path(known.config)
        if not path.is_file():
            parser.error(f"--config file not found: {path}")
        values = yaml.safe_load(path.read_text()) or {}
        unknown = sorted(set(values) - {action.dest for action in parser._actions})
        if unknown:
            parser.error(f"unknown keys in {path}: {', '.join(unknown)}")
        actions = {action.dest: action for action in parser._actions}
        parser.set_defaults(**{key: _convert(actions[key], value) for key, value in values.items()})
        for action in parser._actions:
            action.required = action.required and action.dest not in values
    args = parser.parse_args(argv)
    if args.push_to_hub and not args.hub_model_id:
        args.hub_model_id = Path(args.output_dir).name
    return args


def validate_arguments(args: argparse.Namespace) -> None:
    """Checks flag values and the paths they name before anything is loaded; raises `MaskMatchUsageError`."""
    check_window_arguments(args, prefix="eval_")
    for name in POSITIVE_FLAGS + NON_NEGATIVE_FLAGS:
        value = getattr(args, name)
        positive = name in POSITIVE_FLAGS
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is not None and not (item > 0 if positive else item >= 0):  # NaN fails both
                kind = "positive" if positive else "non-negative"
                raise MaskMatchUsageError(f"--{name} must be {kind}, got {item}.")
    if args.scale_range[0] > args.scale_range[1]:
        raise MaskMatchUsageError(f"--scale_range must be (min, max) with min <= max, got {list(args.scale_range)}.")
    if args.resize is not None:
        value = args.resize.shorter_side if args.resize.shorter_side is not None else args.resize.scale
        if not value > 0:
            raise MaskMatchUsageError(f"--resize must be positive, got {value}.")
    try:
        MaskMatchConfig(**maskmatch_overrides(args))
    except ValueError as error:
        raise MaskMatchUsageError(f"Invalid MaskMatch setting: {error}") from error
    for name in ("model_name_or_path", "dataset_name", "unlabeled_dataset_name"):
        if getattr(args, name):
            check_local_or_hub(getattr(args, name), f"--{name}")


def maskmatch_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The MaskMatch hyperparameters given on the command line (the others keep the config's values)."""
    return {f.name: getattr(args, f.name) for f in MASKMATCH_FIELDS if getattr(args, f.name) is not None}


def parameter_groups(model: MaskMatchForSemanticSegmentation, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Encoder at `learning_rate`, decode head(s) at `learning_rate * head_learning_rate_multiplier`."""
    head, encoder = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (head if "decode_head" in name or "auxiliary_head" in name else encoder).append(parameter)
    return [
        {"params": encoder, "lr": args.learning_rate},
        {"params": head, "lr": args.learning_rate * args.head_learning_rate_multiplier},
    ]


def warmup_steps(args: argparse.Namespace) -> int:
    """`--num_warmup_steps` in steps: a value below 1 is a fraction of `--max_train_steps`."""
    if args.num_warmup_steps < 1:
        return round(args.num_warmup_steps * args.max_train_steps)
    return int(args.num_warmup_steps)


def build_scheduler(
    optimizer: torch.optim.Optimizer, args: argparse.Namespace, num_processes: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then `--lr_scheduler_type` (polynomial: `lr = base_lr * (1 - t / T) ** poly_power`, down
    to 0, for each parameter group's own base LR).

    The prepared scheduler steps once per process at each optimizer step (accelerate's convention), so step
    counts are multiplied by `num_processes`.
    """
    polynomial = args.lr_scheduler_type == "polynomial"
    return get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=warmup_steps(args) * num_processes,
        num_training_steps=args.max_train_steps * num_processes,
        # transformers' polynomial schedule scales every group by (lr_end + (defaults["lr"] - lr_end) * decay)
        # / defaults["lr"]: with lr_end 0 that factor is exactly decay, whatever the group's own LR.
        scheduler_specific_kwargs={"power": args.poly_power, "lr_end": 0.0} if polynomial else None,
    )


def training_states(directory: str | Path) -> list[tuple[int, Path]]:
    """The `step_N` training states in `directory`, as (step, path), oldest first."""
    states = []
    for path in Path(directory).glob(f"{CHECKPOINT_PREFIX}*"):
        match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", path.name)
        if match and path.is_dir():
            states.append((int(match.group(1)), path))
    return sorted(states)


def missing_state_files(path: Path, process_index: int = 0) -> list[str]:
    """The files of a complete training state that `path` lacks."""
    missing = [name for name in STATE_FILES if not (path / name).is_file()]
    if not (path / f"{RNG_STATE_NAME}_{process_index}.pkl").is_file():
        missing.append(f"{RNG_STATE_NAME}_{process_index}.pkl")
    if not any((path / name).is_file() for name in (SAFE_WEIGHTS_NAME, WEIGHTS_NAME)):
        missing.insert(0, SAFE_WEIGHTS_NAME)
    return missing


def find_checkpoint(
    output_dir: str | Path, resume_from_checkpoint: str, process_index: int = 0
) -> tuple[Path, int] | None:
    """The training-state directory to resume from and its step; `latest` may find none.

    `latest` is the newest state of `output_dir` whose save completed. Raises `MaskMatchUsageError` for a path
    that is not a `step_N` state, or a state missing files (naming them, and the previous complete state).
    """
    if resume_from_checkpoint == "latest":
        states = [(step, path) for step, path in training_states(output_dir) if (path / STATE_MARKER).exists()]
        if not states:
            return None
        step, path = states[-1]
    else:
        path = Path(resume_from_checkpoint)
        match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", path.name)
        if not path.is_dir() or match is None:
            raise MaskMatchUsageError(
                f"--resume_from_checkpoint {path}: not a {CHECKPOINT_PREFIX}N training state directory."
            )
        step = int(match.group(1))
    missing = missing_state_files(path, process_index)
    if missing:
        previous = [
            other
            for other_step, other in training_states(path.parent)
            if other_step < step and not missing_state_files(other, process_index)
        ]
        hint = (
            f"resume from the previous one with --resume_from_checkpoint {previous[-1]}"
            if previous
            else "no earlier complete state is left; start over with --overwrite_output_dir"
        )
        raise MaskMatchUsageError(f"Training state {path} is incomplete (missing {', '.join(missing)}): {hint}.")
    return path, step


def prepare_output_dir(args: argparse.Namespace, accelerator: Accelerator) -> tuple[Path, int] | None:
    """Checks `--output_dir` and the state to resume from before anything is loaded; returns that state.

    A run from step 0 (or resuming a state kept elsewhere) refuses a non-empty output dir unless
    `--overwrite_output_dir`, which deletes the training states and best model found there: nothing of an earlier
    run is resumed or released as this run's, and its remaining files are replaced when this run finishes.
    """
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise MaskMatchUsageError(f"--output_dir {output_dir} is a file, not a directory.")
    resume = None
    if args.resume_from_checkpoint:
        resume = find_checkpoint(output_dir, args.resume_from_checkpoint, accelerator.process_index)
        if resume is not None and resume[1] > args.max_train_steps:
            raise MaskMatchUsageError(
                f"Training state {resume[0]} is at step {resume[1]}, past --max_train_steps {args.max_train_steps}."
            )
    resuming_here = resume is not None and resume[0].resolve().parent == output_dir.resolve()
    contents = sorted(path.name for path in output_dir.iterdir()) if output_dir.is_dir() else []
    if contents and not resuming_here and not args.overwrite_output_dir:
        listed = ", ".join(contents[:5]) + (", ..." if len(contents) > 5 else "")
        if args.resume_from_checkpoint == "latest":
            problem, resume_hint = "holds no complete training state to resume, but is not empty", ""
        else:
            problem, resume_hint = "is not empty", " --resume_from_checkpoint latest to continue the run saved there,"
        raise MaskMatchUsageError(
            f"--output_dir {output_dir} {problem} ({listed}): pass --overwrite_output_dir to start over in it,"
            f"{resume_hint} or use another --output_dir."
        )
    if args.resume_from_checkpoint and resume is None:
        accelerator.print(f"No training state in {output_dir}: starting from step 0.")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MaskMatchUsageError(f"--output_dir {output_dir}: cannot create it ({error.strerror}).") from error
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise MaskMatchUsageError(f"--output_dir {output_dir} is not writable.")
    stale = [path for _, path in training_states(output_dir)] + [output_dir / BEST_MODEL_DIR]
    stale = [path for path in stale if path.exists()] if contents and not resuming_here else []
    if stale and accelerator.is_main_process:
        logger.info("--overwrite_output_dir: deleting %s.", ", ".join(str(path) for path in stale))
        for path in stale:
            shutil.rmtree(path)
    accelerator.wait_for_everyone()
    return resume


def check_crop_size(args: argparse.Namespace, config: MaskMatchConfig) -> int:
    """Checks that the training crops, at every teacher scale, are large enough for the segmenter; returns the
    smallest side an evaluation image may have (at `--resize`, before the `--eval_scales`)."""
    min_side = minimum_input_side(config.segmenter_config)
    min_scale = min(config.teacher_scales)
    if round(args.crop_size * min_scale) < min_side:
        raise MaskMatchUsageError(
            f"--crop_size {args.crop_size} is too small for this model, which needs images of at least {min_side} "
            f"px per side (the teacher sees the crops at scale {min_scale}): use --crop_size "
            f"{math.ceil(min_side / min_scale)} or more."
        )
    return math.ceil(min_side / min(args.eval_scales))


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def save_final_model(
    model: MaskMatchForSemanticSegmentation,
    output_dir: Path,
    crop_size: int,
    eval_size: tuple[int, int] | None,
) -> None:
    """The model (safetensors, config, remote code), the image processor matching training and the
    `maskmatch-segmentation` pipeline code, so `pipeline(model=output_dir, trust_remote_code=True)` works."""
    size = {"height": eval_size[0], "width": eval_size[1]} if eval_size else {"height": crop_size, "width": crop_size}
    image_processor = SegformerImageProcessorPil(
        do_resize=eval_size is not None,
        size=size,
        image_mean=model.config.image_mean,
        image_std=model.config.image_std,
        do_reduce_labels=False,
    )
    save_pipeline(model, image_processor, output_dir)


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run training; returns the final results (also written to `all_results.json`)."""
    validate_arguments(args)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=(args.report_to if args.with_tracking else None),
        project_dir=args.output_dir,
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    output_dir = Path(args.output_dir)
    resume = prepare_output_dir(args, accelerator)
    set_seed(args.seed)

    # Data and model: everything that can be wrong with them fails here, before the first step.
    data_config = DataConfig.from_namespace(args)
    data = load_segmentation_data(data_config)
    id2label = data.id2label or pretrained_id2label(args.model_name_or_path)
    if id2label is None:
        raise MaskMatchUsageError(
            "No class names: pass --id2label (JSON or file), use a dataset with a ClassLabel feature, or start from "
            "a checkpoint that has them (--model_name_or_path)."
        )
    logger.info("%d classes (%s); %s.", len(id2label), ", ".join(id2label.values()), data.label_mapping.describe())
    model = load_model_for_training(
        args.model_name_or_path,
        id2label,
        maskmatch_overrides(args),
        segmenter=args.segmenter,
        segmenter_variant=args.segmenter_variant,
        backbone=args.backbone,
        upernet_hidden_size=args.upernet_hidden_size,
        segmenter_overrides=read_json_argument(args.segmenter_config),
        pretrained_backbone=args.pretrained_backbone,
    )
    config = model.config
    uses_unlabeled = config.components.unlabeled
    validate_segmentation_data(
        data,
        num_labels=config.num_labels,
        validation_samples=args.validation_samples,
        require_unlabeled=uses_unlabeled,
        show_progress=accelerator.is_local_main_process,
        eval_min_side=check_crop_size(args, config),
        eval_resize=args.resize,
    )

    objective = MaskMatchObjective(model)
    optimizer = torch.optim.AdamW(
        parameter_groups(model, args),
        lr=args.learning_rate,
        weight_decay=args.weight_decay,
        **fused_adamw_kwargs(accelerator.device),
    )
    scheduler = build_scheduler(optimizer, args, accelerator.num_processes)
    objective, optimizer, scheduler = accelerator.prepare(objective, optimizer, scheduler)
    history = TrainingHistory()
    accelerator.register_for_checkpointing(history)

    start_step = resume[1] if resume is not None else 0

    # Loaders are pure functions of (seed, rank, step): they start at `start_step` without replaying data.
    # They are built (their iterators draw from the global RNG) before `load_state` restores the RNG.
    mean, std = tuple(config.image_mean), tuple(config.image_std)
    micro_steps = start_step * args.gradient_accumulation_steps
    loader_kwargs = {
        "rank": accelerator.process_index,
        "world_size": accelerator.num_processes,
        "start_step": micro_steps,
        "num_workers": args.dataloader_num_workers,
        "ignore_index": config.ignore_index,
        "pin_memory": accelerator.device.type == "cuda",
    }
    weak = {
        "crop_size": args.crop_size,
        "image_mean": mean,
        "image_std": std,
        "scale_range": tuple(args.scale_range),
        "resize": args.resize,
        "label_mapping": data.label_mapping,
    }
    # Up front only the first rows of a stream could be checked: the rest are checked as they are read.
    checks = {
        key: functools.partial(
            check_example,
            num_labels=config.num_labels,
            label_mapping=data.label_mapping,
            require_label=key != "unlabeled",
        )
        if isinstance(dataset, IterableDataset)
        else None
        for key, dataset in (("labeled", data.labeled), ("unlabeled", data.unlabeled), ("eval", data.eval))
    }
    labeled_batches: Iterator[dict[str, torch.Tensor]] = iter(
        infinite_dataloader(
            data.labeled,
            args.per_device_train_batch_size,
            WeakAugmentation(**weak),
            seed=args.seed,
            check_example=checks["labeled"],
            **loader_kwargs,
        )
    )
    unlabeled_batches = None
    if uses_unlabeled:
        unlabeled_batches = iter(
            infinite_dataloader(
                data.unlabeled,
                args.per_device_unlabeled_batch_size or args.per_device_train_batch_size,
                WeakAugmentation(**weak, return_pixel_mask=True),
                seed=args.seed + 1,
                check_example=checks["unlabeled"],
                **loader_kwargs,
            )
        )
    eval_transform = EvalTransform(
        image_mean=mean, image_std=std, resize=args.resize, label_mapping=data.label_mapping
    )
    eval_loader = None
    if data.eval is not None:
        eval_loader = eval_dataloader(
            data.eval,
            eval_transform,
            args.per_device_eval_batch_size,
            accelerator.process_index,
            accelerator.num_processes,
            args.dataloader_num_workers,
            pin_memory=loader_kwargs["pin_memory"],
            check_example=checks["eval"],
        )

    if resume is not None:
        accelerator.print(f"Resuming from {resume[0]} (step {start_step})")
        accelerator.load_state(str(resume[0]))

    if args.with_tracking:
        tracked = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(args).items()}
        accelerator.init_trackers("maskmatch", config=tracked)

    unwrapped = accelerator.unwrap_model(objective)
    student = unwrapped.student
    best_dir = output_dir / BEST_MODEL_DIR
    progress = tqdm(
        range(args.max_train_steps), initial=start_step, desc="train", disable=not accelerator.is_local_main_process
    )
    objective.train()
    loop_start, eval_seconds = time.perf_counter(), 0.0
    for step in range(start_step, args.max_train_steps):
        for micro in range(args.gradient_accumulation_steps):
            with accelerator.accumulate(objective):
                labeled = to_device(next(labeled_batches), accelerator.device)
                inputs = {"pixel_values": labeled["pixel_values"], "labels": labeled["labels"]}
                if unlabeled_batches is not None:
                    unlabeled = to_device(next(unlabeled_batches), accelerator.device)
                    inputs["unlabeled_pixel_values"] = unlabeled["pixel_values"]
                    inputs["unlabeled_pixel_mask"] = unlabeled["pixel_mask"]
                    inputs["unlabeled_labels"] = unlabeled.get("labels")
                generator = torch.Generator(accelerator.device)
                generator.manual_seed(sample_seed(args.seed, accelerator.process_index, step, micro))
                output = objective(**inputs, generator=generator, step=step)
                accelerator.backward(output.loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
        unwrapped.update_teacher(step)
        completed = step + 1

        logs = {**output.logs, "lr": scheduler.get_last_lr()[0]}
        if not all(math.isfinite(v) for v in output.logs.values()):
            raise FloatingPointError(f"Non-finite loss at step {completed}: {output.logs}")
        history.log_train(completed, logs)
        progress.update(1)
        progress.set_postfix(history.postfix())
        if args.with_tracking and completed % args.logging_steps == 0:
            accelerator.log({f"train/{k}": v for k, v in logs.items()}, step=completed)

        last = completed == args.max_train_steps
        if eval_loader is not None and (last or (args.eval_steps and completed % args.eval_steps == 0)):
            eval_start = time.perf_counter()
            scores = evaluate_segmenter(
                student,
                eval_loader,
                accelerator,
                args.eval_scales,
                args.eval_flip,
                args.eval_window_size,
                args.eval_window_stride,
                config.ignore_index,
                show_progress=accelerator.is_local_main_process,
            )
            eval_seconds += time.perf_counter() - eval_start
            improved = history.log_eval(completed, scores)
            progress.set_postfix(history.postfix())
            if args.with_tracking:
                accelerator.log({"eval/mean_iou": scores["mean_iou"]}, step=completed)
            if improved and accelerator.is_main_process:
                accelerator.unwrap_model(objective).student.save_pretrained(best_dir)
            accelerator.wait_for_everyone()

        if args.checkpointing_steps and (completed % args.checkpointing_steps == 0 or last):
            state_dir = output_dir / f"{CHECKPOINT_PREFIX}{completed}"
            accelerator.save_state(str(state_dir))
            if accelerator.is_main_process:
                (state_dir / "history.json").write_text(json.dumps({"step": completed}))
                prune_checkpoints(output_dir, args.checkpoints_total_limit)
            accelerator.wait_for_everyone()
    progress.close()
    steps_run = args.max_train_steps - start_step
    train_seconds = time.perf_counter() - loop_start - eval_seconds
    if steps_run:
        history.seconds_per_step = train_seconds / steps_run

    results = finish(args, accelerator, student, history, data, eval_transform, best_dir)
    accelerator.end_training()
    return results


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    """Delete all but the `keep` newest training states (all are kept when `keep` is 0)."""
    for _, path in training_states(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)


def finish(
    args: argparse.Namespace,
    accelerator: Accelerator,
    student: MaskMatchForSemanticSegmentation,
    history: TrainingHistory,
    data: Any,
    eval_transform: EvalTransform,
    best_dir: Path,
) -> dict[str, Any]:
    """Write the best model (or the last one without eval data), results, card and plot; push if asked."""
    output_dir = Path(args.output_dir)
    results = history.results()
    if accelerator.is_main_process:
        model = MaskMatchForSemanticSegmentation.from_pretrained(best_dir) if best_dir.exists() else student
        eval_size = None
        if data.eval is not None and args.resize is not None:
            first = next(iter(data.eval)) if isinstance(data.eval, IterableDataset) else data.eval[0]
            eval_size = tuple(eval_transform(first)["pixel_values"].shape[-2:])
        save_final_model(model, output_dir, args.crop_size, eval_size)
        (output_dir / "all_results.json").write_text(json.dumps(results, indent=2))
        (output_dir / "training_history.json").write_text(json.dumps(history.state_dict()))
        plot_training_curves(history, output_dir / "training_curves.png")
        write_model_card(output_dir, model.config, results, vars(args))
        if args.push_to_hub:
            from .hub import push_output_dir

            push_output_dir(output_dir, args.hub_model_id, token=args.hub_token)
    accelerator.wait_for_everyone()
    return results


@report_usage_errors
def main(argv: Sequence[str] | None = None) -> int:
    """`maskmatch-train`: 0 on success; bad input prints `error: <message>` and gives 1 (bugs keep a traceback)."""
    args = parse_args(argv)
    results = train(args)
    if int(os.environ.get("RANK", "0")) == 0:
        best = results.get("best_eval_mean_iou")
        summary = f"val mIoU {100 * best:.2f} (step {results['best_step']})" if best is not None else "no eval set"
        print(f"\n{summary}\nmodel, model card and training curves: {Path(args.output_dir).resolve()}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
