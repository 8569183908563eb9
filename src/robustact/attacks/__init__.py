"""Attacks: ``attack(model, x, y, target=None) -> AttackResult`` (see :mod:`.base`).

Fixed-budget gradient attacks (FGSM, BIM, I-FGSM, PGD, MIM, APGD), minimum-norm attacks
(DeepFool, C&W-L2, trust region), the query-based Square attack, BPDA and transfer wrappers for
adaptive / black-box evaluation, and :func:`verify` to re-check any result independently.
"""

from robustact.attacks._utils import clip_to_box, normalize_direction, project, random_start
from robustact.attacks.apgd import APGD
from robustact.attacks.base import Attack, AttackResult, LogitsView, lp_norms, prepared_model
from robustact.attacks.bim import BIM, IFGSM
from robustact.attacks.bpda import BPDA, default_substitutes, with_bpda
from robustact.attacks.fgsm import FGSM
from robustact.attacks.mim import MIM
from robustact.attacks.pgd import PGD
from robustact.attacks.transfer import TransferAttack
from robustact.attacks.verify import VerifiedResult, WorstCaseResult, robust_accuracy, verify

__all__ = [
    "APGD",
    "Attack",
    "AttackResult",
    "BIM",
    "BPDA",
    "FGSM",
    "IFGSM",
    "LogitsView",
    "MIM",
    "PGD",
    "TransferAttack",
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
    "verify",
    "with_bpda",
]

# Minimum-norm and query-based attacks (written alongside); imported if present.
try:
    from robustact.attacks.cw import CarliniWagnerL2  # noqa: F401
    from robustact.attacks.deepfool import DeepFool  # noqa: F401
    from robustact.attacks.square import Square  # noqa: F401
    from robustact.attacks.trust_region import TrustRegion  # noqa: F401

    __all__ += ["CarliniWagnerL2", "DeepFool", "Square", "TrustRegion"]
except ImportError:  # pragma: no cover - transitional, until those modules land
    pass
