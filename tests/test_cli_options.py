"""CLI options every model-running command shares: ``--threads``, ``--device``; plus
``--version`` and ``python -m robustact``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import robustact
import robustact.cli.common as cli
from robustact.cli import app
from robustact.core.storage import read_json

runner = CliRunner()


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    """The CLI sets torch's threads for its process; these tests run it in-process."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("opts") / "m"
    res = runner.invoke(app, ["train", "--model", "smallcnn", "--dataset", "digits",
                              "--epochs", "1", "--optimizer", "adam", "--lr", "0.003",
                              "--device", "cpu", "--threads", "1",
                              "--out", str(out), "--no-progress"])
    torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output
    return out


def _one_line_error(res: object, needle: str) -> None:
    assert res.exit_code == 2, res.output  # type: ignore[attr-defined]
    lines = [ln for ln in res.output.splitlines() if ln.strip()]  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines


def test_version() -> None:
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0
    assert res.output.strip() == f"robustact {robustact.__version__}"


def test_python_m_robustact() -> None:
    src = str(Path(robustact.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "robustact", "--help"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "attack" in res.stdout and "train" in res.stdout
    res = subprocess.run([sys.executable, "-m", "robustact", "--version"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and robustact.__version__ in res.stdout


def test_train_threads_is_applied(trained: Path) -> None:
    # The process ran with 2 threads; --threads 1 is what the run used.
    assert read_json(trained / "results.json")["environment"]["threads"] == 1


def test_eval_threads_and_device(trained: Path) -> None:
    torch.set_num_threads(1)
    res = runner.invoke(app, ["eval", "--model", str(trained / "final"), "--device", "cpu",
                              "--threads", "2"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["device"] == "cpu"
    assert torch.get_num_threads() == 2


def test_attack_threads_and_device(trained: Path, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    res = runner.invoke(app, ["attack", "--model", str(trained / "final"), "--attack", "pgd",
                              "--eps", "0.1", "--steps", "3", "--n", "16", "--device", "cpu",
                              "--threads", "1", "--out", str(tmp_path / "a"), "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = read_json(tmp_path / "a" / "summary.json")
    assert summary["device"] == "cpu" and summary["environment"]["threads"] == 1


def test_default_threads_follow_free_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    def machine(cores: int, load: float) -> int:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)),
                            raising=False)
        monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
        return cli.default_threads()

    assert machine(2, 0.1) == 2      # idle 2-core machine: both cores
    assert machine(2, 1.7) == 1      # two busy processes already: one thread
    assert machine(2, 6.0) == 1      # never below one
    assert machine(16, 0.0) == 4     # capped
    assert machine(16, 13.2) == 3
    # under torchrun the node's processes share its cores (no oversubscription)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert machine(2, 0.1) == 1
    assert machine(16, 0.0) == 4 and machine(6, 0.0) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # what torchrun was told
    assert machine(16, 0.0) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # one process: OMP_NUM_THREADS is not ours
    assert machine(2, 0.1) == 2


def test_no_threads_option_uses_the_default(trained: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(2)
    monkeypatch.setattr(cli, "default_threads", lambda: 1)
    res = runner.invoke(app, ["eval", "--model", str(trained / "final"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert torch.get_num_threads() == 1


def test_threads_must_be_positive(trained: Path) -> None:
    res = runner.invoke(app, ["eval", "--model", str(trained / "final"), "--threads", "0"])
    assert res.exit_code == 2 and "--threads" in res.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
@pytest.mark.parametrize("command", [
    ["eval"], ["attack", "--n", "4", "--no-progress"], ["tune-jump", "--no-progress"],
    ["retrofit", "--jump", "1"], ["train"], ["demo", "--no-progress"]])
def test_cuda_without_cuda_is_one_clear_line(command: list[str], trained: Path,
                                             tmp_path: Path) -> None:
    args = [*command, "--device", "cuda"]
    if command[0] != "eval":
        args += ["--out", str(tmp_path / "x")]
    if command[0] == "train":
        args += ["--dataset", "digits", "--model", "smallcnn", "--no-progress"]
    elif command[0] != "demo":
        args += ["--model", str(trained / "final")]
    _one_line_error(runner.invoke(app, args), "CUDA is not available")
    assert not (tmp_path / "x").exists()


def test_bad_device_name_is_one_clear_line(trained: Path) -> None:
    res = runner.invoke(app, ["eval", "--model", str(trained / "final"), "--device", "gpu"])
    _one_line_error(res, "'auto', 'cpu', 'cuda' or 'cuda:i'")
