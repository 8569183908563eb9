"""Differential training: pairwise loss definition, gradients, margin bias, and training."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robustact.losses.differential import DifferentialLoss, differential_loss, score_direction
from robustact.models.base import Classifier
from robustact.train import TrainConfig
from robustact.train.recipes import (
    differential_train,
    margin_scores,
    set_bias_by_margin,
)


class Net(Classifier):
    """flatten → linear → tanh features; a 2-output head. Float64 for finite differences."""

    def __init__(self, d_in: int = 4, d: int = 3, seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.num_classes = 2
            self.normalize = nn.Identity()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(d_in, d), nn.Tanh())
            self.head = nn.Linear(d, 2)
        self.to(dtype)


class Identity(Classifier):
    """φ(x) = the flattened pixels: scores are hand-computable."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.num_classes = 2
        self.normalize = nn.Identity()
        self.body = nn.Flatten()
        self.head = nn.Linear(d, 2)


def brute_force(phi: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> float:
    total, count = 0.0, 0
    for i in range(len(y)):
        for j in range(len(y)):
            if y[i] == 1 and y[j] == 0:
                d = float(w @ (phi[i] - phi[j]))
                total += math.log(1 + math.exp(-d))
                count += 1
    return total / count


def test_pairwise_loss_equals_a_double_loop() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(9, 1, 2, 2, generator=g, dtype=torch.float64)
    y = torch.tensor([1, 0, 0, 1, 1, 0, 1, 0, 1])
    model = Net(dtype=torch.float64)
    loss, logits = DifferentialLoss()(model, x, y)
    phi = model.features(x).detach()
    w = (model.head.weight[1] - model.head.weight[0]).detach()
    assert loss.item() == pytest.approx(brute_force(phi, w, y), rel=1e-12)
    assert torch.equal(logits, model(x))
    # positive_class=0 flips both w -> -w and pos <-> neg: every pair term is unchanged
    loss0, _ = DifferentialLoss(positive_class=0)(model, x, y)
    assert loss0.item() == pytest.approx(loss.item(), rel=1e-12)


def test_functional_loss_by_hand_and_stability() -> None:
    s = torch.tensor([2.0, 0.0, -1.0])
    pos = torch.tensor([True, False, False])
    want = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-3.0))) / 2
    assert float(differential_loss(s, pos)) == pytest.approx(want, rel=1e-6)
    big = differential_loss(torch.tensor([-500.0, 500.0]), torch.tensor([True, False]))
    assert float(big) == pytest.approx(1000.0)  # softplus: no overflow to inf


def test_gradients_match_finite_differences() -> None:
    g = torch.Generator().manual_seed(1)
    phi = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    pos = torch.tensor([True, False, True, False, False, True, True])
    assert torch.autograd.gradcheck(
        lambda p, w: differential_loss(p @ (w[1] - w[0]), pos), (phi, W))
    # and through a model: autograd vs central differences on every parameter entry
    model = Net(dtype=torch.float64)
    x = torch.rand(6, 1, 2, 2, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    loss_fn = DifferentialLoss()
    loss_fn(model, x, y)[0].backward()
    h = 1e-6
    for name, p in model.named_parameters():
        grad = p.grad if p.grad is not None else torch.zeros_like(p)  # head.bias: no graph path
        for idx in range(p.numel()):
            with torch.no_grad():
                flat = p.view(-1)
                old = flat[idx].item()
                flat[idx] = old + h
                up = float(loss_fn(model, x, y)[0])
                flat[idx] = old - h
                down = float(loss_fn(model, x, y)[0])
                flat[idx] = old
            assert grad.view(-1)[idx].item() == pytest.approx((up - down) / (2 * h),
                                                              abs=1e-7), name
    assert model.head.bias.grad is None  # the bias cancels in every pair


def test_loss_refuses_bad_batches_and_models() -> None:
    model = Net()
    x = torch.rand(4, 1, 2, 2)
    with pytest.raises(ValueError, match="both classes"):
        DifferentialLoss()(model, x, torch.ones(4, dtype=torch.long))
    with pytest.raises(ValueError, match="0 or 1"):
        DifferentialLoss()(model, x, torch.tensor([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="2 outputs"):
        score_direction(nn.Linear(3, 3))
    with pytest.raises(TypeError, match="features"):
        DifferentialLoss()(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), x,
                           torch.tensor([0, 1, 0, 1]))


def test_bias_puts_the_boundary_exactly_mid_gap() -> None:
    model = Identity(4)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.weight[1, 0] = 1.0  # w = W1 - W0 = (1, 0, 0, 0): score = first pixel
        model.head.bias.fill_(0.3)
    x = torch.zeros(5, 1, 2, 2)
    x[:, 0, 0, 0] = torch.tensor([0.75, 0.875, 0.25, 0.125, 1.0])
    y = torch.tensor([1, 1, 0, 0, 1])
    info = set_bias_by_margin(model, (x, y))
    # min over positives 0.75, max over negatives 0.25: b = -(0.75 + 0.25) / 2 = -0.5
    assert info == {"bias": -0.5, "min_pos": 0.75, "max_neg": 0.25, "gap": 0.5}
    assert model.head.bias.tolist() == [0.25, -0.25]
    z = model(x)
    margin = (z[:, 1] - z[:, 0]).tolist()
    assert margin == [0.25, 0.375, -0.25, -0.375, 0.5]  # ±gap/2 at the closest points
    assert (z.argmax(1) == y).all()


def test_bias_with_uint8_data_and_mode_restored() -> None:
    model = Net().train()
    x = torch.randint(0, 256, (10, 1, 2, 2), dtype=torch.uint8)
    y = torch.tensor([0, 1] * 5)
    scores, pos = margin_scores(model, (x, y))
    assert model.training and scores.shape == (10,) and torch.equal(pos, y == 1)
    ref = model.eval().features(x.float() / 255) @ score_direction(model.head)
    assert torch.allclose(scores, ref.detach())
    with pytest.raises(ValueError, match="both classes"):
        set_bias_by_margin(model, (x, torch.zeros(10, dtype=torch.long)))


def test_differential_training_separates_a_toy_set() -> None:
    g = torch.Generator().manual_seed(0)
    n = 48
    y = torch.tensor([0] * 32 + [1] * 16)  # imbalanced on purpose: batches are balanced
    centre = torch.where(y[:, None].bool(), torch.tensor([0.7, 0.3, 0.6, 0.4]),
                         torch.tensor([0.3, 0.7, 0.4, 0.6]))
    x = (centre + 0.08 * torch.randn(n, 4, generator=g)).clamp(0, 1).view(n, 1, 2, 2)
    model = Net(d=8)
    cfg = TrainConfig(epochs=15, batch_size=16, lr=0.2, schedule="constant", device="cpu")
    history, info = differential_train(model, (x, y), (x, y), cfg)
    assert info["gap"] > 0  # separated in score space
    model.eval()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    assert acc == 1.0
    assert history[-1]["val_acc"] == 1.0  # the per-epoch bias made validation meaningful
    assert history[-1]["train_loss"] < history[0]["train_loss"]
