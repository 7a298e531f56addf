"""Tiny segmenter configs shared by the tests (CPU, a few thousand parameters, no downloads)."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from datasets import Dataset
from PIL import Image
from transformers import ResNetConfig, SegformerConfig, UperNetConfig

from maskmatch_hf import MaskMatchConfig, MaskMatchForSemanticSegmentation
from maskmatch_hf.configuration_efficientnet_lite import EfficientNetLiteConfig
from maskmatch_hf.data import DataConfig, load_segmentation_data, read_id_list

from .data_helpers import CAMVID, make_paired

# Tiny models gain nothing from a second thread, and OpenMP threads that spin while another process holds the
# other core make steps 100x slower; subprocesses inherit the setting through the environment.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)
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


def tiny_efficientnet_upernet_config(num_labels: int = NUM_LABELS) -> UperNetConfig:
    backbone = EfficientNetLiteConfig(
        stem_channels=8,
        out_channels=[8, 8, 16, 16, 24, 24, 32],
        num_block_repeats=[1] * 7,
        expand_ratios=[1, 2, 2, 2, 2, 2, 2],
        hidden_dim=32,
    )
    return UperNetConfig(backbone_config=backbone, hidden_size=16, use_auxiliary_head=False, num_labels=num_labels)


SEGMENTERS = {"segformer": tiny_segformer_config, "upernet": tiny_upernet_config}
ALL_SEGMENTERS = {**SEGMENTERS, "upernet-efficientnet-lite": tiny_efficientnet_upernet_config}


def tiny_model(segmenter: str = "segformer", seed: int = 0, **config_kwargs) -> MaskMatchForSemanticSegmentation:
    torch.manual_seed(seed)
    # Unit tests craft the teacher's pseudo-labels, which the default confident share cap would trim: off here,
    # on in the tests of the cap and in every test that trains through the command line.
    config_kwargs.setdefault("confident_share_cap", 0.0)
    config = MaskMatchConfig(segmenter_config=ALL_SEGMENTERS[segmenter](), mask_patch_size=8, **config_kwargs)
    return MaskMatchForSemanticSegmentation(config)


def assert_label_maps_match(got: np.ndarray, want: np.ndarray) -> None:
    """Label maps predicted by two model instances. Their CPU kernels may differ (e.g. with AVX-512) by float32
    rounding, which can flip the arg-max of a near-tie: allow that on at most 0.1% of the pixels."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    mismatched = int((got != want).sum())
    assert mismatched <= want.size // 1000, f"{mismatched} of {want.size} pixels differ"


# Prelude of scripts run where `import maskmatch_hf` must fail, as on a machine or Space that only has a checkpoint.
WITHOUT_MASKMATCH = "import sys\nsys.modules['maskmatch_hf'] = None\n"


def run_without_maskmatch(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `script` in a fresh offline Python where `maskmatch_hf` cannot be imported; fail with its output."""
    path = cwd / "without_maskmatch.py"
    path.write_text(WITHOUT_MASKMATCH + textwrap.dedent(script))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(cwd / "modules")}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, str(path), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def run_on_two_processes(program: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run `program` (a script or `-m module`, then its arguments) as 2 CPU processes under torchrun.

    Fails the test when torchrun does not exit with 0, with the processes' stderr minus progress bars and
    warnings. `PYTHONFAULTHANDLER` makes a rank that dies on a signal (an abort in C++) print where it was.
    """
    # --standalone: torchrun binds a free port itself (no race between picking a port and binding it).
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *program]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        noise = ("it/s]", "%|", "Warning", "warnings.warn")
        lines = [line for line in result.stderr.splitlines() if line.strip() and not any(n in line for n in noise)]
        pytest.fail(f"torchrun exited with {result.returncode}:\n" + "\n".join(lines)[-8000:])
    return result


def documented_commands(program: str, *modules: object) -> list[list[str]]:
    """The arguments of every `program` command in the README's bash blocks and in the modules' docstrings."""
    texts = [(Path(__file__).resolve().parents[1] / "README.md").read_text(), *(m.__doc__ or "" for m in modules)]
    commands = []
    for text in texts:
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if program in words and "..." not in words:
                    commands.append(words[words.index(program) + 1 :])
    return commands


# Inference flags of `maskmatch-predict` and `maskmatch-evaluate` renamed in 0.2: (old, new).
RENAMED_INFERENCE_FLAGS = [
    ("--model", "--model_name_or_path"),
    ("--scales", "--ensemble_scales"),
    ("--flip", "--ensemble_flip"),
]


def assert_inference_flags_renamed(caught: list, parse_args: Callable[[list[str]], object], capsys) -> None:
    """The FutureWarnings `caught` name each old inference flag and its new name, in order, and `--help` of
    `parse_args` lists the new names only."""
    pattern = r"(--\w+) is deprecated.*; use (--\w+) instead\.$"
    assert [re.match(pattern, str(w.message)).groups() for w in caught] == RENAMED_INFERENCE_FLAGS
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    flags = set(re.findall(r"--\w+", capsys.readouterr().out))
    old, new = (set(names) for names in zip(*RENAMED_INFERENCE_FLAGS))
    assert new <= flags and not old & flags


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each in-process training run builds its own `Accelerator` (e.g. with another mixed precision)."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(params=sorted(SEGMENTERS))
def segmenter(request) -> str:
    return request.param


# Training-command fixtures: a CamVid-like folder of synthetic frames and a tiny checkpoint trained on it.

PALETTE = np.array(
    [[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
     [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192], [0, 0, 0]],
    dtype=np.uint8,
)  # fmt: skip
TINY_SEGFORMER = json.dumps(
    {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "num_attention_heads": [1, 1, 1, 1],
     "sr_ratios": [2, 2, 1, 1], "decoder_hidden_size": 16}
)  # fmt: skip


def make_camvid_like(root: Path, num_train: int = 10, num_val: int = 3, height: int = 48, width: int = 64) -> Path:
    """SegNet-layout folders named like CamVid (11 classes, void 11) of block images coloured by class."""
    rng = np.random.default_rng(0)
    for split, count in (("train", num_train), ("val", num_val)):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(count):
            coarse = rng.integers(0, 12, size=(height // 16, width // 16))
            labels = np.kron(coarse, np.ones((16, 16), dtype=np.int64)).astype(np.uint8)
            Image.fromarray(PALETTE[labels]).save(root / split / f"f{i:03d}.png")
            Image.fromarray(labels).save(root / f"{split}annot" / f"f{i:03d}.png")
    (root / "labeled.txt").write_text("\n".join(f"f{i:03d}" for i in range(4)) + "\n")
    return root


@pytest.fixture
def camvid_like(tmp_path: Path) -> Path:
    return make_camvid_like(tmp_path / "mini_camvid")


def train_argv(data: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--dataset_name", str(data),
        "--labeled_ids", str(data / "labeled.txt"),
        "--segmenter", "segformer",
        "--segmenter_config", TINY_SEGFORMER,
        "--crop_size", "32",
        "--per_device_train_batch_size", "2",
        "--mask_patch_size", "8",
        "--confidence_threshold", "0.0",
        "--learning_rate", "1e-3",
        "--output_dir", str(output_dir),
        "--seed", "3",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory) -> Path:
    """A MaskMatch checkpoint produced by the training command (tiny SegFormer, 11 CamVid classes, 2 steps)."""
    from maskmatch_hf.train import main

    root = tmp_path_factory.mktemp("trained")
    data = make_camvid_like(root / "mini_camvid")
    output_dir = root / "checkpoint"
    main(train_argv(data, output_dir, "--max_train_steps", "2", "--eval_steps", "2"))
    return output_dir


@pytest.fixture
def mini_camvid(tmp_path: Path) -> Path:
    """A few CamVid frames in the SegNet layout, linked (not copied) into a folder named like CamVid's."""
    root = tmp_path / "camvid_mini"
    stems = {"train": read_id_list(CAMVID / "splits/1_8/labeled.txt")[:4], "val": ["0016E5_07959"]}
    for split, split_stems in stems.items():
        for folder in (split, f"{split}annot"):
            (root / folder).mkdir(parents=True)
            for stem in split_stems:
                (root / folder / f"{stem}.png").symlink_to(CAMVID / folder / f"{stem}.png")
    return root


# Sources


@pytest.fixture
def train_set(tmp_path: Path) -> Dataset:
    return load_segmentation_data(DataConfig(dataset_name=str(make_paired(tmp_path / "data")))).labeled
