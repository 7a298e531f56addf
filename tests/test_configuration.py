import json

import pytest
from transformers import AutoConfig, SegformerConfig, UperNetConfig

from maskmatch_hf import PRESETS, MaskMatchConfig

from .conftest import tiny_upernet_config


def test_defaults_follow_the_design():
    config = MaskMatchConfig()
    assert config.preset == "maskmatch"
    assert config.mask_ratio == 0.7 and config.mask_patch_size == 16
    # Single-scale teacher by default: the 3-scale ensemble costs 3.3x for no better pseudo-labels (issue 10).
    assert config.ensemble_scales == [1.0] and config.ensemble_flip is False
    assert config.confidence_threshold == 0.95 and config.ignore_index == 255
    # The guard against pseudo-label drift: measured on CamVid 1/8, two seeds (README Results).
    assert config.confident_share_cap == 1.0
    # A masked view of every unlabeled image, the method as described: half the batch ended 1.4 val mIoU lower
    # at 6400 steps (issue 9).
    assert config.mask_batch_fraction == 1.0
    assert config.logit_adjusted_unlabeled_loss is False
    assert config.teacher == "shared" and config.ema_momentum == 0.999
    assert config.cutmix_prob == 0.5 and config.color_jitter_prob == 0.8
    assert config.grayscale_prob == 0.2 and config.blur_prob == 0.5
    assert isinstance(config.segmenter_config, SegformerConfig)


@pytest.mark.parametrize(
    ("upernet", "batch", "fraction", "expected"),
    [(False, 4, 0.5, 2), (False, 4, 0.25, 1), (False, 5, 0.5, 3), (True, 4, 0.25, 2), (True, 2, 0.5, 2),
     (True, 1, 0.5, 1), (True, 8, 0.5, 4)],
)  # fmt: skip
def test_masked_view_takes_a_fraction_of_the_batch_and_enough_images_for_batchnorm(upernet, batch, fraction, expected):
    config = MaskMatchConfig(segmenter_config=tiny_upernet_config() if upernet else None, mask_batch_fraction=fraction)
    assert config.minimum_pass_batch_size == (2 if upernet else 1)
    assert config.num_masked_images(batch) == expected


def test_json_round_trip_is_exact(tmp_path):
    config = MaskMatchConfig(
        segmenter_config=tiny_upernet_config(),
        id2label={0: "road", 1: "sky", 2: "car"},
        preset="unimatch+maskmatch",
        ensemble_scales=[0.5, 1, 1.5],
        teacher="ema",
    )
    config.save_pretrained(tmp_path)
    loaded = MaskMatchConfig.from_pretrained(tmp_path)
    assert loaded.to_json_string() == config.to_json_string()
    assert isinstance(loaded.segmenter_config, UperNetConfig)
    assert loaded.segmenter_config.backbone_config.hidden_sizes == [8, 16, 24, 32]
    assert json.loads(config.to_json_string())["ensemble_scales"] == [0.5, 1.0, 1.5]
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MaskMatchConfig)


def test_labels_are_shared_with_the_segmenter():
    from_segmenter = MaskMatchConfig(segmenter_config=SegformerConfig(num_labels=7))
    assert from_segmenter.num_labels == 7
    explicit = MaskMatchConfig(segmenter_config=SegformerConfig(num_labels=7), id2label={0: "a", 1: "b"})
    assert explicit.num_labels == 2 and explicit.segmenter_config.id2label == {0: "a", 1: "b"}
    assert explicit.label2id == {"a": 0, "b": 1}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("mask_ratio", 1.0),
        ("mask_ratio", -0.1),
        ("mask_patch_size", 0),
        ("mask_batch_fraction", 0.0),
        ("mask_batch_fraction", 1.5),
        ("ensemble_scales", [1.0, -0.5]),
        ("ensemble_scales", []),
        ("preset", "mean-teacher"),
        ("teacher", "student"),
        ("confidence_threshold", 1.5),
        ("cutmix_prob", 2.0),
        ("lambda_mask", -1.0),
        ("logit_adjustment", -0.5),
        ("logit_adjustment", float("nan")),
        ("distribution_alignment", -1.0),
        ("logit_adjusted_loss", -0.1),
        ("distribution_alignment_momentum", 1.0),
    ],
)
def test_invalid_values_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        MaskMatchConfig(**{field: value})


def test_presets_switch_components():
    assert not PRESETS["supervised"].unlabeled
    fixmatch, unimatch, maskmatch = PRESETS["fixmatch"], PRESETS["unimatch"], PRESETS["maskmatch"]
    assert (fixmatch.strong_views, fixmatch.masked_modeling, fixmatch.multiscale_teacher) == (1, False, False)
    assert (unimatch.strong_views, unimatch.feature_perturbation, unimatch.masked_modeling) == (2, True, False)
    assert (maskmatch.masked_modeling, maskmatch.multiscale_teacher, maskmatch.feature_perturbation) == (
        True,
        True,
        False,
    )
    both = PRESETS["unimatch+maskmatch"]
    assert (both.strong_views, both.feature_perturbation, both.masked_modeling, both.multiscale_teacher) == (
        2,
        True,
        True,
        True,
    )
    assert MaskMatchConfig(preset="fixmatch", ensemble_flip=True).teacher_scales == [1.0]
    assert not MaskMatchConfig(preset="fixmatch", ensemble_flip=True).teacher_flip
    assert MaskMatchConfig(preset="maskmatch").teacher_scales == [1.0]
    assert MaskMatchConfig(preset="maskmatch", ensemble_scales=[0.75, 1, 1.25]).teacher_scales == [0.75, 1.0, 1.25]
    assert MaskMatchConfig(preset="fixmatch", ensemble_scales=[0.75, 1, 1.25]).teacher_scales == [1.0]
