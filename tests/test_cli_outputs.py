"""CLI: the output-activation path (train at T = 1, `defend` at T = 100), card edits detected,
and run folders that are never overwritten silently (locks, --force, per-run attack folders)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from robustact.checkpoint import sha256_file
from robustact.cli import app
from robustact.core.runlock import RunLock
from robustact.core.storage import read_json

runner = CliRunner()

TRAIN = ["train", "--model", "smallcnn", "--dataset", "digits", "--epochs", "1",
         "--optimizer", "adam", "--lr", "0.003", "--batch-size", "64", "--no-progress"]


@pytest.fixture(scope="module")
def sigmoid_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder holding a model trained with a sigmoid output activation at T = 1."""
    out = tmp_path_factory.mktemp("outact") / "sig"
    res = runner.invoke(app, [*TRAIN, "--output-activation", "sigmoid", "--temperature", "1",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_training_at_a_temperature_that_does_not_learn_is_refused(tmp_path: Path) -> None:
    args = [*TRAIN, "--output-activation", "sigmoid", "--temperature", "100"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "hot")])
    assert res.exit_code == 2
    assert "does not learn" in res.output and "robustact defend" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "hot").exists()
    res = runner.invoke(app, [*args, "--force", "--out", str(tmp_path / "forced")])
    assert res.exit_code == 0, res.output  # --force trains anyway
    card = read_json(tmp_path / "forced" / "final" / "card.json")
    assert card["defenses"][0]["temperature"] == 100.0


def test_defend_raises_the_temperature_of_a_trained_model(sigmoid_run: Path,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "t100"
    res = runner.invoke(app, ["defend", "--model", str(sigmoid_run / "final"),
                              "--output-activation", "sigmoid", "--temperature", "100",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    result = json.loads(res.output)
    assert result["previous_output_activation"] == {"f": "sigmoid", "temperature": 1.0}
    card = read_json(out / "card.json")
    assert card["defenses"] == [{"type": "output_activation", "f": "sigmoid",
                                 "temperature": 100.0}]
    assert card["extra"]["defense_of"] == str(sigmoid_run / "final")
    # Evaluation rebuilds the model at T = 100 from the card and measures what defend measured.
    ev = json.loads(runner.invoke(app, ["eval", "--model", str(out)]).output)
    assert ev["accuracy"] == pytest.approx(result["test_accuracy"])
    before = read_json(sigmoid_run / "results.json")["metrics"]["test_accuracy"]
    assert result["test_accuracy_before"] == pytest.approx(before)
    # The same folder again: refused without --force.
    res = runner.invoke(app, ["defend", "--model", str(sigmoid_run / "final"),
                              "--output-activation", "tanh", "--temperature", "50",
                              "--out", str(out)])
    assert res.exit_code == 2 and "already holds a checkpoint" in res.output

    # A hand edit of the temperature in the card is detected with one line.
    text = (out / "card.json").read_text()
    edited = re.sub(r'("type": "output_activation",\s*"f": "sigmoid",\s*"temperature": )100\.0',
                    r"\g<1>1.0", text, count=1)
    assert edited != text
    (out / "card.json").write_text(edited)
    res = runner.invoke(app, ["eval", "--model", str(out)])
    assert res.exit_code == 2
    assert "edited after it was saved (changed: defenses)" in res.output
    assert "Traceback" not in res.output


def test_defend_adds_an_output_activation_to_a_plain_model(sigmoid_run: Path,
                                                           tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    assert runner.invoke(app, ["defend", "--model", str(sigmoid_run / "final"),
                               "--output-activation", "sigmoid", "--temperature", "1",
                               "--out", str(tmp_path / "same")]).exit_code == 0
    res = runner.invoke(app, [*TRAIN, "--out", str(plain)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["defend", "--model", str(plain / "final"),
                              "--output-activation", "softsign", "--temperature", "10",
                              "--out", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["previous_output_activation"] is None
    assert read_json(tmp_path / "d" / "card.json")["defenses"] == [
        {"type": "output_activation", "f": "softsign", "temperature": 10.0}]


def test_train_refuses_to_overwrite_a_finished_run(sigmoid_run: Path) -> None:
    final = sigmoid_run / "final" / "model.safetensors"
    digest = sha256_file(final)
    res = runner.invoke(app, [*TRAIN, "--out", str(sigmoid_run)])
    assert res.exit_code == 2
    assert "already holds a trained model" in res.output and "--resume" in res.output
    assert sha256_file(final) == digest  # untouched
    # --resume is the way to continue (the 1-epoch run is complete: nothing more to train).
    res = runner.invoke(app, [*TRAIN, "--output-activation", "sigmoid", "--resume",
                              "--out", str(sigmoid_run)])
    assert res.exit_code == 0, res.output


def test_train_refuses_an_unfinished_run_and_force_replaces(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert runner.invoke(app, [*TRAIN, "--out", str(out)]).exit_code == 0
    old = sha256_file(out / "final" / "model.safetensors")
    import shutil

    shutil.rmtree(out / "final")  # as if the run had been interrupted after an epoch
    res = runner.invoke(app, [*TRAIN, "--out", str(out)])
    assert res.exit_code == 2 and "unfinished training run" in res.output
    res = runner.invoke(app, [*TRAIN, "--seed", "5", "--force", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert sha256_file(out / "final" / "model.safetensors") != old


def test_a_second_run_into_a_locked_folder_fails_at_once(sigmoid_run: Path,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "busy"
    with RunLock(out, "training run"):  # another run holds the folder
        res = runner.invoke(app, [*TRAIN, "--out", str(out)])
        assert res.exit_code == 2
        assert "is in use by another training run" in res.output
        assert "Traceback" not in res.output
        res = runner.invoke(app, ["attack", "--model", str(sigmoid_run / "final"),
                                  "--eps", "0.1", "--steps", "2", "--n", "4", "--no-progress",
                                  "--out", str(out)])
        assert res.exit_code == 2 and "in use" in res.output
    assert not (out / "final").exists() and not (out / "summary.json").exists()


def test_attack_writes_a_new_folder_per_run_and_refuses_to_overwrite(
        sigmoid_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["attack", "--model", str(sigmoid_run / "final"), "--attack", "fgsm",
            "--eps", "0.1", "--n", "8", "--no-progress"]
    folders = []
    for _ in range(2):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        out = res.stdout.strip().splitlines()[-1].split()[1]  # "results: OUT (report: ...)"
        assert Path(out).parent == Path("runs/attack")
        assert Path(out).name.startswith("sig-final-fgsm-")
        assert (tmp_path / out / "summary.json").is_file()
        folders.append(out)
    assert folders[0] != folders[1]  # same second, still two folders
    # a rerun into a finished folder resumes it, like `evaluate`: nothing is attacked again
    before = (tmp_path / folders[0] / "table.json").read_bytes()
    res = runner.invoke(app, [*args, "--out", folders[0]])
    assert res.exit_code == 0, res.output
    assert (tmp_path / folders[0] / "table.json").read_bytes() == before
    res = runner.invoke(app, [*args, "--out", folders[0], "--force"])
    assert res.exit_code == 0, res.output
    # A failed attack leaves no empty default folder behind.
    res = runner.invoke(app, [*args, "--param", "bogus=1"])
    assert res.exit_code == 2 and "bogus" in res.output
    assert sorted(p.name for p in (tmp_path / "runs" / "attack").iterdir()
                  if not p.name.startswith(".")) == sorted(Path(f).name for f in folders)
