"""transformers pipelines on trained checkpoints: the stock `image-segmentation` one and `maskmatch-segmentation`."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, SegformerForSemanticSegmentation, pipeline

from maskmatch_hf import MaskMatchForSemanticSegmentation
from maskmatch_hf.data import CAMVID_ID2LABEL
from maskmatch_hf.pipeline_maskmatch import TASK, MaskMatchSegmentationPipeline, save_pipeline
from maskmatch_hf.predict import predict_label_maps

from .conftest import assert_label_maps_match, run_without_maskmatch

TTA = {"scales": [0.75, 1.0], "flip": True}


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def with_pipeline(trained_checkpoint: Path, tmp_path_factory) -> Path:
    """A copy of the trained checkpoint with the `maskmatch-segmentation` pipeline saved into it."""
    checkpoint = tmp_path_factory.mktemp("with_pipeline") / "checkpoint"
    shutil.copytree(trained_checkpoint, checkpoint)
    model = MaskMatchForSemanticSegmentation.from_pretrained(checkpoint)
    save_pipeline(model, AutoImageProcessor.from_pretrained(checkpoint), checkpoint)
    return checkpoint


def label_maps_of(segments: list[dict], id2label: dict[int, str]) -> np.ndarray:
    """Rebuild a label map from the stock pipeline's per-class binary masks."""
    label2id = {name: i for i, name in id2label.items()}
    stacked = [np.asarray(segment["mask"]) // 255 * label2id[segment["label"]] for segment in segments]
    assert (sum(np.asarray(segment["mask"]) // 255 for segment in segments) == 1).all()
    return sum(stacked)


def test_stock_pipeline_on_maskmatch_and_exported_checkpoints(trained_checkpoint, image, tmp_path):
    model = MaskMatchForSemanticSegmentation.from_pretrained(trained_checkpoint).eval()
    image_processor = AutoImageProcessor.from_pretrained(trained_checkpoint)
    [expected] = predict_label_maps(model, image_processor, [image])

    maskmatch = pipeline("image-segmentation", model=str(trained_checkpoint))
    assert isinstance(maskmatch.model, MaskMatchForSemanticSegmentation)
    segments = maskmatch(image)
    assert {s["label"] for s in segments} <= set(CAMVID_ID2LABEL.values())
    assert all(s["mask"].size == image.size for s in segments)
    assert_label_maps_match(label_maps_of(segments, CAMVID_ID2LABEL), expected)

    exported = tmp_path / "exported"
    model.save_segmenter_pretrained(exported)
    image_processor.save_pretrained(exported)
    stock = pipeline("image-segmentation", model=str(exported))
    assert isinstance(stock.model, SegformerForSemanticSegmentation)
    assert stock.model.config.id2label == CAMVID_ID2LABEL
    assert_label_maps_match(label_maps_of(stock(image), CAMVID_ID2LABEL), expected)


def test_save_pipeline_keeps_the_card_and_the_model_loadable(trained_checkpoint, with_pipeline, image):
    assert (with_pipeline / "README.md").read_bytes() == (trained_checkpoint / "README.md").read_bytes()
    assert (with_pipeline / "pipeline_maskmatch.py").exists()
    config = json.loads((with_pipeline / "config.json").read_text())
    assert config["custom_pipelines"] == {
        TASK: {
            "impl": "pipeline_maskmatch.MaskMatchSegmentationPipeline",
            "pt": ["AutoModelForSemanticSegmentation"],
            "type": "image",
        }
    }
    assert config["auto_map"] == json.loads((trained_checkpoint / "config.json").read_text())["auto_map"]

    reloaded = MaskMatchForSemanticSegmentation.from_pretrained(with_pipeline).eval()
    original = MaskMatchForSemanticSegmentation.from_pretrained(trained_checkpoint).eval()
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values).logits, original(pixel_values).logits)


def test_custom_pipeline_with_tta(with_pipeline, image):
    model = MaskMatchForSemanticSegmentation.from_pretrained(with_pipeline).eval()
    image_processor = AutoImageProcessor.from_pretrained(with_pipeline)
    segmenter = pipeline(TASK, model=model, image_processor=image_processor)
    assert isinstance(segmenter, MaskMatchSegmentationPipeline)

    result = segmenter(image, **TTA)
    [expected] = predict_label_maps(model, image_processor, [image], **TTA)
    np.testing.assert_array_equal(result["semantic_map"], expected)
    assert result["labels"] == {int(i): CAMVID_ID2LABEL[int(i)] for i in np.unique(expected)}
    assert result["overlay"].size == image.size and result["overlay"].mode == "RGB"
    [plain] = predict_label_maps(model, image_processor, [image])
    np.testing.assert_array_equal(segmenter(image)["semantic_map"], plain)

    mirrored = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    batched = segmenter([image, mirrored, image], batch_size=3, **TTA)
    for got, want in zip(batched, predict_label_maps(model, image_processor, [image, mirrored, image], **TTA)):
        np.testing.assert_array_equal(got["semantic_map"], want)


CLEAN_PROCESS_SCRIPT = """
    import json

    import numpy as np
    from PIL import Image
    from transformers import pipeline

    checkpoint, image_path, tta = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    image = Image.open(image_path)
    custom = pipeline(model=checkpoint, trust_remote_code=True)
    assert type(custom).__name__ == "MaskMatchSegmentationPipeline", type(custom)
    assert "maskmatch_hf" not in type(custom).__module__ + type(custom.model).__module__
    result = custom(image, **tta)
    stock = pipeline("image-segmentation", model=checkpoint, trust_remote_code=True)
    segments = stock(image)
    print(json.dumps({
        "semantic_map": result["semantic_map"].tolist(),
        "labels": result["labels"],
        "overlay_size": list(result["overlay"].size),
        "stock_labels": [segment["label"] for segment in segments],
    }))
    """


def test_pipelines_load_in_a_process_without_the_package(with_pipeline, image, tmp_path):
    image.save(tmp_path / "image.png")
    result = run_without_maskmatch(
        CLEAN_PROCESS_SCRIPT, str(with_pipeline), str(tmp_path / "image.png"), json.dumps(TTA), cwd=tmp_path
    )
    output = json.loads(result.stdout.strip().splitlines()[-1])

    model = MaskMatchForSemanticSegmentation.from_pretrained(with_pipeline).eval()
    image_processor = AutoImageProcessor.from_pretrained(with_pipeline)
    [expected] = predict_label_maps(model, image_processor, [image], **TTA)
    assert_label_maps_match(output["semantic_map"], expected)
    assert output["labels"] == {str(int(i)): CAMVID_ID2LABEL[int(i)] for i in np.unique(expected)}
    assert output["overlay_size"] == list(image.size)
    [plain] = predict_label_maps(model, image_processor, [image])
    assert output["stock_labels"] == [CAMVID_ID2LABEL[int(i)] for i in np.unique(plain)]
