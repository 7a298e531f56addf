"""Train a semantic segmenter with MaskMatch on labeled + unlabeled images, with Accelerate.

Run on one process with `maskmatch-train ...`, on several GPUs with
`accelerate launch examples/train_maskmatch.py ...`. Flags follow transformers'
`run_semantic_segmentation_no_trainer.py` where the concept is the same; they are the fields of the argument
dataclasses in `training_args.py`, and `--config FILE` (YAML or JSON) supplies any of them.

`train()` reads top to bottom as an accelerate example: build the accelerator, data and model, the optimizer
and the loaders, then per step [`optimizer_step`], [`log_step`] and [`evaluate_and_checkpoint`], and [`finish`].
"""

from __future__ import annotations

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from accelerate.utils.constants import OPTIMIZER_NAME, RNG_STATE_NAME, SAFE_WEIGHTS_NAME, SCHEDULER_NAME, WEIGHTS_NAME
from datasets import IterableDataset
from tqdm.auto import tqdm
from transformers import SegformerImageProcessorPil, get_scheduler

from .configuration_maskmatch import MaskMatchConfig
from .data import SegmentationData, load_segmentation_data, read_json_argument
from .data_loaders import eval_dataloader, infinite_dataloader, sample_seed
from .data_transforms import EvalTransform, WeakAugmentation
from .data_validation import check_example, validate_segmentation_data
from .errors import MaskMatchUsageError, report_usage_errors
from .evaluation import evaluate_segmenter
from .hardware import fused_adamw_kwargs, native_bf16, process_device, resolve_mixed_precision
from .modeling_maskmatch import MaskMatchForSemanticSegmentation
from .objective import MaskMatchObjective
from .pipeline_maskmatch import save_pipeline
from .reporting import TrainingHistory, plot_training_curves, write_model_card
from .segmenters import load_model_for_training, minimum_input_side, pretrained_id2label
from .training_args import MASKMATCH_FIELDS, LoopArguments, TrainArguments, parse_args, validate_arguments

logger = get_logger(__name__)

CHECKPOINT_PREFIX = "step_"
BEST_MODEL_DIR = "best_model"
# Written into a training state after `accelerator.save_state` returns: a state without it was cut short.
STATE_MARKER = "state_complete.json"
LEGACY_STATE_MARKER = "history.json"  # its name in states saved before 0.2; still accepted
# The MaskMatch hyperparameters a training state was saved with, checked when it is resumed.
STATE_RECIPE = "maskmatch_recipe.json"
# What `accelerator.save_state` writes for this trainer (weights in either format); the marker comes last.
STATE_FILES = (f"{OPTIMIZER_NAME}.bin", f"{SCHEDULER_NAME}.bin", "custom_checkpoint_0.pkl")


def parameter_groups(model: MaskMatchForSemanticSegmentation, training: LoopArguments) -> list[dict[str, Any]]:
    """Encoder at `learning_rate`, decode head(s) at `learning_rate * head_learning_rate_multiplier`."""
    head, encoder = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (head if "decode_head" in name or "auxiliary_head" in name else encoder).append(parameter)
    return [
        {"params": encoder, "lr": training.learning_rate},
        {"params": head, "lr": training.learning_rate * training.head_learning_rate_multiplier},
    ]


def warmup_steps(training: LoopArguments) -> int:
    """`--num_warmup_steps` in steps: a value below 1 is a fraction of `--max_train_steps`."""
    if training.num_warmup_steps < 1:
        return round(training.num_warmup_steps * training.max_train_steps)
    return int(training.num_warmup_steps)


def build_scheduler(
    optimizer: torch.optim.Optimizer, training: LoopArguments, num_processes: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then `--lr_scheduler_type` (polynomial: `lr = base_lr * (1 - t / T) ** poly_power`, down
    to 0, for each parameter group's own base LR).

    The prepared scheduler steps once per process at each optimizer step (accelerate's convention), so step
    counts are multiplied by `num_processes`.
    """
    polynomial = training.lr_scheduler_type == "polynomial"
    return get_scheduler(
        training.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=warmup_steps(training) * num_processes,
        num_training_steps=training.max_train_steps * num_processes,
        # transformers' polynomial schedule scales every group by (lr_end + (defaults["lr"] - lr_end) * decay)
        # / defaults["lr"]: with lr_end 0 that factor is exactly decay, whatever the group's own LR.
        scheduler_specific_kwargs={"power": training.poly_power, "lr_end": 0.0} if polynomial else None,
    )


def checkpoint_step(path: str | Path) -> int | None:
    """The step of a `step_N` training-state directory name, or None for any other name."""
    match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", Path(path).name)
    return int(match.group(1)) if match else None


def is_complete_state(path: Path) -> bool:
    """Whether the save of this training state finished (its marker was written after `save_state`)."""
    return (path / STATE_MARKER).is_file() or (path / LEGACY_STATE_MARKER).is_file()


def training_states(directory: str | Path) -> list[tuple[int, Path]]:
    """The `step_N` training states in `directory`, as (step, path), oldest first."""
    states = []
    for path in Path(directory).glob(f"{CHECKPOINT_PREFIX}*"):
        step = checkpoint_step(path)
        if step is not None and path.is_dir():
            states.append((step, path))
    return sorted(states)


def missing_state_files(path: Path, process_index: int = 0) -> list[str]:
    """The files of a complete training state that `path` lacks."""
    missing = [name for name in STATE_FILES if not (path / name).is_file()]
    if not (path / f"{RNG_STATE_NAME}_{process_index}.pkl").is_file():
        missing.append(f"{RNG_STATE_NAME}_{process_index}.pkl")
    if not is_complete_state(path):
        missing.append(STATE_MARKER)
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
        states = [(step, path) for step, path in training_states(output_dir) if is_complete_state(path)]
        if not states:
            return None
        step, path = states[-1]
    else:
        path = Path(resume_from_checkpoint)
        step = checkpoint_step(path)
        if not path.is_dir() or step is None:
            raise MaskMatchUsageError(
                f"--resume_from_checkpoint {path}: not a {CHECKPOINT_PREFIX}N training state directory."
            )
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


def prepare_output_dir(args: LoopArguments, accelerator: Accelerator) -> tuple[Path, int] | None:
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


def check_crop_size(args: TrainArguments, config: MaskMatchConfig) -> int:
    """Checks that the training crops, at every teacher scale, are large enough for the segmenter; returns the
    smallest side an evaluation image may have (at `--resize`, before the `--eval_ensemble_scales`)."""
    crop_size = args.data.crop_size
    min_side = minimum_input_side(config.segmenter_config)
    min_scale = min(config.teacher_scales)
    if round(crop_size * min_scale) < min_side:
        raise MaskMatchUsageError(
            f"--crop_size {crop_size} is too small for this model, which needs images of at least {min_side} "
            f"px per side (the teacher sees the crops at scale {min_scale}): use --crop_size "
            f"{math.ceil(min_side / min_scale)} or more."
        )
    return math.ceil(min_side / min(args.training.eval_ensemble_scales))


def check_pass_batch_sizes(args: TrainArguments, config: MaskMatchConfig) -> None:
    """Checks that every student pass (each its own BatchNorm batch) holds enough images for the segmenter. The
    masked-view pass needs no check: it takes at least that many images of the batch (`num_masked_images`)."""
    minimum = config.minimum_pass_batch_size
    training, components = args.training, config.components
    labeled = training.per_device_train_batch_size
    problem = None
    if labeled < minimum:
        problem = f"--per_device_train_batch_size {labeled} puts {labeled} image in the labeled pass"
    elif components.unlabeled:
        unlabeled = training.unlabeled_batch_size
        passes = {"strong-view": components.strong_views * unlabeled}
        if components.feature_perturbation:
            passes["feature-perturbed"] = unlabeled
        name, size = min(passes.items(), key=lambda item: item[1])
        if size < minimum:
            problem = f"an unlabeled batch of {unlabeled} puts {size} image in the {name} pass"
    if problem:
        raise MaskMatchUsageError(
            f"{problem}, and this segmenter needs at least {minimum} per pass (UperNet's pyramid pooling normalizes "
            "1x1 maps with BatchNorm): use larger per-device batches."
        )


def recipe(config: MaskMatchConfig) -> dict[str, Any]:
    """The MaskMatch hyperparameters of `config`, as JSON values."""
    return json.loads(json.dumps({name: getattr(config, name) for name in MASKMATCH_FIELDS}))


def check_resumed_recipe(state_dir: Path, config: MaskMatchConfig) -> None:
    """Refuses to resume a training state under other MaskMatch hyperparameters than it was saved with (a default
    changed since, or a flag left out): the run would not continue exactly. Older states hold no record and resume
    unchecked."""
    path = state_dir / STATE_RECIPE
    if not path.is_file():
        return
    saved, current = json.loads(path.read_text()), recipe(config)
    changed = [name for name in current if name in saved and saved[name] != current[name]]
    if changed:
        differences = ", ".join(f"--{name} {saved[name]} (now {current[name]})" for name in changed)
        raise MaskMatchUsageError(
            f"Training state {state_dir} was saved with {differences}: pass the saved values to resume it exactly, "
            "or start again with --overwrite_output_dir."
        )


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


def build_accelerator(training: LoopArguments) -> Accelerator:
    """The Accelerator of a run; `--mixed_precision auto` is resolved for this process's device first."""
    accelerator = Accelerator(
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        mixed_precision=resolve_mixed_precision(training.mixed_precision, process_device()),
        log_with=(training.report_to if training.with_tracking else None),
        project_dir=training.output_dir,
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    if accelerator.mixed_precision == "bf16" and not native_bf16(accelerator.device):
        logger.warning(
            "bf16 autocast on %s, which has no native bfloat16 (CPU: no AVX-512 BF16 / AMX): it is emulated and can "
            "be 10x slower than float32. Use --mixed_precision auto (bf16 only where native) or no.",
            accelerator.device,
        )
    return accelerator


def load_data_and_model(
    args: TrainArguments, accelerator: Accelerator
) -> tuple[SegmentationData, MaskMatchForSemanticSegmentation]:
    """The splits and the model to train; everything that can be wrong with them fails here, before step 0."""
    data = load_segmentation_data(args.data.data_config())
    id2label = data.id2label or pretrained_id2label(args.model.model_name_or_path)
    if id2label is None:
        raise MaskMatchUsageError(
            "No class names: pass --id2label (JSON or file), use a dataset with a ClassLabel feature, or start from "
            "a checkpoint that has them (--model_name_or_path)."
        )
    logger.info("%d classes (%s); %s.", len(id2label), ", ".join(id2label.values()), data.label_mapping.describe())
    model = load_model_for_training(
        args.model.model_name_or_path,
        id2label,
        args.maskmatch.overrides(),
        segmenter=args.model.segmenter,
        segmenter_variant=args.model.segmenter_variant,
        backbone=args.model.backbone,
        upernet_hidden_size=args.model.upernet_hidden_size,
        segmenter_overrides=read_json_argument(args.model.segmenter_config),
        pretrained_backbone=args.model.pretrained_backbone,
    )
    check_pass_batch_sizes(args, model.config)
    validate_segmentation_data(
        data,
        num_labels=model.config.num_labels,
        validation_samples=args.data.validation_samples,
        require_unlabeled=model.config.components.unlabeled,
        show_progress=accelerator.is_local_main_process,
        eval_min_side=check_crop_size(args, model.config),
        eval_resize=args.data.resize,
    )
    return data, model


@dataclass
class Loaders:
    """Endless labeled (and unlabeled) batch iterators, the eval loader and the eval transform."""

    labeled: Iterator[dict[str, torch.Tensor]]
    unlabeled: Iterator[dict[str, torch.Tensor]] | None
    eval: torch.utils.data.DataLoader | None
    eval_transform: EvalTransform


def stream_checks(data: SegmentationData, num_labels: int) -> dict[str, Any]:
    """Per-example checks for streamed splits: up front only their first rows could be checked."""
    return {
        key: functools.partial(
            check_example, num_labels=num_labels, label_mapping=data.label_mapping, require_label=key != "unlabeled"
        )
        if isinstance(dataset, IterableDataset)
        else None
        for key, dataset in (("labeled", data.labeled), ("unlabeled", data.unlabeled), ("eval", data.eval))
    }


def build_loaders(
    args: TrainArguments, data: SegmentationData, config: MaskMatchConfig, accelerator: Accelerator, start_step: int
) -> Loaders:
    """Loaders are pure functions of (seed, rank, step): they start at `start_step` without replaying data."""
    training, mean, std = args.training, tuple(config.image_mean), tuple(config.image_std)
    checks, pin_memory = stream_checks(data, config.num_labels), accelerator.device.type == "cuda"
    endless = functools.partial(
        infinite_dataloader,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        start_step=start_step * training.gradient_accumulation_steps,
        num_workers=args.data.dataloader_num_workers,
        ignore_index=config.ignore_index,
        pin_memory=pin_memory,
        cache_bytes=args.data.decoded_image_cache_mb * 2**20,
    )
    weak = functools.partial(
        WeakAugmentation,
        crop_size=args.data.crop_size,
        image_mean=mean,
        image_std=std,
        scale_range=tuple(args.data.scale_range),
        resize=args.data.resize,
        label_mapping=data.label_mapping,
    )
    batch_size = training.per_device_train_batch_size
    labeled = iter(endless(data.labeled, batch_size, weak(), seed=training.seed, check_example=checks["labeled"]))
    unlabeled = None
    if config.components.unlabeled:
        unlabeled = iter(endless(
            data.unlabeled, training.unlabeled_batch_size, weak(return_pixel_mask=True), seed=training.seed + 1,
            check_example=checks["unlabeled"],
        ))  # fmt: skip
    eval_transform = EvalTransform(mean, std, resize=args.data.resize, label_mapping=data.label_mapping)
    eval_loader = None
    if data.eval is not None:
        eval_loader = eval_dataloader(
            data.eval, eval_transform, training.per_device_eval_batch_size, accelerator.process_index,
            accelerator.num_processes, args.data.dataloader_num_workers, pin_memory=pin_memory,
            check_example=checks["eval"],
        )  # fmt: skip
    return Loaders(labeled, unlabeled, eval_loader, eval_transform)


@dataclass
class TrainingRun:
    """What the pieces of the loop share: the arguments, the accelerator, the prepared objects and the logs."""

    args: TrainArguments
    accelerator: Accelerator
    objective: MaskMatchObjective  # prepared by the accelerator (possibly wrapped, e.g. in DDP)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loaders: Loaders
    history: TrainingHistory
    progress: tqdm
    eval_seconds: float = 0.0

    @property
    def student(self) -> MaskMatchForSemanticSegmentation:
        return self.accelerator.unwrap_model(self.objective).student

    @property
    def output_dir(self) -> Path:
        return Path(self.args.training.output_dir)


def next_inputs(loaders: Loaders, device: torch.device) -> dict[str, torch.Tensor | None]:
    """The objective's inputs for one micro-batch: labeled crops, and unlabeled ones when the preset uses them."""
    labeled = to_device(next(loaders.labeled), device)
    inputs = {"pixel_values": labeled["pixel_values"], "labels": labeled["labels"]}
    if loaders.unlabeled is not None:
        unlabeled = to_device(next(loaders.unlabeled), device)
        inputs["unlabeled_pixel_values"] = unlabeled["pixel_values"]
        inputs["unlabeled_pixel_mask"] = unlabeled["pixel_mask"]
        inputs["unlabeled_labels"] = unlabeled.get("labels")
    return inputs


def optimizer_step(run: TrainingRun, step: int) -> Any:
    """One optimizer step (over `--gradient_accumulation_steps` micro-batches), then the teacher's update;
    returns the last micro-batch's `MaskMatchOutput`."""
    accelerator, training = run.accelerator, run.args.training
    for micro in range(training.gradient_accumulation_steps):
        with accelerator.accumulate(run.objective):
            inputs = next_inputs(run.loaders, accelerator.device)
            generator = torch.Generator(accelerator.device)
            generator.manual_seed(sample_seed(training.seed, accelerator.process_index, step, micro))
            output = run.objective(**inputs, generator=generator, step=step)
            accelerator.backward(output.loss)
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad()
    accelerator.unwrap_model(run.objective).update_teacher(step)
    return output


def log_step(run: TrainingRun, completed: int, output: Any) -> None:
    """History, progress bar and trackers after step `completed` (1-based); a non-finite loss stops the run."""
    logs = {**output.logs, "lr": run.scheduler.get_last_lr()[0]}
    if not all(math.isfinite(v) for v in output.logs.values()):
        raise FloatingPointError(f"Non-finite loss at step {completed}: {output.logs}")
    run.history.log_train(completed, logs)
    run.progress.update(1)
    run.progress.set_postfix(run.history.postfix())
    training = run.args.training
    if training.with_tracking and completed % training.logging_steps == 0:
        run.accelerator.log({f"train/{k}": v for k, v in logs.items()}, step=completed)


def evaluate_and_checkpoint(run: TrainingRun, completed: int) -> None:
    """After step `completed`: evaluate every `--eval_steps` and at the end (saving the best model), and save the
    training state every `--checkpointing_steps` and at the end."""
    training, accelerator = run.args.training, run.accelerator
    last = completed == training.max_train_steps
    if run.loaders.eval is not None and (last or (training.eval_steps and completed % training.eval_steps == 0)):
        start = time.perf_counter()
        scores = evaluate_segmenter(
            run.student, run.loaders.eval, accelerator, training.eval_ensemble_scales, training.eval_ensemble_flip,
            training.eval_window_size, training.eval_window_stride, run.student.config.ignore_index,
            show_progress=accelerator.is_local_main_process,
        )  # fmt: skip
        run.eval_seconds += time.perf_counter() - start
        improved = run.history.log_eval(completed, scores)
        run.progress.set_postfix(run.history.postfix())
        if training.with_tracking:
            accelerator.log({"eval/mean_iou": scores["mean_iou"]}, step=completed)
        if improved and accelerator.is_main_process:
            run.student.save_pretrained(run.output_dir / BEST_MODEL_DIR)
        accelerator.wait_for_everyone()
    if training.checkpointing_steps and (last or completed % training.checkpointing_steps == 0):
        state_dir = run.output_dir / f"{CHECKPOINT_PREFIX}{completed}"
        accelerator.save_state(str(state_dir))
        if accelerator.is_main_process:
            (state_dir / STATE_RECIPE).write_text(json.dumps(recipe(run.student.config), indent=1))
            (state_dir / STATE_MARKER).write_text(json.dumps({"step": completed}))
            prune_checkpoints(run.output_dir, training.checkpoints_total_limit)
        accelerator.wait_for_everyone()


def train(args: TrainArguments) -> dict[str, Any]:
    """Run training; returns the final results (also written to `all_results.json`)."""
    validate_arguments(args)
    training = args.training
    accelerator = build_accelerator(training)
    resume = prepare_output_dir(training, accelerator)
    start_step = resume[1] if resume is not None else 0
    set_seed(training.seed)
    data, model = load_data_and_model(args, accelerator)
    if resume is not None:
        check_resumed_recipe(resume[0], model.config)

    objective = MaskMatchObjective(model)
    optimizer = torch.optim.AdamW(
        parameter_groups(model, training),
        lr=training.learning_rate,
        weight_decay=training.weight_decay,
        **fused_adamw_kwargs(accelerator.device),
    )
    scheduler = build_scheduler(optimizer, training, accelerator.num_processes)
    objective, optimizer, scheduler = accelerator.prepare(objective, optimizer, scheduler)
    history = TrainingHistory()
    accelerator.register_for_checkpointing(history)
    # The loaders' iterators draw from the global RNG: build them before `load_state` restores it.
    loaders = build_loaders(args, data, model.config, accelerator, start_step)
    if resume is not None:
        accelerator.print(f"Resuming from {resume[0]} (step {start_step})")
        accelerator.load_state(str(resume[0]))
    if training.with_tracking:
        tracked = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in args.to_dict().items()}
        accelerator.init_trackers("maskmatch", config=tracked)

    progress = tqdm(
        range(training.max_train_steps),
        initial=start_step,
        desc="train",
        disable=not accelerator.is_local_main_process,
    )
    run = TrainingRun(args, accelerator, objective, optimizer, scheduler, loaders, history, progress)
    objective.train()
    loop_start = time.perf_counter()
    for step in range(start_step, training.max_train_steps):
        output = optimizer_step(run, step)
        log_step(run, step + 1, output)
        evaluate_and_checkpoint(run, step + 1)
    progress.close()
    if training.max_train_steps > start_step:
        train_seconds = time.perf_counter() - loop_start - run.eval_seconds
        history.seconds_per_step = train_seconds / (training.max_train_steps - start_step)

    results = finish(run, data)
    accelerator.end_training()
    return results


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    """Delete all but the `keep` newest training states (all are kept when `keep` is 0)."""
    for _, path in training_states(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)


def eval_image_size(data: SegmentationData, eval_transform: EvalTransform, args: TrainArguments) -> tuple | None:
    """(height, width) of the first eval image as evaluated, when `--resize` fixes it; None otherwise."""
    if data.eval is None or args.data.resize is None:
        return None
    first = next(iter(data.eval)) if isinstance(data.eval, IterableDataset) else data.eval[0]
    return tuple(eval_transform(first)["pixel_values"].shape[-2:])


def finish(run: TrainingRun, data: SegmentationData) -> dict[str, Any]:
    """Write the best model (or the last one without eval data), results, card and plot; push if asked."""
    output_dir, best_dir, training = run.output_dir, run.output_dir / BEST_MODEL_DIR, run.args.training
    results = run.history.results()
    if run.accelerator.is_main_process:
        model = MaskMatchForSemanticSegmentation.from_pretrained(best_dir) if best_dir.exists() else run.student
        eval_size = eval_image_size(data, run.loaders.eval_transform, run.args)
        save_final_model(model, output_dir, run.args.data.crop_size, eval_size)
        (output_dir / "all_results.json").write_text(json.dumps(results, indent=2))
        (output_dir / "training_history.json").write_text(json.dumps(run.history.state_dict()))
        plot_training_curves(run.history, output_dir / "training_curves.png")
        write_model_card(output_dir, model.config, results, run.args)
        if training.push_to_hub:
            from .hub import push_output_dir

            push_output_dir(output_dir, training.hub_model_id, token=training.hub_token)
    run.accelerator.wait_for_everyone()
    return results


@report_usage_errors
def main(argv: Sequence[str] | None = None) -> int:
    """`maskmatch-train`: 0 on success; bad input prints `error: <message>` and gives 1 (bugs keep a traceback)."""
    args = parse_args(argv)
    results = train(args)
    if int(os.environ.get("RANK", "0")) == 0:
        best = results.get("best_eval_mean_iou")
        summary = f"val mIoU {100 * best:.2f} (step {results['best_step']})" if best is not None else "no eval set"
        print(f"\n{summary}\nmodel, model card and training curves: {Path(args.training.output_dir).resolve()}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
