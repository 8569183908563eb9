"""SPLASH trains stably at the README's defaults (issue 9, item 2).

LeNet-5 with ``splash:S=7`` under SGD lr 0.05 (momentum 0.9, weight decay 5e-4, the trainer's
defaults) went to a NaN loss within a few dozen steps: the model has no BatchNorm, SPLASH's
per-layer slopes assume normalized inputs, and together they left SGD's stable region. The data
here is sklearn's digits upsampled to 28×28, so the inputs look like MNIST's to the model.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from robustact.data import load_dataset
from robustact.models import available_models, create_model
from robustact.nn.splash import SPLASH


def _digits_28() -> tuple[torch.Tensor, torch.Tensor]:
    ds = load_dataset("digits", "train")
    x = F.interpolate(ds.x(), size=28, mode="bilinear", align_corners=False).clamp(0, 1)
    return x, ds.y()


def _sgd_losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int,
                batch: int = 128, lr: float = 0.05, seed: int = 0) -> list[float]:
    """Losses of ``steps`` SGD steps with TrainConfig's defaults; stops at the first non-finite."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    return losses


@pytest.mark.parametrize("seed", [0])
def test_lenet5_splash_readme_defaults_stay_finite_and_learn(seed: int) -> None:
    torch.manual_seed(seed)
    x, y = _digits_28()
    model = create_model("lenet5", dataset="mnist", activation="splash:S=7")
    losses = _sgd_losses(model, x, y, steps=60, seed=seed)
    assert all(math.isfinite(v) for v in losses), f"diverged at step {len(losses) - 1}"
    assert sum(losses[-10:]) / 10 < 0.5 * losses[0]  # it learns, not just stays finite


def test_splash_norm_rule() -> None:
    """Models without BatchNorm standardize SPLASH's input; models with it, or an explicit
    ``norm`` in the spec, do not; a card's spec rebuilds the same state dict."""
    def norms(model: torch.nn.Module) -> set[bool]:
        return {m.norm for m in model.modules() if isinstance(m, SPLASH)}

    assert norms(create_model("lenet5", dataset="mnist", activation="splash")) == {True}
    assert norms(create_model("resnet20", dataset="cifar10", activation="splash")) == {False}
    assert norms(create_model("lenet5", dataset="mnist", activation="splash:norm=false")) == {False}
    a = create_model("mlp", dataset="digits", activation="splash:S=5")
    b = create_model(**a.robustact_config)
    assert a.state_dict().keys() == b.state_dict().keys()


# Small inputs (and, for the wide ResNet, a small variant) where a model allows them, so each
# model takes about a second on one CPU thread.
_ZOO_CASES: dict[str, tuple[str, dict[str, int]]] = {
    "mlp": ("digits", {}), "smallcnn": ("digits", {}),
    "lenet5": ("mnist", {}), "lenetlike": ("mnist", {}), "alexlike": ("cifar10", {}),
    "wideresnet": ("cifar10", {"depth": 10, "widen_factor": 1, "input_size": 16}),
}


@pytest.mark.parametrize("name", available_models())
def test_every_zoo_model_trains_with_splash(name: str) -> None:
    ds, kwargs = _ZOO_CASES.get(name, ("cifar10", {"input_size": 16}))
    torch.manual_seed(0)
    model = create_model(name, dataset=ds, activation="splash", **kwargs)
    cfg = model.robustact_config
    x = torch.rand(8, cfg["in_channels"], cfg["input_size"], cfg["input_size"])
    y = torch.arange(8) % 10
    losses = _sgd_losses(model, x, y, steps=3, batch=8)
    assert all(math.isfinite(v) for v in losses), f"{name}: non-finite loss {losses}"
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
