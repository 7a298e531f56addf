"""Sliding-window inference: whole-image inference where a window covers the image, overlaps averaged, and the
same implementation behind `maskmatch-predict` and the `maskmatch-segmentation` pipeline."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from transformers import pipeline
from transformers.modeling_outputs import SemanticSegmenterOutput

from maskmatch_hf.modeling_maskmatch import multiscale_probabilities, resize_maps, sliding_window_probabilities
from maskmatch_hf.pipeline_maskmatch import TASK
from maskmatch_hf.predict import load_segmenter, main, predict_label_maps

from .conftest import assert_label_maps_match, tiny_model

WINDOW = {"window_size": 24, "window_stride": 16}


def whole_image_probabilities(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    return resize_maps(model(pixel_values=pixel_values).logits, pixel_values.shape[-2:]).softmax(dim=1)


class WindowIndexModel(nn.Module):
    """Predicts class k everywhere in the k-th window it is given, at half the window's resolution."""

    def __init__(self, num_labels: int):
        super().__init__()
        self.num_labels = num_labels
        self.windows: list[tuple[int, int]] = []

    def forward(self, pixel_values: torch.Tensor) -> SemanticSegmenterOutput:
        batch, _, height, width = pixel_values.shape
        logits = torch.full((batch, self.num_labels, height // 2, width // 2), -50.0)
        logits[:, len(self.windows)] = 50.0
        self.windows.append((height, width))
        return SemanticSegmenterOutput(logits=logits)


@torch.no_grad()
def test_a_window_covering_the_image_gives_whole_image_inference(segmenter):
    maskmatch = tiny_model(segmenter).eval()
    pixel_values = torch.randn(2, 3, 40, 56)
    for model in (maskmatch, maskmatch.segmenter):  # MaskMatch and the stock segmenter it wraps
        whole = whole_image_probabilities(model, pixel_values)
        for window in ((40, 56), 64, (100, 56)):  # the image exactly, or windows shrunk to it
            torch.testing.assert_close(sliding_window_probabilities(model, pixel_values, window, stride=30), whole)
        # Inside the multi-scale / flip ensemble the window applies at each scale: (60, 60) covers both scales.
        torch.testing.assert_close(
            multiscale_probabilities(model, pixel_values, (0.5, 1.0), True, window_size=60),
            multiscale_probabilities(model, pixel_values, (0.5, 1.0), True),
        )


def test_overlapping_windows_are_averaged():
    model = WindowIndexModel(num_labels=6)
    probabilities = sliding_window_probabilities(model, torch.zeros(1, 3, 10, 14), window_size=6, stride=4)
    # Rows start at 0, 4 (the last one flush with the bottom); columns at 0, 4, 8: six 6x6 windows, row-major.
    assert model.windows == [(6, 6)] * 6 and probabilities.shape == (1, 6, 10, 14)
    expected = np.zeros((6, 10, 14))
    for k, (top, left) in enumerate((top, left) for top in (0, 4) for left in (0, 4, 8)):
        expected[k, top : top + 6, left : left + 6] = 1
    expected /= expected.sum(0, keepdims=True)
    np.testing.assert_allclose(probabilities[0].numpy(), expected, atol=1e-6)
    # The default stride is 2/3 of the window: 4 here.
    torch.testing.assert_close(
        sliding_window_probabilities(WindowIndexModel(6), torch.zeros(1, 3, 10, 14), 6), probabilities
    )


@torch.no_grad()
def test_windows_of_a_real_model_on_a_larger_image(segmenter):
    model = tiny_model(segmenter).eval()
    pixel_values = torch.randn(2, 3, 32, 48)
    probabilities = sliding_window_probabilities(model, pixel_values, window_size=32, stride=16)
    assert probabilities.shape == (2, model.config.num_labels, 32, 48)
    left = whole_image_probabilities(model, pixel_values[..., :32])
    right = whole_image_probabilities(model, pixel_values[..., 16:])
    expected = torch.cat([left[..., :16], (left[..., 16:] + right[..., :16]) / 2, right[..., 16:]], dim=-1)
    torch.testing.assert_close(probabilities, expected)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(2, 32, 48))


def test_bad_window_settings_are_refused():
    model = WindowIndexModel(num_labels=2)
    pixel_values = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="must not exceed the window"):
        sliding_window_probabilities(model, pixel_values, window_size=4, stride=5)
    with pytest.raises(ValueError, match="window_size"):
        sliding_window_probabilities(model, pixel_values, window_size=0)
    with pytest.raises(ValueError, match="needs a `window_size`"):
        multiscale_probabilities(model, pixel_values, window_stride=2)


@pytest.fixture(scope="module")
def trained(trained_checkpoint):
    return load_segmenter(trained_checkpoint)


def test_predict_and_the_pipeline_use_the_same_windows(trained_checkpoint, trained, tmp_path):
    model, image_processor = trained
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    tta = {"scales": (0.75, 1.0), "flip": True}
    [windowed] = predict_label_maps(model, image_processor, [image], **tta, **WINDOW)
    pixel_values = image_processor(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = multiscale_probabilities(model, pixel_values, tta["scales"], True, **WINDOW)[0].argmax(0)
    np.testing.assert_array_equal(windowed, expected.numpy())

    segmenter = pipeline(TASK, model=model, image_processor=image_processor)
    np.testing.assert_array_equal(segmenter(image, **tta, **WINDOW)["semantic_map"], windowed)

    image.save(tmp_path / "frame.png")
    argv = ["--model_name_or_path", str(trained_checkpoint), "--inputs", str(tmp_path / "frame.png")]
    argv += ["--save_raw_labels"]
    assert main([*argv, "--output_dir", str(tmp_path / "out"), "--window_size", "24", "--window_stride", "16"]) == 0
    [plain] = predict_label_maps(model, image_processor, [image], **WINDOW)
    # `main` loads its own model instance from the checkpoint: near-ties may flip on another CPU.
    assert_label_maps_match(np.asarray(Image.open(tmp_path / "out" / "frame_labels.png")), plain)
    assert main([*argv, "--output_dir", str(tmp_path / "bad"), "--window_stride", "16"]) == 1  # stride, no window
    assert not (tmp_path / "bad").exists()
