"""User errors: the exception for bad input, the checks shared by the commands, and how commands report them.

A `MaskMatchUsageError` is a problem with what the user passed (a flag, a file, the data), found before work
is lost: the console scripts print its message alone (`error: ...`) and exit with code 1. Any other exception is
a bug and keeps its traceback. Flags renamed since a release keep working through [`rename_deprecated_flags`],
with a `FutureWarning` naming the new flag.
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id


class MaskMatchUsageError(ValueError):
    """Bad input from the user; the message names the flag or file and says what to do."""


def report_usage_errors(main: Callable[[Sequence[str] | None], int | None]) -> Callable[[Sequence[str] | None], int]:
    """Wraps a console script's `main(argv)`: a `MaskMatchUsageError` prints `error: <message>` and returns 1."""

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        try:
            return main(argv) or 0
        except MaskMatchUsageError as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            return 1

    return wrapper


def check_local_or_hub(name_or_path: str, flag: str) -> None:
    """Fails when `name_or_path` is neither an existing local path nor shaped like a Hub repo id.

    A value that cannot be a repo id (absolute, `./`, `~`, more than one `/`) is a local path, so the error says
    that path does not exist instead of the Hub client's "Repo id must be in the form ...".
    """
    if Path(name_or_path).expanduser().exists():
        return
    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        raise MaskMatchUsageError(f"{flag} {name_or_path}: the local path does not exist.") from None


def warn_deprecated(old: str, new: str, where: str = "") -> None:
    """A `FutureWarning` that `old` (a flag, or a config file key, `where` naming the file) is now `new`."""
    warnings.warn(
        f"{old}{where} is deprecated and will be removed in a future release; use {new} instead.",
        FutureWarning,
        stacklevel=3,
    )


def rename_deprecated_flags(argv: Sequence[str], renames: Mapping[str, str]) -> list[str]:
    """`argv` with every deprecated flag of `renames` (`{"--old": "--new"}`; `--old value` or `--old=value`) given
    its new name, each with a [`warn_deprecated`] warning: a command calls it on its argv before parsing, so that
    scripts written for an older release keep working. Arguments after `--` are kept as they are."""
    renamed = list(argv)
    for index, argument in enumerate(renamed):
        if argument == "--":
            break
        flag, equals, value = argument.partition("=")
        if flag in renames:
            warn_deprecated(flag, renames[flag])
            renamed[index] = f"{renames[flag]}{equals}{value}"
    return renamed
