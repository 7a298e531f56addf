"""Benchmark: what one training step costs, part by part, for each preset, precision and memory format.

The step is train.py's: next labeled + unlabeled batch (weak view, in the main process as with the default
`--dataloader_num_workers 0`, of images decoded once beforehand, as in training from the second pass over the
data on with the default `--decoded_image_cache_mb`), `MaskMatchObjective` forward, backward, AdamW step, teacher
update. The model is the benchmarks' (UperNet hidden 128 on the ImageNet EfficientNet-Lite0, CamVid frames at 240x180,
crop 160, batch 4 labeled + 4 unlabeled).

The objective is measured from the outside, without copying its logic:

- student passes: forward pre-/post-hooks on the student. A pass is named by its input: the labeled batch, the
  output of `mask_images` (masked view), `feature_perturbation=True` (feature-perturbed weak views), else the
  strong / CutMix views; calls made inside `pseudo_labels` are the teacher's.
- backward, per pass: a gradient hook on each pass's logits marks when autograd reaches that pass; the engine runs
  the passes' graphs one after another (latest first), so a pass's backward lasts until the next mark (or the end).
- strong views + CutMix + masking: the objective's calls of `strong_augment`, `cutmix_box_mask`, `cutmix`,
  `random_patch_mask` and `mask_images`, timed through wrappers.
- teacher: `pseudo_labels` (model passes, plus resizing / softmax / argmax / thresholds: the "ensemble" part).

All (preset, mode) combinations are built first and then stepped round-robin, so load on the machine hits them
alike and the ratios within one run are fair. Each part is the median over the measured steps; the overhead
(step - model passes) and the shares are medians of the per-step values. On CUDA every timer synchronizes.

    python bench/step_cost.py --camvid /tmp/camvid240 --steps 10
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from camvid_split import load_camvid_split

import maskmatch_hf.objective as objective_module
from maskmatch_hf.data_loaders import infinite_dataloader, sample_seed
from maskmatch_hf.data_transforms import Resize, WeakAugmentation
from maskmatch_hf.hardware import fused_adamw_kwargs, native_bf16
from maskmatch_hf.objective import MaskMatchObjective
from maskmatch_hf.segmenters import load_model_for_training
from maskmatch_hf.train import parameter_groups

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ("supervised", "fixmatch", "maskmatch", "unimatch+maskmatch")
MODES = {
    # name: (autocast dtype or None, memory format)
    "fp32": (None, torch.contiguous_format),
    "bf16": (torch.bfloat16, torch.contiguous_format),
    "fp32 channels_last": (None, torch.channels_last),
    "bf16 channels_last": (torch.bfloat16, torch.channels_last),
}
AUGMENT_FUNCTIONS = ("strong_augment", "cutmix_box_mask", "cutmix", "random_patch_mask", "mask_images")
PASS_KINDS = ("labeled", "strong", "masked", "fp")


class Recorder:
    """Seconds spent in named parts of the current step (the step being run by `current`)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.parts: dict[str, float] = defaultdict(float)
        self.marks: list[tuple[float, str]] = []
        self.in_teacher = False
        self.labeled_input: torch.Tensor | None = None
        self.masked_inputs: set[int] = set()

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        start = self.now()
        try:
            yield
        finally:
            self.parts[name] += self.now() - start

    def reset(self) -> None:
        self.parts = defaultdict(float)
        self.marks = []
        self.masked_inputs = set()


CURRENT: Recorder | None = None


def timed_function(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """`function`, adding its time to the part `augment` of the current recorder (and its output id for masks)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if CURRENT is None:
            return function(*args, **kwargs)
        with CURRENT.part("augment"):
            result = function(*args, **kwargs)
        if name == "mask_images":
            CURRENT.masked_inputs.add(id(result))
        return result

    return wrapper


def instrument_objective_module() -> None:
    """Time the augmentation functions the objective calls (wrapping the names it looks up)."""
    for name in AUGMENT_FUNCTIONS:
        setattr(objective_module, name, timed_function(name, getattr(objective_module, name)))


def instrument(objective: MaskMatchObjective) -> None:
    """Hooks on the student and a wrapper around the teacher's `pseudo_labels`."""
    student = objective.student
    starts: list[float] = []

    def pre_hook(module, args, kwargs):
        if CURRENT is not None:
            starts.append(CURRENT.now())

    def hook(module, args, kwargs, output):
        if CURRENT is None:
            return
        seconds = CURRENT.now() - starts.pop()
        pixel_values = kwargs.get("pixel_values", args[0] if args else None)
        if CURRENT.in_teacher:
            CURRENT.parts["teacher model"] += seconds
            return
        if kwargs.get("feature_perturbation"):
            kind = "fp"
        elif pixel_values is CURRENT.labeled_input:
            kind = "labeled"
        elif id(pixel_values) in CURRENT.masked_inputs:
            kind = "masked"
        else:
            kind = "strong"
        CURRENT.parts[f"{kind} forward"] += seconds
        if output.logits.requires_grad:
            recorder = CURRENT
            output.logits.register_hook(lambda grad: recorder.marks.append((recorder.now(), kind)))

    for model in (student, objective.ema_teacher):
        if model is not None:
            model.register_forward_pre_hook(pre_hook, with_kwargs=True)
            model.register_forward_hook(hook, with_kwargs=True)
    pseudo_labels = objective.pseudo_labels

    def timed_pseudo_labels(*args, **kwargs):
        CURRENT.in_teacher = True
        try:
            with CURRENT.part("teacher"):
                return pseudo_labels(*args, **kwargs)
        finally:
            CURRENT.in_teacher = False

    objective.pseudo_labels = timed_pseudo_labels


class Run:
    """One (preset, mode): its model, objective, optimizer, loaders, and the parts of every measured step."""

    def __init__(self, preset: str, mode: str, args: argparse.Namespace, data: Any, device: torch.device):
        self.preset, self.mode, self.device = preset, mode, device
        self.autocast_dtype, memory_format = MODES[mode]
        torch.manual_seed(args.seed)
        overrides = {"preset": preset, **({"teacher": args.teacher} if args.teacher else {})}
        if args.mask_batch_fraction is not None:
            overrides["mask_batch_fraction"] = args.mask_batch_fraction
        model = load_model_for_training(
            None,
            data.id2label,
            overrides,
            segmenter="upernet",
            backbone="efficientnet-lite0",
            upernet_hidden_size=args.upernet_hidden_size,
            pretrained_backbone=True,
        ).to(device)
        channels_last = memory_format == torch.channels_last
        self.objective = MaskMatchObjective(model, channels_last=channels_last).train()
        hyper = SimpleNamespace(learning_rate=2e-4, head_learning_rate_multiplier=10.0)
        self.optimizer = torch.optim.AdamW(
            parameter_groups(model, hyper), lr=2e-4, weight_decay=0.01, **fused_adamw_kwargs(device)
        )
        config = model.config
        weak = {
            "crop_size": args.crop_size,
            "image_mean": tuple(config.image_mean),
            "image_std": tuple(config.image_std),
        }
        weak.update(resize=args.resize, label_mapping=data.label_mapping)
        loader = functools.partial(
            infinite_dataloader,
            num_workers=args.num_workers,
            ignore_index=config.ignore_index,
            cache_bytes=args.decoded_image_cache_mb * 2**20,
        )
        loaders = [loader(data.labeled, args.batch_size, WeakAugmentation(**weak), seed=args.seed)]
        if config.components.unlabeled:
            unlabeled_transform = WeakAugmentation(**weak, return_pixel_mask=True)
            loaders.append(loader(data.unlabeled, args.batch_size, unlabeled_transform, seed=args.seed + 1))
        if args.num_workers == 0:  # the steady state of training from its second epoch on
            for dataset in (batches.dataset for batches in loaders):
                for index in range(len(dataset)):
                    dataset[index, 0]
        self.labeled, self.unlabeled = iter(loaders[0]), iter(loaders[1]) if len(loaders) > 1 else None
        self.images = args.batch_size * (2 if config.components.unlabeled else 1)  # labeled + unlabeled per step
        self.recorder = Recorder(device)
        instrument(self.objective)
        self.steps: list[dict[str, float]] = []
        self.step_index = 0
        self.seed = args.seed

    def step(self, record: bool) -> None:
        global CURRENT
        recorder = self.recorder
        recorder.reset()
        CURRENT = recorder
        to_device = functools.partial(_to_device, device=self.device)
        start = recorder.now()
        with recorder.part("data"):
            labeled = to_device(next(self.labeled))
            inputs = {"pixel_values": labeled["pixel_values"], "labels": labeled["labels"]}
            if self.unlabeled is not None:
                unlabeled = to_device(next(self.unlabeled))
                inputs["unlabeled_pixel_values"] = unlabeled["pixel_values"]
                inputs["unlabeled_pixel_mask"] = unlabeled["pixel_mask"]
                inputs["unlabeled_labels"] = unlabeled.get("labels")
        recorder.labeled_input = inputs["pixel_values"]
        generator = torch.Generator(self.device).manual_seed(sample_seed(self.seed, 0, self.step_index, 0))
        autocast = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with recorder.part("objective forward"), autocast:
            output = self.objective(**inputs, generator=generator, step=self.step_index)
        backward_start = recorder.now()
        output.loss.backward()
        backward_end = recorder.now()
        with recorder.part("optimizer"):
            self.optimizer.step()
            self.optimizer.zero_grad()
        with recorder.part("teacher update"):
            self.objective.update_teacher(self.step_index)
        end = recorder.now()
        CURRENT = None
        self.step_index += 1
        if not record:
            return
        parts = dict(recorder.parts)
        parts["step"] = end - start
        parts["backward"] = backward_end - backward_start
        marks = sorted(recorder.marks)
        bounds = [time for time, _ in marks] + [backward_end]
        parts["loss backward"] = (marks[0][0] if marks else backward_end) - backward_start
        for (time_, kind), next_time in zip(marks, bounds[1:]):
            parts[f"{kind} backward"] = parts.get(f"{kind} backward", 0.0) + next_time - time_
        self.steps.append(parts)

    def summary(self) -> dict[str, float]:
        """Median of each part, and derived figures (medians of per-step values)."""
        names = sorted({name for step in self.steps for name in step})
        summary = {name: statistics.median(step.get(name, 0.0) for step in self.steps) for name in names}
        per_step = defaultdict(list)
        for step in self.steps:
            passes = step.get("teacher model", 0.0) + sum(
                step.get(f"{kind} {phase}", 0.0) for kind in PASS_KINDS for phase in ("forward", "backward")
            )
            per_step["model passes"].append(passes)
            per_step["overhead"].append(step["step"] - passes)
            per_step["overhead share"].append((step["step"] - passes) / step["step"])
            per_step["data + augment share"].append((step.get("data", 0.0) + step.get("augment", 0.0)) / step["step"])
            per_step["teacher ensemble"].append(step.get("teacher", 0.0) - step.get("teacher model", 0.0))
            student = sum(step.get(f"{kind} forward", 0.0) for kind in PASS_KINDS)
            per_step["other forward"].append(
                step["objective forward"] - step.get("teacher", 0.0) - step.get("augment", 0.0) - student
            )
        summary.update({name: statistics.median(values) for name, values in per_step.items()})
        return summary


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


ROWS = [
    ("data loading + weak view", "data"),
    ("teacher: model passes", "teacher model"),
    ("teacher: ensemble (resize, softmax, argmax)", "teacher ensemble"),
    ("strong views + CutMix + masking", "augment"),
    ("student labeled: forward", "labeled forward"),
    ("student labeled: backward", "labeled backward"),
    ("student strong: forward", "strong forward"),
    ("student strong: backward", "strong backward"),
    ("student masked: forward", "masked forward"),
    ("student masked: backward", "masked backward"),
    ("student feature-perturbed: forward", "fp forward"),
    ("student feature-perturbed: backward", "fp backward"),
    ("losses, stats, logs", "other forward"),
    ("loss terms: backward", "loss backward"),
    ("optimizer (AdamW step + zero_grad)", "optimizer"),
    ("EMA teacher update", "teacher update"),
]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def report(runs: dict[tuple[str, str], Run], presets: list[str], modes: list[str]) -> str:
    summaries = {key: run.summary() for key, run in runs.items()}
    out = []
    header = ["s / step (images / s)", *modes]
    rows = [
        [preset, *(f"{summaries[preset, m]['step']:.3f} ({runs[preset, m].images / summaries[preset, m]['step']:.1f})"
                   for m in modes)]
        for preset in presets
    ]  # fmt: skip
    if "fixmatch" in presets and "maskmatch" in presets:
        rows.append(
            [
                "**maskmatch / fixmatch**",
                *(f"{summaries['maskmatch', m]['step'] / summaries['fixmatch', m]['step']:.2f}x" for m in modes),
            ]
        )
    for preset in presets:
        rows.append(
            [
                f"{preset}: overhead (step - model passes)",
                *(f"{100 * summaries[preset, m]['overhead share']:.1f}%" for m in modes),
            ]
        )
    for preset in presets:
        rows.append(
            [
                f"{preset}: data + augmentation",
                *(f"{100 * summaries[preset, m]['data + augment share']:.1f}%" for m in modes),
            ]
        )
    out.append("Seconds per step (median) and the ratios that matter\n\n" + markdown_table(header, rows))
    for mode in modes:
        header = ["part (s)", *presets]
        rows = []
        for label, key in ROWS:
            values = [summaries[preset, mode].get(key) for preset in presets]
            if all(not value for value in values):
                continue
            rows.append([label, *("-" if not value else f"{value:.4f}" for value in values)])
        rows.append(["**step**", *(f"**{summaries[p, mode]['step']:.3f}**" for p in presets)])
        rows.append(["model passes (sum)", *(f"{summaries[p, mode]['model passes']:.3f}" for p in presets)])
        rows.append(
            [
                "overhead = step - model passes",
                *(
                    f"{summaries[p, mode]['overhead']:.3f} ({100 * summaries[p, mode]['overhead share']:.1f}%)"
                    for p in presets
                ),
            ]
        )
        rows.append(
            [
                "data + augmentation share",
                *(f"{100 * summaries[p, mode]['data + augment share']:.1f}%" for p in presets),
            ]
        )
        out.append(f"Parts of the step, {mode} (median seconds)\n\n" + markdown_table(header, rows))
    return "\n\n".join(out)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or "CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    return f"{cpu}, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--camvid", type=Path, default=ROOT.parent / "shared/data/camvid")
    parser.add_argument("--split", default="1_8")
    parser.add_argument(
        "--resize", type=Resize.from_flag, help="As training's --resize (180 for the original 480x360 frames)."
    )
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=list(MODES),
        help="Default: all where the device has native bfloat16, else the float32 ones (emulated bf16 is 10x slower).",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10, help="Measured steps per (preset, mode).")
    parser.add_argument("--warmup", type=int, default=2, help="Unmeasured steps first.")
    parser.add_argument("--crop_size", type=int, default=160)
    parser.add_argument("--batch_size", type=int, default=4, help="Labeled and unlabeled batch size.")
    parser.add_argument("--upernet_hidden_size", type=int, default=128)
    parser.add_argument("--teacher", choices=["shared", "ema"], help="Default: the config's.")
    parser.add_argument("--mask_batch_fraction", type=float, help="Default: the config's.")
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader workers (training's default: 0).")
    parser.add_argument(
        "--decoded_image_cache_mb", type=int, default=512, help="As maskmatch-train's (0: decode every image)."
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.modes is None:
        args.modes = [mode for mode, (dtype, _) in MODES.items() if dtype is None or native_bf16(device)]
    if args.resize is None and not (args.camvid / "train").is_dir():
        parser.error(f"no CamVid folder at {args.camvid}")
    data = load_camvid_split(args.camvid, args.split)
    instrument_objective_module()
    runs = {(p, m): Run(p, m, args, data, device) for p in args.presets for m in args.modes}
    for index in range(args.warmup + args.steps):
        for run in runs.values():
            run.step(record=index >= args.warmup)
    fraction = next(iter(runs.values())).objective.config.mask_batch_fraction
    print(
        f"step_cost: UperNet-{args.upernet_hidden_size} on EfficientNet-Lite0, crop {args.crop_size}, "
        f"batch {args.batch_size} + {args.batch_size}, mask_batch_fraction {fraction}, "
        f"{describe_device(device)}, torch {torch.__version__}, "
        f"median of {args.steps} steps (after {args.warmup} warm-up), OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}\n"
    )
    print(report(runs, args.presets, args.modes))


if __name__ == "__main__":
    main()
