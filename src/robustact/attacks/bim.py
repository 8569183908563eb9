"""BIM (Kurakin et al. 2017) and the JumpReLU paper's I-FGSM: iterated FGSM steps from x.

Both are the :class:`~robustact.attacks.pgd.PGD` loop without a random start, in L∞:

- :class:`BIM` projects onto the ε-ball after every step; defaults from Kurakin et al.:
  ``alpha = 1/255`` and ``steps = ⌊min(255·ε + 4, 1.25·255·ε)⌋`` (at least 1).
- :class:`IFGSM` is the variant Erichson et al. (JumpReLU, 2019) evaluate with: a fixed step
  (0.01), up to ``steps`` iterations (40 on MNIST, 7 on CIFAR-10), each sample stopping once it
  is misclassified, and **no ε-ball projection** (only the [0, 1] box). Its budget is therefore
  ``steps · alpha`` in L∞ at most; the paper reports the resulting relative perturbation.
"""

from __future__ import annotations

from robustact.attacks._utils import check_budget, check_eps, check_int
from robustact.attacks.pgd import PGD
from robustact.losses.attack import AttackLoss

__all__ = ["BIM", "IFGSM"]


class BIM(PGD):
    """Basic iterative method: ``steps`` projected sign-gradient steps of size ``alpha`` from x.

    ``early_stop=True`` (default) freezes each sample at its first adversarial iterate;
    ``early_stop=False`` returns the final iterate, as Kurakin et al. and torchattacks do.
    """

    name = "bim"

    def __init__(self, eps: float, alpha: float | None = None, steps: int | None = None, *,
                 loss: str | AttackLoss = "ce", early_stop: bool = True,
                 logits_from: str | None = None, force_eval: bool = False,
                 seed: int = 0) -> None:
        eps = check_budget(eps, "linf")
        if alpha is None:
            alpha = 1.0 / 255.0
        if steps is None:
            steps = max(1, int(min(255.0 * eps + 4.0, 1.25 * 255.0 * eps)))
        super().__init__(eps, alpha, steps, norm="linf", random_start=False, restarts=1,
                         loss=loss, early_stop=early_stop, logits_from=logits_from,
                         force_eval=force_eval, seed=seed)


class IFGSM(PGD):
    """I-FGSM as in the JumpReLU paper: fixed step, per-sample early stop, no ε projection.

    Args:
        alpha: step size in [0, 1] pixel units (paper: 0.01).
        steps: maximum iterations (paper: 40 on MNIST, 7 on CIFAR-10).
        eps: None (the paper's unbounded variant). A number turns the ε-ball projection back
            on, which gives BIM with early stopping.
    """

    name = "ifgsm"

    def __init__(self, alpha: float = 0.01, steps: int = 40, *, eps: float | None = None,
                 loss: str | AttackLoss = "ce", logits_from: str | None = None,
                 force_eval: bool = False, seed: int = 0) -> None:
        super().__init__(eps, check_eps(alpha, "alpha"), check_int(steps, "steps"),
                         norm="linf", random_start=False, restarts=1, loss=loss,
                         early_stop=True, logits_from=logits_from, force_eval=force_eval,
                         seed=seed)
