"""Every kind of model is evaluated, none misleads (issue 20, items 4-6).

- a model returning probabilities is attacked through their logarithm (same predictions), and
  the report says so;
- a randomized model (noise in forward, dropout left on) is detected and evaluated with EOT:
  attacks see the mean logits over draws, correctness is a majority vote over fresh draws,
  a seeded run is reproducible and the global RNG is left as it was;
- a deterministic model's table is bit for bit what it was without the detection;
- a clean accuracy at chance stops ``evaluate`` before any attack, in one line, unless
  ``--allow-chance``.

All on sklearn's digits with a linear model trained for 100 full-batch steps, 30 images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import user_model_files
from torch import nn
from typer.testing import CliRunner

import robustact.evaluate.runner as runner_mod
from robustact.attacks.eot import EOT, MajorityVote, eot_draws
from robustact.cli import app
from robustact.core.storage import read_json
from robustact.data import load_dataset
from robustact.evaluate import evaluate, load_table
from robustact.models.outputs import LogOf, is_randomized, output_kind, pin_train_mode
from robustact.models.predict import predict
from robustact.runs.evaluate import chance_threshold

runner = CliRunner()
FAST = ["--dataset", "digits", "--protocol", "quick", "--n", "30", "--no-progress",
        "--threads", "1", "--device", "cpu", "--audit-samples", "5"]

NET = '''
import torch
from torch import nn

class Lin(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)
    def forward(self, x):
        return self.fc(x.flatten(1))

class Probs(Lin):
    def forward(self, x):
        return torch.softmax(super().forward(x), 1)

class Noisy(Lin):
    def forward(self, x):
        return super().forward(x + 0.2 * torch.randn_like(x))

class Dropout(Lin):
    """MC dropout: its train() keeps the dropout on."""
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.2)
    def train(self, mode=True):
        super().train(mode)
        self.drop.train(True)
        return self
    def forward(self, x):
        return self.fc(self.drop(x.flatten(1)))

def fresh():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Lin()
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("kinds")
    user_model_files(d, NET, lambda: nn.Linear(64, 10), steps=100, lr=0.05, flat=True,
                     prefix="fc.")
    return {"net": d / "net.py", "w": d / "w.safetensors"}


def _evaluate(files: dict[str, Path], factory: str, out: Path, *extra: str,
              weights: bool = True) -> object:
    w = ["--weights", str(files["w"])] if weights else []
    return runner.invoke(app, ["evaluate", "--model-file", f"{files['net']}:{factory}", *w,
                               *FAST, "--out", str(out), *extra])


def test_probabilities_are_attacked_through_their_log(files: dict[str, Path],
                                                      tmp_path: Path) -> None:
    res = _evaluate(files, "Probs", tmp_path / "p")
    assert res.exit_code == 0, res.output
    report = (tmp_path / "p" / "report.md").read_text()
    assert "probabilities: attacked through their logarithm" in report
    ref = _evaluate(files, "Lin", tmp_path / "l", "--no-audit")
    assert ref.exit_code == 0, ref.output
    got, want = load_table(tmp_path / "p"), load_table(tmp_path / "l")
    assert (got.meta["clean"]["clean_pred"] == want.meta["clean"]["clean_pred"]).all()
    assert got.meta["randomness"] == {"randomized": False, "eot": 0}


def test_output_kinds_and_log_of() -> None:
    z = torch.randn(6, 4)
    assert output_kind(z) == "logits"
    assert output_kind(torch.softmax(z, 1)) == "probabilities"
    assert output_kind(torch.log_softmax(z, 1)) == "log-probabilities"
    assert output_kind(torch.sigmoid(100 * z)) == "logits"  # saturated bounded outputs
    with pytest.raises(ValueError, match="NaN"):
        output_kind(z * float("nan"))
    with pytest.raises(ValueError, match="shape"):
        output_kind(z[0])
    p = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Softmax(1))
    x = torch.rand(5, 1, 2, 2)
    assert torch.equal(LogOf(p)(x).argmax(1), p(x).argmax(1))


def test_noisy_model_is_evaluated_with_eot_reproducibly(files: dict[str, Path],
                                                        tmp_path: Path) -> None:
    res = _evaluate(files, "Noisy", tmp_path / "a", "--no-audit")
    assert res.exit_code == 0, res.output
    assert "EOT over 10 draws" in (tmp_path / "a" / "report.md").read_text()
    a = load_table(tmp_path / "a")
    assert a.meta["randomness"]["randomized"] and a.meta["randomness"]["eot"] == 10
    again = _evaluate(files, "Noisy", tmp_path / "b", "--no-audit")
    assert again.exit_code == 0, again.output
    b = load_table(tmp_path / "b")
    for col in ("success", "pred", "linf", "forward", "clean_correct"):
        assert np.array_equal(a[col], b[col]), col
    off = _evaluate(files, "Noisy", tmp_path / "c", "--no-audit", "--eot", "0")
    assert off.exit_code == 0, off.output
    assert load_table(tmp_path / "c").meta["randomness"]["eot"] == 0
    assert "EOT disabled" in (tmp_path / "c" / "report.md").read_text()


def test_dropout_left_on_is_a_randomized_model(files: dict[str, Path], tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    res = _evaluate(files, "Dropout", tmp_path / "d", "--no-audit", "--eot", "3")
    assert res.exit_code == 0, res.output
    assert "stays in train mode after .eval() (drop)" in caplog.text
    assert load_table(tmp_path / "d").meta["randomness"]["eot"] == 3


class _Scaled(nn.Module):
    """Logits (u·Σx, 0) with u ~ U(0, 2) drawn per forward: d z0 / dx = u, mean 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = torch.rand(()) * 2
        s = x.flatten(1).sum(1) * u
        return torch.stack([s, torch.zeros_like(s)], 1)


class _Vote(nn.Module):
    """Three classes; per row a random class, class 0 with probability ``p0``."""

    def __init__(self, p0: float) -> None:
        super().__init__()
        self.p0 = p0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = torch.rand(x.shape[0])
        cls = torch.where(u < self.p0, 0, torch.where(u < (1 + self.p0) / 2, 1, 2))
        return nn.functional.one_hot(cls, 3).float() * 5


def test_eot_averages_gradients_and_votes_by_majority() -> None:
    x = torch.rand(4, 1, 3, 3, requires_grad=True)
    EOT(_Scaled(), 400, seed=1)(x)[:, 0].sum().backward()
    assert x.grad is not None and torch.allclose(x.grad, torch.ones_like(x), atol=0.1)
    x1 = torch.rand(4, 1, 3, 3)
    one, two, other = EOT(_Scaled(), 5, seed=3), EOT(_Scaled(), 5, seed=3), EOT(_Scaled(), 5)
    first = one(x1)
    assert torch.equal(first, two(x1)) and not torch.equal(first, other(x1))  # seeded
    assert not torch.equal(one(x1), first)  # fresh draws at every call
    xs = torch.rand(200, 1, 2, 2)
    y = torch.zeros(200, dtype=torch.long)
    strong = predict(MajorityVote(_Vote(0.8), 15, seed=0).eval(), (xs, y))
    weak = predict(MajorityVote(_Vote(0.4), 15, seed=0).eval(), (xs, y))
    assert strong.accuracy > 0.95  # right in 80 % of draws: a majority nearly always
    assert weak.accuracy < 0.3 and weak.n_tied > 100  # no majority: a tie, not correct
    assert eot_draws(None, False) == 0 and eot_draws(5, False) == 0
    assert eot_draws(None, True) == 10 and eot_draws(0, True) == 0


def test_detection_and_eot_leave_the_global_rng_alone() -> None:
    x = torch.rand(3, 1, 2, 2)
    before = torch.get_rng_state()
    assert is_randomized(_Scaled(), x)
    assert not is_randomized(nn.Flatten(), x)
    EOT(_Scaled(), 3)(x)
    MajorityVote(_Vote(0.5), 3)(x)
    assert torch.equal(before, torch.get_rng_state())


def test_pinned_train_mode_keeps_dropout_and_buffers() -> None:
    m = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5)).eval()
    m[1].train(True)
    m[2].train(True)
    assert pin_train_mode(m) == ["1", "2"]
    m.eval()
    assert not any(s.training for s in m.modules())
    stats = m[1].running_mean.clone()
    m(torch.randn(8, 4))
    assert torch.equal(stats, m[1].running_mean)  # evaluating never changes the model
    assert is_randomized(m, torch.randn(8, 4))


def test_deterministic_table_is_unchanged_by_the_detection(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    ds = load_dataset("digits", "test").subset(torch.arange(20))
    x, y = ds.x(), ds.labels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    kw = {"protocol": "quick", "eps": 0.1, "progress": False, "seed": 0}
    with_detection = evaluate(model, x, y, **kw)
    forced = evaluate(model, x, y, eot=5, **kw)  # not randomized: nothing to average
    monkeypatch.setattr(runner_mod, "_randomness", lambda m, x, eot, seed: (0, m, {}))
    without = evaluate(model, x, y, **kw)
    for col in without.columns:
        if col != "seconds":
            nan = without[col].dtype.kind == "f"
            assert np.array_equal(with_detection[col], without[col], equal_nan=nan), col
            assert np.array_equal(forced[col], without[col], equal_nan=nan), col


def test_chance_accuracy_stops_before_any_attack(files: dict[str, Path], tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    res = _evaluate(files, "fresh", tmp_path / "o", weights=False)
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "at chance" in errors[0]
    assert "--weights" in errors[0] and "--normalize" in errors[0] and "--allow-chance" in errors[0]
    assert "no --weights given" in caplog.text  # the loader's own warning line is kept
    assert not (tmp_path / "o").exists()
    ok = _evaluate(files, "fresh", tmp_path / "o", "--allow-chance", "--no-audit",
                   weights=False)
    assert ok.exit_code == 0, ok.output
    assert read_json(tmp_path / "o" / "summary.json")["clean_accuracy"] < chance_threshold(10, 30)


def test_chance_threshold_has_a_binomial_margin() -> None:
    assert chance_threshold(10, 30) == pytest.approx(0.1 + 2 * (0.09 / 30) ** 0.5)
    assert chance_threshold(10, 10000) == pytest.approx(0.15)  # the 5-point floor
    assert chance_threshold(2, 1000) == pytest.approx(0.55)
