"""Any model, not only robustact's: build it from a Python file, load its weights safely.

``load_model_file("net.py:make_net", weights="net.safetensors", normalize=((.49, .48, .45),
(.25, .24, .26)))`` imports ``net.py`` by path, calls ``make_net()``, loads the weights, wraps
the model in :class:`robustact.nn.Normalize` if it expects normalized inputs, puts it in eval
mode and checks on a probe batch that its outputs are usable: one tensor (N, K), finite.

Why so many checks: a foreign model that is subtly wrong (weights that half fit) does not crash
an evaluation, it makes the model look robust. Each unusable output is one ``ValueError`` line
naming the file and what to do. Usable kinds are taken as they are and said: probabilities
(a final softmax) come back wrapped in :class:`robustact.models.outputs.LogOf`, so everything
attacks their logarithm; submodules that stay in train mode after ``.eval()`` are pinned
(:func:`robustact.models.outputs.pin_train_mode`, one warning line) and, like a model that adds
noise, evaluated as a randomized model (the engine detects it and uses EOT).

Weights are read without running code: ``.safetensors`` through safetensors, ``.pt``/``.pth``/
``.bin`` through ``torch.load(weights_only=True)``, which refuses pickled classes (a whole model
saved with ``torch.save(model)``) before creating them. The file must then hold a plain state
dict, ``{name: tensor}``; an optimizer state or a training checkpoint ``{"model": ..., "epoch":
...}`` is refused with a hint rather than guessed at.

Importing the user's file runs it (it is the user's own code, named on the command line); while
it runs, its folder is first on ``sys.path`` so it can import its neighbours, and both
``sys.path`` and ``sys.modules`` are restored afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import pickle
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustact.checkpoint import CheckpointError, load_state
from robustact.core.spec import parse_number
from robustact.core.storage import load_tensors
from robustact.core.validate import check_model_output, match_model_dtype
from robustact.models.outputs import LogOf, output_kind, pin_train_mode, rng_fork
from robustact.nn.normalize import Normalize

__all__ = ["ModelFileError", "load_model_file", "parse_model_spec", "parse_normalize",
           "read_state_dict", "WEIGHT_SUFFIXES"]

#: Weight files by suffix: safetensors, or a pickle read with ``torch.load(weights_only=True)``.
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")

log = logging.getLogger(__name__)


class ModelFileError(ValueError):
    """A model file, its factory, its weights or its outputs are not usable."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def parse_model_spec(spec: str) -> tuple[Path, str]:
    """``"path/to/net.py:Factory"`` → (path, "Factory")."""
    path, colon, name = str(spec).rpartition(":")
    if not colon or not path or not name.isidentifier():
        raise ModelFileError(f"a model file is given as path.py:Factory (the file and the "
                             f"function or class that builds the model), got {spec!r}")
    return Path(path), name


def parse_normalize(text: str) -> tuple[list[float], list[float]]:
    """``"0.4914,0.4822,0.4465/0.2470,0.2435,0.2616"`` → (means, stds), one per channel.

    Why one option with ``/``: mean and std only make sense together, and giving them in one
    value keeps them from being passed for different channel counts.
    """
    mean_text, slash, std_text = str(text).partition("/")
    if not slash or "/" in std_text:
        raise ModelFileError(f"--normalize expects MEANS/STDS, per-channel comma-separated "
                             f"lists such as 0.4914,0.4822,0.4465/0.2470,0.2435,0.2616, "
                             f"got {text!r}")
    try:
        mean = [parse_number(v, "--normalize") for v in mean_text.split(",")]
        std = [parse_number(v, "--normalize") for v in std_text.split(",")]
    except ValueError:
        raise ModelFileError(f"--normalize expects numbers in MEANS/STDS, got {text!r}") from None
    if len(mean) != len(std):
        raise ModelFileError(f"--normalize gives {len(mean)} means but {len(std)} stds")
    if any(not s > 0 for s in std):
        raise ModelFileError(f"--normalize: every std must be positive, got {std}")
    return mean, std


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    name = f"robustact_user_model_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelFileError(f"cannot import {path} as a Python module (is it a .py file?)")
    module = importlib.util.module_from_spec(spec)
    saved_path, folder = list(sys.path), str(path.resolve().parent)
    had = sys.modules.get(name)
    sys.modules[name] = module  # dataclasses and typing look the module up while it runs
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ModelFileError(f"{path} has a syntax error at line {e.lineno}: {e.msg}") from None
    except Exception as e:
        raise ModelFileError(f"importing {path} failed: {_first_line(e)}") from None
    finally:
        sys.path[:] = saved_path
        if had is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = had
    return module


def _build(module: Any, path: Path, factory: str, kwargs: Mapping[str, Any]) -> nn.Module:
    fn = getattr(module, factory, None)
    if fn is None or not callable(fn):
        found = sorted(k for k, v in vars(module).items()
                       if callable(v) and not k.startswith("_")
                       and getattr(v, "__module__", None) == module.__name__)
        what = "no" if fn is None else "a non-callable"
        raise ModelFileError(f"{path} defines {what} {factory!r}; callables defined there: "
                             f"{', '.join(found) or 'none'}")
    try:
        model = fn(**kwargs)
    except Exception as e:
        raise ModelFileError(f"{factory}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) "
                             f"from {path} raised {_first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise ModelFileError(f"{factory} from {path} returned a {type(model).__name__}, not a "
                             "torch.nn.Module")
    return model


def _plain_state_hint(obj: Mapping[Any, Any]) -> str:
    inner = [k for k, v in obj.items() if isinstance(v, Mapping) and v
             and all(isinstance(t, torch.Tensor) for t in v.values())]
    return f" (it holds one under {inner[0]!r}: save that entry)" if inner else ""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain ``{name: tensor}`` state dict from ``path``, never unpickling arbitrary objects."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"weight file {p} does not exist")
    suffix = p.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise ModelFileError(f"weight file {p}: expected one of {', '.join(WEIGHT_SUFFIXES)} "
                             "(safetensors, or a state dict saved with torch.save)")
    fix = ("save model.state_dict() with torch.save (or safetensors.torch.save_file), "
           "not the model or a training checkpoint")
    if suffix == ".safetensors":
        try:
            return load_tensors(p)
        except Exception as e:  # safetensors raises its own error types
            raise ModelFileError(f"cannot read {p} as safetensors: {_first_line(e)}") from None
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelFileError(f"{p} is not a plain state dict of tensors: it pickles other "
                             f"objects (a whole model?), which robustact never unpickles; "
                             f"{fix}") from None
    except Exception as e:
        raise ModelFileError(f"cannot read {p} with torch.load: {_first_line(e)}") from None
    if not isinstance(obj, Mapping) or not obj:
        raise ModelFileError(f"{p} holds a {type(obj).__name__}, not a plain state dict of "
                             f"tensors; {fix}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelFileError(f"{p} is not a plain state dict of tensors (entry {bad[0]!r} is a "
                             f"{type(obj[bad[0]]).__name__}){_plain_state_hint(obj)}; {fix}")
    return dict(obj)


def _check_outputs(model: nn.Module, probe: torch.Tensor, source: str,
                   num_classes: int | None) -> nn.Module:
    """Usable outputs (N, K) on ``probe``; returns the model, probabilities wrapped in LogOf."""
    xb = match_model_dtype(model, probe)
    try:
        with rng_fork(xb.device), torch.no_grad():
            z = model(xb)
    except Exception as e:
        raise ModelFileError(f"the model from {source} failed on a probe batch of shape "
                             f"{tuple(probe.shape)}: {_first_line(e)}") from None
    try:
        check_model_output(z, f"the output of {source}")
    except TypeError as e:
        raise ModelFileError(str(e)) from None
    kind = output_kind(z, probe.shape[0], name=f"the outputs of {source}")
    k = int(z.shape[1])
    if num_classes is not None and k != num_classes:
        raise ModelFileError(f"the model from {source} returns {k} logits per image but "
                             f"{num_classes} classes are expected")
    if kind == "probabilities":
        log.info("the model from %s returns probabilities: robustact attacks their logarithm "
                 "(same predictions)", source)
        return LogOf(model).eval()
    return model


def load_model_file(spec: str, weights: str | Path | None = None,
                    normalize: str | tuple[Sequence[float], Sequence[float]] | None = None,
                    factory_kwargs: Mapping[str, Any] | None = None, *,
                    probe: torch.Tensor | None = None, num_classes: int | None = None,
                    device: str | torch.device = "cpu") -> nn.Module:
    """Build a model from ``"path.py:Factory"``, load ``weights``, check it; eval mode.

    Args:
        spec: the file and the function or class that builds the model (``Factory(**kw)``).
        weights: ``.safetensors``, or ``.pt``/``.pth``/``.bin`` holding ``model.state_dict()``;
            the keys and shapes must match the model exactly. None: the factory's own weights.
        normalize: ``(means, stds)`` or ``"MEANS/STDS"`` (:func:`parse_normalize`) when the
            model expects normalized inputs; robustact feeds [0, 1] images, so the model is
            wrapped as ``Sequential(Normalize(means, stds), model)``.
        factory_kwargs: keyword arguments for the factory.
        probe: a few [0, 1] images of the evaluation data: the model must return one finite
            tensor (N, K) for them (logits, log-probabilities, or probabilities, which come back
            wrapped in :class:`~robustact.models.outputs.LogOf`). None: no probe.
        num_classes: K the logits must have (checked on the probe).
        device: where the returned model lives.
    """
    path, factory = parse_model_spec(spec)
    module = _import_file(path)
    model = _build(module, path, factory, dict(factory_kwargs or {}))
    if weights is not None:
        state = read_state_dict(weights)
        try:
            load_state(model, state, str(weights))
        except CheckpointError as e:
            raise ModelFileError(str(e)) from None
    if normalize is not None:
        mean, std = parse_normalize(normalize) if isinstance(normalize, str) else normalize
        model = nn.Sequential(Normalize(list(mean), list(std)), model)
    model = model.to(device).eval()
    stuck = pin_train_mode(model)
    if stuck:  # dropout or batch statistics stay on: randomized, which the engine detects
        log.warning("the model from %s stays in train mode after .eval() (%s): its dropout or "
                    "batch statistics stay on; if its outputs vary, it is evaluated as a "
                    "randomized model (EOT)",
                    spec, ", ".join(stuck[:3]) + (", ..." if len(stuck) > 3 else ""))
    if probe is not None:
        model = _check_outputs(model, probe.to(device), spec, num_classes)
    return model

