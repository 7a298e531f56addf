"""Data sources, selection, validation, weak augmentation and resumable loaders (CPU, offline)."""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, IterableDataset, List
from datasets import Image as ImageFeature
from datasets.distributed import split_dataset_by_node
from PIL import Image

from maskmatch_hf.data import (
    CAMVID_ID2LABEL,
    DataConfig,
    DataValidationError,
    LabelMapping,
    load_segmentation_data,
    read_id_list,
    row_ids,
)
from maskmatch_hf.data_loaders import (
    InfiniteShardedBatchSampler,
    StreamingBatches,
    collate_by_size,
    collate_segmentation,
    eval_dataloader,
    infinite_dataloader,
)
from maskmatch_hf.data_transforms import EvalTransform, Resize, WeakAugmentation
from maskmatch_hf.data_validation import check_example, validate_segmentation_data

CAMVID = Path(os.environ.get("MASKMATCH_CAMVID", Path(__file__).parents[1].parent / "shared/data/camvid"))
# Colour of each class in the synthetic images: the colour of a pixel tells its label.
PALETTE = np.array([[230, 20, 20], [20, 230, 20], [20, 20, 230], [230, 230, 20]], dtype=np.uint8)
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def block_labels(rng: np.random.Generator, height: int, width: int, block: int = 8) -> np.ndarray:
    """Random labels in 0..3, constant over `block` x `block` squares."""
    coarse = rng.integers(0, len(PALETTE), size=(-(-height // block), -(-width // block)))
    return np.kron(coarse, np.ones((block, block), dtype=np.int64))[:height, :width].astype(np.uint8)


def write_pair(image_dir: Path, mask_dir: Path | None, stem: str, labels: np.ndarray) -> None:
    image_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(PALETTE[labels % len(PALETTE)]).save(image_dir / f"{stem}.png")
    if mask_dir is not None:
        mask_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels).save(mask_dir / f"{stem}.png")


def make_paired(root: Path, num_images: int = 10, split: str = "train", seed: int = 0) -> Path:
    """SegNet-layout folders `<split>/` + `<split>annot/` of images of varying sizes (some under 32 px)."""
    rng = np.random.default_rng(seed)
    for i in range(num_images):
        height, width = 16 + 8 * (i % 4), 24 + 8 * (i % 3)
        write_pair(root / split, root / f"{split}annot", f"img{i:02d}", block_labels(rng, height, width))
    return root


def classification_dataset(root: Path, num_images: int = 6) -> Dataset:
    """Images without masks; `label` is an image-level class, as in an imagefolder of class folders."""
    rng = np.random.default_rng(1)
    for i in range(num_images):
        write_pair(root, None, f"u{i}", block_labels(rng, 24, 32))
    paths = sorted(str(p) for p in root.glob("*.png"))
    features = Features({"pixels": ImageFeature(), "label": ClassLabel(names=["street"])})
    return Dataset.from_dict({"pixels": paths, "label": [0] * len(paths)}, features=features)


def stem_transform(example: dict, seed: int) -> dict[str, torch.Tensor]:
    """Test transform exposing which row (digits of the file stem) and which seed a sample came from."""
    row = int("".join(c for c in Path(example["image"]["path"]).stem if c.isdigit()))
    return {"pixel_values": torch.tensor([[[row, seed]]], dtype=torch.float64)}


def take(loader, num_batches: int) -> list[dict[str, torch.Tensor]]:
    return list(itertools.islice(iter(loader), num_batches))


def assert_same_batches(first: list[dict], second: list[dict]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


@pytest.fixture
def mini_camvid(tmp_path: Path) -> Path:
    """A few CamVid frames in the SegNet layout, linked (not copied) into a folder named like CamVid's."""
    root = tmp_path / "camvid_mini"
    stems = {"train": read_id_list(CAMVID / "splits/1_8/labeled.txt")[:4], "val": ["0016E5_07959"]}
    for split, split_stems in stems.items():
        for folder in (split, f"{split}annot"):
            (root / folder).mkdir(parents=True)
            for stem in split_stems:
                (root / folder / f"{stem}.png").symlink_to(CAMVID / folder / f"{stem}.png")
    return root


# Sources


def test_paired_folders_camvid_layout(mini_camvid: Path):
    data = load_segmentation_data(DataConfig(dataset_name=str(mini_camvid), labeled_fraction=0.5))
    assert (len(data.labeled), len(data.unlabeled), len(data.eval)) == (2, 2, 1)
    assert data.id2label == CAMVID_ID2LABEL and data.num_labels == 11
    validate_segmentation_data(data, show_progress=False)
    raw = np.asarray(Image.open(data.eval[0]["label"]["path"]))
    labels = EvalTransform(label_mapping=data.label_mapping)(data.eval[0])["labels"].numpy()
    assert (raw == 11).any()
    np.testing.assert_array_equal(labels == 255, raw == 11)
    np.testing.assert_array_equal(labels[raw != 11], raw[raw != 11])


def test_imagefolder_with_metadata(tmp_path: Path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        write_pair(tmp_path / "data/images", tmp_path / "data/masks", f"f{i}", block_labels(rng, 16, 24))
        rows.append({"file_name": f"images/f{i}.png", "label_file_name": f"masks/f{i}.png"})
    (tmp_path / "data/metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    config = DataConfig(dataset_name=str(tmp_path / "data"), labeled_fraction=0.5, cache_dir=str(tmp_path / "cache"))
    data = load_segmentation_data(config)
    assert (len(data.labeled), len(data.unlabeled), data.eval) == (2, 2, None)
    validate_segmentation_data(data, num_labels=4, show_progress=False)
    batch = next(iter(infinite_dataloader(data.labeled, 2, WeakAugmentation(crop_size=16), seed=0)))
    assert batch["pixel_values"].shape == (2, 3, 16, 16) and batch["labels"].shape == (2, 16, 16)


@pytest.mark.parametrize("storage", ["parquet", "save_to_disk"])
def test_parquet_and_saved_datasets_with_other_column_names(tmp_path: Path, storage: str):
    make_paired(tmp_path / "raw", num_images=6)
    images, masks = sorted((tmp_path / "raw/train").glob("*.png")), sorted((tmp_path / "raw/trainannot").glob("*"))
    features = Features({"pixels": ImageFeature(), "mask": ImageFeature(), "name": ClassLabel(names=["x"])})
    dataset = Dataset.from_dict(
        {"pixels": [str(p) for p in images], "mask": [str(p) for p in masks], "name": [0] * 6}, features=features
    )
    if storage == "parquet":
        dataset.to_parquet(str(tmp_path / "ds/train.parquet"))
    else:
        dataset.save_to_disk(str(tmp_path / "ds"))
    (tmp_path / "labeled.txt").write_text("img03\nimg01\n")
    (tmp_path / "id2label.json").write_text(json.dumps({str(i): f"class{i}" for i in range(4)}))
    config = DataConfig(
        dataset_name=str(tmp_path / "ds"),
        image_column="pixels",
        label_column="mask",
        labeled_ids=str(tmp_path / "labeled.txt"),
        id2label=str(tmp_path / "id2label.json"),
        cache_dir=str(tmp_path / "cache"),
    )
    data = load_segmentation_data(config)
    assert row_ids(data.labeled, None, "") == ["img03", "img01"]
    assert row_ids(data.unlabeled, None, "") == ["img00", "img02", "img04", "img05"]
    assert data.labeled.column_names == ["image", "label"] and data.num_labels == 4
    validate_segmentation_data(data, show_progress=False)


def test_class_label_feature_gives_id2label_and_array_masks_work(tmp_path: Path):
    labels = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.int64)
    make_paired(tmp_path / "raw", num_images=1)
    features = Features({"image": ImageFeature(), "label": List(List(ClassLabel(names=["a", "b", "c"])))})
    image = str(next((tmp_path / "raw/train").iterdir()))
    Image.fromarray(PALETTE[labels]).save(image)
    Dataset.from_dict({"image": [image], "label": [labels.tolist()]}, features=features).save_to_disk(
        str(tmp_path / "ds")
    )
    data = load_segmentation_data(DataConfig(dataset_name=str(tmp_path / "ds"), unlabeled_split="train"))
    assert data.id2label == {0: "a", 1: "b", 2: "c"}
    validate_segmentation_data(data, show_progress=False)
    np.testing.assert_array_equal(EvalTransform()(data.labeled[0])["labels"].numpy(), labels)


def test_camvid_id_list_gives_exact_stems():
    config = DataConfig(
        dataset_name=str(CAMVID),
        labeled_ids=str(CAMVID / "splits/1_8/labeled.txt"),
        unlabeled_ids=str(CAMVID / "splits/1_8/unlabeled.txt"),
    )
    data = load_segmentation_data(config)
    assert row_ids(data.labeled, None, "") == read_id_list(CAMVID / "splits/1_8/labeled.txt")
    assert row_ids(data.unlabeled, None, "") == read_id_list(CAMVID / "splits/1_8/unlabeled.txt")
    assert len(data.eval) == 101 and data.label_mapping.label_map == {11: 255}


def test_labeled_fraction_is_seeded_and_disjoint(tmp_path: Path):
    root = make_paired(tmp_path / "data", num_images=10)

    def split(seed: int) -> tuple[list[str], list[str]]:
        data = load_segmentation_data(DataConfig(dataset_name=str(root), labeled_fraction=0.3, split_seed=seed))
        return row_ids(data.labeled, None, ""), row_ids(data.unlabeled, None, "")

    labeled, unlabeled = split(0)
    assert split(0) == (labeled, unlabeled) and split(1)[0] != labeled
    assert len(labeled) == 3 and not set(labeled) & set(unlabeled)
    assert sorted(labeled + unlabeled) == [f"img{i:02d}" for i in range(10)]


def test_config_from_namespace():
    namespace = argparse.Namespace(dataset_name="x", streaming=True, learning_rate=1e-3)
    assert DataConfig.from_namespace(namespace) == DataConfig(dataset_name="x", streaming=True)


# Labels


def test_label_mapping():
    raw = np.array([0, 1, 5, 11, 255])
    np.testing.assert_array_equal(LabelMapping(do_reduce_labels=True)(raw), [255, 0, 4, 10, 255])
    np.testing.assert_array_equal(LabelMapping(label_map={11: 255, 5: 0})(raw), [0, 1, 0, 255, 255])


def test_void_label_and_label_map_from_config(tmp_path: Path):
    root = make_paired(tmp_path / "data", num_images=2)
    data = load_segmentation_data(DataConfig(dataset_name=str(root), void_label=3, label_map='{"2": 0}'))
    assert data.label_mapping == LabelMapping(255, False, {2: 0, 3: 255})
    assert data.id2label is None and data.unlabeled is None


# Validation


def _validation_error(tmp_path: Path, corrupt) -> str:
    root = make_paired(tmp_path / "data", num_images=4)
    corrupt(root)
    data = load_segmentation_data(DataConfig(dataset_name=str(root)))
    with pytest.raises(DataValidationError) as error:
        validate_segmentation_data(data, num_labels=4, require_unlabeled=False, show_progress=False)
    return str(error.value)


def test_missing_mask(tmp_path: Path):
    message = _validation_error(tmp_path, lambda root: (root / "trainannot/img01.png").unlink())
    assert "Missing mask" in message and "img01.png" in message


def test_size_mismatch(tmp_path: Path):
    def corrupt(root: Path):
        Image.fromarray(np.zeros((5, 7), dtype=np.uint8)).save(root / "trainannot/img02.png")

    message = _validation_error(tmp_path, corrupt)
    assert "Size mismatch" in message and "img02.png" in message and "7x5" in message


def test_label_out_of_range(tmp_path: Path):
    def corrupt(root: Path):
        mask = np.array(Image.open(root / "trainannot/img03.png"))
        mask[0, 0] = 7
        Image.fromarray(mask).save(root / "trainannot/img03.png")

    message = _validation_error(tmp_path, corrupt)
    assert "img03.png" in message and "[7]" in message
    # The same value is fine once it is the void label.
    root = tmp_path / "data"
    data = load_segmentation_data(DataConfig(dataset_name=str(root), void_label=7))
    validate_segmentation_data(data, num_labels=4, require_unlabeled=False, show_progress=False)


def test_unreadable_image(tmp_path: Path):
    message = _validation_error(tmp_path, lambda root: (root / "train/img00.png").write_bytes(b"not a png"))
    assert "Unreadable image" in message and "img00.png" in message


def test_rgb_mask(tmp_path: Path):
    def corrupt(root: Path):
        Image.open(root / "trainannot/img01.png").convert("RGB").save(root / "trainannot/img01.png")

    message = _validation_error(tmp_path, corrupt)
    assert "single-channel" in message and "img01.png" in message


def test_empty_sets(tmp_path: Path):
    root = make_paired(tmp_path / "data", num_images=3)
    (tmp_path / "empty.txt").write_text("\n")
    data = load_segmentation_data(DataConfig(dataset_name=str(root), labeled_ids=str(tmp_path / "empty.txt")))
    with pytest.raises(DataValidationError, match="labeled set .* is empty"):
        validate_segmentation_data(data, num_labels=4, show_progress=False)
    data = load_segmentation_data(DataConfig(dataset_name=str(root), labeled_fraction=1.0))
    with pytest.raises(DataValidationError, match="unlabeled set .* is empty"):
        validate_segmentation_data(data, num_labels=4, show_progress=False)
    data = load_segmentation_data(DataConfig(dataset_name=str(root)))
    with pytest.raises(DataValidationError, match="unlabeled set .* is empty"):
        validate_segmentation_data(data, num_labels=4, show_progress=False)
    validate_segmentation_data(data, num_labels=4, require_unlabeled=False, show_progress=False)


def test_missing_column_lists_available_ones(tmp_path: Path):
    root = make_paired(tmp_path / "data", num_images=2)
    with pytest.raises(DataValidationError, match=r"\['mask'\] not found .* available columns: \['image', 'label'\]"):
        load_segmentation_data(DataConfig(dataset_name=str(root), label_column="mask"))


def test_unknown_ids_and_splits(tmp_path: Path):
    root = make_paired(tmp_path / "data", num_images=2)
    (tmp_path / "ids.txt").write_text("img01\nimg99\n")
    with pytest.raises(DataValidationError, match="img99"):
        load_segmentation_data(DataConfig(dataset_name=str(root), labeled_ids=str(tmp_path / "ids.txt")))
    with pytest.raises(DataValidationError, match=r"available splits: \['train'\]"):
        load_segmentation_data(DataConfig(dataset_name=str(root), eval_split="test"))


# Weak augmentation


def test_crop_padding():
    labels = np.ones((10, 20), dtype=np.uint8)
    image = Image.fromarray(PALETTE[labels])
    transform = WeakAugmentation(crop_size=32, scale_range=(1.0, 1.0), return_pixel_mask=True)
    for seed in range(5):
        out = transform({"image": image, "label": Image.fromarray(labels)}, seed)
        mask = out["pixel_mask"]
        assert out["pixel_values"].shape == (3, 32, 32) and mask.dtype == torch.bool
        assert mask.sum() == 10 * 20
        assert (out["labels"][~mask] == 255).all() and (out["labels"][mask] == 1).all()
        assert (out["pixel_values"][:, ~mask] == 0).all() and (out["pixel_values"][:, mask] != 0).all()


def test_weak_augmentation_keeps_image_and_labels_aligned():
    rng = np.random.default_rng(0)
    labels = block_labels(rng, 48, 64)
    example = {"image": Image.fromarray(PALETTE[labels]), "label": Image.fromarray(labels)}
    transform = WeakAugmentation(crop_size=40, image_mean=MEAN, image_std=STD, return_pixel_mask=True)
    palette = torch.tensor(PALETTE, dtype=torch.float32) / 255
    for seed in range(8):
        out = transform(example, seed)
        colours = out["pixel_values"].permute(1, 2, 0) * torch.tensor(STD) + torch.tensor(MEAN)
        predicted = torch.cdist(colours.reshape(-1, 3), palette).argmin(1).reshape(colours.shape[:2])
        valid = out["labels"] != 255
        assert torch.equal(valid, out["pixel_mask"])
        agreement = (predicted[valid] == out["labels"][valid]).float().mean()
        mirrored = (predicted.flip(-1)[valid] == out["labels"][valid]).float().mean()
        assert agreement > 0.9 and mirrored < 0.7, (seed, agreement, mirrored)


def test_resize_and_eval_transform(mini_camvid: Path):
    data = load_segmentation_data(DataConfig(dataset_name=str(mini_camvid)))
    transform = EvalTransform(resize=Resize(shorter_side=90), label_mapping=data.label_mapping)
    out = transform(data.eval[0])
    assert out["pixel_values"].shape == (3, 90, 120) and out["labels"].shape == (90, 120)
    assert Resize(scale=0.5)((480, 360)) == (240, 180)
    with pytest.raises(ValueError):
        Resize()


def test_collate_pads_different_sizes():
    samples = [
        {"pixel_values": torch.ones(3, 2, 3), "labels": torch.zeros(2, 3, dtype=torch.long)},
        {"pixel_values": torch.ones(3, 4, 2), "labels": torch.zeros(4, 2, dtype=torch.long)},
    ]
    batch = collate_segmentation(samples)
    assert batch["pixel_values"].shape == (2, 3, 4, 3) and batch["labels"].shape == (2, 4, 3)
    assert (batch["labels"][0, 2:] == 255).all() and (batch["pixel_values"][1, :, :, 2] == 0).all()


# Determinism, sharding and resume


@pytest.fixture
def train_set(tmp_path: Path) -> Dataset:
    return load_segmentation_data(DataConfig(dataset_name=str(make_paired(tmp_path / "data")))).labeled


def test_map_style_loader_is_deterministic_and_resumes_exactly(train_set: Dataset):
    transform = WeakAugmentation(crop_size=32, scale_range=(0.75, 1.5))

    def batches(seed=0, start_step=0, num_workers=0, num_steps=8):
        loader = infinite_dataloader(train_set, 3, transform, seed, start_step=start_step, num_workers=num_workers)
        return take(loader, num_steps - start_step)

    full = batches()  # 24 samples: more than two epochs of 10
    assert_same_batches(full, batches())
    assert_same_batches(full[5:], batches(start_step=5))
    assert_same_batches(full[3:], batches(start_step=3, num_workers=2))
    assert not torch.equal(full[0]["pixel_values"], batches(seed=1, num_steps=1)[0]["pixel_values"])


@pytest.mark.parametrize("num_samples, world_size", [(10, 2), (7, 2), (5, 3), (2, 3)])
def test_ranks_get_disjoint_shards_covering_the_set(num_samples: int, world_size: int):
    samplers = [InfiniteShardedBatchSampler(num_samples, 1, 0, rank, world_size) for rank in range(world_size)]
    per_rank = -(-num_samples // world_size)
    for epoch in range(3):
        shards = [sampler.epoch_shard(epoch) for sampler in samplers]
        positions = np.concatenate([p for _, p in shards])
        assert all(len(i) == per_rank for i, _ in shards)
        assert len(set(positions.tolist())) == len(positions)  # disjoint slots of the padded permutation
        indices = np.concatenate([i for i, _ in shards])
        assert set(indices.tolist()) == set(range(num_samples))
        assert len(indices) - len(set(indices.tolist())) == per_rank * world_size - num_samples
    # Batches run across epochs, so every rank yields forever: no rank runs out before another.
    first = [[i for i, _ in b] for b in itertools.islice(iter(samplers[0]), 3 * per_rank)]
    assert len(first) == 3 * per_rank


@pytest.mark.parametrize("streamed", [False, True])
def test_eval_loader_shards_without_duplicates(train_set: Dataset, streamed: bool):
    dataset = train_set.to_iterable_dataset(num_shards=4) if streamed else train_set
    seen = []
    for rank in range(3):
        for batches in eval_dataloader(dataset, stem_transform, batch_size=2, rank=rank, world_size=3):
            seen += [int(row) for batch in batches for row in batch["pixel_values"][:, 0, 0, 0]]
    assert sorted(seen) == list(range(10))


def test_collate_by_size_groups_same_size_samples_in_order():
    samples = [
        {"pixel_values": torch.full((3, 2, 3), float(i)), "labels": torch.full((2, 3), i)} for i in range(3)
    ] + [{"pixel_values": torch.zeros(3, 4, 2), "labels": torch.zeros(4, 2, dtype=torch.long)}]
    samples[1] = {"pixel_values": torch.ones(3, 4, 2), "labels": torch.ones(4, 2, dtype=torch.long)}
    first, second = collate_by_size(samples)
    assert first["pixel_values"].shape == (2, 3, 2, 3) and first["labels"][:, 0, 0].tolist() == [0, 2]
    assert second["pixel_values"].shape == (2, 3, 4, 2) and second["labels"][:, 0, 0].tolist() == [1, 0]


@pytest.mark.parametrize("num_shards, world_size", [(10, 2), (5, 2), (5, 3)])  # whole shards / examples
def test_streaming_ranks_are_disjoint_and_repeat_forever(train_set: Dataset, num_shards: int, world_size: int):
    stream = train_set.to_iterable_dataset(num_shards=num_shards)
    pass_lengths = [sum(1 for _ in split_dataset_by_node(stream, rank, world_size)) for rank in range(world_size)]
    rows = []
    for rank, length in enumerate(pass_lengths):
        batches = StreamingBatches(stream, 1, stem_transform, 0, rank, world_size, shuffle_buffer_size=4)
        rows.append([int(b["pixel_values"][0, 0, 0, 0]) for b in itertools.islice(iter(batches), 3 * length)])
    for epoch in range(3):  # in every pass the ranks share the set out between them
        passes = [r[epoch * length : (epoch + 1) * length] for r, length in zip(rows, pass_lengths)]
        assert sorted(itertools.chain(*passes)) == list(range(10))
    assert rows[0][: pass_lengths[0]] != rows[0][pass_lengths[0] : 2 * pass_lengths[0]]  # reshuffled


def test_streaming_resume_and_workers(train_set: Dataset):
    stream = train_set.to_iterable_dataset(num_shards=2)
    transform = WeakAugmentation(crop_size=24)

    def batches(start_step=0, num_workers=0):
        loader = infinite_dataloader(
            stream,
            2,
            transform,
            seed=3,
            rank=0,
            world_size=2,
            start_step=start_step,
            num_workers=num_workers,
            shuffle_buffer_size=3,
        )
        return take(loader, 7 - start_step)

    full = batches()  # 14 samples: almost three passes of this rank's 5
    assert_same_batches(full[4:], batches(start_step=4))
    assert_same_batches(full[1:], batches(start_step=1, num_workers=2))


def test_streamed_unlabeled_dataset_without_labels(tmp_path: Path):
    root = make_paired(tmp_path / "data", num_images=4)
    classification_dataset(tmp_path / "raw").save_to_disk(str(tmp_path / "unlabeled"))
    config = DataConfig(dataset_name=str(root), unlabeled_dataset_name=str(tmp_path / "unlabeled"), streaming=True)
    with pytest.raises(
        DataValidationError, match=r"\['image'\] not found .* available columns: \['pixels', 'label'\]"
    ):
        load_segmentation_data(config)
    config.unlabeled_image_column = "pixels"
    with pytest.raises(DataValidationError, match="not segmentation masks"):
        load_segmentation_data(DataConfig(dataset_name=str(tmp_path / "unlabeled"), image_column="pixels"))
    data = load_segmentation_data(config)
    validate_segmentation_data(data, num_labels=4, validation_samples=10, show_progress=False)
    transform = WeakAugmentation(crop_size=16, return_pixel_mask=True)
    batch = next(iter(infinite_dataloader(data.unlabeled, 4, transform, seed=1)))
    assert set(batch) == {"pixel_values", "pixel_mask"} and batch["pixel_mask"].shape == (4, 16, 16)


def test_streamed_labeled_data_is_checked_up_front_and_as_it_is_read(tmp_path: Path):
    root = make_paired(tmp_path / "data", num_images=6)
    make_paired(root, num_images=2, split="val", seed=1)
    Image.fromarray(np.full((24, 40), 9, dtype=np.uint8)).save(root / "trainannot" / "img05.png")  # label 9 of 4
    config = DataConfig(dataset_name=str(root), streaming_labeled=True)
    data = load_segmentation_data(config)
    assert isinstance(data.labeled, IterableDataset) and isinstance(data.eval, IterableDataset)
    assert data.unlabeled is None and set(data.labeled.features) == {"image", "label"}

    validate_segmentation_data(data, num_labels=4, validation_samples=3, require_unlabeled=False, show_progress=False)
    with pytest.raises(DataValidationError, match=r"img05\.png holds label\(s\) \[9\] outside \[0, 4\)"):
        validate_segmentation_data(data, num_labels=4, validation_samples=6, require_unlabeled=False)
    # Past the rows checked up front, the loader checks each example it reads and names the bad one.
    check = functools.partial(check_example, num_labels=4, label_mapping=data.label_mapping, require_label=True)
    loader = infinite_dataloader(data.labeled, 2, WeakAugmentation(crop_size=16), seed=0, check_example=check)
    with pytest.raises(DataValidationError, match=r"img05\.png holds label\(s\) \[9\]"):
        take(loader, 3)

    with pytest.raises(DataValidationError, match=r"\['mask'\] not found in split 'train'"):
        load_segmentation_data(DataConfig(dataset_name=str(root), streaming_labeled=True, label_column="mask"))
    with pytest.raises(ValueError, match="`streaming_labeled` streams all of `train_split`"):
        load_segmentation_data(DataConfig(dataset_name=str(root), streaming_labeled=True, labeled_fraction=0.5))
