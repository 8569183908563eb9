"""The outer layer (issue 19): one prediction rule, one record per run, one run-folder
mechanism, protocols as files, any model in every command.

Each test runs the real commands in-process on sklearn's digits, as a user would.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
from _helpers import USER_MLP, cli_ok, user_mlp_files
from typer.testing import CliRunner

import robustact.runs.evaluate as runs_evaluate
from robustact.cli import app
from robustact.core.storage import read_json
from robustact.data import load_dataset
from robustact.models.predict import predict
from robustact.train import TrainConfig, Trainer, load_checkpoint

runner = CliRunner()
CPU = ["--threads", "1", "--device", "cpu"]
N = 60
#: The tied model scores near chance by design (most of its outputs tie, and a tie is not
#: correct: ~20 % on 30 images), so `evaluate`/`attack` of it pass the chance gate's flag.
CHANCE = ["--allow-chance"]


ok = cli_ok


@pytest.fixture(scope="module")
def tied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits model whose outputs tie exactly: trained with a sigmoid output activation at
    T = 1, then given T = 1000 (sigmoid saturates to 1.0 for several classes in float32)."""
    root = tmp_path_factory.mktemp("outer")
    ok(["train", "--model", "smallcnn", "--dataset", "digits", "--epochs", "2", "--optimizer",
        "adam", "--lr", "0.003", "--batch-size", "64", "--output-activation", "sigmoid",
        "--out", str(root / "t1"), "--no-progress", *CPU])
    ok(["defend", "--model", str(root / "t1" / "final"), "--output-activation", "sigmoid",
        "--temperature", "1000", "--out", str(root / "tied"), *CPU])
    return root / "tied"


def test_every_command_gives_the_same_clean_accuracy_with_exact_ties(tied: Path,
                                                                    tmp_path: Path) -> None:
    test = load_dataset("digits", "test").subset(torch.arange(N))
    model, card = load_checkpoint(tied)
    with torch.no_grad():
        z = model(test.x())
    top2 = z.topk(2, dim=1).values
    ties = int((top2[:, 0] == top2[:, 1]).sum())
    assert ties >= 5, "the fixture must tie exactly, or this test proves nothing"
    argmax_acc = float((z.argmax(1) == test.labels).float().mean())
    truth = predict(model, test).accuracy
    assert truth != argmax_acc  # the tie rule matters on this model

    ev = json.loads(ok(["eval", "--model", str(tied), "--limit", str(N), *CPU]))
    assert ev["tied"] == ties and ev["n"] == N
    ok(["evaluate", "--model", str(tied), "--protocol", "quick", "--n", str(N), "--no-audit",
        "--out", str(tmp_path / "ev"), "--no-progress", *CPU, *CHANCE])
    ok(["attack", "--model", str(tied), "--attack", "fgsm", "--n", str(N), "--out",
        str(tmp_path / "atk"), "--no-progress", *CPU, *CHANCE])
    trainer = Trainer(model, test, val_data=test, config=TrainConfig(epochs=1, device="cpu"),
                      progress=False)
    found = {
        "eval": ev["accuracy"],
        "evaluate": read_json(tmp_path / "ev" / "summary.json")["clean_accuracy"],
        "attack": read_json(tmp_path / "atk" / "summary.json")["clean_accuracy"],
        "training validation": trainer.evaluate()["acc"],
    }
    assert found == {k: pytest.approx(truth, abs=1e-12) for k in found}, found
    # the demo and defend report the test accuracy of train/defend, the same function on the
    # whole test split
    full = load_dataset("digits", "test")
    assert card["metrics"]["test_accuracy"] == pytest.approx(predict(model, full).accuracy)


def _verdicts(folder: Path) -> dict[str, str]:
    """The verdict as each of the four files states it."""
    md = (folder / "report.md").read_text()
    html = (folder / "report.html").read_text()
    return {"summary.json": read_json(folder / "summary.json")["verdict"]["label"],
            "report.json": read_json(folder / "report.json")["verdict"]["label"],
            "report.md": re.search(r"\*\*Verdict: (.+?)\.\*\*", md).group(1),  # type: ignore[union-attr]
            "report.html": "masking" if "masking" in html.split("<h2", 2)[1] else "not audited"}


def test_an_audited_run_and_a_no_audit_rerun_never_disagree(tied: Path, tmp_path: Path) -> None:
    out = tmp_path / "ev"
    base = ["evaluate", "--model", str(tied), "--protocol", "quick", "--n", "30",
            "--audit-samples", "5", "--out", str(out), "--no-progress", *CPU, *CHANCE]
    ok(base)
    audited = _verdicts(out)
    label = audited["summary.json"]
    assert label != "not audited" and audited["report.json"] == label
    assert audited["report.md"] == label
    ok([*base, "--no-audit"])  # same table: the audit's verdict is kept, and said to be
    again = _verdicts(out)
    assert again["summary.json"] == again["report.json"] == again["report.md"] == label
    summary, record = read_json(out / "summary.json"), read_json(out / "report.json")
    assert summary["verdict"]["evidence"] == record["verdict"]["evidence"]
    assert any("earlier run" in e for e in summary["verdict"]["evidence"])
    assert "earlier run" in (out / "report.md").read_text()
    assert "earlier run" in (out / "report.html").read_text()
    # a --no-audit run of a different table says "not audited" everywhere
    ok(["evaluate", "--model", str(tied), "--protocol", "quick", "--n", "20", "--no-audit",
        "--out", str(tmp_path / "fresh"), "--no-progress", *CPU, *CHANCE])
    fresh = _verdicts(tmp_path / "fresh")
    assert {fresh["summary.json"], fresh["report.json"], fresh["report.md"]} == {"not audited"}


def test_run_record_says_how_each_run_ended(tied: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "ev"
    args = ["evaluate", "--model", str(tied), "--protocol", "quick", "--n", "20", "--no-audit",
            "--out", str(out), "--no-progress", *CPU, *CHANCE]
    ok(args)
    rec = read_json(out / "run.json")
    assert rec["kind"] == "evaluate" and rec["status"] == "finished"
    assert rec["command"].startswith("robustact evaluate --model")
    assert rec["result"]["clean_accuracy"] == read_json(out / "summary.json")["clean_accuracy"]

    # a rerun with another protocol is refused, and the earlier record is left as it was
    res = runner.invoke(app, [*args[:4], "standard", *args[5:]])
    assert res.exit_code == 2 and "different" in res.output.lower()
    assert read_json(out / "run.json") == rec

    # Ctrl-C: one line saying what was kept and how to go on, exit 130, the record says so
    def interrupted(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(runs_evaluate, "evaluate", interrupted)
    res = runner.invoke(app, [*args, "--force"])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 130 and len(lines) == 1, res.output
    assert lines[0].startswith(f"interrupted: the evaluation in {out} stopped")
    assert "rerun the same command" in lines[0] and "Traceback" not in res.output
    assert read_json(out / "run.json")["status"] == "interrupted"
    # Ctrl-C before anything was written leaves no folder behind
    res = runner.invoke(app, ["evaluate", "--model", str(tied), "--protocol", "quick", "--n",
                              "20", "--no-audit", "--out", str(tmp_path / "new"),
                              "--no-progress", *CPU, *CHANCE])
    assert res.exit_code == 130 and not (tmp_path / "new").exists()


def test_silent_cases_now_say_one_line(tied: Path, tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    ok(["train", "--model", "mlp", "--dataset", "digits", "--epochs", "1", "--resume",
        "--out", str(tmp_path / "t"), "--no-progress", *CPU])
    assert "nothing to resume in" in caplog.text and "starting a new training run" in caplog.text
    caplog.clear()
    ok(["eval", "--model", str(tied), "--limit", "100000", *CPU])
    assert ("asked for the first 100000 images, but the digits test split has 359"
            in caplog.text)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A user's plain ReLU MLP (no robustact in it), trained briefly, weights in safetensors."""
    d = tmp_path_factory.mktemp("userfile")
    user_mlp_files(d)
    return {"net": d / "net.py", "weights": d / "w.safetensors"}


def test_any_model_in_every_command(model_file: dict[str, Path], tmp_path: Path) -> None:
    user = ["--model-file", f"{model_file['net']}:mlp", "--weights", str(model_file["weights"]),
            "--dataset", "digits", *CPU]
    clean = json.loads(ok(["eval", *user]))["accuracy"]
    assert clean > 0.8
    retro = json.loads(ok(["retrofit", *user, "--jump", "0.5", "--out", str(tmp_path / "r")]))
    assert retro["test_accuracy_relu"] == pytest.approx(clean)
    card = read_json(tmp_path / "r" / "card.json")
    assert card["defenses"] == [{"type": "jumprelu", "kappa": 0.5}]
    assert card["source"]["kind"] == "model_file" and card["model"] is None
    # the retrofitted model file, evaluated from the CLI like any checkpoint
    out = ok(["evaluate", "--model", str(tmp_path / "r"), "--protocol", "quick", "--n", "40",
              "--audit-samples", "5", "--out", str(tmp_path / "ev"), "--no-progress", *CPU])
    summary = read_json(tmp_path / "ev" / "summary.json")
    assert "bpda-apgd" in [a["attack"] for a in summary["attacks_at_eps"]]  # JumpReLU seen
    assert "verdict:" in out
    again = json.loads(ok(["eval", "--model", str(tmp_path / "r"), *CPU]))["accuracy"]
    assert again == pytest.approx(retro["test_accuracy"])
    ok(["defend", *user, "--output-activation", "sigmoid", "--temperature", "10", "--out",
        str(tmp_path / "d")])
    tuned = json.loads(ok(["tune-jump", *user, "--grid", "0,0.5", "--max-drop", "100",
                           "--no-progress"]))
    assert tuned["kappa"] == 0.5
    ok(["attack", *user, "--attack", "fgsm", "--n", "20", "--out", str(tmp_path / "a"),
        "--no-progress"])
    # the checkpoint is tied to the model file's code: an edit is refused in one line
    model_file["net"].write_text(USER_MLP.replace("hidden=32", "hidden=32  # edited"))
    try:
        res = runner.invoke(app, ["eval", "--model", str(tmp_path / "r"), *CPU])
        assert res.exit_code == 2 and "has changed since" in res.output
    finally:
        model_file["net"].write_text(USER_MLP)


def test_protocols_are_listed_runnable_and_copyable(tied: Path, tmp_path: Path) -> None:
    listing = ok(["protocols"])
    for pid in ("quick@1", "quick@2", "standard@1", "standard@2", "standard@3", "standard@4",
                "standard@5", "thorough@1", "thorough@2", "thorough@3"):
        assert re.search(rf"^{pid}\b", listing, re.M), pid
    assert "changes:" in listing and "eps grid" in listing
    base = ["evaluate", "--model", str(tied), "--n", "20", "--no-audit", "--no-progress", *CPU,
            *CHANCE]
    ok([*base, "--protocol", "quick@1", "--out", str(tmp_path / "v1")])
    assert read_json(tmp_path / "v1" / "summary.json")["protocol"] == "quick@1"
    shipped = Path(__file__).parents[1] / "src" / "robustact" / "protocols" / "quick@2.json"
    mine = json.loads(shipped.read_text())
    mine["name"], mine["entries"] = "mine", mine["entries"][:2]  # FGSM and PGD only
    (tmp_path / "mine.json").write_text(json.dumps(mine))
    ok([*base, "--protocol", str(tmp_path / "mine.json"), "--out", str(tmp_path / "mine")])
    summary = read_json(tmp_path / "mine" / "summary.json")
    assert summary["protocol"] == "mine@2"
    roles = {k: a["role"] for k, a in summary["attacks"].items()}
    assert {k for k, r in roles.items() if r not in ("adaptive", "transfer")} == {"fgsm", "pgd-20"}
