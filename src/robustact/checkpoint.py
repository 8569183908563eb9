"""Checkpoints: safetensors weights + a JSON card, written so a crash never leaves a broken one.

A checkpoint is a directory::

    model.safetensors   the model's state_dict
    optim.safetensors   every tensor of the optimizer state, keys ``state.{param_idx}.{name}``
    NAME.safetensors    optional further tensor sets (``train_weights``: the raw weights of a
                        run whose model file holds their average)
    card.json           what the weights are: model config (to rebuild it with ``create_model``),
                        defenses, train config, epoch, metrics, history, the non-tensor optimizer
                        and scheduler state, data description, versions, sha256 of each file

Why this format: safetensors cannot execute code when loaded (unlike ``torch.load``/pickle), and
the card makes a weight file self-describing, so an evaluation can rebuild the exact model.

Crash safety (the choice, documented): a checkpoint is written in full into a fresh temporary
sibling directory, card last, each file atomically and fsynced; then the directory is swapped into
place with two renames (old → ``.NAME.old-*``, new → ``NAME``), and the old one is deleted. A crash
before the swap leaves the previous checkpoint untouched; a crash between the two renames leaves
it as ``.NAME.old-*``, which :func:`resolve_checkpoint` finds. A card therefore always sits next
to the complete weights it describes, and the sha256 in the card detects anything else.

Card integrity: the card fields that change what the loaded model computes (``model``,
``defenses``, ``data``, ``files``) each get a sha256 in ``card["integrity"]``, checked by
:func:`read_card`. Why: a hand edit of, say, the output-activation temperature would otherwise
be accepted silently and every later number would describe a different model than the one that
was evaluated. The explicit ways to change a defense write a new checkpoint
(``robustact defend``, ``robustact retrofit``). A card without an ``integrity`` entry is
refused: every card robustact writes has one, so its absence means the field was deleted.

A process killed mid-save leaves its ``.NAME.tmp-HOST-PID-RANDOM`` folder behind; the next save
of ``NAME`` and the next resume from it remove such folders whose writer is gone (same host, PID
not running), never a live writer's (see :func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustact.core.storage import (
    _jsonable,
    atomic_write_json,
    environment_info,
    load_tensors,
    read_json,
    save_tensors,
)
from robustact.defenses.registry import apply_defenses, describe_defenses
from robustact.models.registry import create_model

__all__ = [
    "CARD_FILE",
    "MODEL_FILE",
    "OPTIM_FILE",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "load_weights",
    "load_state",
    "load_training_state",
    "load_checkpoint_tensors",
    "read_card",
    "resolve_checkpoint",
    "flatten_optimizer_state",
    "unflatten_optimizer_state",
    "sha256_file",
    "unwrap_model",
    "INTEGRITY_FIELDS",

    "remove_stale_temporaries",
]

CARD_FILE = "card.json"
MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optim.safetensors"
FORMAT = "robustact-checkpoint/1"
#: Card fields that change the loaded model's behaviour; each is hashed into card["integrity"].
INTEGRITY_FIELDS = ("model", "defenses", "data", "files", "source")

#: A temporary folder whose writer cannot be checked (another host, or a name without a PID from
#: an older version) is only removed once it is this old: no save takes that long.
STALE_TMP_SECONDS = 3600.0


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match the model it is loaded into."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module whose weights are saved: strips (Distributed)DataParallel wrappers."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _field_digest(value: Any) -> str:
    """sha256 of a card field's canonical JSON (sorted keys), as it reads back from the card."""
    text = json.dumps(_jsonable(value), sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _integrity(card: Mapping[str, Any]) -> dict[str, str]:
    return {name: _field_digest(card.get(name)) for name in INTEGRITY_FIELDS}


def _check_integrity(card: Mapping[str, Any], card_path: Path) -> None:
    recorded = card.get("integrity")
    if recorded is None:
        # Every card robustact has written since 0.1.0 carries its digests: a card without them
        # was edited by hand (the field deleted), and trusting it would be trusting the edit.
        raise CheckpointError(
            f"{card_path} has no 'integrity' digests (deleted by hand?); robustact does not "
            "trust an unverifiable card: restore it from the original, or re-create the "
            "checkpoint (`robustact defend` / `robustact retrofit` write new ones)")
    if not isinstance(recorded, Mapping):
        raise CheckpointError(f"{card_path} has a malformed 'integrity' entry")
    edited = [name for name, digest in recorded.items()
              if _field_digest(card.get(name)) != digest]
    if edited:
        raise CheckpointError(
            f"{card_path} was edited after it was saved (changed: {', '.join(edited)}); the "
            "model it describes is not the one that was saved. Restore the card, or change a "
            "defense with `robustact defend` / `robustact retrofit`, which write a new checkpoint"
        )


# --- optimizer state <-> flat tensors + JSON ---------------------------------------------------

def flatten_optimizer_state(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (``state.{idx}.{name}``) and JSON metadata.

    Non-tensor per-parameter entries (e.g. a float ``step``) go into ``meta["state_extra"]``;
    ``param_groups`` (learning rate, momentum, ...) are plain numbers and lists already.
    """
    tensors: dict[str, torch.Tensor] = {}
    extra: dict[str, dict[str, Any]] = {}
    for idx, entries in state["state"].items():
        for name, value in entries.items():
            if "." in str(name):
                raise CheckpointError(f"optimizer state name {name!r} contains '.'")
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = value
            else:
                extra.setdefault(str(idx), {})[str(name)] = value
    groups = []
    for group in state["param_groups"]:
        g = {}
        for k, v in group.items():
            if isinstance(v, torch.Tensor):  # e.g. a tensor lr: store it as a number
                v = v.item() if v.numel() == 1 else v.tolist()
            g[k] = v
        groups.append(g)
    return tensors, {"param_groups": groups, "state_extra": extra}


def unflatten_optimizer_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
                              ) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer_state`: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        prefix, idx, name = key.split(".", 2)
        if prefix != "state":
            raise CheckpointError(f"unexpected key {key!r} in the optimizer file")
        state.setdefault(int(idx), {})[name] = value
    for idx, entries in meta.get("state_extra", {}).items():
        state.setdefault(int(idx), {}).update(entries)
    groups = [dict(g) for g in meta["param_groups"]]
    for g in groups:  # JSON turned tuples into lists; optimizers unpack them either way
        if "betas" in g and isinstance(g["betas"], list):
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


# --- saving -------------------------------------------------------------------------------------

def _model_config(model: nn.Module) -> dict[str, Any] | None:
    """``robustact_config`` of the model, or of the first submodule that has one (a wrapper)."""
    for m in model.modules():
        cfg = getattr(m, "robustact_config", None)
        if cfg is not None:
            return dict(cfg)
    return None


def _as_dict(obj: Any) -> Any:
    if obj is None:
        return None
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"cannot record {type(obj).__name__} in a card; pass a dict or dataclass")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _host_tag() -> str:
    """A short, filename-safe tag of this host (hostnames may hold dots and dashes)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _tmp_dir(final: Path) -> Path:
    """A fresh temporary sibling of ``final`` whose name says which process writes it."""
    return final.with_name(
        f".{final.name}.tmp-{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, under another user
        return True
    return True


def _writer_gone(tmp: Path) -> bool:
    """Whether the process that created temporary folder ``tmp`` can no longer be writing it."""
    parts = tmp.name.rsplit(".tmp-", 1)[-1].split("-")
    if len(parts) == 3 and parts[1].isdigit() and parts[0] == _host_tag() and os.name == "posix":
        pid = int(parts[1])
        # Our own PID may be another thread's save in progress: leave it to that thread.
        return pid != os.getpid() and not _pid_alive(pid)
    try:
        age = time.time() - tmp.stat().st_mtime
    except OSError:
        return False
    return age > STALE_TMP_SECONDS


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the ``.NAME.tmp-*`` folders that interrupted saves of ``directory`` left behind.

    Only folders whose writer is gone are removed: on this host, one whose process no longer
    runs; otherwise (another host on a shared file system, or a name from an older version
    without a PID) one older than :data:`STALE_TMP_SECONDS`. Returns the folders removed.
    Called by :func:`save_checkpoint` and :func:`load_training_state`.
    """
    final = Path(directory)
    removed = []
    for tmp in final.parent.glob(f".{final.name}.tmp-*"):
        if tmp.is_dir() and _writer_gone(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def _swap_in(tmp: Path, final: Path) -> None:
    """Replace directory ``final`` by ``tmp`` (both in the same parent)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_dir(final.parent)
    # Leftovers of this or earlier interrupted saves are no longer needed.
    for stale in final.parent.glob(f".{final.name}.old-*"):
        shutil.rmtree(stale, ignore_errors=True)


def save_checkpoint(
    directory: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    *,
    epoch: int | None = None,
    config: Any = None,
    metrics: Mapping[str, Any] | None = None,
    history: list[Mapping[str, Any]] | None = None,
    data: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    tensors: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    source: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory atomically (see the module docstring); returns its path.

    ``model`` may be wrapped in (Distributed)DataParallel; the inner module is saved. ``config`` is
    the training config (a dataclass or dict), ``data`` a description of the training data.
    ``tensors`` are further named tensor sets written as ``NAME.safetensors`` and hashed like
    the others (the trainer keeps the raw weights there when the model file holds their
    average); :func:`load_checkpoint_tensors` reads one back. ``source`` records how to
    rebuild a model that has no registry config (a user's model file; integrity-checked).
    """
    final = Path(directory)
    if final.name in ("", ".", ".."):
        raise ValueError(f"checkpoint directory needs a name, got {str(directory)!r}")
    final.parent.mkdir(parents=True, exist_ok=True)
    model = unwrap_model(model)
    remove_stale_temporaries(final)
    tmp = _tmp_dir(final)
    tmp.mkdir()
    try:
        files: dict[str, dict[str, Any]] = {}
        state = {k: v.detach() for k, v in model.state_dict().items()}
        save_tensors(tmp / MODEL_FILE, state, metadata={"format": FORMAT})
        files[MODEL_FILE] = {"sha256": sha256_file(tmp / MODEL_FILE),
                             "bytes": (tmp / MODEL_FILE).stat().st_size}
        optim_meta = None
        if optimizer is not None:
            optim_tensors, optim_meta = flatten_optimizer_state(optimizer.state_dict())
            optim_meta["class"] = type(optimizer).__name__
            save_tensors(tmp / OPTIM_FILE, optim_tensors, metadata={"format": FORMAT})
            files[OPTIM_FILE] = {"sha256": sha256_file(tmp / OPTIM_FILE),
                                 "bytes": (tmp / OPTIM_FILE).stat().st_size}
        for name, group in (tensors or {}).items():
            file = _tensor_file(name)
            save_tensors(tmp / file, {k: v.detach() for k, v in group.items()},
                         metadata={"format": FORMAT})
            files[file] = {"sha256": sha256_file(tmp / file), "bytes": (tmp / file).stat().st_size}
        card = {
            "format": FORMAT,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": _model_config(model),
            "defenses": describe_defenses(model),
            "train": _as_dict(config),
            "epoch": epoch,
            "metrics": dict(metrics or {}),
            "history": [dict(h) for h in (history or [])],
            "optimizer": optim_meta,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "data": dict(data) if data is not None else None,
            "extra": dict(extra or {}),
            "environment": environment_info(),
            "files": files,
        }
        if source is not None:  # a model built outside the registry (a user's model file)
            card["source"] = dict(source)
        card["integrity"] = _integrity(card)
        atomic_write_json(tmp / CARD_FILE, card)  # last: a card implies complete weights
        _fsync_dir(tmp)
        _swap_in(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _tensor_file(name: str) -> str:
    """``NAME.safetensors`` for a named tensor set; the two reserved names are refused."""
    file = f"{name}.safetensors"
    if not name.isidentifier() or file in (MODEL_FILE, OPTIM_FILE):
        raise ValueError(f"a checkpoint tensor set needs a plain name other than 'model' and "
                         f"'optim', got {name!r}")
    return file


# --- loading ------------------------------------------------------------------------------------

def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """The checkpoint directory for ``path`` (a directory or its ``card.json``).

    If the directory is missing because a save was interrupted between its two renames, the
    previous checkpoint (``.NAME.old-*`` next to it) is returned instead.
    """
    p = Path(path)
    if p.name == CARD_FILE and p.is_file():
        return p.parent
    if (p / CARD_FILE).is_file():
        return p
    if not p.exists():
        for old in sorted(p.parent.glob(f".{p.name}.old-*")):
            if (old / CARD_FILE).is_file():
                return old
        raise CheckpointError(f"no checkpoint at {p} (directory does not exist)")
    raise CheckpointError(f"{p} is not a checkpoint: {CARD_FILE} is missing")


def read_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The card of the checkpoint at ``path`` (directory or card file), checked for its format."""
    card_path = resolve_checkpoint(path) / CARD_FILE
    try:
        card = read_json(card_path)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint card {card_path}: {e}") from e
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise CheckpointError(f"{card_path} is not a robustact checkpoint card (format {FORMAT})")
    _check_integrity(card, card_path)
    return card


def _verified_tensors(ckpt: Path, card: Mapping[str, Any], name: str, device: str | torch.device
                      ) -> dict[str, torch.Tensor]:
    entry = card.get("files", {}).get(name)
    path = ckpt / name
    if entry is None:
        raise CheckpointError(f"the card in {ckpt} lists no {name}")
    if not path.is_file():
        raise CheckpointError(f"{path} is missing (the card says it was written)")
    digest = sha256_file(path)
    if digest != entry.get("sha256"):
        raise CheckpointError(
            f"{path} does not match its card (sha256 {digest[:12]}… vs "
            f"{str(entry.get('sha256'))[:12]}…): the file is corrupt or belongs to another "
            "checkpoint"
        )
    try:
        return load_tensors(path, device=device)
    except Exception as e:  # safetensors raises its own error type
        raise CheckpointError(f"cannot read {path}: {e}") from e


def _load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str,
                strict: bool = True) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    if strict and missing:
        problems.append(f"missing in file: {', '.join(missing[:10])}")
    if strict and unexpected:
        problems.append(f"not in model: {', '.join(unexpected[:10])}")
    if shapes:
        problems.append("shape mismatch: " + "; ".join(shapes[:10]))
    if problems:
        raise CheckpointError(f"weights in {source} do not fit the model ({' | '.join(problems)})")
    model.load_state_dict(dict(state), strict=strict)


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, *,
                strict: bool = True) -> nn.Module:
    """Load ``state`` into ``model`` (in place); every mismatch in one :class:`CheckpointError`
    line naming ``source`` (a few missing and unexpected keys, shape mismatches)."""
    _load_state(unwrap_model(model), state, source, strict=strict)
    return model


def load_weights(model: nn.Module, path: str | os.PathLike[str], *, strict: bool = True,
                 device: str | torch.device | None = None) -> nn.Module:
    """Load a plain safetensors state_dict file into ``model`` (in place; returns the model)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"weight file {p} does not exist")
    target = unwrap_model(model)
    if device is None:
        first = next(iter(target.state_dict().values()), None)
        device = first.device if first is not None else "cpu"
    try:
        state = load_tensors(p, device=device)
    except Exception as e:
        raise CheckpointError(f"cannot read weight file {p}: {e}") from e
    _load_state(target, state, str(p), strict=strict)
    return model


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu", *,
                    model: nn.Module | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its verified weights.

    The model is built with ``create_model(**card["model"])`` and the card's defenses are
    re-applied before the weights are loaded (defenses may add buffers or wrap the model). Pass
    ``model`` to load into an existing module instead (for models outside the registry). The model
    is returned in eval mode, on ``device``.
    """
    ckpt = resolve_checkpoint(path)
    card = read_card(ckpt)
    if model is None:
        if not card.get("model"):
            raise CheckpointError(
                f"the card in {ckpt} has no model config (the model had no robustact_config); "
                "build the model yourself and pass it as load_checkpoint(..., model=...)"
            )
        model = create_model(**card["model"])
        if card.get("defenses"):
            out = apply_defenses(model, card["defenses"], inplace=True)
            model = out if out is not None else model
    state = _verified_tensors(ckpt, card, MODEL_FILE, device)
    model = model.to(device)
    _load_state(unwrap_model(model), state, str(ckpt / MODEL_FILE))
    model.eval()
    return model, card


def load_checkpoint_tensors(path: str | os.PathLike[str], name: str,
                            device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A named tensor set written with ``save_checkpoint(..., tensors={name: ...})``, verified
    against the card's sha256."""
    ckpt = resolve_checkpoint(path)
    return _verified_tensors(ckpt, read_card(ckpt), _tensor_file(name), device)


def load_training_state(path: str | os.PathLike[str], model: nn.Module,
                        optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                        ) -> dict[str, Any]:
    """Restore model, optimizer and scheduler state in place from a checkpoint (for resume).

    Resuming is where a run killed mid-save comes back, so its stale temporary folder next to
    ``path`` is removed here too (:func:`remove_stale_temporaries`).
    """
    remove_stale_temporaries(path)
    ckpt = resolve_checkpoint(path)
    card = read_card(ckpt)
    target = unwrap_model(model)
    first = next(iter(target.state_dict().values()), None)
    device = first.device if first is not None else torch.device("cpu")
    _load_state(target, _verified_tensors(ckpt, card, MODEL_FILE, device),
                str(ckpt / MODEL_FILE))
    if optimizer is not None:
        if card.get("optimizer") is None:
            raise CheckpointError(f"the checkpoint in {ckpt} has no optimizer state")
        saved_cls = card["optimizer"].get("class")
        if saved_cls != type(optimizer).__name__:
            raise CheckpointError(
                f"the checkpoint holds {saved_cls} state but the optimizer is "
                f"{type(optimizer).__name__}"
            )
        tensors = _verified_tensors(ckpt, card, OPTIM_FILE, "cpu")
        try:
            optimizer.load_state_dict(unflatten_optimizer_state(tensors, card["optimizer"]))
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"optimizer state in {ckpt} does not fit: {e}") from e
    if scheduler is not None and card.get("scheduler") is not None:
        scheduler.load_state_dict(card["scheduler"])
    return card
