"""What the one-checkpoint probes share (``gap_probe.py``, ``apgd_t_margin.py``,
``strength_check.py``, ``aa_components.py``): the command line, loading the checkpoint and its
first ``--n`` test images on the CPU, and printing the JSON record (and writing it with
``--out``, atomically)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch
from torch import nn

from robustact.core.storage import atomic_write_json
from robustact.runs.sources import ModelSource, load_target


def parser(doc: str) -> argparse.ArgumentParser:
    """CHECKPOINT EPS [--n] [--data-root] [--threads] [--out], described by ``doc``'s first line."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("eps", type=float)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--data-root", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="also write the JSON here")
    return p


def load(a: argparse.Namespace) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The checkpoint's model in eval mode and its first ``a.n`` test images, on the CPU."""
    torch.set_num_threads(a.threads)
    t = load_target(ModelSource(checkpoint=a.checkpoint), n=a.n, data_root=a.data_root,
                    device="cpu")
    return t.model.eval(), t.data.x(), t.data.y()


def command() -> str:
    return " ".join(["python", *sys.argv])


def emit(record: dict[str, Any], out: str | None) -> None:
    """Print the record; with ``out``, also write it there."""
    print(json.dumps(record, indent=1))
    if out:
        atomic_write_json(out, record)
