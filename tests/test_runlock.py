"""Run-folder locks: a second writer fails at once, a lock left by a dead run is taken over."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from robustact.core.runlock import RunLock, RunLockedError, lock_path, refuse_finished


def test_second_lock_on_a_folder_fails_with_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with RunLock(out, "training run"):
        info = json.loads(lock_path(out).read_text())
        assert info["pid"] == os.getpid()
        with pytest.raises(RunLockedError, match=rf"in use by another attack \(pid {os.getpid()}"):
            RunLock(out, "attack").acquire()
        with RunLock(tmp_path / "other"):  # another folder is independent
            pass
    assert not lock_path(out).exists()  # released and removed
    with RunLock(out):  # free again
        pass


def test_lock_left_by_a_dead_run_is_taken_over_with_a_note(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "run"
    lock_path(out).write_text(json.dumps({"pid": 999999, "host": "elsewhere",
                                          "started": "yesterday"}))
    with caplog.at_level(logging.WARNING, logger="robustact.core.runlock"):
        with RunLock(out):
            assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
    assert "taking over the lock" in caplog.text and "pid 999999" in caplog.text


def test_refuse_finished(tmp_path: Path) -> None:
    refuse_finished(tmp_path, "summary.json", "results", force=False)  # nothing there yet
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(ValueError, match="already holds results: pass --force"):
        refuse_finished(tmp_path, "summary.json", "results", force=False)
    refuse_finished(tmp_path, "summary.json", "results", force=True)
