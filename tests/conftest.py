"""Tiny segmenter configs shared by the tests (CPU, a few thousand parameters, no downloads)."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import ResNetConfig, SegformerConfig, UperNetConfig

from maskmatch_hf import MaskMatchConfig, MaskMatchForSemanticSegmentation

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

NUM_LABELS = 4


def tiny_segformer_config(num_labels: int = NUM_LABELS) -> SegformerConfig:
    return SegformerConfig(
        num_labels=num_labels,
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 1, 1],
        sr_ratios=[2, 2, 1, 1],
        decoder_hidden_size=16,
    )


def tiny_upernet_config(num_labels: int = NUM_LABELS) -> UperNetConfig:
    backbone = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1],
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    return UperNetConfig(backbone_config=backbone, hidden_size=16, use_auxiliary_head=False, num_labels=num_labels)


SEGMENTERS = {"segformer": tiny_segformer_config, "upernet": tiny_upernet_config}


def tiny_model(segmenter: str = "segformer", seed: int = 0, **config_kwargs) -> MaskMatchForSemanticSegmentation:
    torch.manual_seed(seed)
    config = MaskMatchConfig(segmenter_config=SEGMENTERS[segmenter](), mask_patch_size=8, **config_kwargs)
    return MaskMatchForSemanticSegmentation(config)


@pytest.fixture(params=sorted(SEGMENTERS))
def segmenter(request) -> str:
    return request.param
