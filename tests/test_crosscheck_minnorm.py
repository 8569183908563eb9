"""Cross-check the minimum-norm attacks against torchattacks on the same small trained model.

An independent implementation is the cheapest oracle for "is this attack as strong as it should
be": robustact's DeepFool and C&W-L2 must succeed at least as often as torchattacks' and find
perturbations no larger (median L2 within 5 %). Success and norms are recomputed here from the
returned images for both libraries, so neither library's own bookkeeping is trusted.
torchattacks comes from the ``torchattacks`` fixture (tests/conftest.py): when it is missing the
run stops with one line saying what to install, as for test_crosscheck_torchattacks.py.
"""

from __future__ import annotations

import pytest
import torch
from _helpers import train_prototype_cnn
from torch import nn

from robustact.attacks.cw import CarliniWagnerL2
from robustact.attacks.deepfool import DeepFool

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Another task (seed 1) than the attack files' shared model: a second independent case."""
    return train_prototype_cnn(1, min_correct=16)


def outcome(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(success, L2 norm) recomputed from the images alone."""
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    with torch.no_grad():
        success = model(x_adv).argmax(1) != y
    return success, (x_adv - x).flatten(1).norm(dim=1)


def test_deepfool_matches_or_beats_torchattacks(tiny, torchattacks) -> None:
    model, x, y = tiny
    ours = DeepFool("l2", steps=50, overshoot=0.02, candidates=4)(model, x, y)
    theirs_adv = torchattacks.DeepFool(model, steps=50, overshoot=0.02)(x, y)
    ok_ours, l2_ours = outcome(model, x, y, ours.x_adv)
    ok_theirs, l2_theirs = outcome(model, x, y, theirs_adv)
    assert torch.equal(ok_ours, ours.success)
    assert int(ok_ours.sum()) >= int(ok_theirs.sum())
    assert float(l2_ours[ok_ours].median()) <= 1.05 * float(l2_theirs[ok_theirs].median())


def test_cw_matches_or_beats_torchattacks(tiny, torchattacks) -> None:
    model, x, y = tiny
    ours = CarliniWagnerL2(steps=100, binary_search_steps=5, lr=0.01)(model, x, y)
    theirs_adv = torchattacks.CW(model, c=1.0, kappa=0, steps=100, lr=0.01)(x, y)
    ok_ours, l2_ours = outcome(model, x, y, ours.x_adv)
    ok_theirs, l2_theirs = outcome(model, x, y, theirs_adv)
    assert torch.equal(ok_ours, ours.success)
    assert int(ok_ours.sum()) >= int(ok_theirs.sum())
    both = ok_ours & ok_theirs
    assert both.sum() >= 3, "precondition: some samples broken by both"
    assert float(l2_ours[both].median()) <= 1.05 * float(l2_theirs[both].median())
