"""Weight averaging (``TrainConfig.ema``): the average's arithmetic, that the trainer judges,
saves and hands back the average while the optimizer's trajectory is unchanged, resume, and
bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _helpers import Interrupt, StopAfter
from torch import nn
from typer.testing import CliRunner

from robustact.checkpoint import load_checkpoint_tensors
from robustact.cli import app
from robustact.core.storage import load_tensors
from robustact.data import load_dataset
from robustact.models import create_model
from robustact.train import TrainConfig, Trainer, read_card, seeded
from robustact.train.adversarial import adversarial_spec, adversarial_train
from robustact.train.averaging import WeightAverage
from robustact.train.loop import RAW_WEIGHTS

runner = CliRunner()


@pytest.fixture(scope="module")
def digits() -> tuple:
    train = load_dataset("digits", "train")
    return (train.images[:320], train.labels[:320]), (train.images[320:480],
                                                      train.labels[320:480])


def _model() -> nn.Module:
    with seeded(0, "model"):
        return create_model("mlp", dataset="digits", hidden=(32,))


def _config(ema: float | None, epochs: int = 3, adv: dict | None = None) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=32, lr=0.05, schedule="constant", seed=0,
                       ema=ema, adv=adv)


def test_average_follows_the_ramped_decay() -> None:
    """From w0, with the weights held at w, the average is w + (w0 - w)·Π d_t, where
    d_t = min(decay, (1 + t) / (10 + t)); a counter is copied, not averaged."""
    lin = nn.Linear(1, 1, bias=False)
    bn = nn.BatchNorm1d(1)
    model = nn.Sequential(lin, bn)
    with torch.no_grad():
        lin.weight.fill_(2.0)
    avg = WeightAverage(model, 0.5)
    with torch.no_grad():
        lin.weight.fill_(-1.0)
    bn.num_batches_tracked.fill_(7)
    keep = 1.0
    for t in range(6):
        avg.update(model)
        keep *= min(0.5, (1 + t) / (10 + t))
        expected = -1.0 + (2.0 - -1.0) * keep
        assert avg.shadow["0.weight"].item() == pytest.approx(expected, rel=1e-6)
    assert avg.shadow["1.num_batches_tracked"].item() == 7
    # the ramp matters: the first updates weigh the new weights by 0.9, 0.82, ... not 0.5
    assert WeightAverage(model, 0.999).rate() == pytest.approx(0.9)


def test_applied_swaps_in_the_average_and_keeps_what_the_block_changes() -> None:
    model = nn.Linear(2, 2)
    avg = WeightAverage(model, 0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    with avg.applied(model) as kept:
        assert torch.equal(model.weight, avg.shadow["weight"])
        assert torch.equal(kept["weight"], raw["weight"])
        with torch.no_grad():
            model.bias.fill_(3.0)  # a callback fitting the bias to the judged weights
    assert torch.equal(model.weight, raw["weight"]) and torch.equal(model.bias, raw["bias"])
    assert torch.all(avg.shadow["bias"] == 3.0)


def test_trainer_judges_saves_and_returns_the_average_on_an_unchanged_trajectory(
        digits: tuple, tmp_path: Path) -> None:
    train, val = digits
    plain = _model()
    Trainer(plain, train, val, _config(None), progress=False).fit()
    model = _model()
    history = Trainer(model, train, val, _config(0.9), out_dir=tmp_path, progress=False).fit()
    # The optimizer's weights are exactly those of the run without averaging ...
    raw = load_checkpoint_tensors(tmp_path / "last", RAW_WEIGHTS)
    for k, v in plain.state_dict().items():
        assert torch.equal(raw[k], v), k
    # ... while the model handed back, saved and validated is their average, a different one.
    saved = load_tensors(tmp_path / "last" / "model.safetensors")
    assert any(not torch.equal(saved[k], v) for k, v in raw.items())
    for k, v in model.state_dict().items():
        assert torch.equal(saved[k], v), k
    trainer = Trainer(model, train, val, _config(0.9), progress=False)
    assert history[-1]["val_acc"] == trainer.evaluate()["acc"]
    assert read_card(tmp_path / "last")["train"]["ema"] == 0.9


def _fit(model: nn.Module, data: tuple, config: TrainConfig, resume: bool = False,
         **kw: object) -> list[dict]:
    """Plain or adversarial training (the project's own entry point for a recipe)."""
    if config.adv:
        return adversarial_train(model, *data, config, resume=resume, **kw)[0]
    return Trainer(model, *data, config, progress=False, **kw).fit(  # type: ignore[arg-type]
        resume=resume)


@pytest.mark.parametrize("adv", [None, "pgd", "trades"])
def test_resume_with_an_average_is_bit_identical(adv: str | None, digits: tuple,
                                                 tmp_path: Path) -> None:
    config = _config(0.9, adv=adversarial_spec(adv, 0.1) if adv else None)
    ref = _model()
    _fit(ref, digits, config)
    with pytest.raises(Interrupt):
        _fit(_model(), digits, config, out_dir=tmp_path, callbacks=[StopAfter(2)])
    model = _model()  # a fresh process starts from the initial weights
    history = _fit(model, digits, config, out_dir=tmp_path, resume=True)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for k, v in ref.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.1, float("nan"), True])
def test_bad_decay_is_one_clear_error(bad: object) -> None:
    with pytest.raises(ValueError, match=r"ema must be a decay in \(0, 1\)"):
        TrainConfig(ema=bad)  # type: ignore[arg-type]


def test_cli_ema_out_of_range_is_one_line(tmp_path: Path) -> None:
    res = runner.invoke(app, ["train", "--dataset", "digits", "--model", "mlp", "--epochs", "1",
                              "--out", str(tmp_path / "r"), "--no-progress", "--ema", "1.5"])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "ema must be a decay in (0, 1)" in lines[0], res.output


def test_cli_records_the_average_and_resume_takes_it_from_the_card(tmp_path: Path) -> None:
    out = tmp_path / "r"
    base = ["train", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--out",
            str(out), "--no-progress", "--threads", "1"]
    res = runner.invoke(app, [*base, "--ema", "0.99"])
    assert res.exit_code == 0, res.output
    assert read_card(out / "final")["train"]["ema"] == 0.99
    # without repeating --ema: the run's card supplies it (else: "cannot resume ... ema")
    res = runner.invoke(app, [*base, "--resume"])
    assert res.exit_code == 0, res.output
    assert read_card(out / "final")["train"]["ema"] == 0.99
