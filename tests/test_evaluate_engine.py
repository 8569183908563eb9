"""The evaluation engine: results table storage and resume, keyed randomness, the cascade, the
per-sample worst case, ties, protocols and adaptive attack selection."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _helpers import train_prototype_cnn
from torch import nn

from robustact.attacks import APGD, PGD, Square, random_start
from robustact.attacks.base import LogitsView, prepared_model
from robustact.attacks.registry import ATTACKS, create_attack
from robustact.defenses import add_output_activation, retrofit_jumprelu
from robustact.evaluate import (
    COLUMNS,
    PROTOCOLS,
    ResultsFolderMismatch,
    adaptive_attacks,
    evaluate,
    get_protocol,
    load_table,
    summarize,
    worst_case,
)
from robustact.evaluate.protocols import EPS_MODES

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"steps": 4, "n_queries": 40, "n_samples": 20}
EPS = 0.1


@pytest.fixture(scope="module")
def cnn() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model, x, y = train_prototype_cnn(0)
    return model, x, y


def _run(model, x, y, **kw):
    kw.setdefault("overrides", FAST)
    return evaluate(model, x, y, kw.pop("protocol", "quick"), eps=EPS, progress=False, **kw)


def _same(a, b, loss_tol: float = 0.0) -> None:
    """Equal rows (bit for bit); ``loss_tol``: the loss columns may differ by the model's
    floating-point batch-size dependence (a CPU convolution's logits for a sample differ in
    the last bits between batches of 3 and 7: measured 3e-6), nothing else may."""
    for c in COLUMNS:
        if c == "seconds":
            continue
        va, vb = a[c], b[c]
        if loss_tol and c in ("loss_first", "loss_best"):
            assert np.allclose(va, vb, rtol=loss_tol, atol=loss_tol, equal_nan=True), c
        elif va.dtype.kind == "f":
            assert np.array_equal(va, vb, equal_nan=True), c
        else:
            assert np.array_equal(va, vb), c


def _sorted(t):
    order = np.lexsort((t["sample"], t["eps"], t["attack"].astype(str)))
    return t.where(order)


def test_save_load_round_trip(cnn, tmp_path):
    model, x, y = cnn
    t = _run(model, x, y, out=str(tmp_path / "run"))
    back = load_table(tmp_path / "run")
    _same(t, back)
    assert list(back["attack"]) == list(t["attack"])
    assert back.meta["protocol"] == "quick@2"
    assert set(back.meta["attacks"]) == {"fgsm", "pgd-20", "square"}
    assert np.array_equal(back.meta["clean"]["sample"], np.arange(x.shape[0]))


def test_resume_skips_finished_cells_and_refuses_other_protocol(cnn, tmp_path, monkeypatch):
    model, x, y = cnn
    out = str(tmp_path / "run")
    calls: list[str] = []
    real = PGD.__call__

    def counting(self, *a, **k):
        calls.append(self.name)
        return real(self, *a, **k)

    monkeypatch.setattr(PGD, "__call__", counting)
    first = _run(model, x, y, out=out)
    n_first = len(calls)
    assert n_first > 0
    second = _run(model, x, y, out=out)
    assert len(calls) == n_first  # every cell came from disk
    _same(first, second)
    # a half-finished folder: drop the last cells from the manifest, rerun redoes only those
    man = json.loads((tmp_path / "run" / "table.json").read_text())
    man["cells"] = man["cells"][:5]  # up to pgd at ε/4
    (tmp_path / "run" / "table.json").write_text(json.dumps(man))
    calls.clear()
    third = _run(model, x, y, out=out)
    assert 0 < len(calls) < n_first
    _same(first, third)
    with pytest.raises(ResultsFolderMismatch, match="different evaluation"):
        _run(model, x, y, out=out, protocol="standard")
    with pytest.raises(ResultsFolderMismatch, match="seed"):
        _run(model, x, y, out=out, seed=1)


def test_rows_do_not_depend_on_batch_size_order_or_sharding(cnn):
    model, x, y = cnn
    proto = {"name": "keyed", "entries": [
        {"key": "pgd", "attack": {"name": "pgd", "steps": 3, "restarts": 2,
                                  "early_stop": False}, "role": "standard", "on": "all"},
        {"key": "apgd", "attack": {"name": "apgd", "steps": 4}, "role": "standard", "on": "all"},
        {"key": "square", "attack": {"name": "square", "n_queries": 30}, "role": "black_box",
         "on": "all"},
        {"key": "rs", "attack": {"name": "random_search", "n_samples": 5},
         "role": "random_search", "on": "all"}]}
    a = _run(model, x, y, protocol=proto, overrides=None, batch_size=3, eps_grid=[EPS])
    b = _run(model, x, y, protocol=proto, overrides=None, batch_size=7, eps_grid=[EPS])
    _same(a, b, loss_tol=1e-4)
    # reversed order and two shards with their global ids, merged
    perm = torch.arange(x.shape[0]).flip(0)
    half = x.shape[0] // 2
    shards = [_run(model, x[perm[s]], y[perm[s]], protocol=proto, overrides=None,
                   batch_size=5, eps_grid=[EPS], sample_ids=perm[s])
              for s in (slice(0, half), slice(half, None))]
    merged = type(a).concat(shards)
    _same(_sorted(a), _sorted(merged), loss_tol=1e-4)
    assert a["success"].any() and (a["loss_best"][a["attack"] == "pgd"] > -np.inf).all()


def test_keyed_randomness_default_path_unchanged(cnn):
    """Without keys an attack draws from its generator exactly as before (torchattacks
    cross-checks rely on it); with keys the start no longer depends on the batch."""
    model, x, y = cnn
    atk = PGD(EPS, steps=2, early_stop=False)
    r1 = atk(model, x, y)
    g = torch.Generator().manual_seed(0)
    x0 = random_start(x, EPS, "linf", g)
    manual = PGD(EPS, steps=2, early_stop=False, random_start=False)
    # PGD from that start equals the default call: the default draws are untouched
    with prepared_model(model):
        ref = manual._run(LogitsView(model), x, y, None, x0)
    assert torch.equal(r1.x_adv, ref.clamp(0, 1))
    ids = torch.arange(x.shape[0]) + 100
    k_all = atk(model, x, y, keys=ids).x_adv
    k_part = atk(model, x[5:], y[5:], keys=ids[5:]).x_adv
    assert torch.equal(k_all[5:], k_part)
    assert not torch.equal(atk(model, x, y, keys=ids + 1).x_adv, k_all)


def test_cascade_runs_later_attacks_on_survivors_only(cnn, monkeypatch):
    model, x, y = cnn
    seen: list[int] = []
    real = Square.__call__

    def spy(self, m, xb, yb, *a, **k):
        seen.append(xb.shape[0])
        return real(self, m, xb, yb, *a, **k)

    monkeypatch.setattr(Square, "__call__", spy)
    t = _run(model, x, y, eps_grid=[EPS])
    pgd, sq = t.cell("pgd-20", EPS), t.cell("square", EPS)
    broken = (t.cell("fgsm", EPS)["success"] | pgd["success"]) & pgd["clean_correct"]
    assert broken.any()
    assert sum(seen) == int((pgd["clean_correct"] & ~broken).sum())
    assert np.array_equal(sq["skipped"], ~(sq["clean_correct"] & ~broken))
    assert not sq["success"][broken].any()


def test_worst_case_is_the_and_over_attacks(cnn):
    model, x, y = cnn
    t = _run(model, x, y, eps_grid=[EPS])
    ids, robust = worst_case(t, EPS)
    expect = t.cell("fgsm", EPS)["clean_correct"].copy()
    for a in ("fgsm", "pgd-20", "square"):
        expect &= ~t.cell(a, EPS)["success"]
    assert np.array_equal(robust, expect)
    s = summarize(t)
    assert s["per_eps"][repr(EPS)]["worst_case"] == robust.mean()
    assert s["per_eps"][repr(EPS)]["worst_case"] <= min(
        1 - c["broken"] / len(ids) for c in s["per_eps"][repr(EPS)]["attacks"])


def test_worst_case_never_rises_with_eps(cnn):
    """A point broken within a smaller ball is broken within every larger one: even when the
    rows at 2ε are all failures (an attack run only at ε, or a weaker one at 2ε), the worst
    case at 2ε is the worst case at ε less what 2ε broke, never more."""
    model, x, y = cnn
    t = _run(model, x, y, eps_grid=[EPS / 2, EPS, 2 * EPS])
    at_2eps = np.isclose(t["eps"], 2 * EPS)
    t.columns["success"] = np.where(at_2eps, False, t["success"])
    _, small = worst_case(t, EPS / 2)
    _, main = worst_case(t, EPS)
    _, large = worst_case(t, 2 * EPS)
    assert main.sum() < small.sum()  # the main ε broke points (the test means something)
    assert np.array_equal(large, main)  # 2ε broke nothing itself: it inherits ε's breaks
    assert not (main & ~small).any()
    curve = [acc for _, acc in summarize(t)["curve"]]
    assert curve == sorted(curve, reverse=True)


class _Tied(nn.Module):
    """Two classes' outputs equal for the first half of the samples (the mean pixel < 0.5)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1, keepdim=True)
        return torch.cat([m, torch.where(m < 0.5, m, -m), torch.zeros_like(m)], 1) * 10


def test_tied_top_output_counts_as_not_correct():
    x = torch.cat([torch.full((3, 1, 4, 4), 0.2), torch.full((3, 1, 4, 4), 0.8)])
    y = torch.zeros(6, dtype=torch.long)
    model = _Tied().eval()
    t = evaluate(model, x, y, {"entries": [{"key": "fgsm", "attack": {"name": "fgsm"},
                                            "role": "single_step"}]},
                 eps=0.01, eps_grid=[0.0], progress=False)
    c = t.cell("fgsm", 0.0)
    assert c["clean_correct"].tolist() == [False] * 3 + [True] * 3
    assert c["success"].tolist() == [True] * 3 + [False] * 3
    assert summarize(t)["clean_accuracy"] == 0.5


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_protocol_entries_build(name):
    p = get_protocol(name)
    assert p["id"] == f"{name}@{PROTOCOLS[name]['version']}"
    for e in p["entries"]:
        assert e["eps"] in EPS_MODES
        if e["attack"]["name"] not in ATTACKS:  # looked up at run time (label-only)
            assert e["role"] == "label_only"
            continue
        spec = dict(e["attack"])
        if e["eps"] != "none":
            spec["eps"] = 0.1
        atk = create_attack(**spec)
        assert create_attack(**atk.spec()).spec() == atk.spec()
    with pytest.raises(ValueError, match="unknown protocol"):
        get_protocol("fast")
    with pytest.raises(ValueError, match="role"):
        get_protocol({"entries": [{"key": "a", "attack": {"name": "pgd"}, "role": "main"}]})


SCREENED = {"entries": [
    {"key": "fgsm", "attack": {"name": "fgsm"}, "role": "single_step", "eps": "grid", "on": "all"},
    {"key": "pgd-2", "attack": {"name": "pgd", "steps": 2}, "role": "standard", "eps": "lower",
     "on": "all"},
    {"key": "pgd", "attack": {"name": "pgd", "steps": 4}, "role": "standard", "eps": "upper",
     "on": "all"},
    {"key": "rs", "attack": {"name": "random_search", "n_samples": 5}, "role": "random_search",
     "eps": "main", "on": "all", "max_points": 4}]}


def test_lower_and_upper_split_the_grid_and_a_screen_attacks_a_fixed_sample(cnn):
    """``lower`` runs below the main ε only, ``upper`` at it and above; ``max_points`` attacks
    the same few points whatever the batch size or the order of the data."""
    model, x, y = cnn
    t = evaluate(model, x, y, SCREENED, eps=EPS, progress=False, batch_size=3)
    eps_of = {a: sorted(set(t.where(t["attack"] == a)["eps"].tolist())) for a in t.attacks()}
    assert eps_of["fgsm"] == [0.0, 0.025, 0.05, 0.1, 0.2]
    assert eps_of["pgd-2"] == [0.0, 0.025, 0.05] and eps_of["pgd"] == [0.1, 0.2]
    assert eps_of["rs"] == [0.1]
    rs = t.cell("rs", EPS)
    chosen = set(rs["sample"][~rs["skipped"]].tolist())
    assert len(chosen) == 4 and int(t.meta["clean"]["clean_correct"].sum()) > 4
    assert not rs["success"][rs["skipped"] & rs["clean_correct"]].any()  # left out: not broken
    order = torch.arange(x.shape[0] - 1, -1, -1)
    back = evaluate(model, x[order], y[order], SCREENED, eps=EPS, progress=False,
                    batch_size=64, sample_ids=order)
    rs2 = back.cell("rs", EPS)
    assert set(rs2["sample"][~rs2["skipped"]].tolist()) == chosen
    other = evaluate(model, x, y, SCREENED, eps=EPS, progress=False, seed=1).cell("rs", EPS)
    assert set(other["sample"][~other["skipped"]].tolist()) != chosen  # keyed by the seed too


def test_unavailable_attacks_are_noted_not_run(cnn):
    model, x, y = cnn
    proto = {"entries": [
        {"key": "pgd", "attack": {"name": "pgd", "steps": 2}, "role": "standard"},
        {"key": "rays-x", "attack": {"name": "no_such_attack"}, "role": "label_only"},
        {"key": "dlr", "attack": {"name": "apgd", "loss": "dlr"}, "role": "loss_variant",
         "min_classes": 99}]}
    t = _run(model, x, y, protocol=proto, eps_grid=[EPS])
    assert t.attacks() == ["pgd"]
    assert "not available" in t.meta["unavailable"]["rays-x"]
    assert "classes" in t.meta["unavailable"]["dlr"]


def test_adaptive_attacks_follow_the_model(cnn):
    model, x, y = cnn
    assert adaptive_attacks(model) == []
    jr = adaptive_attacks(retrofit_jumprelu(model, 0.5))
    assert {e.get("through") for e in jr} == {"bpda", "bpda_smooth", "twin"}
    oa = adaptive_attacks(add_output_activation(model, "sigmoid", 100.0))
    assert any(e["attack"].get("logits_from") == "base" for e in oa)
    assert {e.get("through") for e in oa} >= {"bpda", "twin"}
    assert "bpda_smooth" not in {e.get("through") for e in oa}
    # and they run: an output-activation model is broken through its pre-activation logits
    defended = add_output_activation(model, "tanh", 1000.0).eval()
    proto = {"entries": [{"key": "pgd", "attack": {"name": "pgd", "steps": 3},
                          "role": "standard"}]}
    t = _run(defended, x, y, protocol=proto, eps_grid=[EPS])
    assert {"apgd-ce-logits", "bpda-apgd", "transfer-twin-apgd"} <= set(t.attacks())
    roles = {a: t.meta["attacks"][a]["role"] for a in t.attacks()}
    assert roles["transfer-twin-apgd"] == "transfer" and roles["bpda-apgd"] == "adaptive"
    jt = _run(retrofit_jumprelu(model, 0.2), x, y, protocol=proto, eps_grid=[EPS])
    assert "bpda-smooth-apgd" in jt.attacks()


def test_robust_accuracy_decreases_with_eps(cnn):
    model, x, y = cnn
    t = _run(model, x, y)
    s = summarize(t)
    curve = [acc for _, acc in s["curve"]]
    assert curve[0] == s["clean_accuracy"]
    assert all(a >= b for a, b in zip(curve, curve[1:], strict=False))
    assert curve[-1] < curve[0]
    zero = t.where(t["eps"] == 0.0)
    assert (zero["forward"] == 0).all() and not zero["success"][zero["clean_correct"]].any()


def test_instrumentation_columns(cnn):
    model, x, y = cnn
    res = APGD(EPS, steps=6)(model, x, y, record=True)
    info = res.info
    assert info["forward"].shape == (x.shape[0],)
    assert int(info["forward"].sum()) == info["forward_total"]
    assert int(info["backward"].sum()) == info["backward_total"]
    assert (info["loss_best"] >= info["loss_first"]).all()
    assert ((info["stall"] >= 0) & (info["stall"] <= 1)).all()
    assert "forward" not in APGD(EPS, steps=6)(model, x, y).info  # default path: totals only
    # a model without any input gradient: grad_zero everywhere
    dead = nn.Sequential(nn.Flatten(), nn.Linear(64, 4)).eval()
    with torch.no_grad():
        dead[1].weight.zero_()
    r = PGD(EPS, steps=2)(dead, x, y, record=True)
    assert r.info["grad_zero"].all()


def test_min_norm_rows_and_rho(cnn):
    model, x, y = cnn
    proto = {"entries": [{"key": "df", "attack": {"name": "deepfool"}, "role": "min_norm",
                          "eps": "none", "on": "all"}]}
    t = _run(model, x, y, protocol=proto, eps_grid=[EPS])
    assert np.isinf(t["eps"]).all()
    mn = summarize(t)["min_norm"]["df"]
    ok = t["success"] & ~t["skipped"]
    assert mn["median_norm"] == pytest.approx(float(np.median(t["linf"][ok])))
    assert mn["rho"] == pytest.approx(t["linf"][ok].mean() / x.flatten(1).abs().amax(1)
                                      .numpy()[ok].mean(), rel=1e-5)
