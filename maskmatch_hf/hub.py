"""Publishing a training output dir to the Hub."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi

# Training states and the intermediate best-model copy stay local: the root holds the released model.
IGNORE_PATTERNS = ["step_*", "step_*/**", "best_model/**", "runs/**", "*.tmp"]


def push_output_dir(output_dir: str | Path, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Upload weights, config, image processor, remote code, card and plot in one commit; returns its URL."""
    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True, private=private)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(output_dir),
        ignore_patterns=IGNORE_PATTERNS,
        commit_message="Upload MaskMatch model",
    )
    return commit.commit_url
