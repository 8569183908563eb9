"""Certified robustness: lower bounds on robust accuracy, the other half of the sandwich.

An attack shows a point is *not* robust (an upper bound on robust accuracy); a certificate shows
one *is* (a lower bound). ``certify(model, x, y, eps=0.1)`` gives, per sample, the certified
lower bound of its smallest margin under IBP and CROWN-IBP (:mod:`.bounds`), over the model's
bound graph (:mod:`.graph`: which layers are supported and how each is bounded). A certified
sample that an attack breaks is a bug in one of the two, which the evaluation refuses to report
(:func:`check_sandwich`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from robustact.certify.bounds import (
    Interval,
    crown_margins,
    ibp_bounds,
    input_box,
    margin_spec,
)
from robustact.certify.graph import Step, UnsupportedModel, bound_graph, shared_weight_abs
from robustact.core.validate import check_eval_mode, check_images, check_labels

__all__ = ["METHODS", "Certificate", "UnsupportedModel", "bound_graph", "certify",
           "margin_bounds"]

METHODS = ("ibp", "crown-ibp")


@dataclass
class Certificate:
    """Per sample: the lower bound of the smallest margin under IBP and under CROWN-IBP (None
    when not computed); certified where it is > 0."""

    ibp: torch.Tensor
    crown_ibp: torch.Tensor | None

    @property
    def certified_ibp(self) -> torch.Tensor:
        return self.ibp > 0

    @property
    def certified(self) -> torch.Tensor:
        """Certified by the tightest bound computed."""
        best = self.ibp if self.crown_ibp is None else torch.maximum(self.ibp, self.crown_ibp)
        return best > 0


#: Without grad, samples are bounded this many at a time (IBP alone: ``IBP_BLOCK``): the
#: bounds of a sample are its own, and a block's tensors (and a float64 convolution's im2col
#: buffer) stay small enough to be reused memory, where a whole batch's are fresh pages on
#: every call whose faults cost the CPU as much as the arithmetic (at batch 100: CROWN-IBP
#: 1.2-1.3x faster, float64 IBP 2x). IBP's tensors are K − 1 times smaller than CROWN-IBP's,
#: so its blocks are larger: fewer passes through the graph's Python.
BLOCK = 12
IBP_BLOCK = 25


def margin_bounds(steps: list[Step], x: torch.Tensor, y: torch.Tensor, eps: float, norm: str,
                  num_classes: int, crown: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(IBP, CROWN-IBP or None) lower bounds of every margin, shape (B, K − 1); differentiable
    in the model's parameters (what certified training minimizes through); without grad,
    in blocks of samples (:data:`BLOCK`)."""
    box = input_box(x, eps)
    spec = margin_spec(y, num_classes, x.dtype)
    n, block = x.shape[0], BLOCK if crown else IBP_BLOCK
    if torch.is_grad_enabled() or n <= block:
        return _block_bounds(steps, x, box, spec, eps, norm, crown)
    with shared_weight_abs():
        parts = [_block_bounds(steps, x[i:i + block], (box[0][i:i + block],
                                                       box[1][i:i + block]),
                               spec[i:i + block], eps, norm, crown)
                 for i in range(0, n, block)]
    ibp = torch.cat([p[0] for p in parts])
    return ibp, (torch.cat([p[1] for p in parts]) if crown else None)  # type: ignore[misc]


def _block_bounds(steps: list[Step], x: torch.Tensor, box: Interval, spec: torch.Tensor,
                  eps: float, norm: str, crown: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`margin_bounds` of one block of samples, its input box and margin specification
    given."""
    bounds = ibp_bounds(steps, box, keep=crown)
    ibp = crown_margins(steps, bounds, spec, x, eps, norm, relax=False)
    if not crown:
        return ibp, None
    return ibp, torch.maximum(crown_margins(steps, bounds, spec, x, eps, norm), ibp)


def _check_norm(norm: str, eps: float) -> None:
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")


@torch.no_grad()
def certify(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
            norm: str = "linf", method: str = "crown-ibp", batch_size: int = 128,
            dtype: torch.dtype = torch.float64) -> Certificate:
    """Certified lower bounds of each sample's smallest margin over its ε-ball ∩ [0, 1].

    ``method``: "ibp", or "crown-ibp" (both are computed; CROWN-IBP is never looser). The
    bounds run on a ``dtype`` copy of the model (float64 by default, so rounding never decides
    a certificate). A layer the bounds cannot cross raises :class:`UnsupportedModel` naming it.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    _check_norm(norm, eps)
    check_eval_mode(model, "certifying it")
    check_images(x)
    check_labels(y, x.shape[0])
    dev = next((p.device for p in model.parameters()), x.device)
    exact = copy.deepcopy(model).to(dtype)
    steps = bound_graph(exact)
    k = int(exact(x[:1].to(dev, dtype)).shape[1])
    ibp, crown = [], []
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size].to(dev, dtype), y[i:i + batch_size].to(dev)
        lo_ibp, lo_crown = margin_bounds(steps, xb, yb, eps, norm, k, method == "crown-ibp")
        ibp.append(lo_ibp.amin(1).cpu())
        if lo_crown is not None:
            crown.append(lo_crown.amin(1).cpu())
    return Certificate(torch.cat(ibp), torch.cat(crown) if crown else None)
