"""Labeled, unlabeled and evaluation splits for semi-supervised semantic segmentation.

Every source ends as a `datasets` object with the canonical columns `image` and (where masks exist) `label`,
both cast to `Image(decode=False)`: rows carry file paths or encoded bytes, decoded where they are used, in the
DataLoader workers (see `data_transforms.py`) and by the start-up check (`data_validation.py`).

Sources, picked from `DataConfig.dataset_name`:

- a `save_to_disk` folder (`load_from_disk`);
- paired image / mask folders with matching file stems, e.g. the SegNet layout of CamVid (`train/` +
  `trainannot/`, `val/` + `valannot/`), one split per image folder;
- anything else goes to `load_dataset` (Hub ids, local parquet / imagefolder folders; an imagefolder pairs
  images and masks with a `metadata.jsonl` holding `file_name` and `label_file_name`).

Any split may be streamed (`IterableDataset`): the unlabeled one with `streaming`, the labeled and eval ones with
`streaming_labeled`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
from datasets import (
    ClassLabel,
    Dataset,
    DatasetDict,
    Image,
    IterableDataset,
    IterableDatasetDict,
    List,
    Value,
    load_dataset,
    load_from_disk,
)
from PIL import Image as PILImage

from .errors import MaskMatchUsageError

logger = logging.getLogger(__name__)

IMAGE_COLUMN = "image"
LABEL_COLUMN = "label"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# `<split>` + `<split><suffix>` mask folders (SegNet: `train` + `trainannot`).
MASK_DIR_SUFFIXES = ("annot", "_annot", "_labels", "_masks")
EVAL_SPLIT_CANDIDATES = ("validation", "val")
TEST_SPLIT_CANDIDATES = ("test", *EVAL_SPLIT_CANDIDATES)
CAMVID_VOID_LABEL = 11
CAMVID_ID2LABEL = {
    0: "sky",
    1: "building",
    2: "pole",
    3: "road",
    4: "pavement",
    5: "tree",
    6: "sign_symbol",
    7: "fence",
    8: "car",
    9: "pedestrian",
    10: "bicyclist",
}


class DataValidationError(MaskMatchUsageError):
    """A problem with the data, found before training starts where possible; the message names the file or row."""


@dataclass(frozen=True)
class LabelMapping:
    """Maps raw mask values to training labels, `ignore_index` marking pixels left out of losses and metrics.

    `label_map` (raw value -> label) wins over `do_reduce_labels`, which follows transformers: 0 (background)
    becomes `ignore_index`, every other value `v` becomes `v - 1`, and `ignore_index` itself stays ignored.
    """

    ignore_index: int = 255
    do_reduce_labels: bool = False
    label_map: dict[int, int] = field(default_factory=dict)

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        mapped = labels.astype(np.int64)
        if self.do_reduce_labels:
            mapped = np.where((mapped == 0) | (mapped == self.ignore_index), self.ignore_index, mapped - 1)
        for raw, label in self.label_map.items():
            mapped[labels == raw] = label
        return mapped

    def describe(self) -> str:
        """Which raw mask values are left out of losses and metrics, for the log."""
        void = sorted(raw for raw, label in self.label_map.items() if label == self.ignore_index)
        ignored = [f"mask value {raw} (void label)" for raw in void] + [f"mask value {self.ignore_index}"]
        if self.do_reduce_labels:
            ignored.append("mask value 0 (reduced labels)")
        note = "" if void or self.do_reduce_labels else "; set `void_label` if the dataset has a void class"
        return f"ignored as {self.ignore_index}: {', '.join(ignored)}{note}"


@dataclass
class DataConfig:
    """Where the data comes from and how labels are read; field names follow the transformers examples.

    Works with `HfArgumentParser`, or build it from an argparse namespace with `DataConfig.from_namespace`.
    """

    dataset_name: str = field(
        metadata={"help": "Hub dataset id, local dataset folder, `save_to_disk` folder or paired image/mask folders."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    train_split: str = field(default="train", metadata={"help": "Split the labeled images come from."})
    unlabeled_split: str | None = field(
        default=None, metadata={"help": "Split of unlabeled images (of `unlabeled_dataset_name` if given)."}
    )
    eval_split: str | None = field(
        default=None, metadata={"help": "Evaluation split; default: 'validation' or 'val' when present."}
    )
    unlabeled_dataset_name: str | None = field(
        default=None, metadata={"help": "Separate dataset holding the unlabeled images."}
    )
    unlabeled_dataset_config_name: str | None = field(default=None, metadata={"help": "Its configuration."})
    image_column: str = field(default="image", metadata={"help": "Column holding the images."})
    unlabeled_image_column: str | None = field(
        default=None, metadata={"help": "Image column of `unlabeled_dataset_name`; default: `image_column`."}
    )
    label_column: str = field(default="label", metadata={"help": "Column holding the segmentation masks."})
    id_column: str | None = field(
        default=None, metadata={"help": "Column naming each row for id lists; default: image file stem."}
    )
    labeled_ids: str | None = field(
        default=None, metadata={"help": "File with one labeled id (image file stem) per line."}
    )
    unlabeled_ids: str | None = field(
        default=None, metadata={"help": "File with one unlabeled id per line; default: the other train images."}
    )
    labeled_fraction: float | None = field(
        default=None, metadata={"help": "Fraction of `train_split` kept labeled, the rest being unlabeled."}
    )
    split_seed: int = field(default=0, metadata={"help": "Seed of the `labeled_fraction` draw."})
    streaming: bool = field(default=False, metadata={"help": "Stream the unlabeled set (`IterableDataset`)."})
    streaming_labeled: bool = field(
        default=False,
        metadata={"help": "Stream the labeled (whole `train_split`) and eval sets (`IterableDataset`)."},
    )
    ignore_index: int = field(default=255, metadata={"help": "Label of pixels left out of losses and metrics."})
    do_reduce_labels: bool = field(
        default=False, metadata={"help": "Map 0 to `ignore_index` and every other label v to v - 1."}
    )
    void_label: int | None = field(
        default=None, metadata={"help": "Raw mask value mapped to `ignore_index` (CamVid: 11, set automatically)."}
    )
    label_map: str | None = field(
        default=None, metadata={"help": "JSON object (inline or file) mapping raw mask values to labels."}
    )
    id2label: str | None = field(
        default=None, metadata={"help": "JSON object (inline or file) mapping label ids to class names."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "`datasets` cache folder."})

    @classmethod
    def add_arguments(cls, parser: argparse._ActionsContainer, only: Collection[str] | None = None) -> None:
        """Adds a `--<field>` flag for every field (or those named in `only`), with the field's help and default."""
        for data_field in dataclasses.fields(cls):
            if only is not None and data_field.name not in only:
                continue
            kwargs: dict[str, Any] = {"help": data_field.metadata.get("help")}
            if data_field.type in ("bool", bool):
                kwargs["action"] = "store_true"
            else:
                types = {"int": int, "float": float, "int | None": int, "float | None": float}
                kwargs["type"] = types.get(str(data_field.type), str)
            if data_field.default is not dataclasses.MISSING:
                kwargs["default"] = data_field.default
            parser.add_argument(f"--{data_field.name}", **kwargs)

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> DataConfig:
        """Builds the config from the attributes of `namespace` that share a field name, ignoring the others."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in vars(namespace).items() if name in names})


@dataclass
class SegmentationData:
    """The splits a training run reads, with the label conventions shared by transforms and validation."""

    labeled: Dataset | IterableDataset
    unlabeled: Dataset | IterableDataset | None
    eval: Dataset | IterableDataset | None
    id2label: dict[int, str] | None
    label_mapping: LabelMapping
    # Human-readable origin of each split ("split 'train' of /data/camvid"), for error messages.
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def num_labels(self) -> int | None:
        return None if self.id2label is None else len(self.id2label)


def find_paired_folders(root: str | Path) -> dict[str, tuple[Path, Path]]:
    """Finds `<split>/` image folders with a `<split><suffix>/` mask folder (SegNet layout) under `root`."""
    root = Path(root)
    if not root.is_dir():
        return {}
    pairs = {}
    for image_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for suffix in MASK_DIR_SUFFIXES:
            mask_dir = root / f"{image_dir.name}{suffix}"
            if mask_dir.is_dir():
                pairs[image_dir.name] = (image_dir, mask_dir)
                break
    return pairs


def is_camvid(root: str | Path, num_masks: int = 8) -> bool:
    """CamVid in the SegNet layout: recognised by its folder name, or by its label values (classes 0-10 and the
    void label 11, found on `num_masks` masks spread over its first split) whatever the folder is called."""
    pairs = find_paired_folders(root)
    if not pairs:
        return False
    if "camvid" in Path(root).resolve().name.lower():
        return True
    _, mask_dir = pairs.get("train", next(iter(pairs.values())))
    masks = sorted(p for p in mask_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not masks:
        return False
    values: set[int] = set()
    for index in np.unique(np.linspace(0, len(masks) - 1, num_masks).round().astype(int)):
        try:
            with PILImage.open(masks[index]) as mask:
                if mask.mode not in ("L", "P", "I", "I;16"):
                    return False
                values.update(np.unique(np.asarray(mask)).tolist())
        except OSError:
            return False  # unreadable masks are reported, with their names, by the start-up check
    return max(values) == CAMVID_VOID_LABEL


def paired_folder_dataset(image_dir: str | Path, mask_dir: str | Path) -> Dataset:
    """One row per image of `image_dir`, paired with the mask of the same file stem (`None` when missing)."""
    masks = {}
    for path in sorted(Path(mask_dir).iterdir()):
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            masks.setdefault(path.stem, str(path))
    images = sorted(p for p in Path(image_dir).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    dataset = Dataset.from_dict(
        {IMAGE_COLUMN: [str(p) for p in images], LABEL_COLUMN: [masks.get(p.stem) for p in images]}
    )
    return dataset.cast_column(IMAGE_COLUMN, Image(decode=False)).cast_column(LABEL_COLUMN, Image(decode=False))


def _is_saved_to_disk(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def load_source(
    name: str, config_name: str | None = None, streaming: bool = False, cache_dir: str | None = None
) -> DatasetDict | IterableDatasetDict:
    """Loads every split of a dataset: `save_to_disk` folder, paired folders, or `load_dataset(name)`."""
    path = Path(name)
    if path.is_dir() and _is_saved_to_disk(path):
        loaded = load_from_disk(str(path))
        splits = loaded if isinstance(loaded, DatasetDict) else DatasetDict(train=loaded)
    elif pairs := find_paired_folders(path):
        splits = DatasetDict({split: paired_folder_dataset(*dirs) for split, dirs in pairs.items()})
    else:
        try:
            return load_dataset(name, config_name, streaming=streaming, cache_dir=cache_dir)
        except OSError as error:  # not found, unreachable Hub, unreadable files
            raise DataValidationError(f"Cannot load dataset {name}: {error}") from error
    if streaming:
        return IterableDatasetDict({split: _to_stream(ds) for split, ds in splits.items()})
    return splits


def _to_stream(dataset: Dataset) -> IterableDataset:
    # Several shards let `split_dataset_by_node` hand whole shards to ranks instead of skipping examples.
    return dataset.to_iterable_dataset(num_shards=max(1, min(len(dataset), 64)))


def _get_split(splits: DatasetDict | IterableDatasetDict, split: str, source: str):
    if split not in splits:
        raise DataValidationError(f"Split {split!r} not found in {source}; available splits: {sorted(splits)}.")
    return splits[split]


def _standardize_columns(
    dataset: Dataset | IterableDataset,
    config: DataConfig,
    source: str,
    require_label: bool,
    image_column: str | None = None,
) -> Dataset | IterableDataset:
    """Keeps the image / label (/ id) columns, renamed to `image` / `label` and cast to undecoded images."""
    image_column = image_column or config.image_column
    available = list(dataset.features or {})
    required = [image_column] + ([config.label_column] if require_label else [])
    missing = [c for c in required if c not in available]
    if missing:
        raise DataValidationError(f"Column(s) {missing} not found in {source}; available columns: {available}.")
    has_label = config.label_column in available and config.label_column != image_column
    if has_label and not _is_mask_feature(dataset.features[config.label_column]):
        if require_label:
            raise DataValidationError(
                f"Column {config.label_column!r} of {source} holds {dataset.features[config.label_column]}, not "
                f"segmentation masks; set `label_column` (available columns: {available})."
            )
        has_label = False  # e.g. the class folders of an unlabeled imagefolder
    optional = [config.id_column] + ([config.label_column] if has_label else [])
    keep = [image_column] + [c for c in optional if c in available and c != image_column]
    dataset = dataset.select_columns(keep)
    renames = {image_column: IMAGE_COLUMN, config.label_column: LABEL_COLUMN}
    dataset = dataset.rename_columns({old: new for old, new in renames.items() if old in keep and old != new})
    for column in (IMAGE_COLUMN, LABEL_COLUMN) if has_label else (IMAGE_COLUMN,):
        if not isinstance(dataset.features[column], List):  # masks stored as nested lists stay arrays
            dataset = dataset.cast_column(column, Image(decode=False))
    return dataset


def _is_mask_feature(feature) -> bool:
    """Images, file paths, or 2-D arrays stored as nested lists."""
    is_path = isinstance(feature, Value) and feature.dtype in ("string", "large_string")
    return isinstance(feature, Image) or is_path or (isinstance(feature, List) and isinstance(feature.feature, List))


def read_id_list(path: str | Path) -> list[str]:
    """Reads one id per line, skipping blank lines."""
    if not Path(path).is_file():
        raise DataValidationError(f"Id list {path} not found.")
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def row_ids(dataset: Dataset, id_column: str | None, source: str) -> list[str]:
    """The id of every row: `id_column`, or else the file stem of the image."""
    if id_column:
        if id_column not in dataset.column_names:
            raise DataValidationError(
                f"Id column {id_column!r} not found in {source}; available columns: {dataset.column_names}."
            )
        return [str(i) for i in dataset[id_column]]
    paths = pc.struct_field(dataset.with_format("arrow")[IMAGE_COLUMN], "path").to_pylist()
    if None in paths:
        row = paths.index(None)
        raise DataValidationError(f"Row {row} of {source} has no image file name; set `id_column` to select by id.")
    return [Path(p).stem for p in paths]


def select_ids(dataset: Dataset, ids: list[str], id_column: str | None, source: str) -> Dataset:
    """Rows whose id is in `ids`, in the order of `ids`; every id must exist."""
    position = {row_id: row for row, row_id in enumerate(row_ids(dataset, id_column, source))}
    unknown = [i for i in ids if i not in position]
    if unknown:
        raise DataValidationError(
            f"{len(unknown)} id(s) not found in {source}, e.g. {unknown[:5]} (ids are image file stems"
            f"{'' if id_column is None else f' / column {id_column!r}'})."
        )
    return dataset.select([position[i] for i in ids])


def split_by_fraction(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Draws `fraction` of the rows as labeled (at least one) and returns (labeled, the rest), seeded."""
    if not 0 < fraction <= 1:
        raise MaskMatchUsageError(f"`labeled_fraction` must be in (0, 1], got {fraction}.")
    order = np.random.default_rng(seed).permutation(len(dataset))
    num_labeled = max(1, round(fraction * len(dataset)))
    return dataset.select(np.sort(order[:num_labeled])), dataset.select(np.sort(order[num_labeled:]))


def read_json_argument(value: str | None) -> dict[str, Any]:
    """A JSON object given inline or as a path to a file."""
    if not value:
        return {}
    text = Path(value).read_text() if Path(value).is_file() else value
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        raise MaskMatchUsageError(f"Expected a JSON object or a JSON file, got {value!r}: {error}") from error
    if not isinstance(parsed, dict):
        raise MaskMatchUsageError(f"Expected a JSON object, got {value!r}.")
    return parsed


def _class_label_names(feature) -> list[str] | None:
    """Class names of a `ClassLabel` (possibly nested in lists) describing the label column's values."""
    while isinstance(feature, List):
        feature = feature.feature
    return feature.names if isinstance(feature, ClassLabel) else None


def resolve_id2label(config: DataConfig, label_feature, camvid: bool) -> dict[int, str] | None:
    """id2label from, in order: `config.id2label`, a `ClassLabel` label feature, CamVid's built-in table."""
    if config.id2label:
        return {int(k): str(v) for k, v in read_json_argument(config.id2label).items()}
    if names := _class_label_names(label_feature):
        return dict(enumerate(names))
    return dict(CAMVID_ID2LABEL) if camvid else None


def build_label_mapping(config: DataConfig, camvid: bool) -> LabelMapping:
    """`label_map` entries, plus `void_label` (CamVid's 11 by default) mapped to `ignore_index`."""
    label_map = {int(k): int(v) for k, v in read_json_argument(config.label_map).items()}
    void_label = config.void_label
    if void_label is None and camvid and not label_map:
        void_label = CAMVID_VOID_LABEL
        logger.info("CamVid layout detected: void label %d is mapped to %d.", void_label, config.ignore_index)
    if void_label is not None:
        label_map[void_label] = config.ignore_index
    return LabelMapping(config.ignore_index, config.do_reduce_labels, label_map)


def _drop_incomplete_labels(dataset: Dataset, source: str) -> Dataset:
    """Unlabeled rows only report labels for monitoring: keep them only if every row has one."""
    if LABEL_COLUMN in dataset.column_names and dataset.with_format("arrow")[LABEL_COLUMN].null_count:
        logger.info("Some rows of %s have no mask: its labels are not used for monitoring.", source)
        return dataset.remove_columns(LABEL_COLUMN)
    return dataset


def load_segmentation_data(config: DataConfig) -> SegmentationData:
    """Loads the labeled, unlabeled and eval splits described by `config` (see the module docstring).

    Labeled rows: `labeled_ids`, a seeded `labeled_fraction`, or all of `train_split`. Unlabeled rows:
    `unlabeled_split` / `unlabeled_dataset_name` (streamed if `config.streaming`), else the train rows not
    labeled (or `unlabeled_ids`), else none. With `config.streaming_labeled` the labeled (all of `train_split`)
    and eval sets are streamed. Raises `DataValidationError` for unknown splits, columns or ids.
    """
    if config.labeled_ids and config.labeled_fraction is not None:
        raise MaskMatchUsageError("Pass either `labeled_ids` or `labeled_fraction`, not both.")
    camvid = is_camvid(config.dataset_name)
    if config.streaming_labeled and (
        config.labeled_ids or config.labeled_fraction is not None or config.unlabeled_ids
    ):
        raise ValueError(
            "`streaming_labeled` streams all of `train_split`: select labeled / unlabeled images by split "
            "(`train_split`, `unlabeled_split`, `unlabeled_dataset_name`), not with `labeled_ids`, "
            "`labeled_fraction` or `unlabeled_ids`."
        )
    splits = load_source(config.dataset_name, config.dataset_config_name, config.streaming_labeled, config.cache_dir)
    raw_train = _get_split(splits, config.train_split, config.dataset_name)
    train, train_source = _labeled_split(splits, config.train_split, config)

    labeled, rest = train, None
    if config.labeled_ids:
        labeled = select_ids(train, read_id_list(config.labeled_ids), config.id_column, train_source)
        labeled_set = set(row_ids(labeled, config.id_column, train_source))
        ids = row_ids(train, config.id_column, train_source)
        rest = train.select([row for row, row_id in enumerate(ids) if row_id not in labeled_set])
    elif config.labeled_fraction is not None:
        labeled, rest = split_by_fraction(train, config.labeled_fraction, config.split_seed)

    unlabeled, unlabeled_source = _load_unlabeled(config, train, rest, train_source)

    eval_split = config.eval_split or next((s for s in EVAL_SPLIT_CANDIDATES if s in splits), None)
    sources = {"labeled": train_source, "unlabeled": unlabeled_source}
    eval_dataset = None
    if eval_split is not None:
        eval_dataset, sources["eval"] = _labeled_split(splits, eval_split, config)

    return SegmentationData(
        labeled=labeled,
        unlabeled=unlabeled,
        eval=eval_dataset,
        id2label=resolve_id2label(config, raw_train.features[config.label_column], camvid),
        label_mapping=build_label_mapping(config, camvid),
        sources=sources,
    )


def _labeled_split(
    splits: DatasetDict | IterableDatasetDict, split: str, config: DataConfig
) -> tuple[Dataset | IterableDataset, str]:
    """Split `split` of `splits` with its image / label columns standardized, and a description of it."""
    source = f"split {split!r} of {config.dataset_name}"
    return _standardize_columns(_get_split(splits, split, config.dataset_name), config, source, True), source


def load_labeled_split(
    config: DataConfig, split: str | None = None, streaming: bool = False
) -> tuple[Dataset | IterableDataset, str]:
    """One labeled split of `config.dataset_name` (any source) and a description of it, e.g. to evaluate on.

    `split` defaults to the first of 'test', 'validation', 'val' that exists. Image / label columns and the
    dataset configuration come from `config`; the label conventions are [`build_label_mapping`]'s. Raises
    `DataValidationError` for an unknown split or column.
    """
    splits = load_source(config.dataset_name, config.dataset_config_name, streaming, config.cache_dir)
    if split is None:
        split = next((s for s in TEST_SPLIT_CANDIDATES if s in splits), None)
        if split is None:
            raise DataValidationError(
                f"No split named {' / '.join(TEST_SPLIT_CANDIDATES)} in {config.dataset_name}: name one; "
                f"available splits: {sorted(splits)}."
            )
    return _labeled_split(splits, split, config)


def _load_unlabeled(
    config: DataConfig, train: Dataset | IterableDataset, rest: Dataset | None, train_source: str
) -> tuple[Dataset | IterableDataset | None, str]:
    """The unlabeled set and a description of where it comes from."""
    if config.unlabeled_dataset_name or config.unlabeled_split:
        if config.streaming and config.unlabeled_ids:
            raise MaskMatchUsageError(
                "`unlabeled_ids` needs a map-style unlabeled set: drop `streaming` or the id list."
            )
        name = config.unlabeled_dataset_name or config.dataset_name
        config_name = (
            config.unlabeled_dataset_config_name if config.unlabeled_dataset_name else config.dataset_config_name
        )
        split = config.unlabeled_split or "train"
        source = f"split {split!r} of {name}"
        splits = load_source(name, config_name, config.streaming, config.cache_dir)
        unlabeled = _standardize_columns(
            _get_split(splits, split, name), config, source, False, config.unlabeled_image_column
        )
    elif config.unlabeled_ids:
        source, unlabeled = train_source, train
    elif rest is not None:
        source, unlabeled = train_source, rest
    else:
        return None, "no unlabeled data configured"
    if config.unlabeled_ids:
        unlabeled = select_ids(unlabeled, read_id_list(config.unlabeled_ids), config.id_column, source)
    if isinstance(unlabeled, Dataset):
        unlabeled = _drop_incomplete_labels(unlabeled, source)
        if config.streaming:
            unlabeled = _to_stream(unlabeled)
    return unlabeled, source
