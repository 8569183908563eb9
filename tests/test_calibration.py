"""The audit's calibration zoo (issue 20, item 1): ``robustact audit calibrate``.

The command runs for real (``--quick``: digits, 7 models, 2 ε, 40 images, reduced budgets);
what is checked is what the lead relies on: one row per (model, ε) with every check's numbers
and the model's split, the rates as k of n, and a rerun that reuses every cell (no model
retrained, no cell re-evaluated) except error rows and cells whose settings changed. Those
three run the command and are marked slow (``make test-slow``, run by CI); the rates, the zoo's
split and the broken kinds are checked in the fast suite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _helpers import FeatureNet, cli_ok
from torch import nn
from typer.testing import CliRunner

import robustact.runs.calibrate as calibrate_mod
import robustact.runs.zoo as zoo_mod
from robustact.core.storage import atomic_write_json, read_json
from robustact.defenses import add_output_activation
from robustact.evaluate.audit import AUDIT_VERSION
from robustact.evaluate.selftest import EXTRA_KINDS, BrokenModel
from robustact.evaluate.verdict import VERDICTS
from robustact.runs.calibrate import rates
from robustact.runs.zoo import SPLITS, full_zoo, quick_zoo

runner = CliRunner()
CPU = ["--threads", "1", "--device", "cpu"]


ok = cli_ok


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("calibration") / "cal"
    return out, ok(["audit", "calibrate", "--quick", "--out", str(out), *CPU])


@pytest.mark.slow  # the quick zoo: ~45 s on one idle core
def test_quick_run_writes_a_row_per_cell_with_every_check(quick: tuple[Path, str]) -> None:
    out, printed = quick
    result = read_json(out / "calibration.json")
    zoo = quick_zoo()
    n_cells = sum(len(zoo.eps[zoo.dataset_of(s)]) for s in (*zoo.healthy, *zoo.broken))
    rows = result["rows"]
    assert len(rows) == n_cells == 14
    assert all(not r["error"] for r in rows), [r["error"] for r in rows if r["error"]]
    assert {r["kind"] for r in rows} == {"healthy", "broken"}
    for kind in ("healthy", "broken"):  # both parts of the split hold models of each kind
        assert {r["split"] for r in rows if r["kind"] == kind} == set(SPLITS)
    for r in rows:
        assert r["verdict"] in VERDICTS
        assert r["n"] == 40 and 0 <= r["clean"] <= 1
        assert "C4" in r["checks"] and isinstance(r["checks"]["C4"]["numbers"], dict)
        assert set(r["fired"]) <= set(r["checks"])
        assert r["seconds"]["wall"] > 0
        assert (out / "cells" / r["cell"] / "report.json").exists()
    assert result["settings"]["overrides"] == {"n_queries": 200, "steps": 20}
    # The rates count every healthy and broken cell once, as the rows say.
    all_rates = result["rates"]["all"]
    assert all_rates["healthy"]["flagged"]["n"] == sum(r["kind"] == "healthy" for r in rows)
    assert all_rates["broken"]["detected"]["k"] == sum(
        r["kind"] == "broken" and r["verdict"] != VERDICTS[2] for r in rows)
    assert "healthy: confirmed" in printed and "held-out" in printed
    md = (out / "calibration.md").read_text()
    assert "QUICK MODE" in md and md.count("| digits |") == n_cells


@pytest.mark.slow  # the quick zoo: ~45 s on one idle core
def test_rerun_reuses_every_cell_and_retries_error_rows(quick: tuple[Path, str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    out, _ = quick

    def no_training(*a: Any, **k: Any) -> None:
        raise AssertionError("a cached model was trained again")

    calls: list[str] = []
    real = calibrate_mod.evaluate_model

    def counted(*a: Any, **k: Any) -> dict[str, Any]:
        calls.append(str(k["out"]))
        return real(*a, **k)

    monkeypatch.setattr(zoo_mod, "_train", no_training)
    monkeypatch.setattr(calibrate_mod, "evaluate_model", counted)
    printed = ok(["audit", "calibrate", "--quick", "--out", str(out), *CPU])
    assert calls == [] and printed.count("reused") == 14
    # An error row (e.g. a model the engine refused then) is retried; the others are not.
    row_path = next((out / "rows").glob("digits-mlp-eps0.3*.json"))
    row = read_json(row_path)
    atomic_write_json(row_path, {**row, "error": "ValueError: refused"})
    ok(["audit", "calibrate", "--quick", "--out", str(out), "--only", "digits-mlp", *CPU])
    assert [Path(c).name for c in calls] == [row["cell"]]
    assert not read_json(row_path)["error"]
    # --only chose what to evaluate, not what to tabulate: every stored cell is still there.
    assert len(read_json(out / "calibration.json")["rows"]) == 14


@pytest.mark.slow  # the quick zoo: ~45 s on one idle core
def test_changed_settings_evaluate_the_cell_again(quick: tuple[Path, str]) -> None:
    out, _ = quick
    printed = ok(["audit", "calibrate", "--quick", "--out", str(out), "--only",
                  "digits-mlp-short", "--n", "30", *CPU])
    assert "reused" not in printed and printed.count("digits-mlp-short-eps") == 2
    rows = read_json(out / "calibration.json")["rows"]
    assert [r["n"] for r in rows] == [30, 30]


def test_rates_count_k_of_n_per_split() -> None:
    def row(kind: str, split: str, verdict: str, error: str | None = None) -> dict[str, Any]:
        return {"kind": kind, "split": split, "verdict": verdict, "error": error,
                "defect": None if kind == "healthy" else "logit_scale"}

    confirmed, suspected, clear = VERDICTS
    rows = [row("healthy", "calibration", confirmed), row("healthy", "held-out", clear),
            row("healthy", "held-out", suspected), row("broken", "calibration", clear),
            row("broken", "held-out", confirmed), row("broken", "held-out", clear, "boom")]
    r = rates(rows)
    assert r["all"]["healthy"]["confirmed"] == {"k": 1, "n": 3, "rate": 1 / 3}
    assert r["held-out"]["healthy"]["flagged"]["k"] == 1
    assert r["held-out"]["healthy"]["suspected"]["k"] == 1
    assert r["all"]["broken"]["detected"] == {"k": 1, "n": 2, "rate": 0.5}
    assert r["held-out"]["errors"] == 1 and r["calibration"]["errors"] == 0
    assert r["per_defect"]["logit_scale"]["n"] == 2


def test_full_zoo_has_the_promised_size_and_a_fixed_split() -> None:
    zoo = full_zoo()
    assert len(zoo.healthy) >= 12 and len({b.kind for b in zoo.broken}) >= 10
    assert {h.dataset for h in zoo.healthy} == {"digits", "mnist", "cifar10"}
    for ds in ("digits", "mnist"):
        assert {h.split for h in zoo.healthy if h.dataset == ds} == set(SPLITS)
    for kind in {b.kind for b in zoo.broken}:  # each defect once per split
        assert sorted(b.split for b in zoo.broken if b.kind == kind) == sorted(SPLITS)
    assert all(len(eps) >= 3 for eps in zoo.eps.values())
    assert zoo == full_zoo()  # the assignment is data, not drawn


# -- the new broken kinds do what their names say -----------------------------------------------

def _input_grad(model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    x = x.clone().requires_grad_(True)
    z = model(x)
    if not z.requires_grad:
        return None
    (g,) = torch.autograd.grad(z[:, 0].sum(), x, allow_unused=True)
    return g


def test_extra_broken_kinds() -> None:
    base = FeatureNet(16, 8, 3, seed=0).eval()
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    assert set(EXTRA_KINDS) >= {"thermometer", "stop_gradient", "gaussian_noise",
                                "probabilities", "logit_scale", "input_sigmoid"}
    m = {k: BrokenModel(base, k).eval() for k in EXTRA_KINDS}
    assert _input_grad(m["thermometer"], x) is None  # comparisons only: no graph back to x
    thermo = m["thermometer"].features(torch.full((1, 1, 4, 4), 0.49))
    assert torch.allclose(thermo, base.features(torch.full((1, 1, 4, 4), 0.5)))  # 8/16 levels
    far = x.round() * 0.8 + 0.1  # pixels 0.1 or 0.9: the soft threshold is flat there
    assert _input_grad(m["input_sigmoid"], far).abs().max() < 1e-4 * _input_grad(
        base, far).abs().max()
    with torch.no_grad():
        assert torch.allclose(m["stop_gradient"](x), 101 * base(x), rtol=1e-5)
        assert torch.allclose(m["logit_scale"](x), 100 * base(x), rtol=1e-5)
        assert torch.allclose(m["probabilities"](x).sum(1), torch.ones(5))
        a, b = m["gaussian_noise"](x), m["gaussian_noise"](x)
    assert not torch.equal(a, b)  # fresh noise on every call
    # the stop-gradient model's gradient is the base's, not 101 times it
    assert torch.allclose(_input_grad(m["stop_gradient"], x), _input_grad(base, x), atol=1e-6)
    state = torch.random.get_rng_state()
    with torch.no_grad():
        BrokenModel(base, "gaussian_noise", seed=3)(x)
    assert torch.equal(state, torch.random.get_rng_state())  # its own generator only


def test_the_saturated_sigmoid_is_built_on_a_base_trained_at_t1() -> None:
    """Bolted onto a cross-entropy model at T = 100 the sigmoid ties several outputs at 1.0 (a
    dead model); the zoo trains the base's recipe with the sigmoid at T = 1 and raises T, as the
    defense's paper does. The extra base is a base only, never a cell of its own."""
    zoo = full_zoo()
    spec = next(b for b in zoo.broken if b.name == "mnist-lenet5+sigmoid_saturated")
    own = zoo.base(spec.base)
    assert own in zoo.bases and own not in zoo.healthy
    assert own.output_activation == "sigmoid" and own.describe()["output_activation"] == {
        "f": "sigmoid", "temperature": 1.0}
    plain = zoo.base("mnist-lenet5")
    assert {k: v for k, v in own.describe().items() if k not in ("note", "output_activation")} \
        == {k: v for k, v in plain.describe().items() if k != "note"}
    assert "output_activation" not in plain.describe()  # cached healthy models stay valid
    net = FeatureNet(16, 8, 3, seed=0).eval()
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    data = (x, torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="trained with a sigmoid output activation"):
        zoo_mod.build_broken(spec, net, data, "mnist")
    hot, chosen = zoo_mod.build_broken(spec, add_output_activation(net, "sigmoid", 1.0),
                                      data, "mnist")
    assert hot.temperature == 100.0 and hot.base is net and chosen["trained_at_temperature"] == 1


def test_a_new_audit_version_reaudits_and_other_changes_reattack() -> None:
    """A cell keyed by an older audit (or before audits were keyed) keeps its attacks and runs
    the audit again; any other change of the key, or an error row, attacks again."""
    zoo = quick_zoo()
    spec = zoo.healthy[0]
    key = calibrate_mod._key(zoo, spec, 0.03, 40)
    assert key["audit"] == AUDIT_VERSION and key["protocol"].startswith("standard@")
    older = {k: v for k, v in key.items() if k != "audit"}
    assert calibrate_mod._attacks_same({"key": older, "error": None}, key)
    assert calibrate_mod._attacks_same({"key": {**key, "audit": 1}, "error": None}, key)
    assert not calibrate_mod._attacks_same({"key": {**older, "eps": 0.3}, "error": None}, key)
    assert not calibrate_mod._attacks_same({"key": key, "error": "boom"}, key)
    assert not calibrate_mod._attacks_same(None, key)
