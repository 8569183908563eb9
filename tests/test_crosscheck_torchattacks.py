"""Cross-check against torchattacks: same model, same inputs, same x_adv (to 1e-6).

Models are float64 and the batch size is a power of two, so torchattacks' mean-reduced loss
(gradient scaled by 1/N, exact in binary floating point) and our summed loss give gradients with
identical signs. Only deterministic configurations are compared (no random start): the random
draws of two libraries cannot be aligned. torchattacks is a test-only dependency installed by
scripts/setup.sh; tests get it from the ``torchattacks`` fixture (tests/conftest.py), so a missing
install stops the run with one line saying what to install instead of skipping.
"""

from __future__ import annotations

import pytest
import torch
from _helpers import gen, random_weights
from torch import nn

from robustact.attacks import BIM, FGSM, MIM, PGD

N = 16


def model_and_data(seed: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = gen(seed)
    model = random_weights(
        lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(4 * 3 * 3, 16), nn.Tanh(), nn.Linear(16, 10)).double(),
        g, scale=0.5)
    x = torch.rand(N, 3, 8, 8, generator=g, dtype=torch.float64)
    x[x < 0.05] = 0.0  # some pixels on the box faces
    y = torch.randint(0, 10, (N,), generator=g)
    return model, x, y


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert float((a - b).abs().max()) <= 1e-6


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("eps", [2 / 255, 8 / 255, 0.1])
def test_fgsm_matches(seed: int, eps: float, torchattacks) -> None:
    model, x, y = model_and_data(seed)
    ours = FGSM(eps)(model, x, y)
    theirs = torchattacks.FGSM(model, eps=eps)(x, y)
    close(ours.x_adv, theirs)
    assert ours.success_rate > 0  # a non-trivial comparison: the attack moved predictions


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("eps,alpha,steps", [(8 / 255, 2 / 255, 10), (0.1, 0.01, 20)])
def test_pgd_linf_matches(seed: int, eps: float, alpha: float, steps: int, torchattacks) -> None:
    model, x, y = model_and_data(seed)
    ours = PGD(eps, alpha=alpha, steps=steps, random_start=False, early_stop=False)(model, x, y)
    theirs = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)(x, y)
    close(ours.x_adv, theirs)


@pytest.mark.parametrize("seed", [0, 1])
def test_pgd_l2_matches(seed: int, torchattacks) -> None:
    # torchattacks' L2 step is g / (‖g‖ + 1e-10) and its projection scales δ by min(1, ε/‖δ‖):
    # our definition, up to the 1e-10 guard (set to ~0 here).
    model, x, y = model_and_data(seed)
    eps, alpha, steps = 0.5, 0.1, 10
    ours = PGD(eps, alpha=alpha, steps=steps, norm="l2", random_start=False,
               early_stop=False)(model, x, y)
    theirs = torchattacks.PGDL2(model, eps=eps, alpha=alpha, steps=steps, random_start=False,
                                eps_for_division=1e-300)(x, y)
    close(ours.x_adv, theirs)


@pytest.mark.parametrize("seed", [0, 1])
def test_targeted_pgd_matches(seed: int, torchattacks) -> None:
    model, x, y = model_and_data(seed)
    t = (y + 3) % 10
    ours = PGD(0.1, alpha=0.01, steps=10, random_start=False, early_stop=False)(
        model, x, y, target=t)
    atk = torchattacks.PGD(model, eps=0.1, alpha=0.01, steps=10, random_start=False)
    atk.set_mode_targeted_by_function(lambda images, labels: (labels + 3) % 10, quiet=True)
    close(ours.x_adv, atk(x, y))


@pytest.mark.parametrize("seed", [0, 1])
def test_bim_matches(seed: int, torchattacks) -> None:
    model, x, y = model_and_data(seed)
    ours = BIM(8 / 255, alpha=1 / 255, steps=10, early_stop=False)(model, x, y)
    theirs = torchattacks.BIM(model, eps=8 / 255, alpha=1 / 255, steps=10)(x, y)
    close(ours.x_adv, theirs)


@pytest.mark.parametrize("seed", [0, 1])
def test_mim_matches(seed: int, torchattacks) -> None:
    # torchattacks divides by mean|∇| instead of ‖∇‖₁ = d·mean|∇|: every accumulated term is
    # scaled by the same d, so the sign of the momentum, hence each step, is the same.
    model, x, y = model_and_data(seed)
    ours = MIM(8 / 255, alpha=2 / 255, steps=10, decay=1.0, early_stop=False)(model, x, y)
    theirs = torchattacks.MIFGSM(model, eps=8 / 255, alpha=2 / 255, steps=10, decay=1.0)(x, y)
    close(ours.x_adv, theirs)
