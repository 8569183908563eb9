"""Attacks: ``attack(model, x, y, target=None) -> AttackResult`` (see :mod:`.base`).

Fixed-budget gradient attacks (FGSM, BIM, I-FGSM, PGD, MIM, APGD, APGD-T), minimum-norm attacks
(DeepFool, C&W-L2, trust region), the query-based Square attack, the label-only (decision-
based) RayS and HopSkipJump, BPDA and transfer wrappers for adaptive / black-box evaluation,
and :func:`verify` to re-check any result independently.
"""

from robustact.attacks._utils import (
    TARGET_RULES,
    clip_to_box,
    normalize_direction,
    project,
    random_start,
    target_classes,
)
from robustact.attacks.apgd import APGD
from robustact.attacks.apgd_t import APGDT
from robustact.attacks.base import Attack, AttackResult, LogitsView, lp_norms, prepared_model
from robustact.attacks.bim import BIM, IFGSM
from robustact.attacks.bpda import BPDA, default_substitutes, with_bpda
from robustact.attacks.cw import CarliniWagnerL2
from robustact.attacks.deepfool import DeepFool
from robustact.attacks.fgsm import FGSM
from robustact.attacks.hopskipjump import HopSkipJump
from robustact.attacks.mim import MIM
from robustact.attacks.pgd import PGD
from robustact.attacks.random_search import RandomSearch
from robustact.attacks.rays import RayS
from robustact.attacks.square import Square
from robustact.attacks.transfer import TransferAttack
from robustact.attacks.trust_region import TrustRegion
from robustact.attacks.verify import VerifiedResult, WorstCaseResult, robust_accuracy, verify

__all__ = [
    "APGD",
    "APGDT",
    "Attack",
    "AttackResult",
    "BIM",
    "BPDA",
    "CarliniWagnerL2",
    "DeepFool",
    "FGSM",
    "HopSkipJump",
    "IFGSM",
    "LogitsView",
    "MIM",
    "PGD",
    "RandomSearch",
    "RayS",
    "Square",
    "TARGET_RULES",
    "TransferAttack",
    "TrustRegion",
    "VerifiedResult",
    "WorstCaseResult",
    "clip_to_box",
    "default_substitutes",
    "lp_norms",
    "normalize_direction",
    "prepared_model",
    "project",
    "random_start",
    "robust_accuracy",
    "target_classes",
    "verify",
    "with_bpda",
]
