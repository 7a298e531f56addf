"""`maskmatch_hf.predict`: loading, test-time augmentation, palettes and the `maskmatch-predict` command."""

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ResNetConfig, ResNetForImageClassification, SegformerForSemanticSegmentation

from maskmatch_hf import MaskMatchForSemanticSegmentation, predict
from maskmatch_hf.data import CAMVID_ID2LABEL
from maskmatch_hf.modeling_maskmatch import multiscale_probabilities
from maskmatch_hf.predict import colorize, label_palette, legend, load_segmenter, main, overlay, predict_label_maps

from .conftest import PALETTE, assert_inference_flags_renamed, assert_label_maps_match, documented_commands, tiny_model


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def trained(trained_checkpoint: Path):
    return load_segmenter(trained_checkpoint)


def test_cli_writes_masks_overlays_and_raw_labels(trained_checkpoint, trained, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    images = {"a": random_image(64, 48, seed=1), "b": random_image(40, 30, seed=2), "c": random_image(50, 70, seed=3)}
    images["a"].save(folder / "a.png")
    images["b"].save(folder / "b.jpg", quality=100)
    images["c"].save(tmp_path / "c.png")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"

    argv = ["--model_name_or_path", str(trained_checkpoint), "--inputs", str(folder), str(tmp_path / "c.png")]
    assert main([*argv, "--output_dir", str(out), "--save_raw_labels", "--batch_size", "2", "--device", "cpu"]) == 0

    model, image_processor = trained
    paths = {"a": folder / "a.png", "b": folder / "b.jpg", "c": tmp_path / "c.png"}
    reloaded = {stem: Image.open(path).convert("RGB") for stem, path in paths.items()}
    expected = predict_label_maps(model, image_processor, list(reloaded.values()))
    for (stem, image), label_map in zip(reloaded.items(), expected):
        for kind in ("mask", "overlay", "labels"):
            assert Image.open(out / f"{stem}_{kind}.png").size == image.size, (stem, kind)
        assert Image.open(out / f"{stem}_mask.png").mode == "RGB"
        assert_label_maps_match(Image.open(out / f"{stem}_labels.png"), label_map)
    assert (out / "legend.png").exists()
    assert not list(out.glob("notes*"))


def test_cli_reports_unreadable_and_missing_inputs_and_finishes_the_batch(trained_checkpoint, tmp_path, caplog):
    random_image(32, 24, seed=1).save(tmp_path / "good1.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG this is not a png")
    random_image(20, 36, seed=2).save(tmp_path / "good2.png")
    inputs = [str(tmp_path / name) for name in ("good1.png", "broken.png", "missing.png", "good2.png")]
    out = tmp_path / "out"

    with caplog.at_level(logging.ERROR):
        code = main(
            ["--model_name_or_path", str(trained_checkpoint), "--inputs", *inputs, "--output_dir", str(out)]
            + ["--batch_size", "4"]
        )

    assert code == 1
    errors = "\n".join(record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR)
    assert "broken.png" in errors and "missing.png" in errors
    assert sorted(path.name for path in out.glob("*_*.png")) == [
        "good1_mask.png", "good1_overlay.png", "good2_mask.png", "good2_overlay.png"
    ]  # fmt: skip


def test_wrong_checkpoint_type_fails_at_once(tmp_path, caplog):
    classifier = tmp_path / "classifier"
    ResNetForImageClassification(
        ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1], num_labels=3)
    ).save_pretrained(classifier)

    with pytest.raises(ValueError, match=r"classifier is not a semantic segmentation checkpoint.*ResNetConfig"):
        load_segmenter(classifier)
    random_image(16, 16).save(tmp_path / "x.png")
    with caplog.at_level(logging.ERROR):
        code = main(
            ["--model_name_or_path", str(classifier), "--inputs", str(tmp_path / "x.png")]
            + ["--output_dir", str(tmp_path / "out")]
        )
    assert code == 2
    assert "ResNetConfig" in caplog.text and not (tmp_path / "out").exists()


def test_tta_goes_through_the_multiscale_ensemble(trained, monkeypatch):
    model, image_processor = trained
    image = random_image(64, 48)
    calls = []

    def spy(model, pixel_values, scales, flip, *window):
        calls.append((tuple(scales), flip, *window))
        return multiscale_probabilities(model, pixel_values, scales, flip, *window)

    monkeypatch.setattr(predict, "multiscale_probabilities", spy)
    [tta] = predict_label_maps(model, image_processor, [image], scales=(0.5, 1.0), flip=True)
    [plain] = predict_label_maps(model, image_processor, [image])
    assert calls == [((0.5, 1.0), True, None, None), ((1.0,), False, None, None)]

    pixel_values = image_processor(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model.ensemble_probabilities(pixel_values, scales=(0.5, 1.0), flip=True)[0].argmax(0).numpy()
        single_scale = model.ensemble_probabilities(pixel_values)[0].argmax(0).numpy()
        logits = model(pixel_values=pixel_values).logits[0]
    np.testing.assert_array_equal(tta, expected)
    np.testing.assert_array_equal(plain, single_scale)
    # The argmax of the softmax, not of the logits: a near-tie may break the other way (1 pixel in 3072 on one CPU).
    assert (plain == logits.argmax(0).numpy()).mean() > 0.99


def test_stock_tta_averages_like_the_maskmatch_ensemble(segmenter):
    model = tiny_model(segmenter).eval()
    stock = model.segmenter
    pixel_values = torch.randn(2, 3, 32, 40)
    with torch.no_grad():
        # The stock path (logits of any size) matches MaskMatch's own ensemble of the same weights...
        torch.testing.assert_close(
            multiscale_probabilities(stock, pixel_values, scales=(0.5, 1.0, 1.5), flip=True),
            model.ensemble_probabilities(pixel_values, scales=(0.5, 1.0, 1.5), flip=True),
        )

        # ...and is the mean of each view's softmax, resized back to the input (and un-flipped).
        def probs(x: torch.Tensor) -> torch.Tensor:
            logits = stock(pixel_values=x).logits
            return torch.nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear").softmax(1)

        half = torch.nn.functional.interpolate(pixel_values, size=(16, 20), mode="bilinear")
        half_probs = torch.nn.functional.interpolate(probs(half), size=(32, 40), mode="bilinear")
        torch.testing.assert_close(
            multiscale_probabilities(stock, pixel_values, scales=(0.5, 1.0)), (half_probs + probs(pixel_values)) / 2
        )
        torch.testing.assert_close(
            multiscale_probabilities(stock, pixel_values, flip=True),
            (probs(pixel_values) + probs(pixel_values.flip(-1)).flip(-1)) / 2,
        )


def test_stock_checkpoint_without_processor_predicts_like_the_wrapper(tmp_path):
    model = tiny_model("segformer", id2label=dict(enumerate("abcd"))).eval()
    model.save_segmenter_pretrained(tmp_path / "stock")
    model.save_pretrained(tmp_path / "maskmatch")

    stock, stock_processor = load_segmenter(tmp_path / "stock")
    wrapper, _ = load_segmenter(tmp_path / "maskmatch")
    assert isinstance(stock, SegformerForSemanticSegmentation) and not stock.training
    assert isinstance(wrapper, MaskMatchForSemanticSegmentation)
    assert stock_processor.do_resize is False and list(stock_processor.image_mean) == list(model.config.image_mean)

    images = [random_image(45, 37, seed=1), random_image(45, 37, seed=2), random_image(30, 52, seed=3)]
    stock_maps = predict_label_maps(stock, stock_processor, images, scales=(0.75, 1.0), flip=True, batch_size=3)
    wrapper_maps = predict_label_maps(wrapper, stock_processor, images, scales=(0.75, 1.0), flip=True, batch_size=3)
    assert [m.shape for m in stock_maps] == [(37, 45), (37, 45), (52, 30)]
    for stock_map, wrapper_map in zip(stock_maps, wrapper_maps):
        assert_label_maps_match(stock_map, wrapper_map)


def test_palettes_colorize_overlay_and_legend():
    camvid = label_palette(11, CAMVID_ID2LABEL)
    np.testing.assert_array_equal(camvid, PALETTE[:11])
    generic = label_palette(300)
    assert generic.shape == (300, 3) and generic.dtype == np.uint8
    assert len({tuple(color) for color in generic}) == 300 and not (generic == 0).all(1).any()
    np.testing.assert_array_equal(generic, label_palette(300))
    np.testing.assert_array_equal(label_palette(4, dict(enumerate("abcd"))), generic[:4])

    label_map = np.array([[0, 1], [3, 255]])
    colors = np.asarray(colorize(label_map, generic[:4]))
    np.testing.assert_array_equal(colors[[0, 0, 1, 1], [0, 1, 0, 1]], [generic[0], generic[1], generic[3], [0, 0, 0]])
    image = random_image(2, 2)
    np.testing.assert_array_equal(np.asarray(overlay(image, label_map, generic[:4], alpha=0.0)), np.asarray(image))
    np.testing.assert_array_equal(np.asarray(overlay(image, label_map, generic[:4], alpha=1.0)), colors)
    with pytest.raises(ValueError, match="label map is 2x2"):
        overlay(random_image(3, 2), label_map, generic)
    assert legend(CAMVID_ID2LABEL, camvid).height == 11 * 20


def test_flags_share_training_names_and_the_old_ones_still_work(capsys):
    """`--model_name_or_path`, `--ensemble_scales`, `--ensemble_flip`; `--model`, `--scales`, `--flip` (also as
    `--flag=value`) are deprecated aliases with a FutureWarning naming the new flag."""
    required = ["--inputs", "frames/", "--output_dir", "out"]
    new = predict.parse_args(
        ["--model_name_or_path", "m", *required, "--ensemble_scales", "0.5", "1", "--ensemble_flip"]
    )
    assert (new.model_name_or_path, new.ensemble_scales, new.ensemble_flip) == ("m", [0.5, 1.0], True)
    for value, flip in (("true", True), ("false", False)):  # also with a value, as training's boolean flags
        assert (
            predict.parse_args(["--model_name_or_path", "m", *required, "--ensemble_flip", value]).ensemble_flip
            is flip
        )
    with pytest.warns(FutureWarning) as caught:
        old = predict.parse_args(["--model=m", *required, "--scales", "0.5", "1", "--flip"])
    assert old == new
    assert_inference_flags_renamed(caught, predict.parse_args, capsys)


def test_documented_commands_parse_without_deprecation_warnings():
    commands = documented_commands("maskmatch-predict", predict)
    assert len(commands) >= 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for argv in commands:
            assert predict.parse_args(argv).ensemble_flip
