"""`reporting.py`: the training history, `all_results.json` summary, the curves plot and the model card."""

import numpy as np
from PIL import Image

from maskmatch_hf.reporting import TrainingHistory, plot_training_curves, write_model_card
from maskmatch_hf.training_args import parse_args

from .conftest import tiny_model


def _history(num_classes: int = 3) -> TrainingHistory:
    history = TrainingHistory()
    for step in range(1, 21):
        history.log_train(step, {"loss": 2.0 / step, "loss_x": 1.0 / step, "confident_ratio": step / 20,
                                 "pseudo_label_accuracy": 0.5, "confident_ratio/sky": 0.1})  # fmt: skip
    scores = {"mean_accuracy": 0.5, "overall_accuracy": 0.7, "per_category_iou": np.full(num_classes, 0.25)}
    assert history.log_eval(10, {**scores, "mean_iou": 0.3})
    assert not history.log_eval(20, {**scores, "mean_iou": 0.2})
    return history


def test_history_keeps_the_confusion_matrix_of_each_evaluation():
    history = TrainingHistory()
    scores = {"mean_iou": 0.5, "mean_accuracy": 0.5, "overall_accuracy": 0.7, "per_category_iou": np.full(2, 0.5)}
    history.log_eval(10, {**scores, "confusion_matrix": np.array([[3, 1], [0, 2]], dtype=np.int64)})
    history.log_eval(20, scores)  # scores from elsewhere may have none
    assert history.eval[0]["confusion_matrix"] == [[3, 1], [0, 2]] and "confusion_matrix" not in history.eval[1]


def test_history_results_and_state_round_trip():
    history = _history()
    history.seconds_per_step = 0.5
    results = history.results()
    assert results["train_steps"] == 20 and results["train_loss"] == 0.1 and results["train_seconds_per_step"] == 0.5
    assert (
        results["best_step"] == 10 and results["best_eval_mean_iou"] == 0.3 and results["final_eval_mean_iou"] == 0.2
    )
    assert results["final_confident_ratio"] == np.mean([19 / 20, 1.0])  # the last 10% of the steps
    assert history.postfix() == {"loss": "0.100", "loss_x": "0.050", "confident_ratio": "1.000", "mIoU": "20.0"}
    restored = TrainingHistory()
    restored.load_state_dict(history.state_dict())
    assert restored.state_dict() == history.state_dict() and restored.results()["best_step"] == 10
    assert TrainingHistory().results() == {"train_steps": 0, "train_loss": None}


def test_training_curves_plot(tmp_path):
    plot_training_curves(_history(), tmp_path / "curves.png")
    with Image.open(tmp_path / "curves.png") as plot:
        assert plot.size[0] > 400 and len(np.unique(np.asarray(plot.convert("L")))) > 10


def test_model_card_from_typed_arguments(tmp_path):
    config = tiny_model().config
    results = {"train_steps": 20, "best_eval_mean_iou": 0.3, "best_step": 10,
               "best_eval_per_category_iou": [0.25] * config.num_labels}  # fmt: skip
    args = parse_args(["--dataset_name", "someone/streets", "--output_dir", str(tmp_path / "run"),
                       "--labeled_fraction", "0.125", "--resize", "0.5", "--crop_size", "64",
                       "--push_to_hub", "--hub_model_id", "me/streets-maskmatch"])  # fmt: skip
    card = write_model_card(tmp_path, config, results, args).read_text()
    assert "model-index:" in card and "pipeline_tag: image-segmentation" in card and "30.00" in card
    assert "me/streets-maskmatch" in card and "- someone/streets" in card and "12.5% of `train`" in card
    assert "x0.5" in card and "non-commercial" not in card
    assert "| class balance | logit-adjusted labeled loss (tau 0.5) |" in card  # the default
    assert "A semantic segmenter (`segformer`) trained with" in card
    assert "| masked view | 70% of the 8 px patches hidden, in every unlabeled image |" in card  # the default
    config.mask_batch_fraction = 0.5
    card = write_model_card(tmp_path, config, results, args).read_text()
    assert "| masked view | 70% of the 8 px patches hidden, in the first 4 of the 8 images of each unlabeled" in card
    upernet_config = tiny_model("upernet").config
    upernet_card = write_model_card(tmp_path, upernet_config, results, args).read_text()
    assert "A semantic segmenter (`upernet` on the `resnet` backbone) trained with" in upernet_card
    # With 2 unlabeled images a pass, UperNet's BatchNorm needs both in the masked pass even at half the batch.
    upernet_config.mask_batch_fraction = 0.5
    args.training.per_device_unlabeled_batch_size = 2
    upernet_card = write_model_card(tmp_path, upernet_config, results, args).read_text()
    assert "| masked view | 70% of the 8 px patches hidden, in every unlabeled image |" in upernet_card
    supervised = parse_args(["--dataset_name", "d", "--output_dir", "o", "--labeled_ids", "ids/labeled.txt"])
    config.logit_adjusted_loss, config.distribution_alignment = 0.0, 1.0
    card = write_model_card(tmp_path, config, {"train_steps": 2}, supervised).read_text()
    assert "ids in `labeled.txt`" in card and "model-index:" not in card
    assert "| class balance | distribution alignment (tau 1) |" in card
    config.mask_batch_fraction = 1.0
    card = write_model_card(tmp_path, config, {"train_steps": 2}, supervised).read_text()
    assert "| masked view | 70% of the 8 px patches hidden, in every unlabeled image |" in card
    config.preset = "fixmatch"
    card = write_model_card(tmp_path, config, {"train_steps": 2}, supervised).read_text()
    assert "| masked view | none |" in card
    config.preset = "maskmatch"
    config.confident_share_cap = 2.0
    card = write_model_card(tmp_path, config, {"train_steps": 2}, supervised).read_text()
    assert "| class balance | distribution alignment (tau 1), confident share capped at 2x the labeled share |" in card
