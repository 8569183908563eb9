"""Certified training and the sandwich in every evaluation (issue 24), on sklearn's digits.

``train --adv ibp`` certifies more than plain training and resumes bit for bit; ``evaluate``
reports the certified accuracy under the attack figure (and on the curve), says why a model
has none, and stops on a sample certified and broken; ``certify`` alone; bad options are one
line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _helpers import cli_ok
from test_cli_errors import one_error_line
from typer.testing import CliRunner

import robustact.evaluate.certified as certified_mod
from robustact.certify import Certificate
from robustact.cli import app
from robustact.core.storage import load_tensors, read_json
from robustact.train import Trainer

runner = CliRunner()
CPU = ["--threads", "1", "--device", "cpu"]
TRAIN = ["train", "--model", "mlp", "--dataset", "digits", "--optimizer", "adam", "--lr", "0.003",
         "--batch-size", "64", "--no-progress", *CPU]
IBP = ["--adv", "ibp", "--adv-eps", "0.1", "--cert-schedule", "warmup=1,ramp=3"]
EVAL = ["--protocol", "quick", "--n", "60", "--no-progress", "--audit-samples", "5", *CPU]


ok = cli_ok


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cert")
    ok([*TRAIN, "--epochs", "8", "--out", str(root / "ibp"), *IBP])
    ok([*TRAIN, "--epochs", "8", "--out", str(root / "plain")])
    ok([*TRAIN, "--epochs", "8", "--out", str(root / "crown"), "--adv", "crown-ibp",
        "--adv-eps", "0.1", "--cert-schedule", "warmup=1,ramp=3,kappa_end=0"])
    return {"ibp": root / "ibp" / "final", "plain": root / "plain" / "final",
            "crown": root / "crown" / "final", "root": root}


def _certified(model: Path, tmp: Path) -> dict:
    out = tmp / f"{model.parent.name}.json"
    ok(["certify", "--model", str(model), "--eps", "0.1", "--n", "200", "--out", str(out), *CPU])
    return read_json(out)


def test_certified_training_certifies_more_than_plain_training(models, tmp_path) -> None:
    ibp, plain = _certified(models["ibp"], tmp_path), _certified(models["plain"], tmp_path)
    crown = _certified(models["crown"], tmp_path)
    assert ibp["certified_crown_ibp"] >= ibp["certified_ibp"]
    assert ibp["certified_ibp"] > plain["certified_ibp"] + 0.2, (ibp, plain)
    assert crown["certified_crown_ibp"] > plain["certified_crown_ibp"] + 0.2, (crown, plain)
    assert ibp["clean_accuracy"] > 0.6
    card = read_json(models["ibp"] / "card.json")
    assert card["train"]["adv"]["recipe"] == "ibp" and card["train"]["adv"]["eps_train"] == 0.1


def test_certified_training_resumes_bit_for_bit(models, tmp_path, monkeypatch) -> None:
    """Killed after epoch 3 (mid-ramp), resumed: the schedule continues from the step count."""
    out = tmp_path / "resumed"
    real = Trainer._end_epoch

    def killed(self, epoch, *a, **k):
        real(self, epoch, *a, **k)
        if epoch == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_end_epoch", killed)
    assert runner.invoke(app, [*TRAIN, "--epochs", "8", "--out", str(out), *IBP]).exit_code == 130
    monkeypatch.setattr(Trainer, "_end_epoch", real)
    ok([*TRAIN, "--epochs", "8", "--out", str(out), "--resume"])  # recipe read from the card
    a = load_tensors(models["ibp"] / "model.safetensors")
    b = load_tensors(out / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_evaluate_reports_the_sandwich(models, tmp_path) -> None:
    out = tmp_path / "ev"
    printed = ok(["evaluate", "--model", str(models["ibp"]), "--out", str(out), *EVAL])
    s = read_json(out / "summary.json")
    assert s["certified"]["available"] and s["certified_accuracy"] is not None
    assert s["certified_accuracy"] <= s["robust_accuracy"]  # a lower bound under the figure
    assert "certified accuracy" in printed and "lies between" in printed
    rows = {round(r["eps"], 6): r for r in s["certified"]["per_eps"]}
    assert set(rows) == {round(e, 6) for e in s["eps_grid"] if e > 0}
    record = read_json(out / "report.json")
    assert record["curves"]["certified"]["robust_accuracy"][-1] <= 1.0
    assert "certified accuracy" in (out / "report.html").read_text()
    for e, wc in s["worst_case"].items():  # at every ε: certified ≤ worst case
        if float(e) > 0:
            assert rows[round(float(e), 6)]["certified"] / s["n"] <= wc + 1e-9


def test_a_certified_and_broken_sample_stops_the_run(models, tmp_path, monkeypatch) -> None:
    def claims_all(model, x, y, **kw):
        n = len(y)
        return Certificate(torch.ones(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64))

    monkeypatch.setattr(certified_mod, "certify", claims_all)
    res = runner.invoke(app, ["evaluate", "--model", str(models["plain"]), "--out",
                              str(tmp_path / "bad"), *EVAL])
    line = one_error_line(res, "is certified robust at eps=", "broke it", code=1) \
        if res.exit_code == 1 else one_error_line(res, "is certified robust at eps=", "broke it")
    assert "sample " in line


def test_a_model_the_bounds_cannot_cross_says_why(models, tmp_path) -> None:
    net = tmp_path / "net.py"
    net.write_text("import torch\nfrom torch import nn\n"
                   "def make():\n"
                   "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.GELU(),"
                   " nn.Linear(32, 10))\n")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.GELU(),
                                torch.nn.Linear(32, 10))
    from safetensors.torch import save_file
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    out = tmp_path / "gelu"
    printed = ok(["evaluate", "--model-file", f"{net}:make", "--weights",
                  str(tmp_path / "w.safetensors"), "--dataset", "digits", "--allow-chance",
                  "--out", str(out), *EVAL])
    s = read_json(out / "summary.json")
    assert not s["certified"]["available"] and "GELU" in s["certified"]["reason"]
    assert "certified accuracy: none" in printed


@pytest.mark.parametrize(("extra", "needle"), [
    (["--adv", "ibp"], "needs --adv-eps"),
    (["--adv", "ibp", "--adv-eps", "0.1", "--adv-steps", "3"], "takes --adv-eps and"),
    (["--adv", "ibp", "--adv-eps", "0.1", "--cert-schedule", "ramp=x"], "ramp"),
    (["--adv", "ibp", "--adv-eps", "0.1", "--cert-schedule", "speed=2"], "speed"),
    (["--adv", "pgd", "--adv-eps", "0.1", "--cert-schedule", "ramp=2"], "ibp or crown-ibp"),
    (["--cert-schedule", "ramp=2"], "need --adv"),
])
def test_bad_certified_options_are_one_line(tmp_path, extra, needle) -> None:
    one_error_line(runner.invoke(app, [*TRAIN, "--epochs", "1", "--out", str(tmp_path / "x"),
                                       *extra]), needle)


def test_certified_training_refuses_batch_norm(tmp_path) -> None:
    one_error_line(runner.invoke(app, ["train", "--model", "resnet20", "--dataset", "digits",
                                       "--epochs", "1", "--out", str(tmp_path / "bn"), *IBP,
                                       "--no-progress", *CPU]), "BatchNorm")
