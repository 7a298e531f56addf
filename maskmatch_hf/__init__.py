"""MaskMatch semi-supervised semantic segmentation for the Hugging Face ecosystem."""

from .configuration_maskmatch import PRESETS, MaskMatchConfig
from .modeling_maskmatch import MaskMatchForSemanticSegmentation
from .objective import MaskMatchObjective, MaskMatchObjectiveOutput
from .pipeline_maskmatch import MaskMatchSegmentationPipeline

# `save_pretrained` then writes an `auto_map` and copies the model code next to the weights, so checkpoints
# load with `trust_remote_code=True` where this package is not installed.
MaskMatchConfig.register_for_auto_class()
MaskMatchForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "MaskMatchConfig",
    "MaskMatchForSemanticSegmentation",
    "MaskMatchObjective",
    "MaskMatchObjectiveOutput",
    "MaskMatchSegmentationPipeline",
]
