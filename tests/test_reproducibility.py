"""``--seed`` makes a run reproducible: same seed, same threads → the same weights, bit for bit
(CPU), for ``robustact train`` and for the demo; and seeding never leaks into the caller's RNG."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from robustact.cli import app
from robustact.core.storage import load_tensors, read_json

runner = CliRunner()


def _train(out: Path, seed: int) -> dict[str, torch.Tensor]:
    res = runner.invoke(app, ["train", "--model", "smallcnn", "--dataset", "digits",
                              "--epochs", "1", "--optimizer", "adam", "--lr", "0.003",
                              "--batch-size", "128", "--seed", str(seed), "--device", "cpu",
                              "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    return load_tensors(out / "final" / "model.safetensors")


def test_cli_train_same_seed_gives_bit_identical_weights(tmp_path: Path) -> None:
    torch.manual_seed(123)  # whatever the caller's RNG holds must not matter ...
    a = _train(tmp_path / "a", seed=5)
    torch.rand(17)  # ... nor where it stands
    b = _train(tmp_path / "b", seed=5)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between two runs with the same seed"
    c = _train(tmp_path / "c", seed=6)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_training_leaves_the_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(42)
    expected = torch.rand(4)
    torch.manual_seed(42)
    _train(tmp_path / "a", seed=5)
    assert torch.equal(torch.rand(4), expected)


def test_seeded_restores_the_rng_and_streams_differ() -> None:
    from robustact.train import seeded

    state = torch.random.get_rng_state()
    with seeded(3, "a"):
        a1 = torch.rand(5)
    with seeded(3, "a"):
        a2 = torch.rand(5)
    with seeded(3, "b"):
        b = torch.rand(5)
    assert torch.equal(a1, a2) and not torch.equal(a1, b)
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.slow
def test_demo_same_seed_gives_identical_results(tmp_path: Path) -> None:
    from robustact.runs.demo import run_demo

    torch.manual_seed(1)
    s1 = run_demo(tmp_path / "d1", epochs=1, seed=3, progress=False, n_attack=16)
    torch.manual_seed(2)  # a different caller RNG state must not change anything
    s2 = run_demo(tmp_path / "d2", epochs=1, seed=3, progress=False, n_attack=16)

    def numbers(summary: dict) -> list[dict]:  # all but wall times and paths
        return [{k: v for k, v in r.items() if k not in ("seconds", "checkpoint")}
                for r in summary["models"]]

    assert numbers(s1) == numbers(s2)
    assert s1["table"] == s2["table"]

    def table(path: Path) -> list[str]:  # the report's tables (its text also holds wall times)
        return [line for line in path.read_text().splitlines() if line.startswith("|")]

    assert table(tmp_path / "d1" / "report.md") == table(tmp_path / "d2" / "report.md")
    for key in ("undefended", "outact"):  # every number of the model's evaluation and audit
        r1, r2 = (read_json(tmp_path / d / key / "report.json") for d in ("d1", "d2"))
        for part in ("summary", "per_eps", "min_norm", "extra_curves"):
            assert r1[part] == r2[part], (key, part)
        assert [c["fired"] for c in r1["audit"]["checks"]] == [
            c["fired"] for c in r2["audit"]["checks"]]
    for key in ("undefended/final", "splash/final", "outact", "differential/final"):
        a = load_tensors(tmp_path / "d1" / "models" / key / "model.safetensors")
        b = load_tensors(tmp_path / "d2" / "models" / key / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), key
