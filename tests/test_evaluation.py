"""`maskmatch-evaluate` / `evaluate_checkpoint`: scores, sources, batching, windows, errors, several processes."""

import json
import math
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from datasets import Image as ImageFeature
from PIL import Image

from maskmatch_hf import MaskMatchForSemanticSegmentation, evaluation
from maskmatch_hf.data import CAMVID_ID2LABEL, DataConfig, DataValidationError, LabelMapping
from maskmatch_hf.data_transforms import EvalTransform
from maskmatch_hf.evaluation import evaluate_checkpoint, main, parse_args
from maskmatch_hf.metrics import SegmentationMetric
from maskmatch_hf.modeling_maskmatch import multiscale_probabilities

from .conftest import PALETTE, assert_inference_flags_renamed, documented_commands, run_on_two_processes

SCORES = ("mean_iou", "mean_accuracy", "overall_accuracy", "per_category_iou", "per_category_accuracy")


@pytest.fixture(scope="module")
def camvid_val(trained_checkpoint: Path) -> Path:
    """The CamVid-like folder the checkpoint was trained and evaluated on (its `val` split: 3 frames)."""
    return trained_checkpoint.parent / "mini_camvid"


@pytest.fixture(scope="module")
def test_folder(tmp_path_factory) -> Path:
    """SegNet-layout `test/` + `testannot/` (no other split) of frames of three sizes; mask value 11 is void."""
    root = tmp_path_factory.mktemp("segnet") / "street"
    rng = np.random.default_rng(1)
    (root / "test").mkdir(parents=True)
    (root / "testannot").mkdir()
    for i, (height, width) in enumerate([(48, 64), (32, 48), (48, 64), (64, 32), (32, 48)]):
        labels = np.kron(rng.integers(0, 12, (height // 16, width // 16)), np.ones((16, 16), dtype=np.int64))
        Image.fromarray(PALETTE[labels]).save(root / "test" / f"t{i}.png")
        Image.fromarray(labels.astype(np.uint8)).save(root / "testannot" / f"t{i}.png")
    return root


def assert_same_scores(first: dict, second: dict, atol: float = 0.0) -> None:
    for key in SCORES:
        np.testing.assert_allclose(first[key], second[key], rtol=0, atol=atol, err_msg=key)


def test_cli_prints_and_writes_the_scores_training_reported(trained_checkpoint, camvid_val, tmp_path, capsys):
    output_file = tmp_path / "scores" / "val.json"
    argv = ["--model_name_or_path", str(trained_checkpoint), "--dataset_name", str(camvid_val)]
    argv += ["--output_file", str(output_file)]
    assert main(argv) == 0  # default split: 'val'
    printed = capsys.readouterr().out
    written = json.loads(output_file.read_text())
    assert set(SCORES) <= set(written) and written["num_images"] == 3 and written["split"].startswith("split 'val'")
    assert written["class_names"] == list(CAMVID_ID2LABEL.values()) and len(written["per_category_iou"]) == 11
    settings = {"model_name_or_path": str(trained_checkpoint), "resize": None, "ensemble_scales": [1.0]}
    assert {key: written[key] for key in settings} == settings and written["ensemble_flip"] is False

    trained = json.loads((trained_checkpoint / "all_results.json").read_text())
    assert written["mean_iou"] == pytest.approx(trained["best_eval_mean_iou"], abs=1e-12)
    best_iou = [None if math.isnan(v) else v for v in trained["best_eval_per_category_iou"]]
    assert written["per_category_iou"] == pytest.approx(best_iou, abs=1e-12)
    confusion = np.array(written["confusion_matrix"])  # pixel counts: rows true, columns predicted classes
    union = confusion.sum(0) + confusion.sum(1) - confusion.diagonal()
    iou_from_confusion = [None if u == 0 else i / u for i, u in zip(confusion.diagonal(), union)]
    assert confusion.shape == (11, 11) and written["per_category_iou"] == pytest.approx(iou_from_confusion)
    assert f"mIoU {100 * written['mean_iou']:.2f} | mean accuracy" in printed
    for name, iou in zip(written["class_names"], written["per_category_iou"]):
        assert any(
            line.split()[:2] == [name, "n/a" if iou is None else f"{100 * iou:.2f}"] for line in printed.splitlines()
        )


def test_batches_sources_and_streams_give_the_same_scores(trained_checkpoint, test_folder, tmp_path):
    config = DataConfig(dataset_name=str(test_folder), void_label=11)
    reference = evaluate_checkpoint(trained_checkpoint, config, batch_size=1)  # default split: 'test'
    assert reference["num_images"] == 5 and reference["split"] == f"split 'test' of {test_folder}"
    # Five images of three sizes in batches of 3: same-size images share a forward pass, none is padded.
    assert_same_scores(evaluate_checkpoint(trained_checkpoint, config, batch_size=3), reference, atol=1e-6)
    assert_same_scores(evaluate_checkpoint(trained_checkpoint, config), reference, atol=1e-6)  # default: 4
    assert_same_scores(evaluate_checkpoint(trained_checkpoint, config, streaming=True, batch_size=2), reference, 1e-6)

    paths = sorted(str(p) for p in (test_folder / "test").iterdir())
    table = Dataset.from_dict({"pixels": paths, "mask": [p.replace("/test/", "/testannot/") for p in paths]})
    table = table.cast_column("pixels", ImageFeature()).cast_column("mask", ImageFeature())
    (tmp_path / "parquet").mkdir()
    table.to_parquet(str(tmp_path / "parquet" / "test.parquet"))
    parquet = DataConfig(
        dataset_name=str(tmp_path / "parquet"), image_column="pixels", label_column="mask", void_label=11
    )
    assert_same_scores(evaluate_checkpoint(trained_checkpoint, parquet, split="test"), reference)


@torch.no_grad()
def test_windows_and_tta_score_the_ensemble_of_windows(trained_checkpoint, camvid_val):
    config = DataConfig(dataset_name=str(camvid_val))
    plain = evaluate_checkpoint(trained_checkpoint, config, split="val")
    covering = evaluate_checkpoint(trained_checkpoint, config, split="val", window_size=64, window_stride=48)
    assert_same_scores(covering, plain)  # a window covering the 48x64 frames is whole-image inference

    tta = {"scales": (0.75, 1.0), "flip": True, "window_size": 24, "window_stride": 16}
    windowed = evaluate_checkpoint(trained_checkpoint, config, split="val", **tta)
    model = MaskMatchForSemanticSegmentation.from_pretrained(trained_checkpoint).eval()
    transform = EvalTransform(label_mapping=LabelMapping(label_map={11: 255}))
    metric = SegmentationMetric(11)
    for path in sorted((camvid_val / "val").iterdir()):
        example = transform({"image": str(path), "label": str(camvid_val / "valannot" / path.name)})
        probabilities = multiscale_probabilities(model, example["pixel_values"][None], **tta)
        metric.update(probabilities.argmax(1), example["labels"][None])
    assert_same_scores(windowed, metric.compute(), atol=1e-12)


def test_stock_checkpoint_scores_like_its_maskmatch_original(trained_checkpoint, camvid_val, tmp_path):
    MaskMatchForSemanticSegmentation.from_pretrained(trained_checkpoint).save_segmenter_pretrained(tmp_path / "stock")
    config = DataConfig(dataset_name=str(camvid_val))
    stock = evaluate_checkpoint(tmp_path / "stock", config, split="val")  # no image processor: ImageNet statistics
    assert stock["class_names"] == list(CAMVID_ID2LABEL.values())
    assert_same_scores(stock, evaluate_checkpoint(trained_checkpoint, config, split="val"))


def test_bad_input_gets_clear_errors(trained_checkpoint, camvid_val, test_folder, tmp_path, capsys):
    def fails(*argv: str, model: Path = trained_checkpoint) -> str:
        capsys.readouterr()
        assert main(["--model_name_or_path", str(model), "--output_file", str(tmp_path / "x.json"), *argv]) == 1
        assert not (tmp_path / "x.json").exists()
        error = capsys.readouterr().err
        assert "\nerror: " in "\n" + error.replace("\r", "\n") and "Traceback" not in error
        return error

    data = ("--dataset_name", str(camvid_val))
    assert "nowhere: the local path does not exist" in fails(*data, model=tmp_path / "nowhere")
    message = fails(*data, "--split", "test")
    assert "Split 'test' not found" in message and "available splits: ['train', 'val']" in message
    assert "No split named test / validation / val" in fails("--dataset_name", str(camvid_val / "val"))
    assert "Column(s) ['pixels'] not found" in fails(*data, "--split", "val", "--image_column", "pixels")
    bad = tmp_path / "bad"
    shutil.copytree(test_folder, bad)
    Image.fromarray(np.full((48, 64), 40, dtype=np.uint8)).save(bad / "testannot" / "t2.png")
    assert re.search(r"t\d\.png holds label\(s\) \[(11|40)\] outside \[0, 11\)", fails("--dataset_name", str(bad)))
    assert "--window_stride needs --window_size" in fails(*data, "--window_stride", "8")


def test_bad_example_later_in_a_stream_is_named(trained_checkpoint, test_folder, tmp_path):
    data = tmp_path / "streamed"
    (data / "test").mkdir(parents=True)
    (data / "testannot").mkdir()
    for path in sorted((test_folder / "test").iterdir()):
        (data / "test" / path.name).symlink_to(path)
        (data / "testannot" / path.name).symlink_to(test_folder / "testannot" / path.name)
    (data / "testannot" / "t3.png").unlink()
    Image.fromarray(np.full((64, 32), 40, dtype=np.uint8)).save(data / "testannot" / "t3.png")
    config = DataConfig(dataset_name=str(data), void_label=11)
    with pytest.raises(DataValidationError, match=r"t3\.png holds label\(s\) \[40\]"):
        evaluate_checkpoint(trained_checkpoint, config, streaming=True, validation_samples=2)


@pytest.mark.parametrize("streaming", [False, True])
def test_two_processes_score_like_one(trained_checkpoint, camvid_val, tmp_path, streaming):
    argv = ["--model_name_or_path", str(trained_checkpoint), "--dataset_name", str(camvid_val)]
    argv += ["--ensemble_scales", "0.75", "1"]
    argv += ["--streaming"] if streaming else []
    assert main([*argv, "--output_file", str(tmp_path / "one.json")]) == 0
    result = run_on_two_processes(
        ["-m", "maskmatch_hf.evaluation", *argv, "--output_file", str(tmp_path / "two.json")], timeout=300
    )
    assert result.stdout.count("mIoU") == 1  # printed once, by the main process
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert one == two and two["num_images"] == 3


def test_flags_share_training_names_and_the_old_ones_still_work(capsys):
    """`--model_name_or_path`, `--ensemble_scales`, `--ensemble_flip`; `--model`, `--scales`, `--flip` (also as
    `--flag=value`) are deprecated aliases with a FutureWarning naming the new flag."""
    new, new_data = parse_args(
        ["--model_name_or_path", "m", "--dataset_name", "d", "--ensemble_scales", "0.5", "1", "--ensemble_flip"]
    )
    assert (new.model_name_or_path, new.ensemble_scales, new.ensemble_flip) == ("m", [0.5, 1.0], True)
    with pytest.warns(FutureWarning) as caught:
        old, old_data = parse_args(["--model=m", "--dataset_name=d", "--scales", "0.5", "1", "--flip"])
    assert (old, old_data) == (new, new_data)
    assert_inference_flags_renamed(caught, parse_args, capsys)


def test_documented_commands_parse_without_deprecation_warnings():
    commands = documented_commands("maskmatch-evaluate", evaluation)
    assert len(commands) >= 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for argv in commands:
            assert parse_args(argv)[0].model_name_or_path.startswith("outputs/")


def test_same_size_images_share_forward_passes_by_default(trained_checkpoint, camvid_val, monkeypatch):
    batch_sizes = []
    original = evaluation.multiscale_probabilities

    def recording(model, pixel_values, *args):
        batch_sizes.append(len(pixel_values))
        return original(model, pixel_values, *args)

    monkeypatch.setattr(evaluation, "multiscale_probabilities", recording)
    evaluate_checkpoint(trained_checkpoint, DataConfig(dataset_name=str(camvid_val)), split="val")
    assert batch_sizes == [3]  # the 3 val frames, of one size, in one pass
    args, _ = parse_args(["--model_name_or_path", str(trained_checkpoint), "--dataset_name", str(camvid_val)])
    assert args.batch_size == 4
