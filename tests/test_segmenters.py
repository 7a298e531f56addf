"""The model a training run starts from: fresh configs, the ImageNet backbone, and existing checkpoints."""

import pytest
import torch
from transformers import SegformerConfig, UperNetConfig

from maskmatch_hf import MaskMatchForSemanticSegmentation
from maskmatch_hf.configuration_efficientnet_lite import EfficientNetLiteConfig
from maskmatch_hf.convert_efficientnet_lite import load_efficientnet_lite0_imagenet
from maskmatch_hf.segmenters import load_model_for_training, new_segmenter_config

from .conftest import tiny_model

LABELS = {0: "road", 1: "sky", 2: "car"}


def test_fresh_segmenter_configs():
    segformer = new_segmenter_config("segformer", "b1")
    assert isinstance(segformer, SegformerConfig) and segformer.hidden_sizes == [64, 128, 320, 512]
    upernet = new_segmenter_config("upernet", backbone="efficientnet-lite0", hidden_size=64)
    assert isinstance(upernet, UperNetConfig) and isinstance(upernet.backbone_config, EfficientNetLiteConfig)
    assert upernet.hidden_size == 64 and not upernet.use_auxiliary_head
    with pytest.raises(ValueError, match="segmenter_variant"):
        new_segmenter_config("segformer", "b9")
    with pytest.raises(ValueError, match="backbone"):
        new_segmenter_config("upernet", backbone="vgg")


def test_pretrained_backbone_loads_the_imagenet_weights():
    model = load_model_for_training(
        None, LABELS, {"preset": "fixmatch"}, segmenter="upernet", upernet_hidden_size=16, pretrained_backbone=True
    )
    reference = load_efficientnet_lite0_imagenet().state_dict()
    backbone = model.segmenter.backbone.state_dict()
    assert reference.keys() == backbone.keys()
    assert all(torch.equal(reference[key], backbone[key]) for key in reference)
    assert model.config.preset == "fixmatch" and model.config.id2label == LABELS
    with pytest.raises(ValueError, match="pretrained_backbone"):
        load_model_for_training(None, LABELS, {}, segmenter="segformer", pretrained_backbone=True)


def test_starting_from_checkpoints(tmp_path):
    source = tiny_model("upernet", preset="fixmatch")
    source.save_pretrained(tmp_path / "maskmatch")
    source.save_segmenter_pretrained(tmp_path / "stock")
    resumed = load_model_for_training(str(tmp_path / "maskmatch"), LABELS, {"preset": "maskmatch"})
    wrapped = load_model_for_training(str(tmp_path / "stock"), LABELS, {})
    for model in (resumed, wrapped):
        assert isinstance(model, MaskMatchForSemanticSegmentation) and model.config.num_labels == 3
        assert model.segmenter.decode_head.classifier.out_channels == 3  # re-initialised for the new labels
        backbone = model.segmenter.backbone.state_dict()
        original = source.segmenter.backbone.state_dict()
        assert all(torch.equal(backbone[key], original[key]) for key in original)
    assert resumed.config.preset == "maskmatch" and wrapped.config.preset == "maskmatch"
