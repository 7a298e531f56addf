"""What a push would upload, checked offline: the staged folder and the single commit that sends it."""

from pathlib import Path

import pytest

import maskmatch_hf.hub as hub
from maskmatch_hf.errors import MaskMatchUsageError
from maskmatch_hf.train import main as train_main

from .conftest import make_camvid_like, train_argv

RELEASE = {
    "README.md",
    "all_results.json",
    "training_history.json",
    "config.json",
    "configuration_efficientnet_lite.py",
    "configuration_maskmatch.py",
    "model.safetensors",
    "modeling_efficientnet_lite.py",
    "modeling_maskmatch.py",
    "pipeline_maskmatch.py",
    "preprocessor_config.json",
    "training_curves.png",
}


class RecordingHfApi:
    """Stands in for `HfApi`: records calls and what the uploaded folder held at upload time."""

    calls: list[tuple[str, dict]] = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, repo_id, folder_path, commit_message):
        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        self.calls.append(("upload_folder", {"repo_id": repo_id, "files": files, "message": commit_message}))
        return type("CommitInfo", (), {"commit_url": f"https://hub.invalid/{repo_id}/commit/1"})()


@pytest.fixture
def recording_api(monkeypatch):
    RecordingHfApi.calls = []
    monkeypatch.setattr(hub, "HfApi", RecordingHfApi)
    return RecordingHfApi


def test_staged_release_is_exactly_the_released_files(trained_checkpoint, tmp_path):
    names = hub.stage_release(trained_checkpoint, tmp_path / "staged")
    assert set(names) == RELEASE == {p.name for p in (tmp_path / "staged").iterdir()}
    for name in names:
        assert (tmp_path / "staged" / name).read_bytes() == (trained_checkpoint / name).read_bytes(), name
    assert list(trained_checkpoint.glob("best_model"))  # present locally, never uploaded


def test_push_is_one_commit_that_keeps_our_model_card(trained_checkpoint, recording_api):
    url = hub.push_output_dir(trained_checkpoint, "someone/camvid-maskmatch", token="hf_x", private=True)
    assert url.endswith("/commit/1")
    kinds = [kind for kind, _ in recording_api.calls]
    assert kinds == ["create_repo", "upload_folder"]
    assert recording_api.calls[0][1] == {"repo_id": "someone/camvid-maskmatch", "exist_ok": True, "private": True}
    uploaded = recording_api.calls[1][1]["files"]
    assert set(uploaded) == RELEASE
    card = uploaded["README.md"].decode()
    assert card == (trained_checkpoint / "README.md").read_text()
    assert "pipeline_tag: image-segmentation" in card and "MaskMatch" in card


def test_unfinished_output_dir_is_refused(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(MaskMatchUsageError, match="model.safetensors"):
        hub.stage_release(tmp_path, tmp_path / "staged")
    assert hub.main(["--output_dir", str(tmp_path), "--dry_run"]) == 1
    assert capsys.readouterr().err.startswith(f"error: {tmp_path} is not a finished training output")


def test_push_command_dry_run_lists_files(trained_checkpoint, capsys, recording_api):
    hub.main(["--output_dir", str(trained_checkpoint), "--dry_run"])
    assert set(capsys.readouterr().out.split()) == RELEASE
    assert recording_api.calls == []


def test_training_with_push_to_hub_uploads_the_result(tmp_path, recording_api):
    data = make_camvid_like(tmp_path / "mini_camvid")
    output_dir = tmp_path / "out"
    argv = train_argv(data, output_dir, "--max_train_steps", "1", "--push_to_hub", "--hub_model_id", "me/run")
    train_main(argv)
    ((kind, call),) = [c for c in recording_api.calls if c[0] == "upload_folder"]
    assert call["repo_id"] == "me/run" and set(call["files"]) == RELEASE
