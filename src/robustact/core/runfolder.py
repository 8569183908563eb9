"""One run-folder mechanism for every command that writes results.

Why one: train, evaluate, attack and the defense commands each used to choose their folder,
lock it, refuse to replace a finished result and tidy up after a failure in their own way, and
users met the gaps (``--resume`` with nothing to resume starting over without a word, Ctrl-C
leaving a bare traceback). :func:`open_run` does all of it once:

1. **create**: ``out`` or, when None, a fresh ``root/<name>-<tag>-<time>`` (:func:`fresh_folder`);
2. **lock**: :class:`~robustact.core.runlock.RunLock`, so a second writer fails at once;
3. **refuse** to replace a finished result (``marker``) unless ``force`` or ``resume``; say in one
   line when ``resume`` finds nothing to resume (``resume_marker``), then start afresh;
4. **record**: ``run.json`` (kind, status, command, versions, times, the result), written
   atomically at the start and at the end, so a folder always says what is in it and whether
   the run that wrote it finished;
5. **clean up**: on an error or Ctrl-C a folder this run created and left empty is removed; one
   that holds work is kept (finished cells and checkpoints are what resuming reads), marked
   ``failed`` or ``interrupted``, and Ctrl-C becomes :class:`RunInterrupted`, whose message is
   the one line the CLI prints.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustact.core.runlock import RunLock, refuse_finished
from robustact.core.storage import atomic_write_json, environment_info, read_json

__all__ = ["RECORD_FILE", "Run", "RunInterrupted", "RunRefused", "fresh_folder", "open_run",
           "read_run"]

log = logging.getLogger(__name__)

RECORD_FILE = "run.json"


class RunRefused(ValueError):
    """A run refused before it changed anything (e.g. a results folder made by another
    evaluation): the folder's record is left as the earlier run wrote it."""


class RunInterrupted(Exception):
    """The user pressed Ctrl-C; the message says what was kept and how to continue.

    Not a ``KeyboardInterrupt``: the CLI prints it as one line (exit code 130) instead of a
    traceback, and library callers can still catch it.
    """


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def fresh_folder(root: str | Path, name: str, tag: str) -> Path:
    """A new folder ``root/<name>-<tag>-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``, … if taken).

    Why created here (``mkdir`` without ``exist_ok``): two runs started in the same second get
    different folders, never the same one.
    """
    stem = f"{name}-{tag}-{time.strftime('%Y%m%d-%H%M%S')}"
    Path(root).mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        candidate = Path(root) / (stem if i == 1 else f"{stem}-{i}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise ValueError(f"cannot find a free output folder for {stem} in {root}; pass --out")


@dataclass
class Run:
    """An open run folder: where to write, and the record that :func:`open_run` keeps."""

    path: Path
    kind: str
    created: bool
    record: bool
    resumed: bool = False
    data: dict[str, Any] = field(default_factory=dict)

    def write_record(self, **fields: Any) -> None:
        """Update ``run.json`` atomically with ``fields`` (no-op for checkpoint folders)."""
        self.data.update(fields)
        if self.record:
            atomic_write_json(self.path / RECORD_FILE, self.data)

    def finish(self, result: Mapping[str, Any] | None = None) -> None:
        """Mark the run finished, with the result a later reader needs (e.g. the summary)."""
        self.write_record(status="finished", finished=_now(),
                          result=dict(result) if result is not None else None)


def read_run(folder: str | Path) -> dict[str, Any] | None:
    """``folder/run.json``, or None when the folder has none (older runs, checkpoints)."""
    try:
        rec = read_json(Path(folder) / RECORD_FILE)
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def _clear(path: Path, names: Sequence[str]) -> None:
    for name in names:
        p = path / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _remove_if_empty(path: Path) -> None:
    """Remove a folder this run created when it holds nothing but its own record."""
    with contextlib.suppress(OSError):
        if any(p.name != RECORD_FILE for p in path.iterdir()):
            return  # work is kept, and the record that says how its run ended
        (path / RECORD_FILE).unlink(missing_ok=True)
        path.rmdir()


@contextlib.contextmanager
def open_run(out: str | Path | None, kind: str, *, what: str,
             default: tuple[str | Path, str, str] | None = None,
             markers: Mapping[str, str] | None = None, resume_marker: str | None = None,
             force: bool = False, resume: bool = False, clear: Sequence[str] = (),
             record: bool = True, command: str | None = None,
             resume_hint: str = "rerun the same command to continue",
             config: Mapping[str, Any] | None = None) -> Iterator[Run]:
    """Create (or reuse), lock and record the run folder of one command.

    Args:
        out: the folder; None: ``fresh_folder(*default)``, i.e. ``default`` is
            ``(root, name, tag)``.
        kind: what runs ("train", "evaluate", ...), recorded.
        what: how messages name the run ("training run", "evaluation").
        markers: file → what it means ("a trained model (final/)"): files whose presence
            means the folder holds a result; refused unless ``force`` (replace: the
            ``clear`` names are removed first) or ``resume``.
        resume_marker: what ``resume`` continues from; if absent, one warning line says that
            there is nothing to resume and the run starts afresh.
        record: write ``run.json`` (False for checkpoint folders, which are swapped in whole).
        command: the command line, recorded.
        resume_hint: how to continue after Ctrl-C, in the interruption message.
        config: the run's settings, recorded.
    """
    if out is None:
        if default is None:
            raise ValueError(f"the {what} needs an output folder (--out)")
        path, created = fresh_folder(*default), True
    else:
        path = Path(out)
        created = not path.exists()
    run = Run(path, kind, created, record)
    earlier = None
    try:
        with RunLock(path, what):
            earlier = read_run(path) if record else None
            for file, desc in (markers or {}).items() if not resume else ():
                refuse_finished(path, file, desc, force=force,
                                hint="pass --resume to continue it, " if resume_marker else "")
            if force and clear:
                _clear(path, clear)
            if resume and resume_marker is not None:
                run.resumed = (path / resume_marker).exists()
                if not run.resumed:
                    log.warning("nothing to resume in %s (no %s): starting a new %s", path,
                                resume_marker, what)
            if record:
                path.mkdir(parents=True, exist_ok=True)
            run.write_record(kind=kind, status="running", started=_now(), finished=None,
                             command=command, resumed=run.resumed,
                             config=dict(config or {}), environment=environment_info(),
                             result=None)
            yield run
            if run.data.get("status") == "running":
                run.finish()
    except KeyboardInterrupt:
        _end(run, "interrupted", "interrupted by the user (Ctrl-C)")
        kept = path.exists()
        raise RunInterrupted(
            f"interrupted: the {what} in {path} stopped" + (
                f"; finished work is kept there: {resume_hint}" if kept else
                "; nothing had been written")) from None
    except RunRefused:
        if earlier is not None:  # nothing changed: the folder still holds the earlier run
            atomic_write_json(path / RECORD_FILE, earlier)
        else:
            _end(run, "failed", "refused")
        raise
    except BaseException as e:
        _end(run, "failed", f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}")
        raise


def _end(run: Run, status: str, reason: str) -> None:
    """Record how a run ended badly; drop a folder it created and left empty."""
    if run.record and run.path.exists() and run.data:
        with contextlib.suppress(OSError):
            run.write_record(status=status, finished=_now(), error=reason)
    if run.created:
        _remove_if_empty(run.path)
