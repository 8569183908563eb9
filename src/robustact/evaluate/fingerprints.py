"""What identifies an evaluation: its model, its data and the whole fingerprint of a run folder.

Why a module of its own: the engine writes these into a run folder, and a resumed run, a merge
of shards (:mod:`robustact.evaluate.shards`) and ``robustact verify`` compare them; one
definition keeps those comparisons from drifting apart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from robustact.defenses.registry import describe_defenses
from robustact.evaluate.protocols import protocol_fingerprint

__all__ = ["data_fingerprint", "evaluation_fingerprint", "model_fingerprint"]


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 (16 hex) of the model's class, defenses and every parameter and buffer."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    h.update(repr(describe_defenses(model)).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if t.numel() else b"")
    return h.hexdigest()[:16]


def data_fingerprint(x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor) -> str:
    """SHA-256 (16 hex) of the evaluated images, labels and sample ids (dtype, shape, bytes):
    what a resumed run and ``robustact verify`` check the reloaded data against."""
    h = hashlib.sha256()
    for t in (x, y, ids):
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def evaluation_fingerprint(meta: Mapping[str, Any], entries: list[dict[str, Any]], draws: int,
                           keep_adversarial: bool) -> dict[str, Any]:
    """What a resumed run folder must match: protocol and entries, model, data, norm, grid,
    seed, EOT draws (randomized models only: deterministic fingerprints stay as they were) and
    whether adversarial examples are kept."""
    return {"protocol": meta["protocol"], "entries": protocol_fingerprint(entries),
            "model": meta["model"]["fingerprint"], "data": meta["data_fingerprint"],
            "norm": meta["norm"], "eps_grid": meta["eps_grid"], "seed": meta["seed"],
            **({"eot": draws} if draws else {}), "adversarial": keep_adversarial,
            # always present (None: the undefended twin), so dropping a surrogate is a change;
            # a folder written before the field reads as None
            "surrogate": meta.get("surrogate")}
