"""Resume: a killed run, resumed, ends bit-identical to an uninterrupted one; crashes mid-save
leave the previous checkpoint loadable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import _resume_worker as worker  # tests/ is on sys.path under pytest's default import mode
import pytest
import torch
from _sigkill import sigkill_at_marker

import robustact.checkpoint as ckpt_mod
from robustact.core.storage import load_tensors
from robustact.train import Trainer, load_training_state, read_card

WORKER = Path(__file__).parent / "_resume_worker.py"


def _reference_state() -> dict[str, torch.Tensor]:
    model, train, val, config = worker.build()
    Trainer(model, train, val, config, progress=False).fit()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        diff = (a[k].double() - b[k].double()).abs().max()
        assert torch.equal(a[k], b[k]), f"{k} differs (max |Δ| {diff})"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path: Path) -> None:
    out = tmp_path / "run"
    marker = tmp_path / "paused"
    steps = worker.N_TRAIN // worker.BATCH
    pause_step = 2 * steps + 2  # third epoch, after two of its optimizer steps
    def paused() -> None:
        assert read_card(out / "last")["epoch"] == 2  # the epoch-2 checkpoint exists

    rc = sigkill_at_marker([sys.executable, str(WORKER), str(out), "--pause-at-step",
                            str(pause_step), "--marker", str(marker)], marker, before_kill=paused)
    assert rc == -signal.SIGKILL
    assert read_card(out / "last")["epoch"] == 2  # the kill did not touch the checkpoint

    res = subprocess.run([sys.executable, str(WORKER), str(out), "--resume"], env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]

    card = read_card(out / "last")
    assert card["epoch"] == worker.EPOCHS
    assert [h["epoch"] for h in card["history"]] == list(range(1, worker.EPOCHS + 1))
    assert card["extra"]["trainer"]["global_step"] == worker.EPOCHS * steps
    _assert_bit_identical(load_tensors(out / "last" / "model.safetensors"), _reference_state())


def test_crash_while_writing_keeps_previous_checkpoint_and_resume_matches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    model, train, val, config = worker.build()
    real_save = ckpt_mod.save_tensors
    calls = {"n": 0}

    def flaky_save(path, tensors, metadata=None):
        # Fail while writing the optimizer file of the third "last" checkpoint (epoch 3):
        # the model file of the new checkpoint is already on disk at that point.
        if Path(path).name == "optim.safetensors":
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError("simulated disk failure")
        return real_save(path, tensors, metadata)

    monkeypatch.setattr(ckpt_mod, "save_tensors", flaky_save)
    with pytest.raises(OSError, match="simulated disk failure"):
        Trainer(model, train, val, config, out_dir=out, progress=False).fit()
    monkeypatch.setattr(ckpt_mod, "save_tensors", real_save)

    assert read_card(out / "last")["epoch"] == 2
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # the half-written temporary directory was removed
    fresh, *_ = worker.build()
    load_training_state(out / "last", fresh)  # sha256 verified, weights load

    model2, train, val, config = worker.build()
    Trainer(model2, train, val, config, out_dir=out, progress=False).fit(resume=True)
    _assert_bit_identical(
        {k: v.detach() for k, v in model2.state_dict().items()}, _reference_state())


def test_crash_between_directory_renames_is_recovered(tmp_path: Path) -> None:
    """A kill after 'last' was renamed away but before the new one was renamed in."""
    out = tmp_path / "run"
    model, train, val, config = worker.build()

    class Crash(Exception):
        pass

    class StopAfter2:
        def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict) -> None:
            if epoch == 2:
                raise Crash

    with pytest.raises(Crash):
        Trainer(model, train, val, config, out_dir=out, progress=False,
                callbacks=[StopAfter2()]).fit()
    (out / "last").rename(out / ".last.old-deadbeef")
    assert ckpt_mod.resolve_checkpoint(out / "last").name == ".last.old-deadbeef"
    fresh, train, val, config = worker.build()
    t = Trainer(fresh, train, val, config, out_dir=out, progress=False)
    history = t.fit(resume=True)  # continues from the recovered epoch-2 checkpoint
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert read_card(out / "last")["epoch"] == 4
    assert not list(out.glob(".last.old-*"))  # cleaned up by the next successful save


def test_resume_refuses_a_different_config(tmp_path: Path) -> None:
    out = tmp_path / "run"
    model, train, val, config = worker.build()
    config.epochs = 1
    Trainer(model, train, val, config, out_dir=out, progress=False).fit()
    model, train, val, config = worker.build()
    config.epochs = 1
    config.lr = 0.01
    with pytest.raises(ValueError, match="lr"):
        Trainer(model, train, val, config, out_dir=out, progress=False).fit(resume=True)


def test_resume_of_a_finished_run_trains_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    model, train, val, config = worker.build()
    config.epochs = 1
    h1 = Trainer(model, train, val, config, out_dir=out, progress=False).fit()
    model2, train, val, config = worker.build()
    config.epochs = 1
    h2 = Trainer(model2, train, val, config, out_dir=out, progress=False).fit(resume=True)
    assert h2 == h1
    _assert_bit_identical(model.state_dict(), model2.state_dict())


def test_resume_without_checkpoint_starts_fresh_and_without_out_dir_fails(tmp_path: Path) -> None:
    model, train, val, config = worker.build()
    config.epochs = 1
    h = Trainer(model, train, val, config, out_dir=tmp_path / "new", progress=False).fit(
        resume=True)
    assert [r["epoch"] for r in h] == [1]
    with pytest.raises(ValueError, match="out_dir"):
        Trainer(model, train, val, config, progress=False).fit(resume=True)


def test_best_checkpoint_tracks_best_validation_accuracy(tmp_path: Path) -> None:
    out = tmp_path / "run"
    model, train, val, config = worker.build()
    history = Trainer(model, train, val, config, out_dir=out, progress=False).fit()
    accs = [h["val_acc"] for h in history]
    best_epoch = accs.index(max(accs)) + 1  # first epoch reaching the maximum
    card = read_card(out / "best")
    assert card["epoch"] == best_epoch
    assert card["metrics"]["val_acc"] == max(accs)
    assert card["optimizer"] is None  # best/ holds weights only
    assert read_card(out / "last")["extra"]["trainer"]["best_epoch"] == best_epoch
