"""What a training run leaves behind besides weights: its history, the curves plot and the model card."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .configuration_maskmatch import MaskMatchConfig

if TYPE_CHECKING:
    from .training_args import DataArguments, TrainArguments

CURVES = ("loss", "loss_x", "loss_s", "loss_mask", "loss_fp")
PER_CLASS_CONFIDENT = "confident_ratio"  # logged per class as "confident_ratio/<label>"
# The model card template, in `model_cards/` at the top of the repository; an installed package carries it inside
# (pyproject.toml maps it to `maskmatch_hf/model_cards/`).
_CARD_DIRS = (Path(__file__).resolve().parent / "model_cards", Path(__file__).resolve().parents[1] / "model_cards")
TEMPLATE = next(
    (d / "maskmatch_model_card.md" for d in _CARD_DIRS if (d / "maskmatch_model_card.md").is_file()),
    _CARD_DIRS[0] / "maskmatch_model_card.md",
)


class TrainingHistory:
    """Per-step training logs and evaluation scores; saved in every training state so resume loses nothing."""

    def __init__(self) -> None:
        self.train: list[dict[str, float]] = []
        self.eval: list[dict[str, Any]] = []
        # Training seconds per step (evaluation excluded) of this process's session; not part of the state.
        self.seconds_per_step: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"train": self.train, "eval": self.eval}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.train, self.eval = list(state["train"]), list(state["eval"])

    def log_train(self, step: int, logs: dict[str, float]) -> None:
        self.train.append({"step": step, **logs})

    def log_eval(self, step: int, scores: dict[str, Any]) -> bool:
        """Record an evaluation; True when it is the best so far."""
        entry = {
            "step": step,
            "mean_iou": float(scores["mean_iou"]),
            "mean_accuracy": float(scores["mean_accuracy"]),
            "overall_accuracy": float(scores["overall_accuracy"]),
            "per_category_iou": [float(v) for v in np.asarray(scores["per_category_iou"])],
        }
        if "confusion_matrix" in scores:  # pixel counts, rows reference and columns predicted classes
            entry["confusion_matrix"] = np.asarray(scores["confusion_matrix"]).astype(int).tolist()
        best = self.best_eval()
        self.eval.append(entry)
        return best is None or entry["mean_iou"] > best["mean_iou"]

    def best_eval(self) -> dict[str, Any] | None:
        return max(self.eval, key=lambda e: e["mean_iou"]) if self.eval else None

    def postfix(self) -> dict[str, str]:
        """Progress-bar fields: the latest loss terms, confident ratio and last mIoU."""
        last = self.train[-1] if self.train else {}
        fields = {k: f"{v:.3f}" for k, v in last.items() if k in (*CURVES, "confident_ratio")}
        if self.eval:
            fields["mIoU"] = f"{100 * self.eval[-1]['mean_iou']:.1f}"
        return fields

    def results(self) -> dict[str, Any]:
        """Summary for `all_results.json` and the model card."""
        best = self.best_eval()
        last = self.train[-1] if self.train else {}
        results: dict[str, Any] = {"train_steps": last.get("step", 0), "train_loss": last.get("loss")}
        if self.seconds_per_step is not None:
            results["train_seconds_per_step"] = self.seconds_per_step
        # Pseudo-label quality at the end of training: mean over the last 10% of the steps.
        tail = self.train[-max(1, len(self.train) // 10) :]
        for name in ("confident_ratio", "pseudo_label_accuracy", "confident_pseudo_label_accuracy"):
            values = [entry[name] for entry in tail if name in entry]
            if values:
                results[f"final_{name}"] = float(np.mean(values))
        if best is not None:
            results.update(
                best_step=best["step"],
                best_eval_mean_iou=best["mean_iou"],
                best_eval_mean_accuracy=best["mean_accuracy"],
                best_eval_overall_accuracy=best["overall_accuracy"],
                best_eval_per_category_iou=best["per_category_iou"],
                final_step=self.eval[-1]["step"],
                final_eval_mean_iou=self.eval[-1]["mean_iou"],
                final_eval_per_category_iou=self.eval[-1]["per_category_iou"],
            )
        return results


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < window or window < 2:
        return values
    return np.convolve(values, np.ones(window) / window, mode="valid")


def plot_training_curves(history: TrainingHistory, path: str | Path) -> None:
    """PNG with the loss terms, the confident-pixel ratio (and pseudo-label accuracy) and val mIoU over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    window = max(1, len(history.train) // 50)
    steps = np.array([entry["step"] for entry in history.train])
    for name in CURVES:
        values = np.array([entry.get(name, np.nan) for entry in history.train], dtype=float)
        if len(values) and not np.isnan(values).all():
            axes[0].plot(steps[window - 1 :] if window > 1 else steps, _smooth(values, window), label=name)
    axes[0].set(title="training losses", xlabel="step")
    for name in ("confident_ratio", "pseudo_label_accuracy", "confident_pseudo_label_accuracy"):
        values = np.array([entry.get(name, np.nan) for entry in history.train], dtype=float)
        if len(values) and not np.isnan(values).all():
            axes[1].plot(steps[window - 1 :] if window > 1 else steps, _smooth(values, window), label=name)
    axes[1].set(title="pseudo-labels", xlabel="step", ylim=(0, 1))
    per_class = sorted({k for entry in history.train for k in entry if k.startswith(f"{PER_CLASS_CONFIDENT}/")})
    for name in per_class:
        values = np.array([entry.get(name, np.nan) for entry in history.train], dtype=float)
        label = name.split("/", 1)[1]
        axes[2].plot(steps[window - 1 :] if window > 1 else steps, _smooth(values, window), label=label)
    axes[2].set(title="confident pseudo-labels per class (share of pixels)", xlabel="step")
    axes[2].set_yscale("symlog", linthresh=1e-4)
    if history.eval:
        axes[3].plot([e["step"] for e in history.eval], [100 * e["mean_iou"] for e in history.eval], marker="o")
    axes[3].set(title="val mIoU (%)", xlabel="step")
    for axis in axes[:3]:
        if axis.get_legend_handles_labels()[0]:
            axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


CAMVID_TERMS = (
    "Training data: CamVid (Brostow, Fauqueur and Cipolla, Pattern Recognition Letters 2009; Brostow et al., "
    "ECCV 2008), for research and non-commercial use only; cite the papers above. The same terms apply to uses "
    "of this model."
)


def _describe_resize(resize: Any) -> str:
    if resize is None:
        return "none"
    return f"shorter side {resize.shorter_side} px" if resize.shorter_side else f"x{resize.scale}"


def _describe_class_balance(config: MaskMatchConfig) -> str:
    """The class-balance corrections the run trained with (0 is off)."""
    corrections = {
        "logit-adjusted labeled loss (tau {:g})": config.logit_adjusted_loss,
        "pseudo-labels and unlabeled losses in its posterior frame": config.logit_adjusted_unlabeled_loss,
        "teacher logit adjustment (tau {:g})": config.logit_adjustment,
        "distribution alignment (tau {:g})": config.distribution_alignment,
        "confident share capped at {:g}x the labeled share": config.confident_share_cap,
    }
    return ", ".join(name.format(value) for name, value in corrections.items() if value) or "none"


def _describe_masked_view(config: MaskMatchConfig, unlabeled_batch_size: int) -> str:
    """The masked view the student trained on, in words ("none" for presets without masked modeling): how many
    images of each unlabeled batch, as [`MaskMatchConfig.num_masked_images`] counts them at this batch size."""
    if not config.components.masked_modeling:
        return "none"
    masked = config.num_masked_images(unlabeled_batch_size)
    images = (
        "every unlabeled image"
        if masked == unlabeled_batch_size
        else f"the first {masked} of the {unlabeled_batch_size} images of each unlabeled batch"
    )
    return f"{100 * config.mask_ratio:g}% of the {config.mask_patch_size} px patches hidden, in {images}"


def _dataset_id(dataset_name: str | None) -> str | None:
    """The dataset's Hub id, or the folder name of a local dataset."""
    if not dataset_name:
        return None
    path = Path(dataset_name)
    return path.resolve().name if path.exists() else dataset_name


def _describe_data(data: DataArguments, config: MaskMatchConfig) -> dict[str, str]:
    """Which images were labeled and which unlabeled, in words."""
    if data.labeled_ids:
        labeled = f"ids in `{Path(data.labeled_ids).name}`"
    elif data.labeled_fraction:
        labeled = f"{data.labeled_fraction:.1%} of `{data.train_split}`"
    else:
        labeled = f"split `{data.train_split}`"
    unlabeled = data.unlabeled_dataset_name or data.unlabeled_split or "the other training images"
    return {"labeled": labeled, "unlabeled": unlabeled if config.components.unlabeled else "none"}


def _card_data(repo_id: str, dataset: str | None, miou: float | None, eval_split: str, args: TrainArguments, config):
    """The card's Hub metadata, with a model-index entry for the best eval mIoU."""
    from huggingface_hub import EvalResult, ModelCardData

    eval_results = None
    if miou is not None:
        eval_results = [
            EvalResult(
                task_type="image-segmentation",
                dataset_type=dataset,
                dataset_name=dataset,
                dataset_split=eval_split,
                metric_type="mean_iou",
                metric_name="mIoU",
                metric_value=round(100 * miou, 2),
            )
        ]
    base_model = args.model.model_name_or_path
    return ModelCardData(
        model_name=repo_id,
        library_name="transformers",
        pipeline_tag="image-segmentation",
        datasets=[dataset] if dataset else None,
        base_model=base_model if base_model and not Path(base_model).exists() else None,
        tags=["semantic-segmentation", "semi-supervised", "maskmatch", config.segmenter_config.model_type],
        eval_results=eval_results,
    )


def _recipe(config: MaskMatchConfig, results: dict[str, Any], args: TrainArguments) -> dict[str, Any]:
    """The template's training-recipe fields."""
    training = args.training
    unlabeled_batch_size = training.unlabeled_batch_size
    return {
        **_describe_data(args.data, config),
        "steps": results.get("train_steps"),
        "batch_size": training.per_device_train_batch_size,
        "unlabeled_batch_size": unlabeled_batch_size,
        "resize": _describe_resize(args.data.resize),
        "crop_size": args.data.crop_size,
        "preset": config.preset,
        "teacher": config.teacher,
        "threshold": config.confidence_threshold,
        "class_thresholds": config.class_thresholds,
        "rampup": config.unlabeled_rampup_steps,
        "teacher_scales": config.teacher_scales,
        "masked_view": _describe_masked_view(config, unlabeled_batch_size),
        "lambda_s": config.lambda_s,
        "lambda_mask": config.lambda_mask,
        "lambda_fp": config.lambda_fp,
        "class_balance": _describe_class_balance(config),
        "num_labels": config.num_labels,
    }


def write_model_card(
    output_dir: str | Path, config: MaskMatchConfig, results: dict[str, Any], args: TrainArguments
) -> Path:
    """README.md of the output dir: Hub metadata with a model-index, the recipe, per-class IoU, usage, limits."""
    from huggingface_hub import ModelCard

    dataset = _dataset_id(args.data.dataset_name)
    repo_id = args.training.hub_model_id or Path(output_dir).name
    eval_split = args.data.eval_split or "validation"
    miou = results.get("best_eval_mean_iou")
    per_class = results.get("best_eval_per_category_iou")
    rows = [
        {
            "name": config.id2label[i],
            "iou": "n/a" if per_class is None or np.isnan(per_class[i]) else f"{100 * per_class[i]:.1f}",
        }
        for i in range(config.num_labels)
    ]
    backbone_config = getattr(config.segmenter_config, "backbone_config", None)
    card = ModelCard.from_template(
        _card_data(repo_id, dataset, miou, eval_split, args, config),
        template_path=str(TEMPLATE),
        model_name=repo_id,
        repo_id=repo_id,
        dataset=f"`{dataset}`" if dataset else "its dataset",
        segmenter=config.segmenter_config.model_type,
        backbone=f" on the `{backbone_config.model_type}` backbone" if backbone_config is not None else "",
        results=[{"split": eval_split, "miou": f"{100 * miou:.2f}", "step": results.get("best_step")}]
        if miou is not None
        else [],
        per_class=rows,
        license_terms=CAMVID_TERMS
        if dataset and "camvid" in dataset.lower()
        else ("Respect the licence and terms of use of the training dataset, which also bind uses of this model."),
        **_recipe(config, results, args),
    )
    path = Path(output_dir) / "README.md"
    card.save(path)
    return path
