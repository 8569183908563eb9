"""Run-folder locks and the "finished run" guard shared by train, attack and the defense commands.

Why: two processes writing into the same output folder both report success and the last writer
silently wins, and re-running a command into a folder that already holds a finished result
replaces it. :class:`RunLock` makes a second concurrent writer fail at once with one line naming
the holder; :func:`refuse_finished` refuses to replace a finished result unless asked to.

The lock is the file ``.NAME.lock`` *next to* folder ``NAME`` (not inside it: checkpoint folders
are replaced as a whole by an atomic directory swap, which would take a lock file inside with
them). It records pid, host and start time for the error message. Where ``fcntl`` exists the
file is held with ``flock``, which the kernel releases when the process dies, so a lock file left
by a killed run is simply taken over (with a note). Elsewhere the file is created with
``O_CREAT | O_EXCL``, and a lock left by a dead process has to be deleted by hand (the error
names the file).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import socket
from pathlib import Path
from types import TracebackType
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunLock", "RunLockedError", "lock_path", "refuse_finished"]

log = logging.getLogger(__name__)


class RunLockedError(ValueError):
    """Another live process is writing into the same run folder."""


def lock_path(folder: str | os.PathLike[str]) -> Path:
    """The lock file of ``folder``: ``.NAME.lock`` in its parent."""
    p = Path(folder).absolute()
    if p.name in ("", ".", ".."):
        raise ValueError(f"an output folder needs a name, got {str(folder)!r}")
    return p.with_name(f".{p.name}.lock")


def _describe(info: dict[str, Any]) -> str:
    return (f"pid {info.get('pid', '?')} on {info.get('host', '?')} "
            f"since {info.get('started', '?')}")


def _read_info(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 4096)
        info = json.loads(raw.decode() or "{}")
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


class RunLock:
    """Exclusive lock on an output folder, held for the duration of a ``with`` block.

    Raises :class:`RunLockedError` (a ``ValueError``: the CLI prints one line) when a live process
    holds it. Not re-entrant: a process that locks a folder it already holds fails the same way,
    so library functions lock only the folders they write themselves.
    """

    def __init__(self, folder: str | os.PathLike[str], what: str = "run") -> None:
        self.folder = Path(folder)
        self.path = lock_path(folder)
        self.what = what
        self._fd: int | None = None

    def _info(self) -> bytes:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "folder": str(self.folder),
                "what": self.what,
                "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}
        return json.dumps(info).encode()

    def _busy(self, info: dict[str, Any]) -> RunLockedError:
        return RunLockedError(
            f"{self.folder} is in use by another {self.what} ({_describe(info)}); wait for it "
            f"or choose another output folder (lock file {self.path})")

    def acquire(self) -> RunLock:
        if self._fd is not None:
            raise RuntimeError(f"lock on {self.folder} is already held by this object")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = self._acquire_flock() if fcntl is not None else self._acquire_excl()
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        os.write(self._fd, self._info())
        return self

    def _acquire_flock(self) -> int:
        assert fcntl is not None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                info = _read_info(fd)
                os.close(fd)
                raise self._busy(info) from None
            # The holder we waited out may have unlinked the file after we opened it: then we
            # hold a lock on a deleted inode, and must retry on the file now at the path.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        stale = _read_info(fd)
        if stale:
            log.warning("taking over the lock on %s left by a run that ended without releasing "
                        "it (%s)", self.folder, _describe(stale))
        return fd

    def _acquire_excl(self) -> int:
        # Without flock the kernel cannot tell us the holder died, and probing a pid is not
        # safe everywhere (os.kill(pid, 0) terminates the process on Windows): say so instead.
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            fd = os.open(self.path, os.O_RDONLY)
            info = _read_info(fd)
            os.close(fd)
            err = self._busy(info)
            raise RunLockedError(f"{err} (delete it if that process is gone)") from None

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # unlink before unlocking: see _acquire_flock
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def refuse_finished(folder: str | os.PathLike[str], marker: str, what: str, *,
                    force: bool, hint: str = "") -> None:
    """Raise ``ValueError`` if ``folder/marker`` exists and ``force`` is false.

    ``marker`` is the file whose presence means the folder holds a finished result (a
    checkpoint's ``card.json``, an attack's ``summary.json``); ``what`` names it in the message,
    ``hint`` (ending in ", ") offers another way out, e.g. ``"pass --resume to continue it, "``.
    """
    if force:
        return
    if (Path(folder) / marker).exists():
        raise ValueError(f"{folder} already holds {what}: {hint}pass --force to replace it, or "
                         "choose another output folder")
