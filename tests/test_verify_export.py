"""``robustact verify`` and ``robustact export``: a run's claim re-checked from its files, and
the run in RobustBench's format.

One user model file (a digits MLP) is evaluated once with the quick protocol; each test works on
a copy of that run folder, tampered with where the test needs it, through the real commands.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from _helpers import cli_ok, user_mlp_files
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from robustact import __version__
from robustact.cli import app
from robustact.core.digest import model_digest
from robustact.core.storage import atomic_write_json, read_json
from robustact.data import load_dataset
from robustact.models.predict import predict
from robustact.runs.sources import ModelSource, load_model

runner = CliRunner()
CPU = ["--threads", "1", "--device", "cpu"]
N = 40


ok = cli_ok


def refused(args: list[str], *needles: str) -> str:
    """Run a command that must fail as a user error: exit 2, one ``error:`` line naming
    ``needles``, no traceback."""
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, res.output
    assert "Traceback" not in res.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A user's ReLU MLP (no robustact in it), trained briefly, evaluated once (quick, n=40)."""
    d = tmp_path_factory.mktemp("verify")
    user_mlp_files(d)
    ok(["evaluate", "--model-file", f"{d / 'net.py'}:mlp", "--weights", str(d / "w.safetensors"),
        "--dataset", "digits", "--protocol", "quick", "--n", str(N), "--no-audit",
        "--out", str(d / "run"), "--no-progress", *CPU])
    return {"net": d / "net.py", "weights": d / "w.safetensors", "run": d / "run"}


def _copy(user: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(user["run"], tmp_path / "run"))


def _model(user: dict[str, Path]) -> torch.nn.Module:
    src = ModelSource(model_file=f"{user['net']}:mlp", weights=user["weights"])
    return load_model(src, dataset="digits", device="cpu").model


def _test_images() -> tuple[torch.Tensor, torch.Tensor]:
    test = load_dataset("digits", "test")
    return test.x(slice(0, N)), test.y(slice(0, N))


def _rewrite_adversarial(run: Path, edit) -> None:  # type: ignore[no-untyped-def]
    """Apply ``edit(tensors, meta)`` to the run's adversarial.safetensors and write it back."""
    file = run / "adversarial.safetensors"
    with safe_open(str(file), framework="pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(file))
    edit(tensors, meta)
    save_file(tensors, str(file), metadata=meta)


def test_verify_recounts_a_fresh_run_exactly(user: dict[str, Path]) -> None:
    out = ok(["verify", str(user["run"]), *CPU])
    res = json.loads(out)
    summary = read_json(user["run"] / "summary.json")
    assert res["ok"] and res["model_digest_ok"] and not res["problems"]
    assert res["robust_accuracy_verified"] == summary["robust_accuracy"]
    assert res["robust_correct_verified"] == round(summary["robust_accuracy"] * N)
    assert res["clean_correct"] == round(summary["clean_accuracy"] * N)
    # not vacuous: the quick protocol broke most points, every stored example is a real break
    assert res["stored_examples"] == res["broken_verified"] >= N // 2
    # the provenance the examples carry: versions, protocol, seed, budget, specs, digest
    with safe_open(str(user["run"] / "adversarial.safetensors"), framework="pt") as f:
        meta = f.metadata()
    digest = model_digest(_model(user))
    assert meta["model_digest"] == digest == res["model_digest"]
    assert read_json(user["run"] / "report.json")["info"]["model_digest"] == digest
    assert meta["robustact"] == __version__ and meta["torch"] == torch.__version__
    assert (meta["protocol"], meta["seed"], float(meta["eps"]), meta["norm"]) == (
        summary["protocol"], "0", summary["eps"], "linf")
    specs = json.loads(meta["attack_specs"])
    assert set(json.loads(meta["attacks"])) <= set(specs)
    assert specs["pgd-20"]["name"] == "pgd" and specs["pgd-20"]["steps"] == 20


def test_an_example_that_no_longer_fools_the_model_fails_verify(user: dict[str, Path],
                                                                tmp_path: Path) -> None:
    run = _copy(user, tmp_path)
    x, _ = _test_images()
    first = []

    def restore_clean(t: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
        sid = int(t["sample"][0])
        first.append(sid)
        t["x_adv"][0] = x[sid].to(t["x_adv"].dtype)  # the clean image: in budget, not a break

    _rewrite_adversarial(run, restore_clean)
    line = refused(["verify", str(run), *CPU], "1 stored examples no longer fool the model",
                   f"samples {first[0]}", "robust accuracy recomputed")
    summary = read_json(run / "summary.json")
    k = round(summary["robust_accuracy"] * N)
    assert f"recomputed {k + 1}/{N}" in line and f"reported {k}/{N}" in line


def test_a_changed_weight_fails_verify(user: dict[str, Path], tmp_path: Path) -> None:
    w = load_file(str(user["weights"]))
    name = sorted(w)[0]
    w[name] = w[name].clone()
    w[name].view(-1)[0] += 1e-3
    save_file(w, str(tmp_path / "w2.safetensors"))
    recorded = read_json(user["run"] / "report.json")["info"]["model_digest"]
    refused(["verify", str(user["run"]), "--weights", str(tmp_path / "w2.safetensors"), *CPU],
            "the model does not match the run: digest ", f"the run recorded {recorded}")
    # the recorded weights pass through the same override path
    ok(["verify", str(user["run"]), "--weights", str(user["weights"]), *CPU])


def test_an_example_outside_eps_fails_verify(user: dict[str, Path], tmp_path: Path) -> None:
    run = _copy(user, tmp_path)
    x, _ = _test_images()
    first = []

    def push_out(t: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
        sid = int(t["sample"][0])
        first.append(sid)
        flat = t["x_adv"][0].view(-1)
        i = int(x[sid].view(-1).argmin())  # a dark pixel: +0.15 stays inside [0, 1]
        flat[i] = float(x[sid].view(-1)[i]) + 1.5 * float(meta["eps"])

    _rewrite_adversarial(run, push_out)
    refused(["verify", str(run), *CPU], "1 stored examples are outside eps=0.1 (linf)",
            f"samples {first[0]}")


def test_export_writes_a_robustbench_entry_and_adv_complete(user: dict[str, Path],
                                                            tmp_path: Path) -> None:
    res = json.loads(ok(["export", str(user["run"]), "--format", "robustbench",
                         "--out", str(tmp_path / "entry.json")]))
    summary = read_json(user["run"] / "summary.json")
    entry = read_json(tmp_path / "entry.json")
    assert res["entry"] == str(tmp_path / "entry.json")
    assert entry["clean_acc"] == f"{100 * summary['clean_accuracy']:.2f}"
    assert entry["external"] == f"{100 * summary['robust_accuracy']:.2f}"
    assert (entry["eps"], entry["threat_model"], entry["dataset"]) == ("0.1", "Linf", "digits")
    assert "autoattack_acc" not in entry and "AutoAttack was not run" in entry["footnote"]
    assert entry["robustact"]["protocol"] == summary["protocol"]
    assert entry["robustact"]["verdict"] == summary["verdict"]["label"]
    assert entry["robustact"]["n"] == N and entry["robustact"]["version"] == __version__
    assert entry["number_forward_passes"] == 1 and entry["architecture"] == "mlp"
    # the examples, as AutoAttack's tools read them; the model's accuracy on them is the
    # robust accuracy, and every unbroken point is its clean image
    saved = torch.load(tmp_path / "entry.pt", weights_only=True)
    adv = saved["adv_complete"]
    x, y = _test_images()
    assert adv.shape == (N, 1, 8, 8) and float(adv.min()) >= 0 and float(adv.max()) <= 1
    p = predict(_model(user), (adv, y))
    assert p.n_correct == round(summary["robust_accuracy"] * N)
    stored = load_file(str(user["run"] / "adversarial.safetensors"))["sample"]
    kept = torch.ones(N, dtype=torch.bool)
    kept[stored] = False
    assert torch.equal(adv[kept], x[kept])


def test_eps_is_written_as_robustbench_writes_it() -> None:
    from robustact.runs.export import eps_text

    assert [eps_text(e) for e in (0.3, 8 / 255, 0.5, 4 / 255, 0.031)] == [
        "0.3", "8/255", "0.5", "4/255", "0.031"]


def test_refusals_are_one_line(user: dict[str, Path], tmp_path: Path) -> None:
    refused(["export", str(user["run"]), "--format", "autoattack"],
            "unknown export format 'autoattack'", "robustbench")
    refused(["verify", str(tmp_path), *CPU], "is not a run folder (no run.json)")
    refused(["export", str(tmp_path / "missing")], "is not a run folder")
    run = _copy(user, tmp_path)
    rec = read_json(run / "run.json")
    atomic_write_json(run / "run.json", {**rec, "kind": "train"})
    refused(["verify", str(run), *CPU], "holds a train run, not an evaluation")
    atomic_write_json(run / "run.json", {**rec, "status": "failed"})
    refused(["verify", str(run), *CPU], "did not finish (status: failed)")
    atomic_write_json(run / "run.json", rec)
    # a randomized model's run: refused, not half-verified
    report = read_json(run / "report.json")
    atomic_write_json(run / "report.json", {**report, "info": {
        **report["info"], "randomness": {"randomized": True, "eot": 10}}})
    refused(["verify", str(run), *CPU], "deterministic models only",
            "majority vote over 10 EOT draws")
    atomic_write_json(run / "report.json", report)
    # older formats: examples without provenance, then no examples at all
    _rewrite_adversarial(run, lambda t, meta: meta.pop("model_digest"))
    refused(["verify", str(run), *CPU], "older robustact", "records no provenance")
    (run / "adversarial.safetensors").unlink()
    refused(["verify", str(run), *CPU], "older robustact", "no adversarial.safetensors")
    refused(["export", str(run)], "older robustact", "no adversarial.safetensors")


def test_a_minimum_norm_run_has_nothing_to_verify(user: dict[str, Path], tmp_path: Path) -> None:
    ok(["attack", "--model-file", f"{user['net']}:mlp", "--weights", str(user["weights"]),
        "--dataset", "digits", "--attack", "deepfool", "--n", "10",
        "--out", str(tmp_path / "df"), "--no-progress", *CPU])
    refused(["verify", str(tmp_path / "df"), *CPU], "no robust accuracy at a fixed eps")


def test_a_run_that_broke_nothing_still_verifies(user: dict[str, Path], tmp_path: Path) -> None:
    ok(["attack", "--model-file", f"{user['net']}:mlp", "--weights", str(user["weights"]),
        "--dataset", "digits", "--attack", "fgsm", "--eps", "0.0001", "--n", "10",
        "--out", str(tmp_path / "atk"), "--no-progress", *CPU])
    adv = load_file(str(tmp_path / "atk" / "adversarial.safetensors"))
    assert adv["x_adv"].shape == (0, 1, 8, 8)  # written, empty: nothing broke at this ε
    res = json.loads(ok(["verify", str(tmp_path / "atk"), *CPU]))
    assert res["ok"] and res["stored_examples"] == 0
    assert res["robust_correct_verified"] == res["clean_correct"]


def test_no_adversarial_keeps_no_examples_and_says_so(user: dict[str, Path],
                                                      tmp_path: Path) -> None:
    """``--no-adversarial`` (very large runs): no examples anywhere in the folder, the record
    says so, verify and export refuse in one line saying why, and the folder does not resume
    as a run that keeps them."""
    out = tmp_path / "lean"
    base = ["evaluate", "--model-file", f"{user['net']}:mlp", "--weights",
            str(user["weights"]), "--dataset", "digits", "--protocol", "quick", "--n", "20",
            "--no-audit", "--out", str(out), "--no-progress", *CPU]
    ok([*base, "--no-adversarial"])
    assert not list(out.rglob("*.adv.safetensors"))
    assert not (out / "adversarial.safetensors").exists()
    assert read_json(out / "report.json")["run"]["adversarial_kept"] is False
    assert read_json(out / "summary.json")["robust_accuracy"] is not None
    refused(["verify", str(out), *CPU], "kept no adversarial examples", "--no-adversarial")
    refused(["export", str(out)], "kept no adversarial examples")
    refused(base, "different evaluation")  # the other setting is another evaluation
