"""The label-only door through which decision-based attacks (RayS, HopSkipJump) see a model.

Why a separate object: a decision-based attack is only as label-only as the code that queries
the model. :class:`LabelOracle` is the one function these attacks call the model through; it
returns one bool per row ("is this point adversarial?", from the argmax of the output) and
nothing else, so no saturation, temperature or gradient trick of the model can change what the
attack sees: two models with the same predicted labels give the attack identical answers.
It also counts every row it is asked about against the sample it belongs to, so the reported
queries are exact by construction.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from robustact.attacks.base import LogitsView

__all__ = ["LabelOracle"]


class LabelOracle:
    """``oracle(points, rows) -> adversarial (M,) bool``; counts one query per row in ``queries``.

    Args:
        view: the attack's :class:`~robustact.attacks.base.LogitsView`; only its logits' argmax
            is used.
        decide: ``(logits, labels, targets) -> bool (M,)``, the attack's ``is_adversarial``.
        y, target: labels (and targets) of the whole batch, indexed by ``rows`` on each call.
        queries: (N,) int64 counter, incremented in place (a sample's row may repeat in one
            call: HopSkipJump's gradient estimate asks many points around the same sample).
    """

    def __init__(self, view: LogitsView,
                 decide: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None],
                                  torch.Tensor],
                 y: torch.Tensor, target: torch.Tensor | None, queries: torch.Tensor) -> None:
        self._view = view
        self._decide = decide
        self._y = y
        self._target = target
        self.queries = queries

    def __call__(self, points: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Is each of ``points`` (M, ...) adversarial for its sample ``rows`` (M,)?"""
        target = None if self._target is None else self._target[rows]
        # inference mode: a label query never needs autograd; the bool result is cloned out of
        # inference mode so callers may use it freely (indexing, in-place updates).
        with torch.inference_mode():
            _, z = self._view(points)
            adv = self._decide(z, self._y[rows], target)
        self.queries.index_add_(0, rows, torch.ones_like(rows))
        return adv.clone()
