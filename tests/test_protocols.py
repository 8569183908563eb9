"""Evaluation protocols as versioned data files: the shipped files, old versions that still run,
user files, the one-attack protocol, the listing, and the fingerprints old run folders need."""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path

import pytest
import torch
from _helpers import gen, random_weights
from torch import nn

import robustact.protocols as shipped
from robustact.attacks.registry import ATTACKS, create_attack
from robustact.defenses import retrofit_jumprelu
from robustact.evaluate import evaluate, load_table, summarize
from robustact.evaluate.protocols import (
    FIELDS,
    PROTOCOLS,
    available_protocols,
    format_protocols,
    get_protocol,
    one_attack_protocol,
    protocol_entries,
    protocol_fingerprint,
    protocol_names,
)

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"steps": 2, "n_queries": 20}
EPS = 0.1
SHIPPED = ("quick@1", "quick@2", "standard@1", "standard@2", "standard@3", "standard@4",
           "standard@5", "thorough@1", "thorough@2", "thorough@3")
LATEST = {"quick": 2, "standard": 5, "thorough": 3}
#: protocol_fingerprint of each version-2 protocol's entries, computed from the dict-based
#: protocols.py before the protocols became files (without and with FAST): run folders made
#: then hold these, so a change here means those folders no longer resume.
PINNED = {"quick": ("242fe3bc98e43c2c", "53130b4498924f9e"),
          "standard": ("6e8bd00dad9f7089", "a46b108fe9171543"),
          "thorough": ("bdbeb97290581c12", "38d40afad4a4ea64")}


@pytest.fixture(scope="module")
def mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A random 10-class MLP on 4x4 images and 6 inputs it classifies as their labels."""
    g = gen(0)
    model = random_weights(lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(),
                                                 nn.Linear(12, 10)), g)
    x = torch.rand(6, 1, 4, 4, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _shipped_files() -> dict[str, dict]:
    files = [f for f in resources.files(shipped).iterdir() if f.name.endswith(".json")]
    return {f.name: json.loads(f.read_text(encoding="utf-8")) for f in files}


def _run(model, x, y, protocol, **kw):
    kw.setdefault("overrides", FAST)
    return evaluate(model, x, y, protocol, eps=EPS, progress=False, **kw)


def test_every_shipped_file_loads_and_validates():
    files = _shipped_files()
    assert sorted(files) == sorted(f"{i}.json" for i in SHIPPED)
    for fname, raw in files.items():
        # every field written out, in the documented order (the adaptive plan from standard@5)
        planned = fname == "standard@5.json"
        assert tuple(raw) == tuple(f for f in FIELDS if f != "adaptive_plan" or planned), fname
        assert fname == f"{raw['name']}@{raw['version']}.json"
        assert raw["eps_grid"] == [0, 0.25, 0.5, 1, 2]
        assert raw["adaptive"] == ("last" if raw["version"] == 1 else "before_loss_variant"
                                   if planned else "before_costly")
        assert raw["description"] and raw["changes"]
        p = get_protocol(fname.removesuffix(".json"))
        assert p["id"] == fname.removesuffix(".json") and p["source"] == fname
        for e in p["entries"]:
            if e["attack"]["name"] in ATTACKS:
                create_attack(**e["attack"], **({} if e["eps"] == "none" else {"eps": 0.1}))


def test_version_1_is_the_code_before_protocols_v2():
    """standard@1 had DeepFool last; quick and thorough only changed the adaptive placement."""
    v1 = {n: get_protocol(f"{n}@1") for n in protocol_names()}
    v2 = {n: get_protocol(f"{n}@2") for n in protocol_names()}
    assert v1["standard"]["entries"] == [*v2["standard"]["entries"], {
        "key": "deepfool", "attack": {"name": "deepfool"}, "role": "min_norm", "eps": "none",
        "on": "all"}]
    for n in ("quick", "thorough"):
        assert v1[n]["entries"] == v2[n]["entries"]
    assert "deepfool" in [e["key"] for e in v2["thorough"]["entries"]]


def test_plain_name_means_the_latest_version():
    for n in protocol_names():
        latest, v = get_protocol(n), LATEST[n]
        assert latest["id"] == f"{n}@{v}" == get_protocol(f"{n}@{v}")["id"]
        assert latest["entries"] == get_protocol(f"{n}@{v}")["entries"]
        assert PROTOCOLS[n]["version"] == v
        assert PROTOCOLS[n]["entries"] == latest["entries"]


def test_fingerprints_of_version_2_are_pinned():
    for n, (plain, fast) in PINNED.items():
        assert protocol_fingerprint(get_protocol(f"{n}@2")["entries"]) == plain, n
        assert protocol_fingerprint(get_protocol(f"{n}@2", FAST)["entries"]) == fast, n


def test_version_3_adds_apgd_t_and_screens_the_cost():
    """standard@3: APGD-T at the main ε, the curve below it from a 10-step screen, Square a
    capped screen; thorough@3 is thorough@2 with APGD-T (9 targets) and nothing screened."""
    s3 = {e["key"]: e for e in get_protocol("standard@3")["entries"]}
    assert s3["apgd-t"]["attack"] == {"name": "apgd_t", "steps": 100, "n_targets": 3}
    assert (s3["apgd-t"]["eps"], s3["apgd-t"]["min_classes"]) == ("main", 4)
    assert (s3["apgd-ce-10"]["eps"], s3["apgd-ce"]["eps"]) == ("lower", "upper")
    assert s3["square"]["max_points"] == 100 and s3["square"]["attack"]["n_queries"] == 1000
    t2, t3 = (get_protocol(f"thorough@{v}")["entries"] for v in (2, 3))
    assert [e for e in t3 if e["key"] != "apgd-t"] == t2
    assert next(e for e in t3 if e["key"] == "apgd-t")["attack"]["n_targets"] == 9
    assert not any("max_points" in e for e in t3)


#: protocol_fingerprint of standard@3's entries (without and with FAST), as it shipped: its run
#: folders hold these.
PINNED_3 = ("7e9acdc5f1144ede", "53f1531af927cb9d")


def test_version_4_adds_close_targets_and_shortens_the_screen():
    """standard@4 is standard@3 with targets 4-5 of APGD-T for close survivors and Square 250;
    standard@3's fingerprints stay as shipped (its run folders resume)."""
    s3, s4 = ({e["key"]: e for e in get_protocol(f"standard@{v}")["entries"]} for v in (3, 4))
    assert s4["apgd-t"]["attack"] == {**s3["apgd-t"]["attack"], "close_targets": 5,
                                      "close_loss": -0.2}
    assert s4["square"]["attack"]["n_queries"] == 250
    assert s4["square"]["max_points"] == s3["square"]["max_points"] == 100
    same = {k for k in s3 if k not in ("apgd-t", "square")}
    assert same == {k for k in s4 if k not in ("apgd-t", "square")}
    assert all(s3[k] == s4[k] for k in same)
    assert (protocol_fingerprint(get_protocol("standard@3")["entries"]),
            protocol_fingerprint(get_protocol("standard@3", FAST)["entries"])) == PINNED_3


def test_version_5_moves_the_adaptive_attacks_before_apgd_t(mlp):
    """standard@5 has standard@4's entries; a defended model's adaptive attacks run before
    APGD-T, the smooth BPDA first, the transfer crafted in 20 steps. An undefended model's
    cascade is standard@4's, and standard@4's defended cascade is as it shipped."""
    model, _, _ = mlp
    s4, s5 = get_protocol("standard@4"), get_protocol("standard@5")
    assert s4["entries"] == s5["entries"] and s4["adaptive_plan"] == {}
    assert protocol_entries(s4, model) == protocol_entries(s5, model)
    defended = retrofit_jumprelu(model, 0.1).eval()
    c4, c5 = ([e["key"] for e in protocol_entries(p, defended)] for p in (s4, s5))
    assert c4 == ["fgsm", "apgd-ce-10", "apgd-ce", "apgd-t", "apgd-dlr", "apgd-margin",
                  "bpda-apgd", "bpda-smooth-apgd", "transfer-twin-apgd", "square"]
    assert c5 == ["fgsm", "apgd-ce-10", "apgd-ce", "bpda-smooth-apgd", "bpda-apgd",
                  "transfer-twin-apgd", "apgd-t", "apgd-dlr", "apgd-margin", "square"]
    steps = {e["key"]: e["attack"]["steps"] for e in protocol_entries(s5, defended)
             if e["role"] in ("adaptive", "transfer")}
    assert steps == {"bpda-smooth-apgd": 100, "bpda-apgd": 100, "transfer-twin-apgd": 20}
    assert "first: apgd-ce-logits" in format_protocols([s5])


@pytest.mark.parametrize("plan, words", [
    ([], "must be an object"), ({"first": []}, "must be an object"),
    ({"order": "bpda-apgd"}, "list of attack keys"), ({"steps": {"bpda-apgd": 0}}, "positive"),
    ({"steps": {"bpda-apgd": True}}, "positive")])
def test_a_bad_adaptive_plan_is_one_line(plan, words):
    raw = {**json.loads((Path(shipped.__file__).parent / "standard@5.json").read_text()),
           "name": "mine", "adaptive_plan": plan}
    with pytest.raises(ValueError, match=words):
        get_protocol(raw)


def test_run_folder_fingerprint_is_pinned(mlp, tmp_path):
    """The whole resume fingerprint of a run, as written before protocols became files."""
    model, x, y = mlp
    runs = {"standard": (model, "080e0e7b92563ec6"),
            "quick": (retrofit_jumprelu(model, 0.1).eval(), "04490200448ea3dd")}
    for name, (m, entries_fp) in runs.items():
        _run(m, x, y, f"{name}@2", out=str(tmp_path / name))
        fp = json.loads((tmp_path / name / "table.json").read_text())["fingerprint"]
        assert fp["protocol"] == f"{name}@2"
        assert fp["entries"] == entries_fp, name
        assert fp["eps_grid"] == [0.0, 0.025, 0.05, 0.1, 0.2]


def test_standard_at_1_runs_with_adaptive_attacks_last(mlp, tmp_path):
    model, x, y = mlp
    defended = retrofit_jumprelu(model, 0.1).eval()
    t1 = _run(defended, x, y, "standard@1", out=str(tmp_path / "v1"))
    assert t1.meta["protocol"] == "standard@1"
    assert load_table(tmp_path / "v1").meta["protocol"] == "standard@1"
    order1 = list(t1.meta["attacks"])
    assert "deepfool" in order1
    adaptive = [k for k, a in t1.meta["attacks"].items() if a["role"] in ("adaptive", "transfer")]
    assert adaptive and order1[-len(adaptive):] == adaptive  # v1: after every entry
    order2 = list(_run(defended, x, y, "standard").meta["attacks"])
    assert "deepfool" not in order2
    assert order2.index(adaptive[0]) < order2.index("square")  # v2: before the costly ones


def _copy(tmp_path: Path, name: str, edit) -> Path:
    raw = json.loads((resources.files(shipped) / f"{name}.json").read_text(encoding="utf-8"))
    edit(raw)
    path = tmp_path / "my.json"
    path.write_text(json.dumps(raw, indent=2), encoding="utf-8")
    return path


def test_a_user_file_copied_and_edited_is_accepted(mlp, tmp_path):
    def edit(raw):
        raw["name"] = "my-standard"
        raw["entries"] = [e for e in raw["entries"] if e["key"] != "square"]
        raw["eps_grid"] = [0.5, 1]

    path = _copy(tmp_path, "standard@2", edit)
    for given in (path, str(path)):
        p = get_protocol(given)
        assert p["id"] == "my-standard@2" and p["source"] == str(path)
        assert "square" not in [e["key"] for e in p["entries"]]
    model, x, y = mlp
    t = _run(model, x, y, str(path))
    assert t.meta["protocol"] == "my-standard@2"
    assert t.meta["eps_grid"] == [0.05, 0.1]  # the file's grid: 0.5 eps and eps
    assert "square" not in t.attacks()
    exact = _copy(tmp_path, "standard@2", lambda raw: None)  # an unedited copy is that protocol
    assert get_protocol(exact)["entries"] == get_protocol("standard@2")["entries"]


def _drop_entries(raw):
    del raw["entries"]


def _keep_name(raw):
    raw["entries"] = raw["entries"][:2]


def _unshipped_version(raw):
    raw["version"] = 9


@pytest.mark.parametrize("edit, problem", [
    (lambda raw: raw.update(colour="red"), "unknown field"),
    (lambda raw: raw["entries"][0].update(role="main"), "role"),
    (_drop_entries, "entries"),
    (lambda raw: raw.update(adaptive="first"), "adaptive"),
    (lambda raw: raw.update(eps_grid=[-1, 1]), "eps_grid"),
    (lambda raw: raw.update(version="2"), "version"),
    (_keep_name, "its own 'name'"),
    (_unshipped_version, "standard@1, standard@2, standard@3, standard@4, standard@5"),
])
def test_a_broken_user_file_is_refused_in_one_line(tmp_path, edit, problem):
    path = _copy(tmp_path, "standard@2", edit)
    with pytest.raises(ValueError) as err:
        get_protocol(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and problem in msg, msg


def test_a_file_that_is_not_json_or_not_there_is_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x", "entries": [}')
    with pytest.raises(ValueError, match=r"bad\.json'?: not JSON .*line 1"):
        get_protocol(bad)
    with pytest.raises(ValueError, match="not found"):
        get_protocol(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="unknown version '9'.*standard@1, standard@2, st"):
        get_protocol("standard@9")
    with pytest.raises(ValueError, match="unknown protocol 'fast'.*quick, standard, thorough"):
        get_protocol("fast")


def test_one_attack_protocol_for_pgd_runs(mlp):
    model, x, y = mlp
    proto = one_attack_protocol({"name": "pgd", "steps": 2})
    assert get_protocol(proto)["id"] == "attack:pgd@1"
    defended = retrofit_jumprelu(model, 0.1).eval()  # adaptive "none": no entries added
    t = _run(defended, x, y, proto)
    assert t.attacks() == ["pgd"]
    assert t.meta["eps_grid"] == [EPS] and set(t["eps"].tolist()) == {EPS}
    assert t.meta["attacks"]["pgd"]["role"] == "standard"
    assert t.meta["attacks"]["pgd"]["steps"] == 2


def test_one_attack_protocol_for_deepfool_runs(mlp):
    model, x, y = mlp
    proto = one_attack_protocol({"name": "DeepFool:steps=3"})
    entry = proto["entries"][0]
    assert (entry["eps"], entry["role"], entry["attack"]) == (
        "none", "min_norm", {"name": "deepfool", "steps": 3})
    t = _run(model, x, y, proto)
    assert t.attacks() == ["deepfool"] and all(math.isinf(e) for e in t["eps"])
    s = summarize(t)
    assert s["min_norm"]["deepfool"]["attacked"] == 6
    bpda = one_attack_protocol({"name": "apgd"}, through="bpda")["entries"][0]
    assert (bpda["key"], bpda["through"]) == ("bpda-apgd", "bpda")


@pytest.mark.parametrize("spec, kw, problem", [
    ({"name": "pgd", "eps": 0.3}, {}, "eps"),
    ({"name": "pgd", "stepz": 3}, {}, "stepz"),
    ({"name": "nope"}, {}, "unknown attack"),
    ({"steps": 3}, {}, "name"),
    ({"name": "pgd"}, {"through": "magic"}, "through"),
])
def test_one_attack_protocol_refuses_bad_specs(spec, kw, problem):
    with pytest.raises(ValueError, match=problem):
        one_attack_protocol(spec, **kw)


def test_available_protocols_lists_every_shipped_version():
    listed = available_protocols()
    assert [p["id"] for p in listed] == list(SHIPPED)
    assert [p["latest"] for p in listed] == [False, True, False, False, False, False, True,
                                             False, False, True]
    for p in listed:
        assert set(p) >= {"id", "name", "version", "latest", "description", "changes",
                          "eps_grid", "adaptive", "entries"}
    text = format_protocols(listed)
    for p in listed:
        assert p["id"] in text
    assert text.count("latest") == 3
    assert "apgd:steps=100,loss=dlr" in text and "deepfool" in text
    listed[0]["entries"].clear()  # a copy: the shipped protocols are untouched
    assert get_protocol("quick@1")["entries"]


@pytest.mark.parametrize("attack, words", [
    ({"name": "deepfool"}, "no targeted form"), ({"name": "apgd_t"}, "no targeted form"),
    ({"name": "pgd"}, None)])
def test_a_targeted_entry_is_checked_when_the_protocol_is_read(attack, words):
    entry = {"key": "t", "attack": attack, "role": "loss_variant", "eps": "main", "on": "all",
             "target": "random"}
    proto = {"name": "mine", "entries": [entry]}
    if words is None:
        assert get_protocol(proto)["entries"][0]["target"] == "random"
    else:
        with pytest.raises(ValueError, match=words):
            get_protocol(proto)
    with pytest.raises(ValueError, match="choose from next, random"):
        get_protocol({"name": "mine", "entries": [{**entry, "target": "least"}]})
