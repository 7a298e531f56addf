"""The Gradio demo (examples/demo): served from a trained checkpoint without `maskmatch_hf`, called through
`gradio_client`, and rendered by headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import yaml
from gradio_client import Client, handle_file
from PIL import Image

from .conftest import WITHOUT_MASKMATCH, free_port

DEMO_DIR = Path(__file__).resolve().parents[1] / "examples" / "demo"
CAMVID_CLASSES = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian", "bicyclist"
)  # fmt: skip
# Runs app.py as a Space would: `import maskmatch_hf` fails, the model code comes from the checkpoint.
LAUNCH_WITHOUT_PACKAGE = WITHOUT_MASKMATCH + "import runpy\nrunpy.run_path(sys.argv[1], run_name='__main__')\n"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-proxy-server",
    "--force-color-profile=srgb", "--hide-scrollbars", "--window-size=1280,900", "--virtual-time-budget=15000",
]  # fmt: skip


def wait_until_up(url: str, app: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    """Poll `url` until it answers 200; fail with the app's output if it exits or the time runs out."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if app.poll() is not None:
            pytest.fail(f"The demo exited with code {app.returncode} before answering:\n{log.read_text()}")
        try:
            with opener.open(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"The demo did not answer at {url} within {timeout:.0f} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def demo_url(trained_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the demo app serving `trained_checkpoint` on a free local port (killed on teardown)."""
    workdir = tmp_path_factory.mktemp("demo")
    port = free_port()
    env = {
        **os.environ,
        "MASKMATCH_CHECKPOINT": str(trained_checkpoint),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(workdir / "gradio_tmp"),
        "HF_HUB_OFFLINE": "1",
    }
    log = workdir / "app.log"
    with log.open("w") as log_file:
        app = subprocess.Popen(
            [sys.executable, "-c", LAUNCH_WITHOUT_PACKAGE, str(DEMO_DIR / "app.py")],
            cwd=workdir,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_up(url, app, log)
        yield url
    finally:
        app.terminate()
        try:
            app.wait(timeout=10)
        except subprocess.TimeoutExpired:
            app.kill()
            app.wait()


def street_image(path: Path, width: int = 120, height: int = 80) -> Path:
    """A synthetic street scene: sky, building, road with lane marks, a red car."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[: height // 3] = np.linspace(150, 230, height // 3, dtype=np.uint8)[:, None, None] * [0.6, 0.8, 1.0]
    image[height // 3 : 2 * height // 3] = (150, 70, 50)
    image[height // 3 : 2 * height // 3, width // 2 :] = (200, 200, 190)
    image[2 * height // 3 :] = (90, 90, 95)
    image[-8:-6, ::12] = 255
    image[height // 2 : height - 10, 20:55] = (200, 20, 30)
    Image.fromarray(image).save(path)
    return path


def test_space_metadata() -> None:
    front_matter = (DEMO_DIR / "README.md").read_text().split("---")[1]
    meta = yaml.safe_load(front_matter)
    assert meta["sdk"] == "gradio" and (DEMO_DIR / meta["app_file"]).is_file()
    assert meta["sdk_version"].split(".")[0] == version("gradio").split(".")[0]
    requirements = (DEMO_DIR / "requirements.txt").read_text()
    for package in ("torch", "transformers", "gradio", "pillow", "numpy"):
        assert package in requirements


def test_prediction_through_client(demo_url: str, tmp_path: Path) -> None:
    image_path = street_image(tmp_path / "street.png")
    client = Client(demo_url, download_files=str(tmp_path / "downloads"), verbose=False, analytics_enabled=False)
    for tta in (False, True):
        overlay_path, legend = client.predict(handle_file(str(image_path)), tta, api_name="/segment")
        overlay = np.asarray(Image.open(overlay_path).convert("RGB"))
        assert overlay.shape[:2] == (80, 120), f"tta={tta}: overlay of shape {overlay.shape}"
        assert len(np.unique(overlay.reshape(-1, 3), axis=0)) > 4, f"tta={tta}: overlay is (nearly) uniform"
        assert any(f"<b>{name}</b>" in legend for name in CAMVID_CLASSES) and "%" in legend, legend


def test_page_renders_in_chromium(demo_url: str, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).is_file():
        pytest.fail("Chromium is needed for the demo screenshot: `apt-get install -y chromium` (Debian).")
    screenshot = tmp_path / "demo.png"
    command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={screenshot}"]
    result = subprocess.run([*command, demo_url], capture_output=True, text=True, timeout=120)
    assert screenshot.is_file(), f"no screenshot (exit {result.returncode}):\n{result.stderr[-3000:]}"

    pixels = np.asarray(Image.open(screenshot).convert("RGB")).astype(int)
    assert pixels.shape == (900, 1280, 3)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200, "the page looks blank"
    # The legend's colour chips (CamVid's road and car colours) are drawn: the app itself rendered.
    for colour in ((128, 64, 128), (64, 0, 128)):
        assert (np.abs(pixels - colour).max(axis=-1) <= 2).sum() > 100, f"no legend chip of colour {colour}"
