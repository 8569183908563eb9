"""Square Attack, L∞ (Andriushchenko, Croce, Flammarion, Hein; ECCV 2020): score-based
black-box random search.

Why it is here: it uses only the model's outputs, never a gradient, so it is the standard check
that a defense is not merely masking gradients (JumpReLU's jump, saturated output activations).
If Square succeeds where PGD fails, the PGD number was an artefact.

Algorithm (per sample, ε-ball in L∞, box [0, 1]):
1. query the clean input; samples already misclassified are done (1 query);
2. start from vertical stripes: δ = ±ε per (channel, column), signs uniform; one query;
3. repeat: pick a square window of side s at a uniformly random position; set the window, per
   channel, to x ± ε (a random sign vector; one that would leave the window unchanged is
   replaced by one of the others, uniformly); clamp to [0, 1]; query; keep the candidate if
   the loss improved (or the sample is now adversarial); stop once adversarial or when the
   query budget is spent.
The side follows the paper's piecewise-constant schedule of the fraction p of pixels changed:
p = p_init, halved after 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of 10 000 iterations,
with the breakpoints rescaled to ``n_queries`` (AutoAttack's ``resc_schedule``);
the side is s = round(√(p·h·w)).

Our choices:
- Signs are drawn per sample; the window position per iteration, shared by the batch as in
  AutoAttack (the paper's code draws it per sample). Each sample still sees i.i.d. uniform
  positions, so every per-sample figure (success, queries) has the same distribution; only
  samples become correlated. A window is then a slice of the batch, not a per-sample mask,
  which is what keeps a query's bookkeeping cheap.
- A draw that would repeat the current window is replaced (as in the paper's code; AutoAttack
  and torchattacks spend a query on it). On one-channel MNIST, where small windows often sit
  at the drawn vertex already, this saves about 10 % of the queries at equal success.
- ``p_init`` 0.8 and 5000 queries are AutoAttack's standard settings. Every forward pass is
  counted per sample and reported as ``queries``; the total never exceeds ``n_queries``. The
  model is only ever called inside ``torch.inference_mode()``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from robustact.attacks._utils import (
    check_budget,
    check_int,
    check_norm,
    check_positive,
    keyed_bits,
)
from robustact.attacks.base import Attack, LogitsView
from robustact.losses.attack import AttackLoss

__all__ = ["Square", "p_schedule"]

#: Breakpoints of the p schedule on the paper's 10 000-iteration scale; p halves after each.
_BREAKPOINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
#: Above this many channels a repeated draw (probability ≤ 2^-c) is not worth redrawing.
_MAX_REDRAW_CHANNELS = 30


def p_schedule(p_init: float, it: int, n_queries: int) -> float:
    """Fraction of pixels changed at iteration ``it`` of a run with budget ``n_queries``.

    >>> p_schedule(0.8, 0, 10000), p_schedule(0.8, 11, 10000), p_schedule(0.8, 9000, 10000)
    (0.8, 0.4, 0.0015625)
    """
    scaled = int(it / n_queries * 10000)
    halvings = sum(scaled > b for b in _BREAKPOINTS)
    return p_init / (2 ** halvings)


class _Draws:
    """Square's random draws from the attack's generator (a call without ``keys``).

    ``rows`` are the samples' rows in the call's batch; :class:`_KeyedDraws` has the same
    methods, so the search reads the same with or without keys.
    """

    def __init__(self, gen: torch.Generator, device: torch.device) -> None:
        self.gen, self.device = gen, device

    def stripes(self, rows: torch.Tensor, c: int, w: int) -> torch.Tensor:
        """The start's vertex per (sample, channel, column): 1 = upper, shape (n, c, 1, w)."""
        return torch.randint(0, 2, (rows.numel(), c, 1, w), generator=self.gen,
                             device=self.device)

    def position(self, it: int, rows: int, cols: int) -> tuple[int, int]:
        """Iteration ``it``'s window corner, shared by the batch."""
        r0 = int(torch.randint(0, rows, (1,), generator=self.gen, device=self.device))
        c0 = int(torch.randint(0, cols, (1,), generator=self.gen, device=self.device))
        return r0, c0

    def signs(self, rows: torch.Tensor, it: int, c: int) -> torch.Tensor:
        """The window's new vertex per (sample, channel): 1 = upper."""
        return torch.randint(0, 2, (rows.numel(), c), generator=self.gen, device=self.device)

    def flips(self, rows: torch.Tensor, it: int, c: int) -> torch.Tensor:
        """Per sample, a uniform non-zero c-bit pattern (see :func:`_redraw_repeats`)."""
        return torch.randint(1, 2 ** c, (rows.numel(),), generator=self.gen, device=self.device)


class _KeyedDraws:
    """Square's random draws keyed per sample (``attack(..., keys=ids)``): a sample's signs
    depend on (seed, its key, iteration), the window position on (seed, iteration), so a
    sample's search does not depend on the batch it runs in."""

    def __init__(self, seed: int, keys: torch.Tensor) -> None:
        self.seed, self.keys = seed, keys

    def bits(self, rows: torch.Tensor, stream: int, count: int) -> torch.Tensor:
        return keyed_bits(self.seed, self.keys[rows], stream, count)

    def stripes(self, rows: torch.Tensor, c: int, w: int) -> torch.Tensor:
        return self.bits(rows, 0, c * w).remainder(2).view(-1, c, 1, w)

    def position(self, it: int, rows: int, cols: int) -> tuple[int, int]:
        b = keyed_bits(self.seed, torch.full((1,), -1, device=self.keys.device),
                       3 * it + 1, 2)[0].tolist()
        return b[0] % rows, b[1] % cols

    def signs(self, rows: torch.Tensor, it: int, c: int) -> torch.Tensor:
        return self.bits(rows, 3 * it + 2, c).remainder(2)

    def flips(self, rows: torch.Tensor, it: int, c: int) -> torch.Tensor:
        return 1 + self.bits(rows, 3 * it + 3, 1)[:, 0].remainder(2 ** c - 1)


def _stripes(xa: torch.Tensor, bits: torch.Tensor, eps: float
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The vertical-stripes start (vertex ``bits`` per channel and column) and ``aux``.

    Every pixel of the search's current point sits at a vertex of its box ∩ [0, 1]: x + ε or
    x − ε, clamped (the stripes start there and every window is set to one). ``aux`` keeps, per
    pixel, which vertex (1.0 = upper) and the two vertex values, computed once (bitwise what
    x ± ε then clamp gives); a draw that would repeat the current window is detected by summing
    that indicator over the window.
    """
    hi, lo = (xa + eps).clamp(0.0, 1.0), (xa - eps).clamp(0.0, 1.0)
    aux = torch.stack([bits.to(xa.dtype).expand(-1, -1, xa.shape[2], -1), hi, lo], dim=1)
    return torch.where(bits.bool(), hi, lo), aux


def _redraw_repeats(sgn: torch.Tensor, up: torch.Tensor, flip: torch.Tensor,
                    ar_c: torch.Tensor) -> torch.Tensor:
    """``sgn`` with each draw that reproduces the current window (``up``: its vertex indicators)
    replaced, uniformly, by one of the 2^c − 1 other sign vectors.

    Such a draw wastes a query. XOR with ``flip`` (a random non-zero bit pattern) gives the
    distribution of redrawing until different, without a loop or a host sync.
    """
    n_up = up.sum((2, 3))
    same = torch.where(sgn.bool(), n_up == up.shape[2] * up.shape[3], n_up == 0).all(1)
    return sgn ^ (((flip[:, None] >> ar_c) & 1) * same[:, None])


class Square(Attack):
    """Square Attack (L∞), untargeted or targeted, gradient-free.

    Args:
        eps: L∞ budget ε (pixel units); 0 returns the inputs without querying the model.
        norm: only "linf" (the L2 variant is not implemented).
        n_queries: query budget per sample, the clean query included.
        p_init: initial fraction of pixels in the square (0.8 as AutoAttack; the paper's
            ImageNet runs used 0.05).
        loss: "margin" (default) or "ce", maximised; acceptance compares this loss.
        seed: seed of the attack's generator (all randomness comes from it).
        logits_from, force_eval: see :class:`~robustact.attacks.base.Attack`.
    """

    name = "square"

    def __init__(self, eps: float, norm: str = "linf", n_queries: int = 5000,
                 p_init: float = 0.8, loss: str | AttackLoss = "margin", seed: int = 0, *,
                 logits_from: str | None = None, force_eval: bool = False) -> None:
        super().__init__(loss=loss, logits_from=logits_from, force_eval=force_eval, seed=seed)
        self.norm = check_norm(norm, ("linf",))
        self.eps = check_budget(eps, self.norm)
        self.n_queries = check_int(n_queries, "n_queries")
        self.p_init = check_positive(p_init, "p_init")
        if self.p_init > 1.0:
            raise ValueError(f"p_init must be in (0, 1], got {p_init}")

    def _objective(self, view: LogitsView, x: torch.Tensor, label: torch.Tensor,
                   y: torch.Tensor, target: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """One query: (loss to maximise, adversarial?) for a batch."""
        # inference mode, not just no_grad: no autograd bookkeeping at all on the query path
        # (about 1 % of a forward pass); nothing computed here is modified in place later
        with torch.inference_mode():
            zl, z = view(x)
            return self.loss_fn(zl, label, target is not None), self.is_adversarial(z, y, target)

    def perturb(self, view: LogitsView, x: torch.Tensor, y: torch.Tensor,
                target: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, Any]]:
        n, c, h, w = x.shape
        queries = torch.zeros(n, dtype=torch.long, device=x.device)
        if self.eps == 0.0:
            return x.clone(), {"queries": queries, "eps": self.eps}
        keys = view.keys
        draw = (_KeyedDraws(self.seed, keys) if keys is not None
                else _Draws(self.generator(x.device), x.device))
        label = target if target is not None else y
        eps = self.eps

        _, done = self._objective(view, x, label, y, target)
        queries += 1
        x_best = x.clone()
        todo = (~done).nonzero().squeeze(1)
        if todo.numel() == 0 or self.n_queries < 2:
            return x_best, {"queries": queries, "eps": eps}

        # The search works on compact copies of the still-unbroken samples; a sample leaves
        # (and is written back) the moment it is broken, so no step gathers from full tensors.
        idx = todo
        xa = x[idx]
        ya, la = y[idx], label[idx]
        ta = None if target is None else target[idx]
        xb, aux = _stripes(xa, draw.stripes(idx, c, w), eps)  # vertical stripes
        lb, adv = self._objective(view, xb, la, ya, ta)
        queries[idx] += 1
        meta = torch.stack([idx, ya, la] + ([] if ta is None else [ta]), dim=1)

        ar_c = torch.arange(c, device=x.device)
        redraw = c <= _MAX_REDRAW_CHANNELS
        done_iters = 0
        for it in range(self.n_queries - 2):
            if adv.any():  # write back the broken ones and drop them
                gone = meta[adv, 0]
                x_best[gone] = xb[adv]  # accepted: adversarial counts as better
                queries[gone] += it  # one per iteration 0 … it−1 (the 2 before the loop counted)
                keep = ~adv
                xb, aux, meta, lb = xb[keep], aux[keep], meta[keep], lb[keep]
            m = meta.shape[0]
            if m == 0:
                break
            ya, la = meta[:, 1], meta[:, 2]
            ta = meta[:, 3] if target is not None else None
            p = p_schedule(self.p_init, it, self.n_queries)
            s = min(max(int(round(math.sqrt(p * h * w))), 1), h, w)
            r0, c0 = draw.position(it, h - s + 1, w - s + 1)
            # Views: a window is a slice, never a mask. The candidate is written into the
            # batch in place and reverted where rejected, so the model is handed ``xb`` itself
            # (as with any input batch, a model must not modify its input in place).
            cur = xb[:, :, r0:r0 + s, c0:c0 + s]
            up, hi_w, lo_w = aux[:, :, :, r0:r0 + s, c0:c0 + s].unbind(1)
            sgn = draw.signs(meta[:, 0], it, c)
            if redraw:  # a draw repeating the current window would waste a query
                sgn = _redraw_repeats(sgn, up, draw.flips(meta[:, 0], it, c), ar_c)
            sgn_f = sgn.to(x.dtype)[:, :, None, None]
            old = cur.clone()
            # lerp at weight 0 or 1 returns its end points exactly: the vertex values
            cur.copy_(torch.lerp(lo_w, hi_w, sgn_f.expand_as(lo_w)))
            loss, adv = self._objective(view, xb, la, ya, ta)
            done_iters = it + 1
            better = ((loss > lb) | adv)[:, None, None, None]
            cur.copy_(torch.where(better, cur, old))
            up.copy_(torch.where(better, sgn_f, up))
            lb = torch.where(better[:, 0, 0, 0], loss, lb)
        gone = meta[:, 0]
        x_best[gone] = xb
        # Samples still in the batch took part in every iteration run; those broken by the
        # last query were not dropped by the loop (it ended first), so count them here too.
        queries[gone] += done_iters
        return x_best, {"queries": queries, "eps": eps}
