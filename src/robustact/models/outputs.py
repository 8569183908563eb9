"""What a model outputs and whether it answers the same twice, so any model can be attacked.

Attacks, the audit and the tie rule expect *logits*. Foreign models often end in a softmax, or
add noise to their input (a randomized defense), or keep dropout on. Refusing them sent users
away; evaluating them as they are would mislead (softmax outputs make cross-entropy and margin
losses nearly flat, so attacks fail and the model looks robust). This module turns each kind
into something the attacks can use, and says which kind it found:

- :func:`output_kind`: ``"probabilities"`` (non-negative rows summing to one, at least one of
  them not saturated: the same evidence :func:`robustact.core.validate.check_logits` refuses),
  ``"log-probabilities"`` (rows ≤ 0 whose exp sums to one; already valid logits) or
  ``"logits"``. Anything unusable (NaN, wrong shape) is one ``ValueError`` line.
- :class:`LogOf`: a probability model attacked through ``log p`` (argmax, hence every accuracy,
  unchanged); :func:`logit_model` wraps a model after a probe and returns the note the
  reports print.
- :func:`is_randomized`: two forwards of a probe batch differ (run under a forked RNG, so the
  check leaves the global RNG state as it was); :mod:`robustact.attacks.eot` then evaluates the
  model with expectation over transformation.
- :func:`pin_train_mode`: submodules that stay in train mode after ``.eval()`` (an overridden
  ``train``, MC dropout) keep behaving as in train mode but report eval mode, so the attacks'
  eval-mode guard lets them through; their buffers (batch-norm running statistics) are restored
  after every call, so evaluating never changes the model.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from robustact.core.validate import check_logits, check_model_output, match_model_dtype

__all__ = ["LogOf", "PROBABILITY_NOTE", "LOG_PROBABILITY_NOTE", "is_randomized", "logit_model",
           "output_kind", "pin_train_mode", "rng_devices", "rng_fork"]

#: What the reports say about a model whose outputs were probabilities / log-probabilities.
PROBABILITY_NOTE = "probabilities: attacked through their logarithm"
LOG_PROBABILITY_NOTE = "log-probabilities: attacked as logits (they are valid logits)"

_SUM_ATOL = 1e-4  # check_logits' tolerance for "rows sum to one"


def output_kind(z: Any, n: int | None = None, name: str = "model output", *,
                one_hot_counts: bool = False) -> str:
    """``"probabilities"``, ``"log-probabilities"`` or ``"logits"`` for outputs ``z`` (N, K).

    Why "not saturated" is part of the probability evidence by default: a bounded output
    activation (sigmoid(T·z) at high T, one of robustact's own defenses) gives nearly one-hot
    rows that also sum to one; those are attacked as they are, as before. ``one_hot_counts``
    (for a model with no such defense): rows that are all one-hot count as probabilities too,
    since a softmax at a high temperature gives exactly those on clean inputs and unsaturated
    rows near the decision boundary, where an attack would otherwise meet them mid-run.
    """
    z = check_model_output(z, name)
    if z.ndim == 2 and z.shape[0] >= 2 and z.shape[1] >= 2 and bool(torch.isfinite(z).all()):
        zd = z.detach().double()
        ones = torch.ones_like(zd[:, 0])
        if (bool((zd >= 0).all()) and bool((zd <= 1).all())
                and torch.allclose(zd.sum(1), ones, atol=_SUM_ATOL)
                and (one_hot_counts or bool((zd.amax(1) < 1 - _SUM_ATOL).any()))):
            if n is not None and z.shape[0] != n:
                raise ValueError(f"{name} has {z.shape[0]} rows but there are {n} inputs")
            return "probabilities"
        if bool((zd <= 0).all()) and torch.allclose(zd.exp().sum(1), ones, atol=_SUM_ATOL):
            check_logits(z, n, name=name)
            return "log-probabilities"
    check_logits(z, n, name=name)  # NaN, wrong shape, one class: one line naming it
    return "logits"


class LogOf(nn.Module):
    """``log(model(x))`` for a model that returns probabilities (clamped at the dtype's tiny).

    Why the logarithm: it is the logits up to a per-row constant, which softmax, cross-entropy,
    margin and DLR losses ignore, so every attack sees what it would see on the logits; ``log``
    is increasing, so the predictions and the tie rule are unchanged.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = check_model_output(self.model(x))
        return torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))


def rng_devices(device: torch.device) -> list[int]:
    """The CUDA devices whose RNG a forward on ``device`` may draw from (none on the CPU)."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


@contextmanager
def rng_fork(device: torch.device, seed: int | None = None) -> Iterator[None]:
    """Run a block on a forked RNG (CPU and ``device``), optionally seeded; restored after.

    Why not ``torch.manual_seed``: it also queues a seed for CUDA devices not yet initialized,
    which would change the global state of a later CUDA session; only the generators this
    block can use are seeded.
    """
    devices = rng_devices(device)
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.default_generator.manual_seed(seed)
            for d in devices:
                torch.cuda.default_generators[d].manual_seed(seed)
        yield


def _probe_device(model: nn.Module, probe: torch.Tensor) -> torch.device:
    return next((p.device for p in model.parameters()), probe.device)


def is_randomized(model: nn.Module, probe: torch.Tensor, *, rtol: float = 1e-4,
                  atol: float = 1e-5) -> bool:
    """True when two forwards of ``probe`` differ beyond float noise (noise, dropout on).

    Runs on a forked RNG, so detecting randomness draws nothing from the caller's RNG stream.
    """
    xb = match_model_dtype(model, probe.to(_probe_device(model, probe)))
    with rng_fork(xb.device), torch.no_grad():
        z1 = check_model_output(model(xb)).detach()
        z2 = check_model_output(model(xb)).detach()
    return z1.shape != z2.shape or not torch.allclose(z1, z2, rtol=rtol, atol=atol)


def logit_model(model: nn.Module, probe: torch.Tensor, name: str = "the model's outputs", *,
                one_hot_counts: bool = False) -> tuple[nn.Module, str | None]:
    """(model returning logits, note for the report or None) after one forward of ``probe``.

    A :class:`LogOf` model (already wrapped by the model-file loader) keeps its note; a model
    returning probabilities is wrapped in :class:`LogOf`; log-probabilities are used as they are
    (and said); logits: the model itself and None, so logit models pay one probe forward only.
    ``one_hot_counts``: see :func:`output_kind`.
    """
    if isinstance(model, LogOf):
        return model, PROBABILITY_NOTE
    xb = match_model_dtype(model, probe.to(_probe_device(model, probe)))
    with rng_fork(xb.device), torch.no_grad():
        z = model(xb)
    kind = output_kind(z, xb.shape[0], name=name, one_hot_counts=one_hot_counts)
    if kind == "probabilities":
        return LogOf(model).eval(), PROBABILITY_NOTE
    return model, LOG_PROBABILITY_NOTE if kind == "log-probabilities" else None


def _pinned_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The module's own forward, run in train mode, its buffers restored afterwards."""
    saved = {k: b.clone() for k, b in self._buffers.items() if b is not None}
    self.training = True
    try:
        return type(self).forward(self, *args, **kwargs)
    finally:
        self.training = False
        with torch.no_grad():
            for k, b in saved.items():
                self._buffers[k].copy_(b)  # type: ignore[union-attr]


def _pinned_train(self: nn.Module, mode: bool = True) -> nn.Module:
    return self  # its mode is pinned: forward runs in train mode, the flag stays False


def pin_train_mode(model: nn.Module) -> list[str]:
    """Pin the submodules still in train mode after ``model.eval()``; returns their names.

    Each keeps computing as in train mode (its dropout draws, its batch statistics) while its
    ``training`` flag reads False and ``train()``/``eval()`` leave it so. Bound methods (not
    closures), so a deep copy of the model pins its own modules.
    """
    stuck = [(n or type(model).__name__, m) for n, m in model.named_modules() if m.training]
    for _, m in stuck:
        m.training = False
        m.forward = types.MethodType(_pinned_forward, m)  # type: ignore[method-assign]
        m.train = types.MethodType(_pinned_train, m)  # type: ignore[method-assign]
    return [n for n, _ in stuck]
