"""The `maskmatch-segmentation` pipeline and the inference helpers it shares with `maskmatch-predict`.

Test-time augmentation (multi-scale, flip) and sliding windows (from `modeling_maskmatch`), label maps at the
original image size, palettes and overlays, for MaskMatch and stock SegFormer / UperNet segmenters alike.
[`save_pipeline`] saves this file and the model code it imports with a checkpoint, so
`pipeline(model=checkpoint, trust_remote_code=True)` works where `maskmatch_hf` is not installed: it imports only
torch, numpy, PIL, transformers and its siblings."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from transformers import AutoModelForSemanticSegmentation, BaseImageProcessor, Pipeline, PreTrainedModel
from transformers.image_utils import load_image
from transformers.pipelines import PIPELINE_REGISTRY

from .modeling_maskmatch import multiscale_probabilities, resize_maps, sliding_window_probabilities

TASK = "maskmatch-segmentation"

# CamVid's 11 classes in their usual colours (SegNet release), keyed by the class names training gives them.
CAMVID_COLORS = {
    "sky": (128, 128, 128),
    "building": (128, 0, 0),
    "pole": (192, 192, 128),
    "road": (128, 64, 128),
    "pavement": (60, 40, 222),
    "tree": (128, 128, 0),
    "sign_symbol": (192, 128, 128),
    "fence": (64, 64, 128),
    "car": (64, 0, 128),
    "pedestrian": (64, 64, 0),
    "bicyclist": (0, 128, 192),
}


def label_map_at_size(probabilities: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Arg-max `(height, width)` int64 label map of `(num_labels, h, w)` probabilities resized to `size`."""
    return resize_maps(probabilities[None], size)[0].argmax(dim=0).cpu().numpy()


def _spread_bits(index: int) -> tuple[int, int, int]:
    """A colour unique to `index` (< 2**24): its bits dealt round-robin to R, G, B, most significant bit first."""
    rgb = [0, 0, 0]
    for bit in range(8):
        for channel in range(3):
            rgb[channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
    return rgb[0], rgb[1], rgb[2]


def label_palette(num_labels: int, id2label: Mapping[int, str] | None = None) -> np.ndarray:
    """Deterministic, distinct RGB colours `(num_labels, 3)` uint8, one per class.

    CamVid's own colours when `id2label` names exactly CamVid's classes; otherwise colours whose bits spread
    neighbouring ids far apart (none black, so every class shows in an overlay).
    """
    names = [id2label[i] for i in range(num_labels)] if id2label else []
    if sorted(names) == sorted(CAMVID_COLORS):
        return np.array([CAMVID_COLORS[name] for name in names], dtype=np.uint8)
    return np.array([_spread_bits(i + 1) for i in range(num_labels)], dtype=np.uint8)


def colorize(label_map: np.ndarray, palette: np.ndarray) -> Image.Image:
    """RGB image of a `(height, width)` label map; ids outside the palette (e.g. the 255 void label) are black."""
    label_map = np.asarray(label_map)
    colors = np.zeros(label_map.shape + (3,), dtype=np.uint8)
    known = (label_map >= 0) & (label_map < len(palette))
    colors[known] = palette[label_map[known]]
    return Image.fromarray(colors)


def overlay(image: Image.Image, label_map: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The colourised label map blended over `image` (weight `alpha` on the colours)."""
    mask = colorize(label_map, palette)
    if mask.size != image.size:
        raise ValueError(
            f"The label map is {mask.size[0]}x{mask.size[1]} but the image is {image.width}x{image.height}."
        )
    return Image.blend(image.convert("RGB"), mask, alpha)


def legend(id2label: Mapping[int, str], palette: np.ndarray, row_height: int = 20) -> Image.Image:
    """A white image listing each class as a colour swatch followed by its name."""
    width = 2 * row_height + 8 * max((len(name) for name in id2label.values()), default=0)
    image = Image.new("RGB", (width, row_height * len(id2label)), "white")
    draw = ImageDraw.Draw(image)
    for row, (label_id, name) in enumerate(sorted(id2label.items())):
        top = row * row_height
        draw.rectangle(
            [2, top + 2, row_height - 2, top + row_height - 2], fill=tuple(int(c) for c in palette[label_id])
        )
        draw.text((row_height + 4, top + row_height // 4), name, fill="black")
    return image


class MaskMatchSegmentationPipeline(Pipeline):
    """Semantic segmentation with optional multi-scale / flip test-time augmentation.

    Returns, per image, `{"semantic_map": (height, width) int64 array at the image's size, "overlay": PIL image of
    the prediction blended over the image, "labels": {id: name} of the classes present}`. Call parameters: `scales`
    (input scales to average, default `(1.0,)`), `flip` (also average horizontally flipped views), `window_size` /
    `window_stride` (sliding-window inference at each scale, see [`sliding_window_probabilities`]), `alpha`
    (overlay opacity, default 0.5), `timeout` (for image URLs). `batch_size > 1` needs images whose processed sizes
    match (an image processor that resizes).
    """

    _load_processor = False
    _load_image_processor = True
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.palette = label_palette(self.model.config.num_labels, self.model.config.id2label)

    def _sanitize_parameters(
        self,
        scales: Sequence[float] | None = None,
        flip: bool | None = None,
        window_size: int | Sequence[int] | None = None,
        window_stride: int | Sequence[int] | None = None,
        alpha: float | None = None,
        timeout: float | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        preprocess_kwargs = {} if timeout is None else {"timeout": timeout}
        forward_kwargs = {} if scales is None else {"scales": tuple(scales)}
        given = {"flip": flip, "window_size": window_size, "window_stride": window_stride}
        forward_kwargs.update({name: value for name, value in given.items() if value is not None})
        postprocess_kwargs = {} if alpha is None else {"alpha": alpha}
        return preprocess_kwargs, forward_kwargs, postprocess_kwargs

    def preprocess(self, image: Any, timeout: float | None = None) -> dict[str, Any]:
        image = load_image(image, timeout=timeout)
        inputs = self.image_processor(images=image, return_tensors="pt")
        return {"pixel_values": inputs["pixel_values"].to(self.dtype), "image": image}

    def _forward(
        self,
        model_inputs: dict[str, Any],
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        window_size: int | Sequence[int] | None = None,
        window_stride: int | Sequence[int] | None = None,
    ) -> dict[str, Any]:
        images = model_inputs["image"]
        batched = isinstance(images, list)  # `batch_size > 1` collates the images into a list
        probabilities = multiscale_probabilities(
            self.model, model_inputs["pixel_values"], scales, flip, window_size, window_stride
        )
        maps = [
            label_map_at_size(p, (im.height, im.width))
            for p, im in zip(probabilities, images if batched else [images])
        ]
        # Each image's map carries a leading axis of 1, as the batch loader adds one when it splits a batch.
        return {"semantic_map": maps if batched else maps[0][None], "image": images}

    def postprocess(self, model_outputs: dict[str, Any], alpha: float = 0.5) -> dict[str, Any]:
        semantic_map = model_outputs["semantic_map"][0]
        id2label = self.model.config.id2label
        return {
            "semantic_map": semantic_map,
            "overlay": overlay(model_outputs["image"], semantic_map, self.palette, alpha),
            "labels": {int(i): id2label[int(i)] for i in np.unique(semantic_map)},
        }


PIPELINE_REGISTRY.register_pipeline(
    TASK, pipeline_class=MaskMatchSegmentationPipeline, pt_model=AutoModelForSemanticSegmentation, type="image"
)


def save_pipeline(model: PreTrainedModel, image_processor: BaseImageProcessor, output_dir: str | os.PathLike) -> None:
    """Save `model`, `image_processor` and this pipeline's code to `output_dir`.

    Records the `maskmatch-segmentation` task under `custom_pipelines` in `config.json` and copies this file next
    to the weights, so `pipeline(model=output_dir, trust_remote_code=True)` builds a [`MaskMatchSegmentationPipeline`]
    without `maskmatch_hf`. Writes what `model.save_pretrained` and `image_processor.save_pretrained` write (a
    MaskMatch model's remote code included), and nothing else: an existing model card is left alone.
    """
    pipe = MaskMatchSegmentationPipeline(model=model, image_processor=image_processor, device=model.device)
    pipe.save_pretrained(output_dir)


__all__ = [
    "CAMVID_COLORS",
    "TASK",
    "MaskMatchSegmentationPipeline",
    "colorize",
    "label_map_at_size",
    "label_palette",
    "legend",
    "multiscale_probabilities",
    "overlay",
    "save_pipeline",
    "sliding_window_probabilities",
]
