"""Where datasets live on disk, and the one error raised when they are not there.

Why one resolution rule: the library, the CLI (``--data-root``) and the benchmarks must agree on
where MNIST is, or a user downloads it three times. The rule is: explicit argument, else the
``ROBUSTACT_DATA`` environment variable, else ``~/.cache/robustact/data``. Under the root the
standard (torchvision-compatible) layouts are used, so an existing torchvision download works:
``MNIST/raw/``, ``cifar-10-batches-py/``, ``cifar-100-python/``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "ENV_VAR",
    "DEFAULT_ROOT",
    "DatasetNotFoundError",
    "DataFormatError",
    "resolve_data_root",
    "describe_data_root",
    "check_split",
]

#: Environment variable naming the data root.
ENV_VAR = "ROBUSTACT_DATA"
#: Data root used when neither an argument nor the environment variable gives one.
DEFAULT_ROOT = "~/.cache/robustact/data"

SPLITS = ("train", "test")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing and were not (or could not be) downloaded."""


class DataFormatError(ValueError):
    """A dataset file is there but unreadable: truncated, corrupted or not the expected format.

    Why one class: the decoders underneath fail in a dozen ways (``EOFError`` from a cut-off
    gzip stream, ``BadGzipFile``, ``UnpicklingError``, ...), none naming the file. Loaders turn
    each into this error, whose message starts with the file's path.
    """


def resolve_data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``root`` if given, else ``$ROBUSTACT_DATA``, else ``~/.cache/robustact/data``.

    The result is absolute with ``~`` expanded, so error messages show the real place. Nothing is
    created here; loaders create directories only when they download.
    """
    return _resolve(root)[0]


def describe_data_root(root: str | os.PathLike[str] | None = None) -> str:
    """Where :func:`resolve_data_root` got the root from, for error messages."""
    return _resolve(root)[1]


def _resolve(root: str | os.PathLike[str] | None) -> tuple[Path, str]:
    if root is not None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"data root must be a path or string, got {type(root).__name__}")
        if str(root) == "":
            raise ValueError("data root must not be an empty string")
        return Path(root).expanduser().absolute(), "given as an argument"
    env = os.environ.get(ENV_VAR, "")
    if env:
        return Path(env).expanduser().absolute(), f"from the {ENV_VAR} environment variable"
    return Path(DEFAULT_ROOT).expanduser().absolute(), (
        f"the default, since no root was given and {ENV_VAR} is not set"
    )


def check_split(split: str) -> str:
    """Datasets have a ``"train"`` and a ``"test"`` split; anything else is a typo."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def not_found_error(
    dataset: str,
    split: str,
    root: Path,
    directory: Path,
    expected: Sequence[str],
    missing: Sequence[str],
    urls: Sequence[str],
    root_source: str,
    download_failure: str | None = None,
) -> DatasetNotFoundError:
    """Build the single, actionable error for missing dataset files.

    Why so verbose: the usual causes are a wrong root, a missing download flag, or no network;
    the message names the exact directory and files, the two ways to point elsewhere, and the
    URL so the files can be fetched by hand on an offline machine.
    """
    lines = [
        f"{dataset} ({split} split) not found: missing {', '.join(missing)} in {directory}",
        f"  expected files in {directory}: {', '.join(expected)}",
        f"  the data root {root} was {root_source}",
    ]
    if download_failure is not None:
        lines.append(f"  download failed: {download_failure}")
    else:
        lines.append(f"  fix: rerun with --download (Python: download=True) to fetch them into "
                     f"{root}")
    lines.append(f"  or fetch them by hand from {' or '.join(urls)} and place them there")
    lines.append(
        f"  or point to a data root that has them with the {ENV_VAR} environment variable or the "
        "--data-root option"
    )
    return DatasetNotFoundError("\n".join(lines))

