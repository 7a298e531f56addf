"""Infinite, rank-sharded, exactly resumable training loaders, and sharded evaluation loaders.

Training runs by step count, so the loaders yield batches forever. Every batch is a pure function of
(seed, batch_size, rank, world_size, step): the order of samples comes from a seeded schedule and each sample's
weak augmentation from its own seed (`data_transforms.py`). Hence the batches do not depend on `num_workers`, and
`start_step=k` reproduces step k onwards of an uninterrupted run with the same seed, batch size and world size.
`start_step` counts batches drawn from the loader (micro-batches, with gradient accumulation).

- Map-style `Dataset`: epoch `e` is a permutation drawn from (seed, e), padded by wrapping around to a multiple
  of `world_size` (as `DistributedSampler` does) and dealt round-robin to the ranks, so every rank has the same
  number of samples per epoch and no rank waits on another. Batches run across epoch boundaries. A sample's
  seed comes from (seed, epoch, position in the padded permutation). Resuming computes the epoch and offset of
  step k and starts there: nothing before it is read.
- Streaming `IterableDataset`: pass e is `shuffle(seed drawn from (seed, e), buffer_size)` then
  `split_dataset_by_node` (disjoint per rank), repeated forever; a sample's seed comes from (seed, rank, example
  counter of that rank). Resuming at step k reads and drops `k * batch_size` examples of this rank's stream
  (without decoding images; the cost is reading their bytes again, up to k / steps_per_pass passes over this
  rank's share).
  Each DataLoader worker reads the rank's stream and builds batches `worker_id, worker_id + num_workers, ...`;
  the DataLoader returns worker outputs round-robin, so the order is the one of a single process. Within a pass
  the ranks' shares are disjoint; shares of unequal length make the ranks' passes drift apart over time.

Streamed sets are checked example by example as they are read (`check_example`, e.g.
`data_validation.check_example`): up front only their first rows can be, so a bad example later in the stream
fails with an error naming it.

Evaluation loaders make one pass over a set (map-style or streamed), each rank reading a disjoint share, and
yield lists of same-size batches, so images of different sizes are never padded into one batch.

Do not pass these loaders to `accelerator.prepare`: they are already sharded by rank, and prepare would shard
them a second time (each rank would keep 1/world_size of its own shard), wrap the sampler in its own
`BatchSamplerShard` (whose resume, `skip_first_batches`, decodes the skipped batches), and, for iterable
datasets, read all batches on one process and dispatch them. Move batches to the device yourself.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from datasets import Dataset, IterableDataset
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader, Sampler, get_worker_info

from .data import DataValidationError
from .data_transforms import decode_example, decoded_size
from .errors import MaskMatchUsageError

Transform = Callable[[dict[str, Any], int], dict[str, torch.Tensor]]
# `check(example, description)` raises an error naming the example (its file, else `description`) if it is unusable.
ExampleCheck = Callable[[dict[str, Any], str], None]


def sample_seed(*entropy: int) -> int:
    """A 32-bit seed mixing the given integers (numpy's SeedSequence: nearby inputs give unrelated seeds)."""
    return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1)[0])


def collate_segmentation(samples: list[dict[str, torch.Tensor]], ignore_index: int = 255) -> dict[str, torch.Tensor]:
    """Stacks samples into a batch, padding bottom / right to the largest size when sizes differ.

    Padding: 0 for `pixel_values` (the mean colour), `ignore_index` for `labels`, False for `pixel_mask`.
    """
    height = max(s["pixel_values"].shape[-2] for s in samples)
    width = max(s["pixel_values"].shape[-1] for s in samples)
    pad_values = {"labels": ignore_index, "pixel_mask": False}
    batch = {}
    for key in samples[0]:
        first = samples[0][key]
        out = first.new_full((len(samples), *first.shape[:-2], height, width), pad_values.get(key, 0))
        for i, sample in enumerate(samples):
            out[i, ..., : sample[key].shape[-2], : sample[key].shape[-1]] = sample[key]
        batch[key] = out
    return batch


def check_batch_size(batch_size: int) -> None:
    """A batch of fewer than one sample is never complete: fail instead of waiting for it forever."""
    if batch_size < 1:
        raise MaskMatchUsageError(f"The batch size must be at least 1, got {batch_size}.")


class InfiniteShardedBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields this rank's batches of `(index, sample_seed)` forever, starting at batch `start_step`."""

    def __init__(
        self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, start_step: int = 0
    ):
        if num_samples == 0:
            raise DataValidationError("Cannot sample batches from an empty dataset.")
        check_batch_size(batch_size)
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_step = start_step
        self.samples_per_rank = -(-num_samples // world_size)

    def epoch_shard(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """This rank's (dataset indices, positions in the padded permutation) for `epoch`."""
        permutation = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        padded = np.resize(permutation, self.samples_per_rank * self.world_size)  # wraps around
        positions = np.arange(self.rank, len(padded), self.world_size)
        return padded[positions], positions

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, offset = divmod(self.start_step * self.batch_size, self.samples_per_rank)
        batch = []
        while True:
            indices, positions = self.epoch_shard(epoch)
            for index, position in zip(indices[offset:], positions[offset:]):
                batch.append((int(index), sample_seed(self.seed, epoch, position)))
                if len(batch) == self.batch_size:
                    yield batch
                    batch = []
            epoch, offset = epoch + 1, 0


class TransformedDataset(torch.utils.data.Dataset):
    """Map-style view applying `transform(example, seed)` to the rows asked for by `(index, seed)` keys.

    With `cache_bytes > 0` the decoded images and masks of the rows read first are kept, up to about that many
    bytes (in each process and DataLoader worker), and later epochs transform them without decoding them again:
    training cycles over small labeled sets hundreds of times, and decoding a PNG costs more than the whole weak
    view (`bench/step_cost.py`). The transform's output does not depend on the cache.
    """

    def __init__(self, dataset: Dataset, transform: Transform, cache_bytes: int = 0):
        self.dataset = dataset
        self.transform = transform
        self.cache_bytes = cache_bytes
        self.decoded: dict[int, dict[str, Any]] = {}
        self.decoded_bytes = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = key
        example = self.decoded.get(index)
        if example is None:
            example = self.dataset[index]
            if self.cache_bytes > 0:
                example = decode_example(example)
                size = decoded_size(example)
                if self.decoded_bytes + size <= self.cache_bytes:
                    self.decoded[index] = example
                    self.decoded_bytes += size
        return self.transform(example, seed)


class StreamingBatches(torch.utils.data.IterableDataset):
    """Collated batches of this rank's share of a streamed dataset, repeated forever, from `start_step`."""

    def __init__(
        self,
        dataset: IterableDataset,
        batch_size: int,
        transform: Transform,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
        shuffle_buffer_size: int = 1000,
        collate_fn: Callable[[list[dict[str, torch.Tensor]]], dict[str, torch.Tensor]] = collate_segmentation,
        check_example: ExampleCheck | None = None,
    ):
        check_batch_size(batch_size)
        self.dataset = dataset
        self.batch_size = batch_size
        self.transform = transform
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_step = start_step
        self.shuffle_buffer_size = shuffle_buffer_size
        self.collate_fn = collate_fn
        self.check_example = check_example

    def pass_shard(self, epoch: int) -> IterableDataset:
        """This rank's share of pass `epoch`, in an order drawn from (seed, epoch), the same on every rank.

        A fresh `shuffle` per pass rather than `set_epoch`: the epoch of a `datasets.IterableDataset` lives in
        shared memory, common to all DataLoader workers, and workers reach a new pass at different times.
        """
        shuffled = self.dataset.shuffle(seed=sample_seed(self.seed, epoch), buffer_size=self.shuffle_buffer_size)
        return split_dataset_by_node(shuffled, rank=self.rank, world_size=self.world_size)

    def examples(self) -> Iterator[dict[str, Any]]:
        """This rank's examples, pass after pass."""
        for epoch in itertools.count():
            # `iter(batch_size=...)`, unlike `__iter__`, does not split the stream across DataLoader workers.
            num_examples = 0
            for chunk in self.pass_shard(epoch).iter(batch_size=self.batch_size):
                columns = list(chunk)
                for values in zip(*chunk.values()):
                    num_examples += 1
                    yield dict(zip(columns, values))
            if num_examples == 0:
                raise DataValidationError(f"Rank {self.rank} got no examples from the streamed dataset.")

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        examples = self.examples()
        counter = itertools.count()
        for step in itertools.count():
            chunk = [(next(counter), example) for example in itertools.islice(examples, self.batch_size)]
            if step >= self.start_step and (step - self.start_step) % num_workers == worker_id:
                if self.check_example is not None:
                    for n, example in chunk:
                        self.check_example(example, f"streamed example {n} of rank {self.rank}")
                samples = [self.transform(example, sample_seed(self.seed, self.rank, n)) for n, example in chunk]
                yield self.collate_fn(samples)


class TransformedStream(torch.utils.data.IterableDataset):
    """One pass over a streamed `dataset`, checked and transformed example by example.

    In DataLoader workers, `datasets` deals the stream's shards out to the workers.
    """

    def __init__(
        self, dataset: IterableDataset, transform: Transform, check_example: ExampleCheck | None = None, rank: int = 0
    ):
        self.dataset = dataset
        self.transform = transform
        self.check_example = check_example
        self.rank = rank

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker = get_worker_info()
        reader = f"rank {self.rank}" + (f", DataLoader worker {worker.id}" if worker else "")
        for number, example in enumerate(self.dataset):
            if self.check_example is not None:
                self.check_example(example, f"streamed example {number} read by {reader}")
            yield self.transform(example, 0)


def infinite_dataloader(
    dataset: Dataset | IterableDataset,
    batch_size: int,
    transform: Transform,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    start_step: int = 0,
    num_workers: int = 0,
    shuffle_buffer_size: int = 1000,
    ignore_index: int = 255,
    pin_memory: bool = False,
    check_example: ExampleCheck | None = None,
    cache_bytes: int = 0,
) -> DataLoader:
    """A DataLoader whose iterator yields this rank's batches for steps `start_step, start_step + 1, ...` forever.

    Use one seed per stream (e.g. `seed` for labeled, `seed + 1` for unlabeled data) so the streams draw
    unrelated orders and augmentations. Iterate it once: `batches = iter(loader)`, then `next(batches)` per step.
    `check_example` is run on every example of a streamed `dataset` before its transform. A map-style `dataset`
    keeps up to `cache_bytes` of decoded images ([`TransformedDataset`]); a stream is never read twice in a pass.
    """
    collate_fn = functools.partial(collate_segmentation, ignore_index=ignore_index)
    if isinstance(dataset, IterableDataset):
        batches = StreamingBatches(
            dataset,
            batch_size,
            transform,
            seed,
            rank,
            world_size,
            start_step,
            shuffle_buffer_size,
            collate_fn,
            check_example,
        )
        return DataLoader(batches, batch_size=None, num_workers=num_workers, pin_memory=pin_memory)
    sampler = InfiniteShardedBatchSampler(len(dataset), batch_size, seed, rank, world_size, start_step)
    return DataLoader(
        TransformedDataset(dataset, transform, cache_bytes),
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
    )


def collate_by_size(samples: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """Stacks samples of the same image size together: one batch per size, sizes in order of first appearance."""
    groups: dict[tuple[int, ...], list[dict[str, torch.Tensor]]] = {}
    for sample in samples:
        groups.setdefault(tuple(sample["pixel_values"].shape), []).append(sample)
    return [{key: torch.stack([s[key] for s in group]) for key in group[0]} for group in groups.values()]


def eval_dataloader(
    dataset: Dataset | IterableDataset,
    transform: Transform,
    batch_size: int = 1,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
    check_example: ExampleCheck | None = None,
) -> DataLoader:
    """One pass over this rank's share of `dataset`: every example evaluated exactly once over all ranks.

    Map-style sets: rows `rank, rank + world_size, ...`. Streams: `split_dataset_by_node`, each example checked
    with `check_example` (when given) as it is read. Each item is a list of batches of same-size images
    ([`collate_by_size`]) from up to `batch_size` examples. Ranks may get different numbers of batches, so reduce
    metric state (e.g. the confusion matrix) once after the loop, not per batch.
    """
    loader_kwargs = {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "collate_fn": collate_by_size,
        "pin_memory": pin_memory,
        "persistent_workers": num_workers > 0,
    }
    if isinstance(dataset, IterableDataset):
        share = split_dataset_by_node(dataset, rank=rank, world_size=world_size)
        return DataLoader(TransformedStream(share, transform, check_example, rank), **loader_kwargs)
    keys = [(index, 0) for index in range(rank, len(dataset), world_size)]
    return DataLoader(TransformedDataset(dataset, transform), sampler=keys, **loader_kwargs)
