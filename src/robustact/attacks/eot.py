"""Expectation over transformation (EOT): attacking and judging a randomized model.

A model that adds noise to its input or keeps dropout on answers differently at each call. One
draw per gradient makes every attack a noisy search (the model looks robust, Athalye et al.
2018), and one draw per judgment makes an attack's success a coin toss. So, for such a model:

- the attacks see :class:`EOT`: the average of the logits over ``draws`` forwards; its gradient
  is the average of the draws' gradients (autograd through the mean);
- success and clean correctness are judged by :class:`MajorityVote` over ``draws`` fresh
  forwards (THE rule): a point counts as correct at an input only if the single-draw prediction
  is right, and untied, in a strict majority of the draws; otherwise it is wrong there (the vote
  model returns an all-tied row, which the one tie rule counts as not correct). A point is
  robust only if it is correct clean and at every attack's adversarial example.

Reproducibility: every call draws from a forked RNG (:func:`robustact.models.outputs.rng_fork`)
seeded by a hash of (seed, stream, call number), so a seeded run gives the same table and the
global RNG state is never changed. Unlike a deterministic model's rows, the draws depend on the
calls' order and batches (the model's own noise is drawn per batch).
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from robustact.core.validate import check_model_output, check_positive_int, top_ties
from robustact.models.outputs import rng_fork

__all__ = ["EOT", "MajorityVote", "DEFAULT_EOT_DRAWS", "EOT_RULE", "eot_draws"]

#: Draws per forward when randomness is detected and ``eot`` is left automatic.
DEFAULT_EOT_DRAWS = 10
#: The judging rule, as the table metadata and the reports state it.
EOT_RULE = ("attacks see the mean logits over the draws; a point counts as correct (clean or "
            "at an adversarial example) only if its prediction is right in a strict majority "
            "of as many fresh draws")


def eot_draws(eot: int | None, randomized: bool) -> int:
    """The number of draws to use: ``eot`` None → DEFAULT_EOT_DRAWS when ``randomized``, else
    0; 0 → none (the model as it is); N → N for a randomized model, 0 for a deterministic one
    (averaging identical answers changes nothing, and deterministic models pay nothing)."""
    if eot is None:
        return DEFAULT_EOT_DRAWS if randomized else 0
    n = check_positive_int(eot, "eot (--eot: draws per forward, 0 disables)", allow_zero=True)
    return n if randomized else 0


def _call_seed(seed: int, stream: str, call: int) -> int:
    h = hashlib.sha256(f"{seed}/{stream}/{call}".encode()).digest()
    return int.from_bytes(h[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


class _Draws(nn.Module):
    """Shared by EOT and MajorityVote: the model, the draw count, the seeded call counter."""

    def __init__(self, model: nn.Module, draws: int, seed: int = 0, stream: str = "") -> None:
        super().__init__()
        self.model = model
        self.draws = check_positive_int(draws, "draws")
        self.seed = int(seed)
        self.stream = str(stream)
        self.calls = 0

    def _next_seed(self) -> int:
        self.calls += 1
        return _call_seed(self.seed, self.stream, self.calls - 1)


class EOT(_Draws):
    """The mean of ``model``'s logits over ``draws`` forwards (gradients averaged likewise)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with rng_fork(x.device, self._next_seed()):
            total = check_model_output(self.model(x))
            for _ in range(self.draws - 1):
                total = total + check_model_output(self.model(x))
        return total / self.draws


class MajorityVote(_Draws):
    """Per row, the vote counts of ``draws`` fresh predictions when one class has a strict
    majority, else an all-zero (tied, hence not correct) row. A tied draw casts no vote.

    The counts are never probability-like rows (a row sums to one only when it is one-hot), so
    every consumer of logits (the tie rule, ``predict``, ``verify``) reads them as they are.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with rng_fork(x.device, self._next_seed()), torch.no_grad():
            counts: torch.Tensor | None = None
            for _ in range(self.draws):
                z = check_model_output(self.model(x)).detach()
                vote = torch.zeros_like(z, dtype=torch.float32)
                vote[torch.arange(z.shape[0], device=z.device), z.argmax(1)] = 1.0
                vote[top_ties(z)] = 0.0
                counts = vote if counts is None else counts + vote
        assert counts is not None
        majority = counts.amax(1, keepdim=True) * 2 > self.draws
        return torch.where(majority, counts, torch.zeros_like(counts))
