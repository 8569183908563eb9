"""A content digest of a model's weights, recorded with a run's adversarial examples.

Why a digest of its own, beside the engine's 16-hex ``model_fingerprint``: ``robustact verify``
must tell whether the model it reloads is *the* model a run evaluated, from the weights alone,
whatever wraps them. The fingerprint also hashes the class name and the defenses' description
(so a refactor of either changes it), and is cut to 16 hex digits; this one is the full sha256
of the state dict and nothing else, so it depends only on what the model computes with.

The recipe (stable: changing it would make every recorded digest unverifiable): for each
state-dict entry in sorted name order, its name, its dtype, its shape and the bytes of the
tensor as a contiguous CPU array, each field length-prefixed so that no two different state
dicts can feed the hash the same byte stream.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

__all__ = ["model_digest"]


def _field(h: Any, data: bytes) -> None:
    """Feed ``data`` prefixed with its length (8 bytes, little-endian): unambiguous fields."""
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def model_digest(model: nn.Module) -> str:
    """The sha256 (64 hex digits) of ``model``'s state dict: names, dtypes, shapes, bytes.

    Independent of the device the model is on and of the order its modules registered their
    tensors; a single changed weight bit, a renamed or reshaped tensor changes it.
    """
    state = model.state_dict()
    h = hashlib.sha256(b"robustact-model-digest-1")
    for name in sorted(state):
        t = state[name].detach()
        _field(h, name.encode())
        _field(h, str(t.dtype).encode())
        _field(h, repr(tuple(t.shape)).encode())
        flat = t.to("cpu").contiguous().reshape(-1)
        _field(h, flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return h.hexdigest()
