import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForSemanticSegmentation,
    SegformerForSemanticSegmentation,
    UperNetForSemanticSegmentation,
)

from maskmatch_hf import MaskMatchConfig, MaskMatchForSemanticSegmentation

from .conftest import NUM_LABELS, run_without_maskmatch, tiny_model

STOCK_CLASSES = {"segformer": SegformerForSemanticSegmentation, "upernet": UperNetForSemanticSegmentation}


def test_logits_at_input_resolution_and_loss_ignores_void(segmenter):
    model = tiny_model(segmenter).eval()
    pixel_values = torch.randn(2, 3, 40, 56)
    labels = torch.randint(0, NUM_LABELS, (2, 40, 56))
    labels[:, :10] = 255
    output = model(pixel_values=pixel_values, labels=labels)
    assert output.logits.shape == (2, NUM_LABELS, 40, 56)
    keep = labels != 255
    expected = torch.nn.functional.cross_entropy(output.logits.permute(0, 2, 3, 1)[keep], labels[keep])
    torch.testing.assert_close(output.loss, expected)


def test_feature_perturbation_decodes_a_dropped_copy(segmenter):
    model = tiny_model(segmenter).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    clean = model(pixel_values=pixel_values).logits
    perturbed = model(pixel_values=pixel_values, feature_perturbation=True).logits
    assert perturbed.shape == clean.shape
    assert not torch.allclose(perturbed, clean)
    model.config.fp_dropout = 0.0  # no dropout: the perturbed path is the clean decode
    torch.testing.assert_close(model(pixel_values=pixel_values, feature_perturbation=True).logits, clean)


def test_ensemble_is_the_average_of_per_scale_softmaxes(segmenter):
    model = tiny_model(segmenter).eval()
    pixel_values = torch.randn(2, 3, 48, 40)
    scales = (0.75, 1.0, 1.25)
    with torch.no_grad():
        ensembled = model.ensemble_probabilities(pixel_values, scales=scales, flip=True)
        manual = []
        for scale in scales:
            size = (round(48 * scale), round(40 * scale))
            for flip in (False, True):
                view = pixel_values.flip(-1) if flip else pixel_values
                view = torch.nn.functional.interpolate(view, size=size, mode="bilinear", align_corners=False)
                probs = model(pixel_values=view).logits.softmax(1)
                probs = torch.nn.functional.interpolate(probs, size=(48, 40), mode="bilinear", align_corners=False)
                manual.append(probs.flip(-1) if flip else probs)
    torch.testing.assert_close(ensembled, torch.stack(manual).mean(0))
    torch.testing.assert_close(ensembled.sum(1), torch.ones(2, 48, 40))


def test_save_load_round_trip(tmp_path, segmenter):
    model = tiny_model(segmenter, preset="fixmatch").eval()
    pixel_values = torch.randn(1, 3, 32, 32)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, MaskMatchForSemanticSegmentation)
    assert loaded.config.preset == "fixmatch"
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pixel_values).logits, model(pixel_values=pixel_values).logits)


def test_stock_export_loads_without_maskmatch(tmp_path, segmenter):
    model = tiny_model(segmenter, id2label={i: f"class_{i}" for i in range(NUM_LABELS)}).eval()
    model.save_segmenter_pretrained(tmp_path)
    stock = STOCK_CLASSES[segmenter].from_pretrained(tmp_path).eval()
    assert stock.config.id2label[2] == "class_2"
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        stock_logits = torch.nn.functional.interpolate(
            stock(pixel_values=pixel_values).logits, size=(32, 32), mode="bilinear", align_corners=False
        )
        torch.testing.assert_close(stock_logits, model(pixel_values=pixel_values).logits)


def test_wrapping_a_pretrained_segmenter_keeps_its_weights(tmp_path, segmenter):
    stock = tiny_model(segmenter).segmenter.eval()
    stock.save_pretrained(tmp_path)
    wrapped = MaskMatchForSemanticSegmentation.from_segmenter_pretrained(
        tmp_path, config_kwargs={"preset": "unimatch"}
    ).eval()
    assert wrapped.config.preset == "unimatch" and wrapped.config.num_labels == NUM_LABELS
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = torch.nn.functional.interpolate(
            stock(pixel_values=pixel_values).logits, size=(32, 32), mode="bilinear", align_corners=False
        )
        torch.testing.assert_close(wrapped(pixel_values=pixel_values).logits, expected)


def test_auto_classes_are_registered():
    config = AutoConfig.for_model("maskmatch")
    assert isinstance(config, MaskMatchConfig)
    model = AutoModelForSemanticSegmentation.from_config(
        MaskMatchConfig(segmenter_config=tiny_model().config.segmenter_config)
    )
    assert isinstance(model, MaskMatchForSemanticSegmentation)


REMOTE_CODE_SCRIPT = """
    import torch
    from transformers import AutoModelForSemanticSegmentation

    checkpoint, expected = sys.argv[1], torch.load(sys.argv[2])
    model = AutoModelForSemanticSegmentation.from_pretrained(checkpoint, trust_remote_code=True).eval()
    assert type(model).__name__ == "MaskMatchForSemanticSegmentation", type(model)
    assert "maskmatch_hf" not in type(model).__module__, type(model).__module__
    with torch.no_grad():
        logits = model(pixel_values=expected["pixel_values"]).logits
    torch.testing.assert_close(logits, expected["logits"])
    print("remote code OK")
    """


@pytest.mark.parametrize("segmenter_name", ["segformer", "upernet", "upernet-efficientnet-lite"])
def test_remote_code_loads_in_a_process_without_the_package(tmp_path, segmenter_name):
    model = tiny_model(segmenter_name).eval()
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    for name in ("modeling_maskmatch.py", "configuration_maskmatch.py", "modeling_efficientnet_lite.py"):
        assert (checkpoint / name).exists(), name
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.save(
            {"pixel_values": pixel_values, "logits": model(pixel_values=pixel_values).logits}, tmp_path / "x.pt"
        )
    result = run_without_maskmatch(REMOTE_CODE_SCRIPT, str(checkpoint), str(tmp_path / "x.pt"), cwd=tmp_path)
    assert "remote code OK" in result.stdout
