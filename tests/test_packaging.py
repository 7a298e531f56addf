"""The built wheel: the model card template from the top-level `model_cards/` and the console scripts."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = "maskmatch_hf/model_cards/maskmatch_model_card.md"


def test_the_wheel_carries_the_card_template_and_the_installed_package_finds_it(tmp_path):
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(tmp_path),
        str(REPO),
    ]
    built = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = tmp_path.glob("maskmatch_hf-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read(TEMPLATE) == (REPO / "model_cards" / "maskmatch_model_card.md").read_bytes()
        assert not [name for name in archive.namelist() if "examples" in name]  # rendered examples stay in the repo
        entry_points = archive.read(f"{wheel.name.split('-py3')[0]}.dist-info/entry_points.txt").decode()
        archive.extractall(tmp_path / "site")
    assert "maskmatch-evaluate = maskmatch_hf.evaluation:main" in entry_points

    # Installed (here: unpacked onto the path, away from any source checkout), the package reads its own copy.
    script = "from maskmatch_hf.reporting import TEMPLATE; print(TEMPLATE)"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    found = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()) == tmp_path / "site" / TEMPLATE
