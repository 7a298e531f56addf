"""`data_loaders.py`: collation, deterministic resumable sharded loaders, streaming."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from datasets import Dataset
from datasets.distributed import split_dataset_by_node

from maskmatch_hf.data_loaders import (
    InfiniteShardedBatchSampler,
    StreamingBatches,
    TransformedDataset,
    collate_by_size,
    collate_segmentation,
    eval_dataloader,
    infinite_dataloader,
)
from maskmatch_hf.data_transforms import WeakAugmentation, decode_example, decoded_size

from .data_helpers import (
    assert_same_batches,
    stem_transform,
    take,
)


def test_collate_pads_different_sizes():
    samples = [
        {"pixel_values": torch.ones(3, 2, 3), "labels": torch.zeros(2, 3, dtype=torch.long)},
        {"pixel_values": torch.ones(3, 4, 2), "labels": torch.zeros(4, 2, dtype=torch.long)},
    ]
    batch = collate_segmentation(samples)
    assert batch["pixel_values"].shape == (2, 3, 4, 3) and batch["labels"].shape == (2, 4, 3)
    assert (batch["labels"][0, 2:] == 255).all() and (batch["pixel_values"][1, :, :, 2] == 0).all()


# Determinism, sharding and resume


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


class CountingDataset(torch.utils.data.Dataset):
    """Counts the rows read from a `datasets.Dataset`."""

    def __init__(self, dataset: Dataset):
        self.dataset, self.reads = dataset, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        self.reads += 1
        return self.dataset[index]


def test_decoded_cache_holds_its_budget_and_changes_no_batch(train_set: Dataset):
    transform = WeakAugmentation(crop_size=32, scale_range=(0.75, 1.5))
    budget = sum(decoded_size(decode_example(train_set[index])) for index in range(3))
    counting = CountingDataset(train_set)
    cached = TransformedDataset(counting, transform, cache_bytes=budget)
    keys = [(index % 10, seed) for seed, index in enumerate(range(30))]  # three passes over the 10 rows
    outputs = [cached[key] for key in keys]
    assert sorted(cached.decoded) == [0, 1, 2] and cached.decoded_bytes == budget
    assert counting.reads == 10 + 2 * 7  # rows 0-2 are read once, the others on every pass
    uncached = TransformedDataset(train_set, transform)
    assert_same_batches(outputs, [uncached[key] for key in keys])

    def batches(cache_bytes: int, num_workers: int = 0):
        loader = infinite_dataloader(train_set, 3, transform, 0, num_workers=num_workers, cache_bytes=cache_bytes)
        return take(loader, 8)

    assert_same_batches(batches(0), batches(2**30))
    assert_same_batches(batches(0), batches(2**30, num_workers=2))


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
