"""`maskmatch-train`'s arguments: typed dataclasses parsed by transformers' `HfArgumentParser`.

Four groups, as in transformers' example scripts: [`ModelArguments`] (the model a run starts from),
[`DataArguments`] ([`DataConfig`] plus the weak view and loading), [`MaskMatchArguments`] (one optional flag per
`MaskMatchConfig` hyperparameter, generated from its fields: unset keeps the config's or the checkpoint's value)
and [`LoopArguments`] (optimisation, evaluation, checkpoints, logging, Hub). [`parse_args`] returns them as one
[`TrainArguments`]; `--config FILE` (YAML or JSON) supplies any flag, the command line winning.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from transformers import HfArgumentParser

from .configuration_maskmatch import PRESETS, MaskMatchConfig
from .data import DataConfig
from .data_transforms import Resize
from .errors import MaskMatchUsageError, check_local_or_hub, rename_deprecated_flags, warn_deprecated
from .predict import _positive_int, check_window_arguments
from .segmenters import BACKBONES, SEGFORMER_VARIANTS

DEFAULT_WARMUP = 0.05
# Renamed flags (so that each concept has one name across the commands and `MaskMatchConfig`), still accepted on
# the command line (with underscores or, as `HfArgumentParser` allows, dashes) and as `--config` keys, with a
# `FutureWarning`. `--model` is `maskmatch-predict`'s and `maskmatch-evaluate`'s former name of the flag, which
# argparse also took here as an abbreviation of `--model_name_or_path`.
DEPRECATED_FLAGS = {
    "--model": "--model_name_or_path",
    "--eval_scales": "--eval_ensemble_scales",
    "--eval_flip": "--eval_ensemble_flip",
    "--eval-scales": "--eval_ensemble_scales",
    "--eval-flip": "--eval_ensemble_flip",
}
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
    "eval_ensemble_scales",
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
    "decoded_image_cache_mb",
    "seed",
)


@dataclass
class ModelArguments:
    """The model a run starts from: a checkpoint, or a fresh segmenter."""

    _argument_group_name = "model"

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "MaskMatch or stock SegFormer / UperNet checkpoint to start from."}
    )
    segmenter: Literal["segformer", "upernet"] = field(default="segformer", metadata={"help": "Fresh segmenter."})
    segmenter_variant: str = field(
        default="b0", metadata={"choices": sorted(SEGFORMER_VARIANTS), "help": "SegFormer size."}
    )
    backbone: str = field(default="efficientnet-lite0", metadata={"choices": BACKBONES, "help": "UperNet backbone."})
    pretrained_backbone: bool = field(default=False, metadata={"help": "ImageNet EfficientNet-Lite0 weights."})
    upernet_hidden_size: int = field(default=256, metadata={"help": "Channels of the UperNet head."})
    segmenter_config: str | None = field(
        default=None, metadata={"help": "JSON (inline or file) overriding fields of the fresh segmenter config."}
    )


@dataclass
class DataArguments(DataConfig):
    """Where the data comes from ([`DataConfig`]), the weak view of training images, and start-up checks."""

    _argument_group_name = "data"

    crop_size: int = field(default=512, metadata={"help": "Side of the square training crops."})
    resize: Resize | None = field(
        default=None,
        metadata={"type": Resize.from_flag, "help": "Shorter side in px (e.g. 180) or scale (e.g. 0.5)."},
    )
    scale_range: tuple[float, float] = field(
        default=(0.5, 2.0), metadata={"type": float, "nargs": 2, "help": "Random rescale range."}
    )
    validation_samples: int = field(default=2000, metadata={"help": "Rows checked per split before training."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader workers per process."})
    decoded_image_cache_mb: int = field(
        default=512,
        metadata={"help": "Decoded training images kept in memory per process and worker, in MiB (0: none)."},
    )

    def data_config(self) -> DataConfig:
        """The [`DataConfig`] part, as `load_segmentation_data` takes it."""
        return DataConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DataConfig)})


def _config_field_help() -> dict[str, str]:
    """Each MaskMatchConfig field's description, read from the `Args:` section of its docstring."""
    helps, names = {}, []
    for line in (MaskMatchConfig.__doc__ or "").split("Args:", 1)[-1].splitlines():
        header = re.fullmatch(r" {8}([\w, ]+) \(.*\):", line)
        if header:
            names = [name.strip() for name in header.group(1).split(",")]
        elif line.startswith(" " * 12) and names:
            for name in names:
                helps[name] = f"{helps.get(name, '')} {line.strip()}".strip()
    return helps


def _maskmatch_field(config_field: dataclasses.Field, helps: dict[str, str]) -> tuple[str, Any, dataclasses.Field]:
    """An optional flag for one MaskMatchConfig field, typed after its default."""
    default = config_field.default
    metadata: dict[str, Any] = {"help": helps.get(config_field.name, "")}
    if config_field.name == "preset":
        metadata["choices"] = sorted(PRESETS)
    if isinstance(default, (list, tuple)):
        annotation: Any = list[float] | None
    else:
        annotation = type(default) | None
    return config_field.name, annotation, field(default=None, metadata=metadata)


# MaskMatch hyperparameters settable from the command line: every field of MaskMatchConfig but the nested
# segmenter config, and `ignore_index`, which is a data flag (one value for labels, losses and metrics).
MASKMATCH_FIELDS = [
    f.name
    for f in dataclasses.fields(MaskMatchConfig)
    if f.name in MaskMatchConfig.__annotations__ and f.name not in ("segmenter_config", "ignore_index")
]
MaskMatchArguments = dataclasses.make_dataclass(
    "MaskMatchArguments",
    [
        _maskmatch_field(f, _config_field_help())
        for f in dataclasses.fields(MaskMatchConfig)
        if f.name in MASKMATCH_FIELDS
    ],
    namespace={
        "_argument_group_name": "MaskMatch (defaults: MaskMatchConfig's, or the checkpoint's)",
        "__module__": __name__,
        "overrides": lambda self: {k: v for k, v in dataclasses.asdict(self).items() if v is not None},
    },
)
MaskMatchArguments.__doc__ = """MaskMatch hyperparameters given on the command line, `None` where unset; `overrides()`
returns the set ones (the others keep MaskMatchConfig's defaults, or the `--model_name_or_path` checkpoint's)."""


@dataclass
class LoopArguments:
    """The training loop: optimisation, evaluation, checkpoints, logging and the Hub."""

    _argument_group_name = "training"

    output_dir: str = field(metadata={"help": "Where the training states, the model and its card are written."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start from step 0 in a non-empty --output_dir, deleting its training states and best model."
        },
    )
    max_train_steps: int = field(default=1000, metadata={"help": "Optimizer steps."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Labeled images per process and step."})
    per_device_unlabeled_batch_size: int | None = field(default=None, metadata={"help": "Default: the labeled one."})
    per_device_eval_batch_size: int = field(
        default=4, metadata={"help": "Evaluation images per process; same-size images share a pass."}
    )
    learning_rate: float = field(default=2e-4, metadata={"help": "Encoder / backbone learning rate."})
    head_learning_rate_multiplier: float = field(default=10.0, metadata={"help": "Decode head LR factor."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    lr_scheduler_type: str = field(default="polynomial", metadata={"help": "transformers scheduler name."})
    poly_power: float = field(default=0.9, metadata={"help": "Power of the polynomial schedule."})
    num_warmup_steps: float = field(
        default=DEFAULT_WARMUP,
        metadata={"help": "Linear LR warmup: a number of steps, or a fraction of --max_train_steps when below 1."},
    )
    checkpointing_steps: int | None = field(default=None, metadata={"help": "Save the training state every N steps."})
    checkpoints_total_limit: int = field(default=2, metadata={"help": "Training states kept (0: all)."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'latest' or a step_N directory."})
    eval_steps: int | None = field(default=None, metadata={"help": "Evaluate every N steps (and always at the end)."})
    eval_ensemble_scales: list[float] = field(
        default_factory=lambda: [1.0],
        metadata={"help": "Input scales whose softmaxes evaluation averages (e.g. 0.75 1 1.25)."},
    )
    eval_ensemble_flip: bool = field(
        default=False, metadata={"help": "Also average horizontally flipped predictions at evaluation."}
    )
    eval_window_size: int | None = field(
        default=None,
        metadata={
            "type": _positive_int,
            "help": "Segment each (rescaled) image with overlapping square windows of this side in px; "
            "default: whole image.",
        },
    )
    eval_window_stride: int | None = field(
        default=None,
        metadata={
            "type": _positive_int,
            "help": "Step between windows, at most --eval_window_size; default: 2/3 of the window.",
        },
    )
    logging_steps: int = field(default=10, metadata={"help": "Log to the trackers every N steps."})
    seed: int = field(default=42, metadata={"help": "Seed of the model, the data order and the augmentations."})
    mixed_precision: Literal["no", "fp16", "bf16", "auto"] | None = field(
        default=None,
        metadata={"help": "Default: accelerate config. `auto`: bf16 where the device has native bfloat16, else no."},
    )
    with_tracking: bool = field(default=False, metadata={"help": "Log to the --report_to trackers."})
    report_to: str = field(default="tensorboard", metadata={"help": "Tracker(s) for --with_tracking, or 'all'."})
    push_to_hub: bool = field(default=False, metadata={"help": "Push the output dir to the Hub at the end."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Default: the name of --output_dir."})
    hub_token: str | None = field(default=None, metadata={"help": "Default: the stored Hub login."})

    def __post_init__(self) -> None:
        if self.push_to_hub and not self.hub_model_id:
            self.hub_model_id = Path(self.output_dir).name

    @property
    def unlabeled_batch_size(self) -> int:
        """Unlabeled images per process and step: `per_device_unlabeled_batch_size`, else the labeled one."""
        return self.per_device_unlabeled_batch_size or self.per_device_train_batch_size


GROUPS = (ModelArguments, DataArguments, MaskMatchArguments, LoopArguments)


@dataclass
class TrainArguments:
    """Everything `maskmatch-train` was given, by group."""

    model: ModelArguments
    data: DataArguments
    maskmatch: MaskMatchArguments
    training: LoopArguments

    def groups(self) -> Iterator[Any]:
        return iter((self.model, self.data, self.maskmatch, self.training))

    def to_dict(self) -> dict[str, Any]:
        """Every flag's value by name (flag names are unique across the groups)."""
        return {f.name: getattr(group, f.name) for group in self.groups() for f in dataclasses.fields(group)}


class TrainArgumentParser(HfArgumentParser):
    """`HfArgumentParser` over the four groups, plus `--config`; a field whose metadata names its own argparse
    `type` or `nargs` (e.g. `--resize`, `--scale_range`) is added with them as given."""

    def __init__(self) -> None:
        super().__init__(GROUPS, description=__doc__.split("\n\n")[0].replace("`maskmatch-train`'s", "MaskMatch"))
        self.add_argument("--config", help="YAML or JSON file whose keys are any of these flags (without --).")

    @staticmethod
    def _parse_dataclass_field(parser: argparse._ActionsContainer, field: dataclasses.Field) -> None:
        if "type" not in field.metadata and "nargs" not in field.metadata:
            return HfArgumentParser._parse_dataclass_field(parser, field)
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        parser.add_argument(f"--{field.name}", default=default, **field.metadata)


def config_file_argv(path: str | Path, parser: TrainArgumentParser) -> list[str]:
    """The flags a `--config` file holds, as command-line strings (so they get the same types and checks)."""
    path = Path(path)
    if not path.is_file():
        parser.error(f"--config file not found: {path}")
    values = {}
    for key, value in (yaml.safe_load(path.read_text()) or {}).items():  # JSON is YAML too
        if f"--{key}" in DEPRECATED_FLAGS:
            new_key = DEPRECATED_FLAGS[f"--{key}"].removeprefix("--")
            warn_deprecated(f"{key!r}", f"{new_key!r}", f" (a key of {path})")
            key = new_key
        values[key] = value
    names = {f.name for group in GROUPS for f in dataclasses.fields(group)} | {"config"}
    unknown = sorted(set(values) - names)
    if unknown:
        parser.error(f"unknown keys in {path}: {', '.join(unknown)}")
    argv = []
    for key, value in values.items():
        if key == "config" or value is None:
            continue
        if isinstance(value, (list, tuple)):
            argv += [f"--{key}", *map(str, value)]
        elif isinstance(value, dict):  # `label_map`, `id2label`, `segmenter_config` as a mapping
            argv.append(f"--{key}={json.dumps(value)}")
        else:
            argv.append(f"--{key}={value}")
    return argv


def parse_args(argv: Sequence[str] | None = None) -> TrainArguments:
    """Flags, with defaults from `--config` when given (flags on the command line win). Deprecated flag names
    ([`DEPRECATED_FLAGS`]) are renamed, with a `FutureWarning`, on the command line and in the file."""
    argv = rename_deprecated_flags(sys.argv[1:] if argv is None else argv, DEPRECATED_FLAGS)
    parser = TrainArgumentParser()
    config_only = argparse.ArgumentParser(add_help=False)
    config_only.add_argument("--config")
    config = config_only.parse_known_args(argv)[0].config
    if config:
        argv = config_file_argv(config, parser) + argv  # later occurrences of a flag win
    *groups, rest = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True, look_for_args_file=False)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return TrainArguments(*groups[: len(GROUPS)])


def validate_arguments(args: TrainArguments) -> None:
    """Checks flag values and the paths they name before anything is loaded; raises `MaskMatchUsageError`."""
    check_window_arguments(args.training, prefix="eval_")
    values = args.to_dict()
    for name in POSITIVE_FLAGS + NON_NEGATIVE_FLAGS:
        positive = name in POSITIVE_FLAGS
        value = values[name]
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is not None and not (item > 0 if positive else item >= 0):  # NaN fails both
                kind = "positive" if positive else "non-negative"
                raise MaskMatchUsageError(f"--{name} must be {kind}, got {item}.")
    data = args.data
    if data.scale_range[0] > data.scale_range[1]:
        raise MaskMatchUsageError(f"--scale_range must be (min, max) with min <= max, got {list(data.scale_range)}.")
    if data.resize is not None:
        value = data.resize.shorter_side if data.resize.shorter_side is not None else data.resize.scale
        if not value > 0:
            raise MaskMatchUsageError(f"--resize must be positive, got {value}.")
    try:
        MaskMatchConfig(**args.maskmatch.overrides())
    except ValueError as error:
        raise MaskMatchUsageError(f"Invalid MaskMatch setting: {error}") from error
    for flag, name in (
        ("model_name_or_path", args.model.model_name_or_path),
        ("dataset_name", data.dataset_name),
        ("unlabeled_dataset_name", data.unlabeled_dataset_name),
    ):
        if name:
            check_local_or_hub(name, f"--{flag}")


def flags_markdown() -> str:
    """The flag list of the README's Training section, one line per argument group."""
    lines = []
    for group in GROUPS:
        flags = ", ".join(f"`--{f.name}`" for f in dataclasses.fields(group))
        lines.append(f"- `{group.__name__}` ({group._argument_group_name.split(' (')[0]}): {flags}")
    return "\n".join(lines)


if __name__ == "__main__":  # regenerates the README's flag list
    print(flags_markdown())
