"""Test helper: run a command until it reaches a pause point, then SIGKILL it.

Why: the crash-safety tests (resume, checkpoint litter) must kill a process at a known point of
its work, the way a user's Ctrl-\\ or the OOM killer would, and both need the same careful wait.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def sigkill_at_marker(cmd: list[str], marker: Path, *,
                      before_kill: Callable[[], None] | None = None,
                      timeout: float = 120.0) -> int:
    """Start ``cmd`` (one torch thread), wait until it writes ``marker``, call ``before_kill``,
    SIGKILL it and return its return code; fails the test if it exits early or never pauses."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"process exited early: {proc.stdout.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"process did not reach the pause point in {timeout:g} s")
            time.sleep(0.05)
        if before_kill is not None:
            before_kill()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode
