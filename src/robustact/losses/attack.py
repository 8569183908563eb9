"""Per-sample losses that attacks *maximise* (and training may reuse).

All take logits ``z`` (N, K) and labels ``y`` (N,) and return a (N,) tensor. For a targeted
attack pass the target labels and ``targeted=True``: the sign flips so maximising still moves
toward the goal. Why per-sample: attacks stop early per sample and APGD adapts step sizes per
sample, so reductions happen in the attack, not here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["ce_loss", "margin_loss", "dlr_loss", "get_attack_loss", "AttackLoss"]

AttackLoss = Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]


def ce_loss(z: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
    """Cross-entropy; untargeted: CE(z, y); targeted: -CE(z, target)."""
    loss = F.cross_entropy(z, y, reduction="none")
    return -loss if targeted else loss


def _other_max(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Largest logit among classes other than y."""
    # scatter, not one_hot: one_hot validates y's range with a full reduction on every call
    return z.scatter(1, y[:, None], float("-inf")).amax(dim=1)


def margin_loss(z: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
    """C&W margin: max_{j≠y} z_j − z_y (untargeted); z_t − max_{j≠t} z_j (targeted).

    Positive exactly when the attack has succeeded; unlike CE it does not saturate, so it still
    gives a signal on confident models (and it is invariant to a softmax temperature's sign).
    """
    zy = z.gather(1, y[:, None]).squeeze(1)
    other = _other_max(z, y)
    return zy - other if targeted else other - zy


def dlr_loss(z: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020), shift- and scale-invariant.

    Untargeted: −(z_y − max_{j≠y} z_j) / (z_π1 − z_π3); targeted: −(z_y − z_t) /
    (z_π1 − (z_π3 + z_π4)/2), where π sorts the logits in decreasing order. Scale invariance is
    why it defeats defenses that merely rescale or saturate logits.
    """
    zs, _ = z.sort(dim=1, descending=True)
    if not targeted:
        zy = z.gather(1, y[:, None]).squeeze(1)
        denom = zs[:, 0] - zs[:, 2] + 1e-12
        return -(zy - _other_max(z, y)) / denom
    raise ValueError("targeted DLR needs the true label too; use dlr_targeted_loss(z, y, t)")


def dlr_targeted_loss(z: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Targeted DLR: −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2). Needs at least 4 classes."""
    if z.shape[1] < 4:
        raise ValueError("targeted DLR needs at least 4 classes")
    zs, _ = z.sort(dim=1, descending=True)
    zy = z.gather(1, y[:, None]).squeeze(1)
    zt = z.gather(1, t[:, None]).squeeze(1)
    return -(zy - zt) / (zs[:, 0] - 0.5 * (zs[:, 2] + zs[:, 3]) + 1e-12)


_LOSSES: dict[str, AttackLoss] = {"ce": ce_loss, "margin": margin_loss, "cw": margin_loss,
                                   "dlr": dlr_loss}


def get_attack_loss(name: str | AttackLoss) -> AttackLoss:
    if callable(name):
        return name
    key = name.lower()
    if key not in _LOSSES:
        raise ValueError(f"unknown attack loss {name!r}; choose from {sorted(_LOSSES)}")
    return _LOSSES[key]
