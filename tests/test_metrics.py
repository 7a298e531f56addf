"""Tests for `maskmatch_hf.metrics`: confusion-matrix mIoU, the evaluate API and the distributed gather."""

from pathlib import Path
from typing import Any

import evaluate
import numpy as np
import pytest
import torch
from accelerate import Accelerator, debug_launcher
from accelerate.state import AcceleratorState, GradientState
from torch.utils.data import DataLoader, TensorDataset

from maskmatch_hf import metrics
from maskmatch_hf.metrics import MeanIoU, SegmentationMetric, load_mean_iou

KEYS = ["mean_iou", "mean_accuracy", "overall_accuracy", "per_category_iou", "per_category_accuracy"]


def reference_scores(
    predictions: list[np.ndarray], references: list[np.ndarray], num_labels: int, ignore_index: int = 255
) -> dict[str, Any]:
    """Straightforward per-class counting over all pixels, independent of the confusion matrix."""
    pred = np.concatenate([np.ravel(p) for p in predictions])
    ref = np.concatenate([np.ravel(r) for r in references])
    keep = ref != ignore_index
    pred, ref = pred[keep], ref[keep]
    iou, acc = np.full(num_labels, np.nan), np.full(num_labels, np.nan)
    for c in range(num_labels):
        hits = np.sum((pred == c) & (ref == c))
        in_ref, in_pred = np.sum(ref == c), np.sum(pred == c)
        if in_ref + in_pred:
            iou[c] = hits / (in_ref + in_pred - hits)
        if in_ref:
            acc[c] = hits / in_ref
    return {
        "mean_iou": np.nanmean(iou),
        "mean_accuracy": np.nanmean(acc),
        "overall_accuracy": np.sum(pred == ref) / ref.size,
        "per_category_iou": iou,
        "per_category_accuracy": acc,
    }


def assert_scores_equal(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    assert list(actual) == KEYS
    for key in KEYS:
        np.testing.assert_allclose(actual[key], expected[key], rtol=1e-12, atol=0, err_msg=key)
    assert isinstance(actual["per_category_iou"], np.ndarray)
    assert isinstance(actual["mean_iou"], float)


def random_maps(
    seed: int, n: int, num_labels: int, size: tuple[int, int] = (8, 8), ignore_index: int = 255
) -> tuple[torch.Tensor, torch.Tensor]:
    """References with ~15% ignored pixels, predictions right ~60% of the time."""
    g = torch.Generator().manual_seed(seed)
    refs = torch.randint(0, num_labels, (n, *size), generator=g)
    noise = torch.randint(0, num_labels, (n, *size), generator=g)
    preds = torch.where(torch.rand(n, *size, generator=g) < 0.6, refs, noise)
    refs[torch.rand(n, *size, generator=g) < 0.15] = ignore_index
    return preds, refs


def scores_of(preds: Any, refs: Any, num_labels: int, **kwargs: Any) -> dict[str, Any]:
    metric = SegmentationMetric(num_labels, **kwargs)
    metric.update(preds, refs)
    return metric.compute()


# The example in the docstring of evaluate's `mean_iou` metric, with its published results.
EVALUATE_EXAMPLE = {
    "predictions": [
        np.array([[1, 2], [3, 4], [5, 255]]),
        np.array([[2, 7], [9, 2], [3, 6]]),
        np.array([[2, 2, 3], [8, 2, 4], [3, 255, 2]]),
    ],
    "references": [
        np.array([[0, 3], [5, 4], [6, 255]]),
        np.array([[1, 7], [9, 2], [3, 6]]),
        np.array([[1, 2, 2], [8, 2, 1], [3, 255, 1]]),
    ],
}
EVALUATE_EXAMPLE_SCORES = {
    "mean_iou": 0.4775,
    "mean_accuracy": 0.5916666666666666,
    "overall_accuracy": 0.5263157894736842,
    "per_category_iou": np.array([0.0, 0.0, 0.375, 0.4, 0.5, 0.0, 0.5, 1.0, 1.0, 1.0]),
    "per_category_accuracy": np.array([0.0, 0.0, 0.75, 2 / 3, 1.0, 0.0, 0.5, 1.0, 1.0, 1.0]),
}


def test_hand_computed_two_classes() -> None:
    preds = torch.tensor([[[0, 0, 1], [1, 1, 0]]])
    refs = torch.tensor([[[0, 1, 255], [1, 1, 255]]])
    metric = SegmentationMetric(2)
    metric.update(preds, refs)
    # Counted pixels (reference, prediction): (0,0), (1,0), (1,1), (1,1).
    assert metric.confusion_matrix().tolist() == [[1, 0], [1, 2]]
    expected = {
        "mean_iou": (1 / 2 + 2 / 3) / 2,
        "mean_accuracy": (1 + 2 / 3) / 2,
        "overall_accuracy": 3 / 4,
        "per_category_iou": np.array([1 / 2, 2 / 3]),
        "per_category_accuracy": np.array([1.0, 2 / 3]),
    }
    assert_scores_equal(metric.compute(), expected)


def test_matches_evaluate_published_example() -> None:
    metric = SegmentationMetric(10, ignore_index=255)
    for pred, ref in zip(EVALUATE_EXAMPLE["predictions"], EVALUATE_EXAMPLE["references"]):
        metric.update(pred, ref)
    assert_scores_equal(metric.compute(), EVALUATE_EXAMPLE_SCORES)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_numpy_reference_on_random_maps(seed: int) -> None:
    preds, refs = random_maps(seed, n=6, num_labels=5, size=(13, 17))
    assert_scores_equal(scores_of(preds, refs, 5), reference_scores(list(preds.numpy()), list(refs.numpy()), 5))


def test_ignored_pixels_are_excluded() -> None:
    preds, refs = random_maps(3, n=4, num_labels=4, ignore_index=-1)
    ignored = refs == -1
    assert ignored.any()
    baseline = scores_of(preds, refs, 4, ignore_index=-1)
    # Whatever is predicted under ignored pixels changes nothing.
    assert_scores_equal(scores_of(torch.where(ignored, 3, preds), refs, 4, ignore_index=-1), baseline)
    assert_scores_equal(baseline, reference_scores([preds[~ignored].numpy()], [refs[~ignored].numpy()], 4))


def test_absent_classes_are_nan_and_skipped_by_the_means() -> None:
    # Class 2 never appears; class 3 is predicted but never in the references.
    preds = torch.tensor([[0, 1, 3], [1, 1, 0]])
    refs = torch.tensor([[0, 1, 1], [1, 0, 0]])
    scores = scores_of(preds, refs, 4)
    iou, acc = scores["per_category_iou"], scores["per_category_accuracy"]
    assert np.isnan(iou[2]) and np.isnan(acc[2])
    assert iou[3] == 0.0 and np.isnan(acc[3])
    assert scores["mean_iou"] == pytest.approx(np.mean(iou[[0, 1, 3]]))
    assert scores["mean_accuracy"] == pytest.approx(np.mean(acc[[0, 1]]))
    filled = SegmentationMetric(4)
    filled.update(preds, refs)
    assert filled.compute(nan_to_num=-1.0)["per_category_iou"][2] == -1.0
    empty = SegmentationMetric(4).compute()
    assert np.isnan(empty["mean_iou"]) and np.isnan(empty["overall_accuracy"])


def test_reduce_labels_and_label_map() -> None:
    preds, refs = random_maps(4, n=3, num_labels=4)
    raw = torch.where(refs == 255, 255, refs + 1)  # 0 is "background"; real classes are 1..4
    raw[:, 0, :] = 0
    reduced = torch.where((raw == 0) | (raw == 255), 255, raw - 1)
    expected = scores_of(preds, reduced, 4)
    assert_scores_equal(scores_of(preds, raw, 4, reduce_labels=True), expected)
    # label_map applies to the original values, before reduce_labels.
    swapped = torch.where(raw == 1, 2, torch.where(raw == 2, 1, raw))
    assert_scores_equal(scores_of(preds, swapped, 4, reduce_labels=True, label_map={1: 2, 2: 1}), expected)


def test_batching_and_input_types_do_not_change_the_result() -> None:
    preds, refs = random_maps(5, n=7, num_labels=6)
    all_at_once = scores_of(preds, refs, 6)
    metric = SegmentationMetric(6)
    for chunk in (slice(0, 1), slice(1, 4), slice(4, 7)):
        metric.update(preds[chunk], refs[chunk])
    assert_scores_equal(metric.compute(), all_at_once)
    metric.reset()
    for pred, ref in zip(preds, refs):  # single (H, W) maps; numpy predictions, uint8 references
        metric.update(pred.numpy(), ref.to(torch.uint8))
    assert_scores_equal(metric.compute(), all_at_once)
    assert metric.confusion_matrix().dtype == torch.int64
    metric.reset()
    assert metric.confusion_matrix().sum() == 0


def test_invalid_inputs_raise() -> None:
    metric = SegmentationMetric(3)
    metric.update(torch.tensor([[0, 1]]), torch.tensor([[0, 7]]))  # 7 is neither a class nor ignored
    with pytest.raises(ValueError, match="outside"):
        metric.compute()
    with pytest.raises(ValueError, match="same shape"):
        metric.update(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5))


def test_evaluate_api_gives_the_same_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    metric = load_mean_iou(keep_in_memory=True, cache_dir=str(tmp_path))
    assert isinstance(metric, MeanIoU)
    assert_scores_equal(metric.compute(**EVALUATE_EXAMPLE, num_labels=10, ignore_index=255), EVALUATE_EXAMPLE_SCORES)

    # Batches of tensors through add_batch, and maps of another size: the same as SegmentationMetric.
    preds, refs = random_maps(6, n=4, num_labels=5)
    small_preds, small_refs = random_maps(7, n=2, num_labels=5, size=(5, 3))
    metric.add_batch(predictions=preds, references=refs)
    metric.add_batch(predictions=small_preds.numpy(), references=small_refs.numpy())
    expected = SegmentationMetric(5, reduce_labels=True)
    expected.update(preds, refs)
    expected.update(small_preds, small_refs)
    assert_scores_equal(metric.compute(num_labels=5, ignore_index=255, reduce_labels=True), expected.compute())

    # evaluate.load on this very file, offline; its module cache goes to tmp_path.
    monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", tmp_path / "modules")
    loaded = evaluate.load(metrics.__file__, keep_in_memory=True, cache_dir=str(tmp_path))
    assert type(loaded).__name__ == "MeanIoU"
    assert_scores_equal(loaded.compute(**EVALUATE_EXAMPLE, num_labels=10, ignore_index=255), EVALUATE_EXAMPLE_SCORES)


# Distributed: 11 samples, batch size 2, 2 processes -> 3 steps of 2 x 2 samples, the last one padded
# with a duplicated sample; each rank sees different data.
DIST_SAMPLES, DIST_LABELS = 11, 4


def _distributed_worker(out_dir: str) -> None:
    torch.set_num_threads(1)
    # A forked child inherits the parent's singletons; start from a clean accelerate state.
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == 2
    loader = accelerator.prepare(DataLoader(TensorDataset(*random_maps(8, DIST_SAMPLES, DIST_LABELS)), batch_size=2))
    metric, naive = SegmentationMetric(DIST_LABELS), SegmentationMetric(DIST_LABELS)
    seen = 0
    for preds, refs in loader:
        metric.update(preds, refs, accelerator=accelerator)
        naive.update(preds, refs)  # counts everything this rank saw, padding included
        seen += len(preds)
    scores = metric.compute()
    np.savez(
        Path(out_dir) / f"rank{accelerator.process_index}.npz",
        seen=seen,
        confusion=metric.confusion_matrix().numpy(),
        naive_confusion=accelerator.reduce(naive.confusion_matrix(), reduction="sum").numpy(),
        **scores,
    )


def test_distributed_gather_does_not_count_padding(tmp_path: Path) -> None:
    debug_launcher(_distributed_worker, args=(str(tmp_path),), num_processes=2)
    preds, refs = random_maps(8, DIST_SAMPLES, DIST_LABELS)
    expected = SegmentationMetric(DIST_LABELS)
    expected.update(preds, refs)
    expected_scores = expected.compute()
    results = [np.load(tmp_path / f"rank{rank}.npz") for rank in range(2)]
    assert sum(int(r["seen"]) for r in results) == DIST_SAMPLES + 1  # the sampler did pad
    expected_confusion = expected.confusion_matrix().numpy()
    assert not np.array_equal(results[0]["naive_confusion"], expected_confusion)  # padding would matter
    for result in results:
        np.testing.assert_array_equal(result["confusion"], expected_confusion)
        assert_scores_equal(
            {key: result[key][()] if key in KEYS[:3] else result[key] for key in KEYS}, expected_scores
        )
