"""Publish a training output dir to the Hub: the released files only, in one commit, with our model card.

`PreTrainedModel.push_to_hub` would write transformers' default card over ours and upload files one kind at
a time, so the release is staged in a folder and sent with a single `upload_folder` commit.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import HfApi

from .errors import MaskMatchUsageError, report_usage_errors

# What a release holds: weights, configs, remote code (model, config, pipeline), card, plot and results.
RELEASE_PATTERNS = ("*.safetensors", "*.json", "*.py", "README.md", "training_curves.png")
REQUIRED_FILES = ("config.json", "model.safetensors", "README.md")


def stage_release(output_dir: str | Path, staging_dir: str | Path) -> list[str]:
    """Copy the files of `output_dir` that make up the release into `staging_dir`; returns their names.

    Training states (`step_*`), the intermediate `best_model` copy and tracker logs live in subfolders and are
    left out. Raises `MaskMatchUsageError` naming what is missing when `output_dir` is not a finished run.
    """
    output_dir, staging_dir = Path(output_dir), Path(staging_dir)
    missing = [name for name in REQUIRED_FILES if not (output_dir / name).is_file()]
    if missing:
        raise MaskMatchUsageError(f"{output_dir} is not a finished training output: missing {', '.join(missing)}.")
    names = sorted({path.name for pattern in RELEASE_PATTERNS for path in output_dir.glob(pattern) if path.is_file()})
    staging_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy2(output_dir / name, staging_dir / name)
    return names


def push_output_dir(
    output_dir: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload MaskMatch model",
) -> str:
    """Create `repo_id` if needed and upload the staged release in one commit; returns the commit URL."""
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as staging:
        stage_release(output_dir, staging)
        api.create_repo(repo_id, exist_ok=True, private=private)
        commit = api.upload_folder(repo_id=repo_id, folder_path=staging, commit_message=commit_message)
    return commit.commit_url


@report_usage_errors
def main(argv: Sequence[str] | None = None) -> None:
    """`maskmatch-push`: upload a finished training output dir (or list what would be uploaded)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--output_dir", required=True, help="Output dir of a finished `maskmatch-train` run.")
    parser.add_argument("--hub_model_id", help="Target repo, e.g. user/camvid-maskmatch (required unless --dry_run).")
    parser.add_argument("--hub_token", help="Token; default: the logged-in one.")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry_run", action="store_true", help="Only list the files that would be uploaded.")
    args = parser.parse_args(argv)
    if args.dry_run:
        with tempfile.TemporaryDirectory() as staging:
            print("\n".join(stage_release(args.output_dir, staging)))
        return
    if not args.hub_model_id:
        parser.error("--hub_model_id is required to push")
    print(push_output_dir(args.output_dir, args.hub_model_id, token=args.hub_token, private=args.private))


if __name__ == "__main__":
    raise SystemExit(main())
