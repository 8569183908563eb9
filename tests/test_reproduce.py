"""``robustact reproduce``: paper files as data, one runner, resumable per cell.

A tiny paper on scikit-learn's digits (no data root needed) runs end to end; interrupted after
its first cell it resumes without redoing that cell and gives the same table as an uninterrupted
run; a finished reproduction re-renders without attacking anything.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import robustact.runs.reproduce as R
from robustact.cli import app
from robustact.evaluate import evaluate
from robustact.report.reproduction import write_summary
from robustact.runs.reproduce import load_paper, paper_names, reproduce

pytestmark = pytest.mark.usefixtures("one_thread")

TINY: dict[str, Any] = {
    "name": "tiny", "version": 1, "title": "A tiny paper", "source": "tests",
    "description": "an MLP on the digits, plain and with JumpReLU",
    "models": [{"key": "mlp", "dataset": "digits", "arch": "mlp",
                "train": {"epochs": 2, "optimizer": "adam", "lr": 0.01, "seed": 1}}],
    "settings": [{"key": "plain", "defenses": []},
                 {"key": "jump", "defenses": [{"type": "jumprelu", "kappa": 0.5}]}],
    "attacks": {"eps": 0.1, "eps_grid": [0.5, 1], "norms": ["linf", "l2"], "entries": [
        {"key": "fgsm", "attack": {"name": "fgsm"}, "role": "single_step", "eps": "grid",
         "on": "all", "norms": ["linf"]},
        {"key": "ifgsm", "attack": {"name": "ifgsm", "alpha": 0.02, "steps": 5},
         "role": "min_norm", "eps": "none", "on": "all", "norms": ["linf"]},
        {"key": "ifgsm-gray", "attack": {"name": "ifgsm", "alpha": 0.02, "steps": 5},
         "role": "transfer", "eps": "none", "on": "all", "norms": ["linf"], "through": "twin",
         "defended_only": True},
        {"key": "deepfool-l2", "attack": {"name": "deepfool", "steps": 5}, "role": "min_norm",
         "eps": "none", "on": "all", "norms": ["l2"]}]},
    "evaluation": {"protocol": "quick", "overrides": {"steps": 3, "n_queries": 20}},
    "data": {"n": 24},
    "headline": {"attack": "ifgsm", "eps": None, "metric": "accuracy"},
    "claims": [{"model": "mlp", "setting": "plain", "attack": "ifgsm", "eps": None,
                "metric": "accuracy", "value": 50.0, "where": "nowhere"}],
    "quick": {"n": 12, "epochs": 1}}


def _stable(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """The cells without wall times and paths (what must not depend on an interruption)."""
    out = copy.deepcopy(rec["cells"])
    for c in out:
        c.pop("paper_seconds")
        c["strongest"].pop("seconds")
        c["strongest"].pop("report")
    return out


def test_shipped_papers_load_and_expand():
    assert {"jumprelu"} <= set(paper_names())
    p = load_paper("jumprelu")
    assert [m["key"] for m in p["models"]] == ["lenetlike", "lenetlike-robust", "alexlike"]
    assert load_paper("jumprelu@1")["name"] == "jumprelu"
    grid = {**TINY, "models": [{**TINY["models"][0], "key": "mlp-{activation}-s{seed}",
                                "grid": {"activation": ["relu", "tanh"], "seed": [1, 2]},
                                "attack_seeds": [1]}]}
    models = load_paper(grid)["models"]
    assert [m["key"] for m in models] == ["mlp-relu-s1", "mlp-relu-s2", "mlp-tanh-s1",
                                          "mlp-tanh-s2"]
    assert [m["group"] for m in models] == ["mlp-relu", "mlp-relu", "mlp-tanh", "mlp-tanh"]
    assert [m["attacked"] for m in models] == [True, False, True, False]
    assert models[3]["train"]["seed"] == 2 and models[2]["activation"] == "tanh"


@pytest.mark.parametrize("change, words", [
    ({"models": []}, "non-empty list"),
    ({"colour": 1}, "unknown field"),
    ({"settings": [{"key": "x", "defenses": [], "models": ["nope"]}]}, "unknown models"),
    ({"attacks": {"entries": []}}, "needs 'eps'"),
    ({"attacks": {"eps": 0.1, "entries": [{"key": "a", "attack": {"name": "fgsm"},
                                           "role": "boss"}]}}, "role"),
    ({"data": {"n": 0}}, "'data' needs 'n'"),
    ({"quick": {"minutes": 3}}, "'quick' takes")])
def test_a_bad_paper_file_is_one_line(change, words):
    with pytest.raises(ValueError, match=words):
        load_paper({**TINY, **change})
    with pytest.raises(ValueError, match="no paper named"):
        load_paper("jumprelu-v2")


def test_reproduce_runs_resumes_after_an_interruption_and_rerenders(tmp_path, monkeypatch):
    whole = reproduce(TINY, out=tmp_path / "whole", progress=False)
    assert [(c["setting"], c["split"]) for c in whole["cells"]] == [("plain", "test"),
                                                                     ("jump", "test")]
    plain, jump = whole["cells"]
    assert {r["attack"] for r in plain["paper"]} == {"fgsm", "ifgsm", "deepfool-l2"}
    assert {r["attack"] for r in jump["paper"]} == {"fgsm", "ifgsm", "ifgsm-gray",
                                                     "deepfool-l2"}
    fgsm = [r for r in plain["paper"] if r["attack"] == "fgsm"]
    assert [r["eps"] for r in fgsm] == [0.05, 0.1]
    assert fgsm[0]["accuracy"] >= fgsm[1]["accuracy"]  # one ε inside the other
    assert all(r["rho"] > 0 for r in plain["paper"] if r["eps"] is None and r["success_rate"])
    assert jump["defenses"] == [{"type": "jumprelu", "kappa": 0.5}]
    claim = whole["claims"][0]
    ifgsm = next(r for r in plain["paper"] if r["attack"] == "ifgsm")
    assert claim["measured"] == pytest.approx(100 * ifgsm["accuracy"])
    assert claim["difference"] == pytest.approx(claim["measured"] - 50.0)
    for v in ("markdown", "html", "figure"):
        assert Path(whole["views"][v]).is_file()
    html = Path(whole["views"]["html"]).read_text()
    assert "A tiny paper" in html and "jump" in html and "quick run" not in html.lower()
    summary = write_summary(tmp_path, {"tiny": whole}).read_text()
    assert "[tiny](whole/report.html) | mlp | plain | test |" in summary
    assert "ifgsm" in summary and whole["cells"][1]["strongest"]["verdict"] in summary

    # interrupted in its second cell's robustact evaluation, then resumed
    calls = {"n": 0}
    real = R.evaluate_model

    def dies_second(*a: Any, **k: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(R, "evaluate_model", dies_second)
    with pytest.raises(KeyboardInterrupt):
        reproduce(TINY, out=tmp_path / "cut", progress=False)
    monkeypatch.setattr(R, "evaluate_model", real)
    ran: list[str] = []
    real_cell = R._run_cell
    monkeypatch.setattr(R, "_run_cell", lambda *a, **k: ran.append(a[4]["key"])
                        or real_cell(*a, **k))
    resumed = reproduce(TINY, out=tmp_path / "cut", progress=False)
    assert ran == ["jump"]  # the finished cell was read back, not redone
    assert _stable(resumed) == _stable(whole)
    assert resumed["models"][0]["test_accuracy"] == whole["models"][0]["test_accuracy"]

    # a finished reproduction only re-renders
    ran.clear()
    again = reproduce(TINY, out=tmp_path / "cut", progress=False)
    assert ran == [] and _stable(again) == _stable(whole)


def test_quick_is_labelled_and_the_cli_runs_a_paper_file(tmp_path):
    paper = tmp_path / "tiny.json"
    paper.write_text(json.dumps(TINY))
    res = CliRunner().invoke(app, ["reproduce", str(paper), "--quick", "--out",
                                   str(tmp_path / "q"), "--no-progress", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "mlp / plain / test: clean" in res.output and "report:" in res.output
    rec = json.loads((tmp_path / "q" / "results.json").read_text())
    assert rec["quick"] and rec["data"]["n"] == 12
    assert "quick run" in (tmp_path / "q" / "report.html").read_text().lower()
    assert "(quick" in (tmp_path / "q" / "report.md").read_text()
    bad = CliRunner().invoke(app, ["reproduce", "nonesuch", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "no paper named 'nonesuch'" in bad.output


def test_reduced_settings_are_recorded_and_labelled(tmp_path):
    rec = reproduce(TINY, out=tmp_path / "r", progress=False, only=["ml"], epochs=1, n=10)
    assert rec["reduced"] == {"models": ["mlp"], "epochs": 1, "n": 10}
    assert rec["models"][0]["epochs"] == 1 and rec["cells"][0]["n"] == 10
    assert "Reduced settings: models mlp; at most 1 epochs; 10 images" in (
        tmp_path / "r" / "report.html").read_text()
    assert "(reduced settings:" in (tmp_path / "r" / "report.md").read_text()
    with pytest.raises(ValueError, match="--only cnn matches no model of tiny"):
        reproduce(TINY, out=tmp_path / "x", progress=False, only=["cnn"])


def test_transfer_entries_craft_on_the_given_surrogate(tmp_path):
    """``evaluate(..., surrogate=)``: a ``through: twin`` entry crafts on that model (a paper's
    ReLU-trained source) instead of the undefended twin; a folder made with one surrogate is
    not resumed with another."""
    torch.manual_seed(0)
    x = torch.rand(40, 1, 8, 8)

    def net() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32),
                                   torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()

    model, other = net(), net()
    y = model(x).argmax(1)
    proto = {"name": "t", "adaptive": "none", "eps_grid": [1], "entries": [
        {"key": "tr", "attack": {"name": "fgsm"}, "role": "transfer", "eps": "main",
         "on": "all", "through": "twin"},
        {"key": "wb", "attack": {"name": "fgsm"}, "role": "standard", "eps": "main",
         "on": "all"}]}
    plain = evaluate(model, x, y, proto, eps=0.2, progress=False)
    same = evaluate(model, x, y, proto, eps=0.2, progress=False, surrogate=model)
    away = evaluate(model, x, y, proto, eps=0.2, progress=False, surrogate=other,
                    out=str(tmp_path / "o"))
    tr = [t["success"][t["attack"] == "tr"] for t in (plain, same, away)]
    wb = plain["success"][plain["attack"] == "wb"]
    assert (tr[0] == wb).all() and (tr[1] == wb).all()  # the twin of an undefended model is it
    assert (tr[2] != wb).any()  # crafted on another model: other points
    with pytest.raises(ValueError):
        evaluate(model, x, y, proto, eps=0.2, progress=False, out=str(tmp_path / "o"))


def test_a_settings_output_activation_replaces_the_trained_one(tmp_path):
    """As ``robustact defend`` does: f and T of the setting, not f(T·f(z))."""
    paper = {**TINY, "models": [{**TINY["models"][0], "output_activation": "sigmoid",
                                 "temperature": 1.0}],
             "settings": [{"key": "T=50", "defenses": [
                 {"type": "output_activation", "f": "tanh", "temperature": 50.0}]}],
             "attacks": {**TINY["attacks"], "norms": ["linf"],
                         "entries": TINY["attacks"]["entries"][:1]},
             "claims": []}
    cell = reproduce(paper, out=tmp_path / "oa", progress=False, n=12)["cells"][0]
    assert cell["defenses"] == [{"type": "output_activation", "f": "tanh", "temperature": 50.0}]
    stored = json.loads((tmp_path / "oa" / "cells" / "mlp" / "T=50" / "test" / "strongest"
                         / "table.json").read_text())
    assert stored["meta"]["model"]["defenses"] == cell["defenses"]  # one wrapper, tanh at 50
