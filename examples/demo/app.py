"""Gradio demo of a MaskMatch segmentation checkpoint, shaped as a Hugging Face Space.

The checkpoint (a local folder or a Hub id) comes from `MASKMATCH_CHECKPOINT`. It carries its own model and
pipeline code (overlay, colours, multi-scale TTA), so this app needs only torch, transformers, gradio, pillow
and numpy, not `maskmatch_hf`.

    MASKMATCH_CHECKPOINT=outputs/camvid-maskmatch python examples/demo/app.py
"""

from __future__ import annotations

import html
import os

import gradio as gr
import numpy as np
import torch
from PIL import Image
from transformers import pipeline

DEFAULT_CHECKPOINT = "maskmatch-hf/segformer-camvid-maskmatch"  # placeholder: set MASKMATCH_CHECKPOINT
MAX_SIDE = int(os.environ.get("MASKMATCH_MAX_SIDE", "1024"))  # larger uploads are segmented downscaled
TTA_SCALES = (0.75, 1.0, 1.25)


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
    """Load the checkpoint's own `maskmatch-segmentation` pipeline and lay out the demo: image in, overlay +
    legend out, a TTA checkbox."""
    checkpoint = checkpoint or os.environ.get("MASKMATCH_CHECKPOINT", DEFAULT_CHECKPOINT)
    device = 0 if torch.cuda.is_available() else -1
    segmenter = pipeline(model=checkpoint, trust_remote_code=True, device=device)
    id2label = segmenter.model.config.id2label
    names = [id2label[i] for i in range(len(id2label))]

    def segment(image: Image.Image, tta: bool) -> tuple[Image.Image, str]:
        """Overlay of the predicted classes on `image`, and its legend."""
        if image is None:
            raise gr.Error("Upload an image first.")
        small = image.copy()
        small.thumbnail((MAX_SIDE, MAX_SIDE))
        scales, flip = (TTA_SCALES, True) if tta else ((1.0,), False)
        result = segmenter(small, scales=scales, flip=flip)
        overlay = result["overlay"].resize(image.size, Image.BILINEAR)
        return overlay, legend_html(names, segmenter.palette, result["semantic_map"])

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
                legend = gr.HTML(legend_html(names, segmenter.palette), label="Legend")
        button.click(segment, inputs=[image, tta], outputs=[overlay, legend], api_name="segment")
    return demo


if __name__ == "__main__":
    build_demo().launch()  # GRADIO_SERVER_NAME / GRADIO_SERVER_PORT set host and port
