"""Sharded evaluation (issue 23): shards merged give the single-process table, screens included;
a merge refuses shards that do not belong together; a killed shard resumes; ``--shard auto``
under a launcher's environment, and two real processes under ``torchrun``.

Engine level on the prototype CNN (``standard`` with few steps, a screen of 5 points so the
merge must draw it from every shard's survivors); CLI level on a digits SmallCNN checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import train_prototype_cnn
from test_cli_errors import one_error_line
from typer.testing import CliRunner

import robustact.evaluate.runner as runner_mod
from robustact.cli import app
from robustact.core.storage import read_json
from robustact.evaluate import evaluate, get_protocol, load_table
from robustact.evaluate.shards import parse_shard, shard_from_env, shard_positions
from robustact.evaluate.storage import ResultsFolderMismatch, load_adversarial
from robustact.evaluate.table import COLUMNS
from robustact.runs.shards import evaluate_shard, merge_shards, shard_folder

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 0.1
FAST = {"steps": 4, "n_queries": 30}
#: The loss diagnostics of a sample differ in their last bits between batches of different
#: sizes (a CPU convolution's blocking; measured 4.8e-6): the only columns allowed to.
FLOAT_DIAGNOSTICS = ("loss_first", "loss_best", "stall")


def _proto(max_points: int = 5) -> dict:
    p = get_protocol("standard")
    entries = [dict(e, max_points=max_points) if e["key"] == "square" else e
               for e in p["entries"]]
    return {**{k: p[k] for k in ("eps_grid", "adaptive", "adaptive_plan")},
            "name": "sharded", "version": 1, "entries": entries}


@pytest.fixture(scope="module")
def cnn():
    model, x, y = train_prototype_cnn(0)
    return model.eval(), x, y


def _same(a, b, exact: bool = True) -> None:
    assert len(a) == len(b) and list(a["attack"]) == list(b["attack"])
    for c in COLUMNS:
        if c == "seconds":
            continue
        va, vb = a[c], b[c]
        if not exact and c in FLOAT_DIAGNOSTICS:
            assert np.allclose(va, vb, rtol=1e-4, atol=1e-4, equal_nan=True), c
        elif va.dtype.kind == "f":
            assert np.array_equal(va, vb, equal_nan=True), c
        else:
            assert np.array_equal(va, vb), c


def _shards(model, x, y, root: Path, count: int, batch_size: int, **kw) -> list[Path]:
    paths = []
    for i in range(count):
        pos = torch.from_numpy(shard_positions(len(x), i, count))
        p = root / f"{i}-of-{count}"
        evaluate(model, x[pos], y[pos], kw.pop("protocol", _proto()), eps=EPS, out=str(p),
                 batch_size=batch_size, progress=False, overrides=FAST, sample_ids=pos,
                 shard=(i, count), **kw)
        paths.append(p)
    return paths


def test_merged_shards_equal_one_process_bit_for_bit(cnn, tmp_path):
    model, x, y = cnn
    one = evaluate(model, x, y, _proto(), eps=EPS, out=str(tmp_path / "one"), batch_size=1,
                   progress=False, overrides=FAST)
    paths = _shards(model, x, y, tmp_path / "s", 3, batch_size=1)
    merged = evaluate(model, x, y, _proto(), eps=EPS, out=str(tmp_path / "m"), batch_size=1,
                      progress=False, overrides=FAST, merge=paths)
    _same(one, merged)  # same batch composition (1): every column, bit for bit
    _same(load_table(tmp_path / "one"), load_table(tmp_path / "m"))
    # the screen ran at the merge, on 5 of all shards' survivors, not 5 per shard
    sq = merged.cell("square", EPS)
    assert (~sq["skipped"]).sum() == 5
    for p in paths:
        assert "square" not in set(load_table(p)["attack"])
    a, b = load_adversarial(tmp_path / "one"), load_adversarial(tmp_path / "m")
    assert a is not None and b is not None
    assert torch.equal(a["sample"], b["sample"]) and torch.equal(a["x_adv"], b["x_adv"])
    assert a["attack"] == b["attack"]


def test_other_batch_sizes_change_only_float_diagnostics(cnn, tmp_path):
    """Shards batch their own samples: every decision column stays equal bit for bit."""
    model, x, y = cnn
    one = evaluate(model, x, y, _proto(), eps=EPS, batch_size=7, progress=False,
                   overrides=FAST)
    paths = _shards(model, x, y, tmp_path / "s", 2, batch_size=5)
    merged = evaluate(model, x, y, _proto(), eps=EPS, batch_size=7, progress=False,
                      overrides=FAST, merge=paths)
    _same(one, merged, exact=False)


def test_merge_refuses_shards_that_do_not_belong_together(cnn, tmp_path):
    model, x, y = cnn
    paths = _shards(model, x, y, tmp_path / "a", 2, batch_size=8)

    def merge(ps, **kw):
        return evaluate(model, x, y, kw.pop("protocol", _proto()), eps=kw.pop("eps", EPS),
                        progress=False, overrides=FAST, merge=ps, **kw)

    with pytest.raises(ValueError, match=r"shard 1/2 missing"):
        merge(paths[:1])
    with pytest.raises(ValueError, match="given twice"):
        merge([paths[0], paths[0], paths[1]])
    other = _shards(model, x, y, tmp_path / "b", 2, batch_size=8, seed=1)
    with pytest.raises(ResultsFolderMismatch, match="different evaluations.*seed"):
        merge([paths[0], other[1]])
    with pytest.raises(ResultsFolderMismatch, match="different evaluation.*eps_grid"):
        merge(paths, eps=0.05)
    with pytest.raises(ResultsFolderMismatch, match="different evaluation.*protocol"):
        merge(paths, protocol="standard")
    changed = train_prototype_cnn(1)[0].eval()
    with pytest.raises(ResultsFolderMismatch, match="different evaluation.*model"):
        evaluate(changed, x, y, _proto(), eps=EPS, progress=False, overrides=FAST,
                 merge=paths)
    with pytest.raises(ValueError, match="other images"):
        merge(paths, sample_ids=torch.arange(len(x)).flip(0))
    three = _shards(model, x, y, tmp_path / "c", 3, batch_size=8)
    with pytest.raises(ValueError, match="split the samples differently"):
        merge([paths[0], three[1], three[2]])
    evaluate(model, x, y, _proto(), eps=EPS, out=str(tmp_path / "plain"), progress=False,
             overrides=FAST)
    with pytest.raises(ValueError, match="not a shard"):
        merge([tmp_path / "plain"])


def test_randomized_model_is_refused(cnn):
    model, x, y = cnn

    class Noisy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, t):
            return self.inner(t + 0.05 * torch.randn_like(t))

    with pytest.raises(ValueError, match="randomized model cannot be evaluated in shards"):
        evaluate(Noisy().eval(), x, y, "quick", eps=EPS, progress=False, shard=(0, 2))


def test_parse_shard_and_launcher_environment():
    assert parse_shard("1/4") == (1, 4) and parse_shard("auto") is None
    for bad in ("4/4", "-1/2", "1of2", "a/b", "0/0"):
        with pytest.raises(ValueError, match="--shard must be i/N"):
            parse_shard(bad)
    assert shard_from_env({"RANK": "3", "WORLD_SIZE": "8"}) == (3, 8)
    assert shard_from_env({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}) == (1, 2)
    with pytest.raises(ValueError, match="needs a launcher"):
        shard_from_env({})
    with pytest.raises(ValueError, match="do not name a shard"):
        shard_from_env({"RANK": "2", "WORLD_SIZE": "2"})
    blocks = [shard_positions(10, i, 3) for i in range(3)]
    assert [len(b) for b in blocks] == [3, 3, 4]
    assert np.array_equal(np.concatenate(blocks), np.arange(10))


# ---------------------------------------------------------------- the command line

runner = CliRunner()
CLI = ["--protocol", "quick", "--n", "24", "--no-progress", "--threads", "1", "--device", "cpu",
       "--audit-samples", "5", "--batch-size", "1"]


@pytest.fixture(scope="module")
def ckpt(digits_ckpt: Path) -> Path:
    return digits_ckpt


def _killed_at(monkeypatch, call: int):
    """Make the engine's ``call``-th attack cell raise Ctrl-C (a killed process); returns the
    real cell function and the list of calls."""
    real, calls = runner_mod._run_cell, []

    def dies(*a, **k):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(runner_mod, "_run_cell", dies)
    return real, calls


def _comparable(summary: dict) -> dict:
    drop = {"out", "reports", "seconds", "command", "created", "cost", "environment", "run"}
    out = {k: v for k, v in summary.items() if k not in drop}
    out["certified"] = {k: v for k, v in out.get("certified", {}).items() if k != "seconds"}
    return out


def test_cli_shards_merge_to_the_single_run_and_a_killed_shard_resumes(
        ckpt, tmp_path, monkeypatch):
    one = tmp_path / "one"
    res = runner.invoke(app, ["evaluate", "--model", str(ckpt), "--out", str(one), *CLI])
    assert res.exit_code == 0, res.output
    out = tmp_path / "sharded"
    res = runner.invoke(app, ["evaluate", "--model", str(ckpt), "--out", str(out),
                              "--shard", "0/2", *CLI])
    assert res.exit_code == 0 and "shard 0/2: 12 images" in res.output, res.output
    # shard 1 is killed in its third cell: its finished cells stay, the merge refuses it
    real, calls = _killed_at(monkeypatch, 3)
    res = runner.invoke(app, ["evaluate", "--model", str(ckpt), "--out", str(out),
                              "--shard", "1/2", *CLI])
    assert res.exit_code == 130, res.output
    kept = len(read_json(shard_folder(out, 1, 2) / "table.json")["cells"])
    assert kept == 2
    # a folder this run created keeps its record with its work (it once lost run.json)
    assert read_json(shard_folder(out, 1, 2) / "run.json")["status"] == "interrupted"
    one_error_line(runner.invoke(app, ["merge", str(out), "--no-progress"]),
                   "did not finish", "rerun its command")
    calls.clear()
    monkeypatch.setattr(runner_mod, "_run_cell",
                        lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    res = runner.invoke(app, ["evaluate", "--model", str(ckpt), "--out", str(out),
                              "--shard", "1/2", *CLI])
    assert res.exit_code == 0, res.output
    total = len(read_json(shard_folder(out, 1, 2) / "table.json")["cells"])
    assert len(calls) == total - kept  # only the unfinished cells ran again
    res = runner.invoke(app, ["merge", str(out), "--no-progress", "--audit-samples", "5",
                              "--threads", "1", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    a, b = read_json(one / "summary.json"), read_json(out / "summary.json")
    assert _comparable(a) == _comparable(b)
    assert read_json(one / "report.json")["audit"]["checks"] == read_json(
        out / "report.json")["audit"]["checks"]
    _same(load_table(one), load_table(out))
    assert (out / "report.html").is_file() and (out / "adversarial.safetensors").is_file()
    # verify recounts the merged run from its own files, as for any evaluation
    res = runner.invoke(app, ["verify", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output


def test_cli_shard_errors_are_one_line(ckpt, tmp_path):
    one_error_line(runner.invoke(app, ["evaluate", "--model", str(ckpt), "--shard", "0/2",
                                       *CLI]), "--shard needs --out")
    one_error_line(runner.invoke(app, ["evaluate", "--model", str(ckpt), "--shard", "2/2",
                                       "--out", str(tmp_path / "o"), *CLI]), "--shard must be")
    one_error_line(runner.invoke(app, ["evaluate", "--model", str(ckpt), "--shard", "auto",
                                       "--out", str(tmp_path / "o"), *CLI]), "needs a launcher")
    one_error_line(runner.invoke(app, ["merge", str(tmp_path / "nothing")]), "not a folder")


def test_shard_auto_reads_the_launcher_and_rank_0_merges(ckpt, tmp_path, monkeypatch):
    out = tmp_path / "auto"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    res = runner.invoke(app, ["evaluate", "--model", str(ckpt), "--out", str(out),
                              "--shard", "auto", *CLI])
    assert res.exit_code == 0 and "shard 1/2" in res.output, res.output
    assert not (out / "summary.json").exists()
    monkeypatch.setenv("RANK", "0")
    res = runner.invoke(app, ["evaluate", "--model", str(ckpt), "--out", str(out),
                              "--shard", "auto", *CLI])
    assert res.exit_code == 0 and "robust accuracy" in res.output, res.output
    assert read_json(out / "run.json")["config"]["merged"]
    assert (out / "summary.json").is_file()


def test_library_merge_needs_finished_shards(ckpt, tmp_path):
    with pytest.raises(ValueError, match="no shard folders"):
        (tmp_path / "empty" / "shards").mkdir(parents=True)
        merge_shards([tmp_path / "empty"])
    assert evaluate_shard  # the library call the CLI wraps (used above through the CLI)


@pytest.mark.slow
def test_two_processes_under_torchrun(ckpt, tmp_path):
    """Two real processes launched by torchrun (RANK, WORLD_SIZE from it): rank 0 waits for
    rank 1's shard and merges; the result equals the single-process evaluation."""
    one = tmp_path / "one"
    res = runner.invoke(app, ["evaluate", "--model", str(ckpt), "--out", str(one), *CLI])
    assert res.exit_code == 0, res.output
    out = tmp_path / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "robustact", "evaluate", "--model", str(ckpt), "--out", str(out),
           "--shard", "auto", *[("-n" if a == "--n" else a) for a in CLI]]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    _same(load_table(one), load_table(out))
    assert _comparable(read_json(one / "summary.json")) == _comparable(
        read_json(out / "summary.json"))


# ---------------------------------------------------------------- grids of cells

def _grid(tmp_path: Path, ckpt: Path, **extra) -> Path:
    grid = {"name": "tiny", "defaults": {"protocol": "quick", "n": 12, "batch_size": 4},
            "models": {"cnn": {"checkpoint": str(ckpt)}, "again": {"checkpoint": str(ckpt)}},
            "evaluations": {"e1": {"eps": "0.1"}, "e05": {"eps": "0.05", "seed": 1}}, **extra}
    path = tmp_path / "grid.json"
    path.write_text(__import__("json").dumps(grid))
    return path


GRID = ["--no-progress", "--threads", "1", "--device", "cpu"]


def test_grid_spreads_cells_over_shards_and_resumes(ckpt, tmp_path, monkeypatch):
    path, out = _grid(tmp_path, ckpt), tmp_path / "g"
    res = runner.invoke(app, ["grid", str(path), "--out", str(out), "--shard", "0/2", *GRID])
    assert res.exit_code == 0 and "ran 2 cells" in res.output, res.output
    assert sorted(p.name for p in (out / "cells").iterdir()) == ["again--e1", "cnn--e1"]
    assert not (out / "grid.json").exists()
    # shard 1's second cell is killed: its first cell is finished, the second resumes
    real, _ = _killed_at(monkeypatch, 12)
    res = runner.invoke(app, ["grid", str(path), "--out", str(out), "--shard", "1/2", *GRID])
    assert res.exit_code == 130, res.output
    monkeypatch.setattr(runner_mod, "_run_cell", real)
    res = runner.invoke(app, ["grid", str(path), "--out", str(out), "--shard", "1/2", *GRID])
    assert res.exit_code == 0 and "ran 1 cells, skipped 1" in res.output, res.output
    summary = read_json(out / "grid.json")
    assert [c["cell"] for c in summary["cells"]] == ["cnn--e1", "cnn--e05", "again--e1",
                                                     "again--e05"]
    by = {c["cell"]: c for c in summary["cells"]}
    assert by["cnn--e1"]["robust_accuracy"] == by["again--e1"]["robust_accuracy"]
    assert by["cnn--e05"]["eps"] == pytest.approx(0.05)
    assert (out / "leaderboard.html").is_file()
    res = runner.invoke(app, ["grid", str(path), "--out", str(out), *GRID])
    assert res.exit_code == 0 and "ran 0 cells, skipped 4" in res.output, res.output


def test_grid_auto_rank_0_waits_and_summarizes(ckpt, tmp_path, monkeypatch):
    path, out = _grid(tmp_path, ckpt), tmp_path / "g"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    res = runner.invoke(app, ["grid", str(path), "--out", str(out), "--shard", "auto", *GRID])
    assert res.exit_code == 0 and "still running" in res.output, res.output
    monkeypatch.setenv("RANK", "0")
    res = runner.invoke(app, ["grid", str(path), "--out", str(out), "--shard", "auto", *GRID])
    assert res.exit_code == 0 and "summary:" in res.output, res.output


@pytest.mark.parametrize(("edit", "needle"), [
    ({"models": {}}, "'models' must name at least one"),
    ({"models": {"a": {"checkpoint": "x", "weights": "w"}}}, "only apply to --model-file"),
    ({"models": {"a b": {"checkpoint": "x"}}}, "must be letters"),
    ({"evaluations": {"e": {"eps": "8"}}}, "pixel units"),
    ({"evaluations": {"e": {"protocol": "nope"}}}, "nope"),
    ({"evaluations": {"e": {"epsilon": 0.1}}}, "unknown field epsilon"),
    ({"extra": 1}, "unknown field extra"),
])
def test_bad_grid_files_are_one_line(ckpt, tmp_path, edit, needle):
    path = _grid(tmp_path, ckpt, **edit)
    one_error_line(runner.invoke(app, ["grid", str(path), "--out", str(tmp_path / "g")]),
                   needle)
