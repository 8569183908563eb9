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
from robustact.evaluate import COLUMNS, ResultsTable, evaluate, load_table
from robustact.report.reproduction import (
    headline_for,
    headline_rows,
    summary_table,
    write_summary,
)
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
    assert [m["key"] for m in p["models"]] == ["lenetlike", "lenetlike-robust", "alexlike",
                                               "alexlike-robust", "resnet20", "resnet20-robust"]
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
    none = CliRunner().invoke(app, ["reproduce", str(paper), "--dataset", "mnist", "--out",
                                    str(tmp_path / "y"), "--jobs", "2"])
    assert none.exit_code == 2 and "tiny has no mnist model" in none.output
    assert "Traceback" not in none.output


def test_reduced_settings_are_recorded_and_labelled(tmp_path):
    rec = reproduce(TINY, out=tmp_path / "r", progress=False, only=["ml"], epochs=1, n=10)
    assert rec["reduced"] == {"models": ["mlp"], "epochs": 1, "n": 10}
    assert rec["models"][0]["epochs"] == 1 and rec["cells"][0]["n"] == 10
    assert "Reduced settings: models mlp; at most 1 epochs; 10 images" in (
        tmp_path / "r" / "report.html").read_text()
    assert "(reduced settings:" in (tmp_path / "r" / "report.md").read_text()
    # some models of the file in its full settings: a part, not a reduced run
    two = {**TINY, "models": [TINY["models"][0], {**TINY["models"][0], "key": "mlp2"}]}
    part = reproduce(two, out=tmp_path / "p", progress=False, only=["mlp2"])
    assert part["reduced"] == {"models": ["mlp2"]}
    assert "(part of the file, full settings: models mlp2)" in (
        tmp_path / "p" / "report.md").read_text()
    assert "[tiny](p/report.html) (part)" in summary_table({"tiny": part}, tmp_path)
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


def test_entries_and_budgets_per_dataset_and_a_cells_key_is_its_own_datasets():
    """``datasets`` keeps an entry to those datasets and ``eps`` may be one per dataset; a
    cell's key is what ran on its dataset, so another dataset's entries change no MNIST key."""
    attacks = {"eps": {"digits": 0.1, "mnist": 0.3}, "norms": ["linf"], "entries": [
        {"key": "i", "attack": {"name": "ifgsm", "alpha": 0.02, "steps": 5}, "role": "min_norm",
         "eps": "none", "on": "all", "datasets": ["digits"]},
        {"key": "i", "attack": {"name": "ifgsm", "alpha": 0.01, "steps": 7}, "role": "min_norm",
         "eps": "none", "on": "all", "datasets": ["mnist"]},
        {"key": "f", "attack": {"name": "fgsm"}, "role": "single_step", "eps": "main",
         "on": "all"}]}
    paper = load_paper({**TINY, "attacks": attacks, "claims": [],
                        "models": [TINY["models"][0], {**TINY["models"][0], "key": "m2",
                                                       "dataset": "mnist"}]})
    digits = R._attacks_for(paper["attacks"], "digits")
    assert digits["eps"] == 0.1
    assert [e["attack"].get("steps") for e in digits["entries"]] == [5, None]
    assert all("datasets" not in e for e in digits["entries"])
    assert R._attacks_for(paper["attacks"], "mnist")["entries"][0]["attack"]["steps"] == 7
    # the same entries without the field: the same key, so nothing reruns
    bare = {"eps": 0.1, "norms": ["linf"], "entries": [
        {k: v for k, v in e.items() if k != "datasets"} for e in attacks["entries"][::2]]}
    assert R._attacks_for(bare, "digits") == digits
    with pytest.raises(ValueError, match="one per dataset"):
        load_paper({**TINY, "attacks": {**attacks, "eps": {"mnist": 0.3}}})
    with pytest.raises(ValueError, match="'datasets' is a list"):
        load_paper({**TINY, "attacks": {**attacks, "entries": [
            {**attacks["entries"][2], "datasets": "digits"}]}})


def test_a_targeted_entry_aims_at_its_rule_and_reports_reaching_it(tmp_path):
    """``target``: the attack gets each sample's target; the table's success stays
    "misclassified" (the evaluation's meaning) and the reproduction's success is reaching it."""
    paper = {**TINY, "claims": [], "settings": TINY["settings"][:1],
             "attacks": {"eps": 0.3, "eps_grid": [1], "norms": ["linf"], "entries": [
                 {"key": "pgd", "attack": {"name": "pgd", "steps": 10}, "role": "standard",
                  "eps": "main", "on": "all"},
                 {"key": "pgd-next", "attack": {"name": "pgd", "steps": 10},
                  "role": "loss_variant", "eps": "main", "on": "all", "target": "next"}]}}
    rec = reproduce(paper, out=tmp_path / "t", progress=False, n=24)
    rows = {r["attack"]: r for r in rec["cells"][0]["paper"]}
    t = load_table(tmp_path / "t" / "cells" / "mlp" / "plain" / "test" / "paper-linf")
    assert t.meta["attacks"]["pgd-next"]["target"] == "next"
    c = t.cell("pgd-next")
    ok = c["clean_correct"]
    hit = ok & c["success"] & (c["pred"] == (c["label"] + 1) % 10)
    assert rows["pgd-next"]["success_rate"] == pytest.approx(hit.sum() / ok.sum())
    assert (c["success"] >= hit).all()  # the row's success: any misclassification
    cells = json.loads((tmp_path / "t" / "cells" / "mlp" / "plain" / "test" / "paper-linf"
                        / "table.json").read_text())["cells"]
    assert [x["mismatch"] for x in cells] == [0, 0]  # the attack's "hit" is the verified one
    # reaching one named class is harder than leaving the true one
    assert 0 < rows["pgd-next"]["success_rate"] <= rows["pgd"]["success_rate"]
    # the file edited under a finished reproduction: that cell reruns instead of the engine
    # refusing its old folders
    edited = {**paper, "attacks": {**paper["attacks"],
                                   "entries": paper["attacks"]["entries"][:1]}}
    strongest = tmp_path / "t" / "cells" / "mlp" / "plain" / "test" / "strongest" / "cells"
    made = strongest.stat().st_mtime_ns  # each attack cell's results, written once
    again = reproduce(edited, out=tmp_path / "t", progress=False, n=24)["cells"][0]
    assert again["paper"] == [rows["pgd"]]
    # only the paper's attacks changed: robustact's evaluation was read back, not rerun; a new
    # ε (which that evaluation takes) reruns it
    assert strongest.stat().st_mtime_ns == made
    assert again["strongest"]["robust_accuracy"] == rec["cells"][0]["strongest"][
        "robust_accuracy"]
    wider = {**edited, "attacks": {**edited["attacks"], "eps": 0.25}}
    third = reproduce(wider, out=tmp_path / "t", progress=False, n=24)["cells"][0]
    assert third["strongest"]["eps"] == 0.25 and strongest.stat().st_mtime_ns != made
    with pytest.raises(ValueError, match="target"):
        load_paper({**paper, "attacks": {**paper["attacks"], "entries": [
            {**paper["attacks"]["entries"][1], "target": "far"}]}})


def test_a_headline_per_dataset_picks_each_cells_own_attack_and_budget():
    rec = {"headline": {"mnist": {"attack": "a", "eps": 0.1},
                        "cifar10": {"attack": "b", "eps": None}},
           "models": [{"key": "m", "dataset": "mnist"}, {"key": "c", "dataset": "cifar10"}],
           "claims": [], "cells": []}
    for key in ("m", "c"):
        rec["cells"].append({
            "model": key, "group": key, "setting": "s", "split": "test", "n": 4,
            "clean_accuracy": 1.0, "defenses": [], "tuning": None,
            "paper": [{"attack": "a", "eps": 0.1, "accuracy": 0.5},
                      {"attack": "b", "eps": None, "accuracy": 0.25}],
            "strongest": {"robust_accuracy": 0.0, "eps": 0.1, "verdict": "v", "report": "r"}})
    got = [(r["attack"], r["paper"]) for r in headline_rows(rec)]
    assert got == [("a", 0.5), ("b", 0.25)]
    assert headline_for({"attack": "a"}, "cifar10") == {"attack": "a"}


def test_rho_in_pixels_and_on_the_normalized_inputs_the_jumprelu_paper_uses():
    """ρ = mean ‖δ‖/‖x‖ over the broken points; normalized: ‖δ/σ‖ / ‖(x − μ)/σ‖ (digits:
    μ 0.3, σ 0.38, one channel, so exact)."""
    x = torch.full((3, 1, 2, 2), 0.5)
    x[1] = 0.9
    base = {c: 0 for c in COLUMNS}
    rows = [{**base, "sample": i, "label": 0, "attack": "df", "eps": float("inf"), "norm": "l2",
             "clean_correct": True, "success": i < 2, "pred": 1, "linf": 0.0,
             "l2": 0.1 * (i + 1), "loss_first": float("nan"), "loss_best": float("nan"),
             "stall": float("nan"), "silent": False, "grad_zero": False, "skipped": False,
             "seconds": 0.0} for i in range(3)]
    table = ResultsTable.from_rows(rows, {"attacks": {"df": {"role": "min_norm"}}})
    (row,) = R._metrics(table, x, "l2", "digits")
    assert row["rho"] == pytest.approx((0.1 / 1.0 + 0.2 / 1.8) / 2, rel=1e-6)
    want = ((0.1 / 0.38) / (0.4 / 0.38) + (0.2 / 0.38) / (1.2 / 0.38)) / 2
    assert row["rho_normalized"] == pytest.approx(want, rel=1e-6)
    assert row["success_rate"] == pytest.approx(2 / 3)


def test_units_keep_a_model_with_the_models_it_transfers_from():
    from robustact.runs.reproduce_all import units
    splash, _ = R.paper_as_run("splash", dataset="mnist")
    groups = units(splash)
    assert len(groups) == 3 and all(len(g) == 10 for g in groups)
    assert all({f"lenet5-relu-s{i + 1}", f"lenet5-splash-s{i + 1}"} <= set(g)
               for i, g in enumerate(groups))
    jump, reduced = R.paper_as_run("jumprelu", dataset="mnist")
    assert units(jump) == [["lenetlike"], ["lenetlike-robust"]]
    assert reduced == {"dataset": "mnist"}
    with pytest.raises(ValueError, match="differential has no mnist model"):
        R.paper_as_run("differential", dataset="mnist")


def test_all_of_a_datasets_parts_in_worker_processes_matches_one_process(tmp_path):
    """``reproduce_all(dataset=, jobs=2)``: each paper's models on that dataset, units run by
    two spawned workers into the paper's folder, then one pass renders it: the same cells as
    one process; a paper without such a model is skipped and its other models never touched."""
    from robustact.runs.reproduce_all import reproduce_all, summarize
    other = {**TINY["models"][0], "key": "cnn-mnist", "dataset": "mnist", "arch": "lenet5"}
    two = {**TINY, "models": [*TINY["models"], {**TINY["models"][0], "key": "mlp2"}, other]}
    mnist_only = {**TINY, "name": "elsewhere", "models": [other]}
    done = reproduce_all(out=tmp_path / "all", papers={"two": two, "elsewhere": mnist_only},
                         dataset="digits", jobs=2, progress=False, command="test")
    assert done["skipped"] == ["elsewhere"] and done["papers"] == ["two"]
    rec = done["records"]["two"]
    assert rec["reduced"] == {"dataset": "digits"}
    assert [m["key"] for m in rec["models"]] == ["mlp", "mlp2"]
    assert not (tmp_path / "all" / "elsewhere").exists()
    assert not any((tmp_path / "all" / "two" / "models").glob("cnn-mnist*"))
    alone = reproduce(two, out=tmp_path / "one", dataset="digits", progress=False)
    assert _stable(rec) == _stable(alone)
    summary = (tmp_path / "all" / "summary.md").read_text()
    assert "[two](two/report.html) (digits part) | mlp2 | jump |" in summary
    assert "This invocation, all of them: `test`" in summary and "2 worker processes" in summary
    assert "the digits models" in (tmp_path / "all" / "two" / "report.md").read_text()
    (tmp_path / "all" / "summary.md").unlink()
    assert "This invocation, all of them: `test`" in summarize(tmp_path / "all").read_text()
    top = summarize(tmp_path).read_text()  # "one" a row, "all" (a folder of its own) a link
    assert "[one](one/report.html) (digits part) |" in top and "[all](all/summary.md)" in top
