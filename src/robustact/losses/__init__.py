"""Losses: attack losses (CE, C&W margin, DLR) and training losses (differential)."""

from robustact.losses.attack import ce_loss, dlr_loss, get_attack_loss, margin_loss

__all__ = ["ce_loss", "dlr_loss", "get_attack_loss", "margin_loss"]
