"""Gradio demo of a MaskMatch segmentation checkpoint, shaped as a Hugging Face Space.

The checkpoint (a local folder or a Hub id) comes from `MASKMATCH_CHECKPOINT`. It carries its own model code,
so this app needs only torch, transformers, gradio, pillow and numpy, not `maskmatch_hf`.

    MASKMATCH_CHECKPOINT=outputs/camvid-maskmatch python examples/demo/app.py
"""

from __future__ import annotations

import colorsys
import html
import os

import gradio as gr
import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

DEFAULT_CHECKPOINT = "maskmatch-hf/segformer-camvid-maskmatch"  # placeholder: set MASKMATCH_CHECKPOINT
MAX_SIDE = int(os.environ.get("MASKMATCH_MAX_SIDE", "1024"))  # larger uploads are segmented downscaled
TTA_SCALES = (0.75, 1.0, 1.25)
OVERLAY_ALPHA = 0.5
# The usual CamVid colours; any other class gets a hue of its own.
CAMVID_COLOURS = {
    "sky": (128, 128, 128), "building": (128, 0, 0), "pole": (192, 192, 128), "road": (128, 64, 128),
    "pavement": (60, 40, 222), "tree": (128, 128, 0), "sign_symbol": (192, 128, 128), "fence": (64, 64, 128),
    "car": (64, 0, 128), "pedestrian": (64, 64, 0), "bicyclist": (0, 128, 192),
}  # fmt: skip


def class_colour(index: int, name: str) -> tuple[int, int, int]:
    """The CamVid colour of `name`, else a distinct hue picked by the class index."""
    if name.lower() in CAMVID_COLOURS:
        return CAMVID_COLOURS[name.lower()]
    red, green, blue = colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.65, 0.95)
    return round(red * 255), round(green * 255), round(blue * 255)


def legend_html(names: list[str], palette: np.ndarray, labels: np.ndarray | None = None) -> str:
    """Colour chips of all classes, or of those present in `labels` with their share, largest first."""
    if labels is None:
        chips = [(index, "") for index in range(len(names))]
    else:
        counts = np.bincount(labels.ravel(), minlength=len(names))
        shares = 100 * counts / labels.size
        chips = [(index, f" {shares[index]:.1f}%") for index in np.argsort(-counts) if counts[index]]
    spans = []
    for index, share in chips:
        red, green, blue = palette[index]
        spans.append(
            '<span style="display:inline-flex;align-items:center;gap:6px;margin:3px 14px 3px 0">'
            '<span style="width:16px;height:16px;border-radius:3px;border:1px solid #0004;'
            f'background:rgb({red},{green},{blue})"></span><b>{html.escape(names[index])}</b>{share}</span>'
        )
    return f'<div style="line-height:1.8">{"".join(spans)}</div>'


def build_demo(checkpoint: str | None = None) -> gr.Blocks:
    """Load the checkpoint and lay out the demo: image in, overlay + legend out, a TTA checkbox."""
    checkpoint = checkpoint or os.environ.get("MASKMATCH_CHECKPOINT", DEFAULT_CHECKPOINT)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    processor = AutoImageProcessor.from_pretrained(checkpoint)
    model = AutoModelForSemanticSegmentation.from_pretrained(checkpoint, trust_remote_code=True).to(device).eval()
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    palette = np.array([class_colour(i, name) for i, name in enumerate(names)], dtype=np.uint8)

    @torch.inference_mode()
    def segment(image: Image.Image, tta: bool) -> tuple[np.ndarray, str]:
        """Overlay of the predicted classes on `image`, and its legend."""
        if image is None:
            raise gr.Error("Upload an image first.")
        small = image.copy()
        small.thumbnail((MAX_SIDE, MAX_SIDE))
        pixel_values = processor(images=small, return_tensors="pt")["pixel_values"].to(device)
        scales, flip = (TTA_SCALES, True) if tta else ((1.0,), False)
        labels = model.ensemble_probabilities(pixel_values, scales=scales, flip=flip)[0].argmax(0)
        labels = Image.fromarray(labels.cpu().numpy().astype(np.int32)).resize(image.size, Image.NEAREST)
        labels = np.asarray(labels)
        overlay = (1 - OVERLAY_ALPHA) * np.asarray(image, dtype=np.float32) + OVERLAY_ALPHA * palette[labels]
        return overlay.round().astype(np.uint8), legend_html(names, palette, labels)

    with gr.Blocks(title="MaskMatch segmentation") as demo:
        gr.Markdown(
            f"# MaskMatch semantic segmentation\nCheckpoint: `{checkpoint}` ({len(names)} classes). Upload an "
            "image; *TTA* averages predictions over scales 0.75 / 1 / 1.25 and horizontal flips (6x slower)."
        )
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", image_mode="RGB", label="Image", sources=["upload", "clipboard"])
                tta = gr.Checkbox(label="Test-time augmentation (multi-scale + flip)", value=False)
                button = gr.Button("Segment", variant="primary")
            with gr.Column():
                overlay = gr.Image(label="Segmentation overlay", format="png", interactive=False)
                legend = gr.HTML(legend_html(names, palette), label="Legend")
        button.click(segment, inputs=[image, tta], outputs=[overlay, legend], api_name="segment")
    return demo


if __name__ == "__main__":
    build_demo().launch()  # GRADIO_SERVER_NAME / GRADIO_SERVER_PORT set host and port
