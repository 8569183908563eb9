"""Adversarial training recipes (mix, PGD-AT, fast AT, TRADES): each makes a small model
measurably more robust under PGD than plain training on fixed seeds; fast AT's guard fires on a
collapse and keeps the best model; resume is bit-identical; the card records the recipe; bad
input is one line."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from _helpers import Interrupt, StopAfter
from torch import nn
from typer.testing import CliRunner

from robustact.attacks.pgd import PGD
from robustact.cli import app
from robustact.core.storage import load_tensors
from robustact.data import load_dataset
from robustact.models import create_model
from robustact.train import TrainConfig, Trainer, read_card, seeded
from robustact.train.adversarial import (
    ADV_RECIPES,
    OverfittingGuard,
    adversarial_spec,
    adversarial_train,
    recipe_parts,
)

EPS = 0.1
runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> tuple:
    train = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    x = test.images[:300].float().div(255)
    return train, x, test.labels[:300].long()


def _model() -> nn.Module:
    with seeded(0, "model"):
        return create_model("mlp", dataset="digits", hidden=(64,))


def _config(spec: dict | None, epochs: int = 4) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=64, lr=0.05, schedule="constant", seed=0,
                       adv=spec)


def _robust_acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    broken = PGD(EPS, steps=10, seed=1)(model, x, y).success
    return float((clean & ~broken).float().mean())


@pytest.fixture(scope="module")
def plain_robust(digits: tuple) -> float:
    train, x, y = digits
    model = _model()
    Trainer(model, train, None, _config(None), progress=False).fit()
    return _robust_acc(model, x, y)


@pytest.mark.parametrize("recipe", ADV_RECIPES)
def test_recipe_is_more_robust_than_plain_training(recipe: str, digits: tuple,
                                                   plain_robust: float) -> None:
    train, x, y = digits
    model = _model()
    history, _ = adversarial_train(model, train, None, _config(adversarial_spec(recipe, EPS)))
    robust = _robust_acc(model, x, y)
    # Measured (seed 0): plain 67 %; mix 76 %, pgd 79 %, fast 77 %, trades 80 %.
    assert robust > plain_robust + 0.05, (recipe, robust, plain_robust)
    assert history[-1]["train_loss"] < history[0]["train_loss"]


class _Sabotage:
    """Makes the model constant (class 0) after the optimizer steps of one epoch: held-out PGD
    accuracy collapses to the share of class 0, as in catastrophic overfitting."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        if epoch == self.epoch:
            with torch.no_grad():
                head = trainer.model.head
                head.weight.zero_()
                head.bias.zero_()
                head.bias[0] = 10.0


def test_guard_warns_on_collapse_keeps_and_restores_the_best(
        digits: tuple, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    train, _, _ = digits
    model = _model()
    config = _config(adversarial_spec("fast", EPS), epochs=3)
    hook, loss, guards = recipe_parts(config.adv, model, train)
    (guard,) = guards
    assert isinstance(guard, OverfittingGuard)
    trainer = Trainer(model, train, None, config, out_dir=tmp_path, batch_hook=hook,
                      loss=loss, progress=False, callbacks=[_Sabotage(3), guard])
    with caplog.at_level(logging.WARNING, logger="robustact.train"):
        history = trainer.fit()
    assert guard.collapsed_epoch == 3
    assert guard.accs[3] < 0.2 < guard.best_acc
    assert any("catastrophic overfitting" in r.getMessage() for r in caplog.records)
    assert history[2]["robust_acc"] == guard.accs[3]
    best = read_card(tmp_path / "robust_best")
    assert best["metrics"]["epoch"] == guard.best_epoch < 3
    assert best["metrics"]["robust_acc"] == pytest.approx(guard.best_acc)
    # The run ends with the best model's weights, not the collapsed ones.
    saved = load_tensors(tmp_path / "robust_best" / "model.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert guard.robust_accuracy(model.eval()) == pytest.approx(guard.best_acc)


def test_guard_stays_quiet_without_a_collapse(digits: tuple,
                                              caplog: pytest.LogCaptureFixture) -> None:
    train, _, _ = digits
    with caplog.at_level(logging.WARNING, logger="robustact.train"):
        _, trainer = adversarial_train(_model(), train, None,
                                       _config(adversarial_spec("fast", EPS), epochs=2))
    (guard,) = trainer.callbacks
    assert guard.collapsed_epoch is None and len(guard.accs) == 2
    assert not any("catastrophic" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("recipe", ADV_RECIPES)
def test_resume_mid_run_is_bit_identical(recipe: str, digits: tuple, tmp_path: Path) -> None:
    train, _, _ = digits
    small = (train.images[:320], train.labels[:320])
    config = _config(adversarial_spec(recipe, EPS), epochs=3)
    ref = _model()
    adversarial_train(ref, small, None, config)
    model = _model()
    with pytest.raises(Interrupt):
        adversarial_train(model, small, None, config, out_dir=tmp_path,
                          callbacks=[StopAfter(2)])
    model = _model()  # a fresh process would start from the initial weights
    history, _ = adversarial_train(model, small, None, config, out_dir=tmp_path, resume=True)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for k, v in ref.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


def test_resume_refuses_another_recipe(digits: tuple, tmp_path: Path) -> None:
    train, _, _ = digits
    small = (train.images[:128], train.labels[:128])
    adversarial_train(_model(), small, None, _config(adversarial_spec("mix", EPS), 1),
                      out_dir=tmp_path)
    with pytest.raises(ValueError, match="cannot resume.*adv"):
        adversarial_train(_model(), small, None, _config(adversarial_spec("pgd", EPS), 1),
                          out_dir=tmp_path, resume=True)


def test_cli_card_records_the_recipe_and_resume_takes_it_from_the_card(tmp_path: Path) -> None:
    out = tmp_path / "run"
    base = ["train", "--model", "mlp", "--dataset", "digits", "--epochs", "1", "--out", str(out),
            "--no-progress", "--threads", "1"]
    res = runner.invoke(app, [*base, "--adv", "pgd", "--adv-eps", "8/255", "--adv-steps", "3"])
    assert res.exit_code == 0, res.output
    card = read_card(out / "final")
    assert card["train"]["adv"] == {"recipe": "pgd", "eps": 8 / 255, "steps": 3,
                                    "alpha": pytest.approx(2.5 * 8 / 255 / 3), "attack": "pgd",
                                    "random_start": True}
    assert card["extra"]["adv"]["recipe"] == "pgd"
    # --resume without --adv continues the recorded recipe instead of refusing a config change
    res = runner.invoke(app, [*base, "--resume"])
    assert res.exit_code == 0, res.output
    assert read_card(out / "final")["train"]["adv"]["recipe"] == "pgd"


def _one_error_line(res: object, *needles: str) -> None:
    out = res.output  # type: ignore[attr-defined]
    assert res.exit_code == 2, out  # type: ignore[attr-defined]
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out
    for needle in needles:
        assert needle in lines[0], out


@pytest.mark.parametrize(("args", "needles"), [
    (["--adv", "fast", "--adv-eps", "1.5"], ("eps must be in (0, 1] for linf", "got 1.5")),
    (["--adv", "pgd", "--adv-eps", "0"], ("eps must be in (0, 1]", "got 0.0")),
    (["--adv", "pgd", "--adv-eps", "-8/255"], ("eps must be in (0, 1]",)),
    (["--adv", "mix", "--adv-eps", "0.1", "--adv-fraction", "0"], ("fraction", "(0, 1]")),
    (["--adv", "mix", "--adv-eps", "0.1", "--adv-fraction", "1.5"], ("fraction",)),
    (["--adv", "pgd", "--adv-eps", "0.1", "--adv-fraction", "0.5"], ("takes no fraction",)),
    (["--adv", "trades", "--adv-eps", "0.1", "--trades-beta", "-1"], ("TRADES beta",)),
    (["--adv", "pgd"], ("needs --adv-eps",)),
    (["--adv-eps", "0.1"], ("need --adv",)),
    (["--adv", "mix", "--adv-eps", "0.1", "--loss", "differential", "--classes", "0,1"],
     ("cannot be combined with --loss differential",)),
])
def test_cli_bad_input_is_one_line(args: list[str], needles: tuple[str, ...],
                                   tmp_path: Path) -> None:
    res = runner.invoke(app, ["train", "--model", "mlp", "--dataset", "digits", "--epochs", "1",
                              "--out", str(tmp_path / "r"), "--no-progress", *args])
    _one_error_line(res, *needles)


def test_trades_refuses_a_single_output_model() -> None:
    class OneOutput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x.flatten(1)[:, :4])

    with pytest.raises(ValueError, match="TRADES needs a model with at least 2 outputs"):
        recipe_parts(adversarial_spec("trades", EPS), OneOutput())


def test_trades_works_on_a_two_class_model() -> None:
    """KL between two-class distributions is meaningful: a binary model trains with TRADES."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (64,), generator=g)
    x = (0.3 + 0.4 * y.float()).view(-1, 1, 1, 1).expand(64, 1, 4, 4).contiguous()
    x = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    with seeded(0, "model"):
        model = create_model("mlp", num_classes=2, in_channels=1, input_size=4, mean=(0.5,),
                             std=(0.5,), hidden=(8,))
    config = TrainConfig(epochs=5, batch_size=16, lr=0.1, schedule="constant", seed=0,
                         adv=adversarial_spec("trades", 0.05))
    history, _ = adversarial_train(model, (x, y), None, config)
    assert history[-1]["train_acc"] > 0.9


def test_attack_check_false_skips_the_judging_forward_and_returns_the_same_x_adv() -> None:
    calls = {"n": 0}

    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _model()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls["n"] += 1
            return self.net(x)

    model = Counting().eval()
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 10
    attack = PGD(EPS, steps=3, early_stop=False, seed=3)
    full = attack(model, x, y)
    n_full, calls["n"] = calls["n"], 0
    fast = attack(model, x, y, check=False)
    assert calls["n"] == n_full - 1 == 3
    assert torch.equal(fast.x_adv, full.x_adv)
    assert fast.success is None and fast.logits is None and fast.info["checked"] is False
    assert torch.equal(fast.norms, full.norms)


def test_guard_warns_when_pgd_accuracy_is_far_below_the_training_attack_accuracy(
        digits: tuple, caplog: pytest.LogCaptureFixture) -> None:
    """A collapse before any good epoch (seen on MNIST at ε 0.3: FGSM-example accuracy 92 %,
    held-out PGD accuracy 0 % from epoch 1) has no drop to detect; the gap gives it away."""
    train, _, _ = digits
    guard = OverfittingGuard(train, EPS)
    guard.accs[1], guard.accs[2] = 0.0, 0.6
    with caplog.at_level(logging.WARNING, logger="robustact.train"):
        guard.on_epoch_end(None, 2, {"train_acc": 0.9})  # type: ignore[arg-type]
        assert not caplog.records
        guard.on_epoch_end(None, 1, {"train_acc": 0.92})  # type: ignore[arg-type]
    (rec,) = caplog.records
    assert "catastrophic overfitting" in rec.getMessage() and "92.0%" in rec.getMessage()
