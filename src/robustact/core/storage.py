"""Atomic, safe writes: results and checkpoints survive a crash mid-write.

Why: a run killed while writing must leave either the old file or the new one, never half of one.
We write to a temporary file in the same directory, fsync it, then ``os.replace`` it into place.
Weights go through safetensors (never pickle) so loading a file cannot execute code.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from robustact import __version__

__all__ = ["atomic_write_bytes", "atomic_write_json", "read_json", "save_tensors", "load_tensors",
           "environment_info"]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; results and checkpoints are for sharing
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    return obj


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    text = json.dumps(_jsonable(obj), indent=2, sort_keys=False, allow_nan=True)
    return atomic_write_bytes(path, (text + "\n").encode())


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_tensors(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, str] | None = None) -> Path:
    """Write tensors to a safetensors file atomically (contiguous CPU copies)."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return atomic_write_bytes(path, save(flat, metadata=dict(metadata or {})))


def load_tensors(path: str | os.PathLike[str], device: str | torch.device = "cpu"
                 ) -> dict[str, torch.Tensor]:
    return load_file(str(path), device=str(device))


def environment_info() -> dict[str, Any]:
    """Versions and device, recorded in every results file so numbers can be traced."""
    return {
        "robustact": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
    }
