"""End-to-end tests of the CLI and the workflows behind it, on the bundled digits set.

These run the real commands (train → eval → tune-jump → retrofit → attack) in-process with
typer's runner, so they check the wiring between packages, the files written, and that bad
arguments end in a one-line error (exit code 2) rather than a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from robustact.cli import app
from robustact.core.storage import load_tensors, read_json
from robustact.data import load_dataset
from robustact.models.predict import predict
from robustact.train import load_checkpoint

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "m"
    res = runner.invoke(app, ["train", "--model", "smallcnn", "--dataset", "digits",
                              "--epochs", "3", "--optimizer", "adam", "--lr", "0.003",
                              "--batch-size", "64", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "test accuracy" in res.output
    return out


def test_train_writes_checkpoint_and_results(trained: Path) -> None:
    card = read_json(trained / "final" / "card.json")
    assert card["model"]["name"] == "smallcnn"
    assert (trained / "final" / "model.safetensors").exists()
    results = read_json(trained / "results.json")
    assert results["metrics"]["epochs"] == 3
    assert 0.5 < results["metrics"]["test_accuracy"] <= 1.0  # 3 epochs of Adam learn digits


def test_eval_matches_training_report(trained: Path) -> None:
    res = runner.invoke(app, ["eval", "--model", str(trained / "final")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["n"] == 359
    results = read_json(trained / "results.json")
    assert out["accuracy"] == pytest.approx(results["metrics"]["test_accuracy"])


def test_tune_jump_retrofit_and_attack(trained: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["tune-jump", "--model", str(trained / "final"), "--max-drop", "100",
                              "--grid", "0,0.5,1", "--out", str(tmp_path / "jump"),
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    tuned = json.loads(res.output)
    assert tuned["kappa"] == 1.0  # a 100-point budget admits the largest κ
    assert [c["kappa"] for c in tuned["curve"]] == [0.0, 0.5, 1.0]
    card = read_json(tmp_path / "jump" / "card.json")
    assert card["defenses"] == [{"type": "jumprelu", "kappa": 1.0}]

    res = runner.invoke(app, ["attack", "--model", str(tmp_path / "jump"), "--attack", "pgd",
                              "--eps", "0.2", "--steps", "5", "--n", "40", "--bpda",
                              "--out", str(tmp_path / "atk"), "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = read_json(tmp_path / "atk" / "summary.json")
    # one attack is a one-entry protocol on the engine: the same files as `evaluate`
    assert summary["n"] == 40 and summary["protocol"] == "attack:bpda-pgd@1"
    assert {"report.html", "report.json", "table.json", "run.json"} <= {
        p.name for p in (tmp_path / "atk").iterdir()}
    adv = load_tensors(tmp_path / "atk" / "adversarial.safetensors")
    # re-check the saved examples against the data and the defended model, not the summary
    test = load_dataset("digits", "test")
    x, y = test.x(slice(0, 40)), test.y(slice(0, 40))
    idx, x_adv = adv["sample"], adv["x_adv"]
    assert torch.equal(adv["label"], y[idx]) and x_adv.shape == x[idx].shape
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float((x_adv - x[idx]).abs().max()) <= 0.2 + 1e-6  # within the L∞ budget
    model, _ = load_checkpoint(tmp_path / "jump")
    clean_ok = predict(model, (x, y)).correct
    assert clean_ok is not None and bool(clean_ok[idx].all())  # only right points attacked
    assert not bool(predict(model, (x_adv, y[idx])).correct.any())  # every one is a break
    assert summary["clean_accuracy"] == pytest.approx(float(clean_ok.float().mean()))
    assert summary["robust_accuracy"] == pytest.approx((int(clean_ok.sum()) - len(idx)) / 40)
    # with BPDA, PGD at ε = 0.2 breaks most of what the model got right (measured: 26 of 28)
    assert len(idx) > int(clean_ok.sum()) // 2


def test_retrofit_command_records_defense(trained: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["retrofit", "--model", str(trained / "final"), "--jump", "0.0",
                              "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    # κ = 0 is exactly the ReLU model.
    assert out["test_accuracy"] == out["test_accuracy_relu"]


@pytest.mark.parametrize("args, needle", [
    (["train", "--dataset", "digits", "--model", "nope"], "unknown model"),
    (["train", "--dataset", "digits", "--model", "smallcnn", "--activation", "bogus"],
     "unknown activation"),
    (["train", "--dataset", "digits", "--model", "smallcnn", "--classes", "1,2,3"],
     "exactly two classes"),
    (["train", "--dataset", "digits", "--model", "smallcnn", "--epochs", "0"], "epochs"),
])
def test_bad_arguments_give_one_line_errors(args: list[str], needle: str, tmp_path: Path) -> None:
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "x"), "--no-progress"])
    assert res.exit_code == 2
    assert needle in res.output
    assert "Traceback" not in res.output


def test_attack_rejects_unknown_parameter(trained: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["attack", "--model", str(trained / "final"), "--attack", "deepfool",
                              "--eps", "0.1", "--out", str(tmp_path / "a"), "--no-progress"])
    assert res.exit_code == 2
    assert "does not take eps" in res.output


def test_attack_passes_extra_parameters(trained: Path, tmp_path: Path) -> None:
    base = ["attack", "--model", str(trained / "final"), "--attack", "pgd", "--eps", "0.1",
            "--steps", "3", "--n", "8", "--no-progress"]
    res = runner.invoke(app, base + ["--param", "early_stop=false", "--param", "seed=3",
                                     "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["attacks"]["pgd"]["early_stop"] is False
    assert summary["attacks"]["pgd"]["seed"] == 3
    res = runner.invoke(app, base + ["--param", "early_stopp=false", "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "does not take early_stopp" in res.output
    res = runner.invoke(app, base + ["--param", "nonsense", "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "KEY=VALUE" in res.output


def test_missing_mnist_names_the_folder(tmp_path: Path) -> None:
    res = runner.invoke(app, ["train", "--dataset", "mnist", "--data-root", str(tmp_path),
                              "--out", str(tmp_path / "x"), "--no-progress"])
    assert res.exit_code == 2
    assert "MNIST" in res.output and str(tmp_path) in res.output


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    from robustact.runs.demo import run_demo

    threads = torch.get_num_threads()
    out = tmp_path / "demo"
    summary = run_demo(out, epochs=1, progress=False, n_attack=16)
    assert torch.get_num_threads() == threads  # the library never changes the thread count
    rows = {r["model"]: r for r in summary["models"]}
    assert list(rows) == ["undefended", "jumprelu", "splash", "outact", "differential",
                          "ce-3v8"]
    for key, r in rows.items():
        # Each evaluation adds attacks to the one before: FGSM+PGD, + Square, + adaptive.
        assert 0.0 <= r["adaptive_robust"] <= r["standard_robust"] <= r["gradient_robust"] \
            <= r["clean"] <= 1.0, key
        assert (bool(r["adaptive_attacks"]) == (key in ("jumprelu", "outact"))), key
        rec = read_json(out / key / "report.json")  # the model's report: adaptive + audit
        assert rec["verdict"]["audited"] and rec["verdict"]["label"] == r["verdict"]
        assert rec["summary"]["robust_accuracy"] == pytest.approx(r["adaptive_robust"])
        assert (out / key / "report.html").stat().st_size > 1000
    std = read_json(out / "outact" / "standard" / "report.json")
    assert std["verdict"]["label"] == "not audited"
    assert std["summary"]["robust_accuracy"] == pytest.approx(rows["outact"]["standard_robust"])
    assert not any(v["role"] == "adaptive" for v in std["protocol"]["attacks"].values())
    assert "bpda-apgd" in read_json(out / "outact" / "report.json")["protocol"]["attacks"]
    kappa = read_json(out / "jumprelu" / "report.json")["extra_curves"]["kappa"]
    card = read_json(out / "models" / "jumprelu" / "card.json")
    assert card["defenses"] == [{"type": "jumprelu", "kappa": kappa["chosen"]}]
    assert len(kappa["x"]) == 6 and kappa["chosen"] in kappa["x"]
    assert read_json(out / "models" / "outact" / "card.json")["defenses"] == [
        {"type": "output_activation", "f": "sigmoid", "temperature": 100.0}]
    board = (out / "leaderboard.html").read_text()
    assert all(rows[k]["label"] in board for k in ("undefended", "jumprelu", "splash", "outact"))
    assert "differential" not in board and "differential" in (
        out / "leaderboard-3vs8.html").read_text()
    report = (out / "report.md").read_text()
    assert "What it shows" in report
    assert all(row[:-2] in report for row in summary["table"].splitlines())  # + a link column
    assert read_json(out / "results.json")["models"] == summary["models"]


def test_demo_command_prints_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import robustact.cli.demo as cli

    seen: dict[str, object] = {}

    def fake(out: Path, **kw: object) -> dict[str, object]:
        seen.update(kw, out=out)
        return {"table": "| model |", "report": "r.md", "leaderboards": {"digits": "lb.html"},
                "seconds": 1.0}

    monkeypatch.setattr(cli, "run_demo", fake)
    res = runner.invoke(app, ["demo", "--out", str(tmp_path), "--n", "7", "--epochs", "2",
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    assert seen["n_attack"] == 7 and seen["epochs"] == 2 and seen["progress"] is False
    assert "| model |" in res.output and "leaderboard: lb.html" in res.output


def test_train_differential_binary_task(tmp_path: Path) -> None:
    out = tmp_path / "diff"
    res = runner.invoke(app, ["train", "--model", "smallcnn", "--dataset", "digits",
                              "--loss", "differential", "--classes", "3,8", "--epochs", "2",
                              "--optimizer", "adam", "--lr", "0.003", "--batch-size", "32",
                              "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    results = read_json(out / "results.json")
    assert results["loss"] == "differential"
    assert results["data"]["classes"] == ["3", "8"]
    bias = results["extra"]["bias"]
    # The margin rule puts b midway between the lowest positive and highest negative score.
    assert bias["bias"] == pytest.approx(-0.5 * (bias["min_pos"] + bias["max_neg"]), abs=1e-5)
    # eval re-carves the same two-class test set from the card.
    ev = json.loads(runner.invoke(app, ["eval", "--model", str(out / "final")]).output)
    assert ev["accuracy"] == pytest.approx(results["metrics"]["test_accuracy"])


def test_train_with_output_activation_round_trips(tmp_path: Path) -> None:
    out = tmp_path / "oa"
    res = runner.invoke(app, ["train", "--model", "smallcnn", "--dataset", "digits",
                              "--output-activation", "sigmoid", "--temperature", "1",
                              "--epochs", "1", "--optimizer", "adam", "--lr", "0.003",
                              "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    card = read_json(out / "final" / "card.json")
    assert card["defenses"] == [{"type": "output_activation", "f": "sigmoid",
                                 "temperature": 1.0}]
    ev = json.loads(runner.invoke(app, ["eval", "--model", str(out / "final")]).output)
    assert ev["accuracy"] == pytest.approx(read_json(out / "results.json")["metrics"][
        "test_accuracy"])
