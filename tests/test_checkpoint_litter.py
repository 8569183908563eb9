"""A save killed mid-write leaves a ``.NAME.tmp-*`` folder; the next save or resume removes it,
but never the temporary folder of a writer that is still running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _sigkill import sigkill_at_marker
from torch import nn

import robustact.checkpoint as ck
from robustact.train import load_training_state, read_card, save_checkpoint

# Saves a checkpoint, pausing (after writing a marker) once its temporary folder holds the
# weights, so the test can SIGKILL it mid-save.
KILLED_SAVE = """
import sys, time
from pathlib import Path
import torch
from torch import nn
import robustact.checkpoint as ck
real = ck.save_tensors
def slow(path, tensors, metadata=None):
    out = real(path, tensors, metadata)
    Path(sys.argv[2]).write_text("saving")
    time.sleep(300)
    return out
ck.save_tensors = slow
ck.save_checkpoint(sys.argv[1], nn.Linear(3, 2), epoch=2)
"""


def _tmps(folder: Path, name: str = "last") -> list[str]:
    return sorted(p.name for p in folder.glob(f".{name}.tmp-*"))


def _killed_save(target: Path, marker: Path) -> None:
    rc = sigkill_at_marker([sys.executable, "-c", KILLED_SAVE, str(target), str(marker)], marker)
    assert rc == -signal.SIGKILL


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL and PID checks are POSIX")
def test_killed_saves_leave_nothing_after_the_next_save(tmp_path: Path) -> None:
    target = tmp_path / "last"
    save_checkpoint(target, nn.Linear(3, 2), epoch=1)
    for i in range(3):  # three kills: each save clears the leftovers of the kills before it
        _killed_save(target, tmp_path / f"marker{i}")
    assert len(_tmps(tmp_path)) == 1
    assert read_card(target)["epoch"] == 1  # the kills never touched the checkpoint
    save_checkpoint(target, nn.Linear(3, 2), epoch=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last", "marker0", "marker1",
                                                          "marker2"]
    assert read_card(target)["epoch"] == 3


@pytest.mark.skipif(os.name != "posix", reason="PID checks are POSIX")
def test_resume_removes_a_dead_writers_folder(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(tmp_path / "last", model, opt, epoch=1)
    dead = tmp_path / f".last.tmp-{ck._host_tag()}-{_dead_pid()}-0badc0de"
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"partial")
    load_training_state(tmp_path / "last", nn.Linear(3, 2),
                        torch.optim.SGD(nn.Linear(3, 2).parameters(), lr=0.1))
    assert _tmps(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="PID checks are POSIX")
def test_a_live_writers_folder_is_kept(tmp_path: Path) -> None:
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        host = ck._host_tag()
        keep = [f".last.tmp-{host}-{live.pid}-00000001",       # another live process
                f".last.tmp-{host}-{os.getpid()}-00000002",    # this process (another thread)
                f".last.tmp-{'f' * 8}-{_dead_pid()}-00000003",  # another host: recent, kept
                ".last.tmp-00000004"]                           # no PID (old name): recent
        for name in keep:
            (tmp_path / name).mkdir()
        (tmp_path / ".other.tmp-00000005").mkdir()  # another checkpoint's: not ours to judge
        save_checkpoint(tmp_path / "last", nn.Linear(3, 2), epoch=1)
        assert _tmps(tmp_path) == sorted(keep)
        assert (tmp_path / ".other.tmp-00000005").is_dir()
    finally:
        live.kill()
        live.wait()


def test_old_folders_without_a_checkable_writer_are_removed(tmp_path: Path) -> None:
    old = [tmp_path / ".last.tmp-1234abcd", tmp_path / f".last.tmp-{'f' * 8}-1-00000001"]
    for p in old:
        p.mkdir()
        t = time.time() - ck.STALE_TMP_SECONDS - 60
        os.utime(p, (t, t))
    save_checkpoint(tmp_path / "last", nn.Linear(3, 2), epoch=1)
    assert _tmps(tmp_path) == []
