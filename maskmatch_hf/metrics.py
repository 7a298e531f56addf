"""Mean IoU for semantic segmentation, accumulated as a confusion matrix on the tensors' device.

`SegmentationMetric` is the one implementation: batched `torch.bincount` updates, an optional
Accelerate gather that does not count the distributed sampler's padding twice, and scores with the
semantics of evaluate's `mean_iou`. `MeanIoU` wraps it in the `evaluate` API, which works offline
(evaluate's own `mean_iou` fetches its script from the Hub): `load_mean_iou()`, or
`evaluate.load(maskmatch_hf.metrics.__file__)` since this file doubles as an evaluate metric script.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import datasets
import evaluate
import numpy as np
import torch

if TYPE_CHECKING:
    from accelerate import Accelerator


class SegmentationMetric:
    """Accumulates a `(num_labels, num_labels)` int64 confusion matrix and derives evaluate's `mean_iou` scores.

    Rows are reference classes, columns predicted classes. Pixels whose reference is `ignore_index` are skipped.
    Any other reference or prediction outside `[0, num_labels)` is counted as invalid and makes `compute()`
    raise, since silently dropping such pixels (what evaluate does) hides unmapped dataset labels.

    Distributed evaluation: pass the `Accelerator` to `update` and call `compute()` on every process. Batches
    before the last one of a prepared dataloader are summed locally, with no communication; `compute()`
    sums those local matrices over processes with one all-reduce, which is exact because no sample is
    repeated there. The last batch is where the distributed sampler pads with duplicated samples, and
    `accelerator.gather_for_metrics` is what knows how many to drop; so for that batch `update` builds one
    confusion matrix per sample, `(B, C, C)`, and gathers those through `gather_for_metrics`, which keeps
    exactly the real samples. This costs one small gather and one `C x C` all-reduce per evaluation instead
    of gathering `(B, H, W)` maps every step (`B * C * C` integers are far fewer than `B * H * W` for the
    usual class counts). Like `gather_for_metrics`, this needs accelerate's default `even_batches=True`.
    """

    def __init__(
        self,
        num_labels: int,
        ignore_index: int = 255,
        reduce_labels: bool = False,
        label_map: Mapping[int, int] | None = None,
    ) -> None:
        """`reduce_labels` and `label_map` remap references only, as in evaluate's `mean_iou`.

        `label_map` maps original reference values to new ones (applied first). `reduce_labels` makes 0
        (background) ignored and shifts every other class down by one; the ignore value stays ignored. With
        `ignore_index=255` this is exactly evaluate's behaviour.
        """
        if num_labels < 1:
            raise ValueError(f"num_labels must be positive, got {num_labels}")
        self.num_labels = num_labels
        self.ignore_index = ignore_index
        self.reduce_labels = reduce_labels
        self.label_map = dict(label_map) if label_map else {}
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        c = self.num_labels
        self._local = torch.zeros(c, c, dtype=torch.int64)  # this process's batches, not yet reduced
        self._gathered = torch.zeros(c, c, dtype=torch.int64)  # gathered last batches, same on every rank
        self._invalid = torch.zeros((), dtype=torch.int64)  # out-of-range pixels seen by this process
        self._accelerator: Accelerator | None = None

    def update(
        self,
        predictions: torch.Tensor | np.ndarray,
        references: torch.Tensor | np.ndarray,
        accelerator: Accelerator | None = None,
    ) -> None:
        """Add a batch of class-index maps, `(B, H, W)` (or one `(H, W)` map) each, on any device.

        With a multi-process `accelerator` the last batch of a prepared dataloader is gathered through
        `gather_for_metrics` (see the class docstring); it must then be passed on every process.
        """
        preds = torch.as_tensor(predictions)
        refs = torch.as_tensor(references, device=preds.device)
        if preds.shape != refs.shape or preds.ndim < 2:
            raise ValueError(
                "predictions and references must be class-index maps of the same shape (B, H, W) or (H, W), "
                f"got {tuple(preds.shape)} and {tuple(refs.shape)}"
            )
        if preds.ndim == 2:
            preds, refs = preds[None], refs[None]
        preds, refs = preds.flatten(1).long(), self._map_references(refs.flatten(1).long())

        c = self.num_labels
        counted = refs != self.ignore_index
        in_range = (refs >= 0) & (refs < c) & (preds >= 0) & (preds < c)
        self._invalid = self._invalid.to(preds.device) + (counted & ~in_range).sum()
        counted &= in_range
        # Pixels that do not count go to one extra bin past the end, so no data-dependent masking is needed.
        index = refs * c + preds
        distributed = accelerator is not None and accelerator.num_processes > 1
        if distributed and accelerator.gradient_state.end_of_dataloader:
            batch = preds.shape[0]
            index = index + torch.arange(batch, device=preds.device)[:, None] * (c * c)
            index = torch.where(counted, index, batch * c * c)
            per_sample = torch.bincount(index.flatten(), minlength=batch * c * c + 1)[:-1].view(batch, c, c)
            gathered = accelerator.gather_for_metrics(per_sample).sum(0)
            self._gathered = self._gathered.to(gathered.device) + gathered
        else:
            index = torch.where(counted, index, c * c)
            counts = torch.bincount(index.flatten(), minlength=c * c + 1)[:-1].view(c, c)
            self._local = self._local.to(counts.device) + counts
        if distributed:
            self._accelerator = accelerator

    def _map_references(self, refs: torch.Tensor) -> torch.Tensor:
        """Apply `label_map` then `reduce_labels` without modifying the caller's tensor."""
        mapped = refs
        for old, new in self.label_map.items():
            mapped = torch.where(refs == old, new, mapped)
        if self.reduce_labels:
            ignored = (mapped == 0) | (mapped == self.ignore_index)
            mapped = torch.where(ignored, self.ignore_index, mapped - 1)
        return mapped

    def confusion_matrix(self) -> torch.Tensor:
        """The `(C, C)` int64 counts over all updates and processes (rows: reference, columns: prediction).

        A collective when an accelerator was passed to `update`: call it on every process.
        """
        local, invalid = self._local, self._invalid.to(self._local.device)
        if self._accelerator is not None:
            packed = torch.cat([local.flatten(), invalid.view(1)])
            packed = self._accelerator.reduce(packed, reduction="sum")
            local, invalid = packed[:-1].view_as(local), packed[-1]
        if invalid.item():
            raise ValueError(
                f"{invalid.item()} pixels have a prediction or a non-ignored reference outside "
                f"[0, {self.num_labels}); map dataset labels to class indices or to ignore_index={self.ignore_index}"
            )
        return local + self._gathered.to(local.device)

    def compute(self, nan_to_num: float | None = None) -> dict[str, Any]:
        """Scores with the keys and semantics of evaluate's `mean_iou`: [`scores_from_confusion_matrix`] of
        [`confusion_matrix`]."""
        return scores_from_confusion_matrix(self.confusion_matrix(), nan_to_num)


def scores_from_confusion_matrix(
    confusion: torch.Tensor | np.ndarray, nan_to_num: float | None = None
) -> dict[str, Any]:
    """evaluate's `mean_iou` scores of a `(C, C)` confusion matrix (rows: reference, columns: prediction).

    Per-category values are float64 numpy arrays. A class's IoU is NaN when it is absent from both
    predictions and references, its accuracy NaN when absent from the references; the means skip NaNs.
    `nan_to_num`, if given, replaces NaN in every value.
    """
    if isinstance(confusion, torch.Tensor):
        confusion = confusion.cpu().numpy()
    cm = np.asarray(confusion, dtype=np.float64)
    intersection = np.diag(cm)
    reference_area, predicted_area = cm.sum(1), cm.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersection / (reference_area + predicted_area - intersection)
        accuracy = intersection / reference_area
        overall = float(intersection.sum() / reference_area.sum())
    scores: dict[str, Any] = {
        "mean_iou": _nanmean(iou),
        "mean_accuracy": _nanmean(accuracy),
        "overall_accuracy": overall,
        "per_category_iou": iou,
        "per_category_accuracy": accuracy,
    }
    if nan_to_num is not None:
        scores = {key: _replace_nan(value, nan_to_num) for key, value in scores.items()}
    return scores


def _nanmean(values: np.ndarray) -> float:
    """Mean over non-NaN entries; NaN (without numpy's empty-slice warning) when there are none."""
    present = values[~np.isnan(values)]
    return float(present.mean()) if present.size else float("nan")


def _replace_nan(value: float | np.ndarray, nan: float) -> float | np.ndarray:
    """`np.nan_to_num` for NaN only, keeping floats as floats."""
    replaced = np.nan_to_num(value, nan=nan)
    return replaced if isinstance(value, np.ndarray) else float(replaced)


_MAPS = datasets.Sequence(datasets.Sequence(datasets.Value("int64")))


class MeanIoU(evaluate.Metric):
    """evaluate's `mean_iou` (same inputs, compute arguments and result keys), computed by `SegmentationMetric`.

    Maps may differ in size between samples. For multi-process evaluation use `SegmentationMetric` with an
    accelerator instead: this class goes through evaluate's own file-based gathering.
    """

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Mean Intersection-over-Union of semantic segmentation maps, by confusion matrix.",
            citation="",
            inputs_description=(
                "predictions, references: class-index maps of shape (H, W). compute() arguments: num_labels, "
                "ignore_index (default 255), nan_to_num, label_map, reduce_labels, as evaluate's mean_iou."
            ),
            features=datasets.Features({"predictions": _MAPS, "references": _MAPS}),
        )

    def _compute(
        self,
        predictions: Sequence[Any],
        references: Sequence[Any],
        num_labels: int,
        ignore_index: int = 255,
        nan_to_num: float | None = None,
        label_map: Mapping[int, int] | None = None,
        reduce_labels: bool = False,
    ) -> dict[str, Any]:
        metric = SegmentationMetric(num_labels, ignore_index, reduce_labels=reduce_labels, label_map=label_map)
        for prediction, reference in zip(predictions, references, strict=True):
            metric.update(torch.from_numpy(np.asarray(prediction)), torch.from_numpy(np.asarray(reference)))
        return metric.compute(nan_to_num=nan_to_num)


def load_mean_iou(**kwargs: Any) -> MeanIoU:
    """The offline stand-in for `evaluate.load("mean_iou")`; `kwargs` go to `evaluate.Metric`.

    Equivalent to `evaluate.load(maskmatch_hf.metrics.__file__, **kwargs)`, without copying this file into
    evaluate's module cache.
    """
    return MeanIoU(**kwargs)
