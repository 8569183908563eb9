"""Model surgery: find and swap activation modules, and reroute functional ReLU calls.

Why: the JumpReLU defense and the activation studies change a *trained* model's activations
without touching its weights. Models built by robustact make every activation site a module,
so :func:`replace_modules` is enough for them. Models written elsewhere often call
``F.relu(x)`` / ``torch.relu`` / ``x.relu()`` inside ``forward``; no module exists to swap, so
:class:`JumpReLUMode` (a ``TorchFunctionMode``) intercepts those calls while it is active and
runs a JumpReLU instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from robustact.nn.apl import APL
from robustact.nn.jumprelu import JumpReLU, check_kappa, jump_relu
from robustact.nn.maxout import Maxout
from robustact.nn.splash import SPLASH

__all__ = [
    "ACTIVATION_TYPES",
    "find_activations",
    "replace_modules",
    "set_module",
    "JumpReLUMode",
    "RELU_FUNCTIONS",
]

#: Module classes that count as activation sites for :func:`find_activations`.
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Hardtanh, JumpReLU, SPLASH, APL, Maxout,
)

Predicate = Callable[[str, nn.Module], bool]


def _check_types(types: Any) -> tuple[type, ...]:
    if isinstance(types, type):
        types = (types,)
    if not isinstance(types, tuple) or not types or not all(isinstance(t, type) for t in types):
        raise TypeError(f"types must be a module class or a non-empty tuple of them, got {types!r}")
    return types


def find_activations(model: nn.Module,
                     types: type | tuple[type, ...] | None = None) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every submodule that is an instance of ``types``, in model order.

    ``types`` defaults to :data:`ACTIVATION_TYPES`. A module shared by several parents is listed
    once (under its first name), like ``named_modules``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    kinds = ACTIVATION_TYPES if types is None else _check_types(types)
    return [(n, m) for n, m in model.named_modules() if n and isinstance(m, kinds)]


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted path ``name`` (``"layer1.0.act"``) inside ``model``."""
    if not name:
        raise ValueError("cannot replace the root module in place; use the returned module")
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if attr not in parent._modules:
        raise ValueError(f"{name!r} is not a submodule of the model")
    setattr(parent, attr, module)


def replace_modules(model: nn.Module, predicate: Predicate | type | tuple[type, ...],
                    make_new: Callable[[str, nn.Module], nn.Module]) -> list[str]:
    """Replace, in place, every submodule matched by ``predicate`` with ``make_new(name, old)``.

    ``predicate`` is ``(name, module) -> bool`` or a class / tuple of classes. Matched modules are
    not searched further (their children go with them); the root itself is never replaced.
    A module reachable under several names is replaced at each of them, so every site gets its
    own new module (``make_new`` is called once per name). Returns the replaced names in model
    order, which is what an undo needs (``old`` can be remembered inside ``make_new``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(predicate, (type, tuple)):
        kinds = _check_types(predicate)

        def matches(name: str, module: nn.Module) -> bool:
            return isinstance(module, kinds)
    elif callable(predicate):
        matches = predicate
    else:
        raise TypeError(f"predicate must be callable or a class, got {type(predicate).__name__}")

    replaced: list[str] = []
    visited: set[int] = set()  # subtrees already walked (shared submodules)
    created: set[int] = set()  # modules we inserted: never replaced again

    def walk(parent: nn.Module, prefix: str) -> None:
        visited.add(id(parent))
        for child_name, child in list(parent._modules.items()):
            if child is None or id(child) in created:
                continue
            full = prefix + child_name
            if matches(full, child):
                new = make_new(full, child)
                if not isinstance(new, nn.Module):
                    raise TypeError(
                        f"make_new must return an nn.Module, got {type(new).__name__} for {full!r}"
                    )
                setattr(parent, child_name, new)
                created.add(id(new))
                replaced.append(full)
            elif id(child) not in visited:
                walk(child, full + ".")

    walk(model, "")
    return replaced


#: The functional ReLU entry points :class:`JumpReLUMode` reroutes (``F.relu_`` is
#: ``torch.relu_``; ``nn.ReLU`` modules call ``F.relu`` and are rerouted too).
RELU_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset(
    {F.relu, torch.relu, torch.Tensor.relu, torch.relu_, torch.Tensor.relu_}
)
_INPLACE = frozenset({torch.relu_, torch.Tensor.relu_})


class JumpReLUMode(TorchFunctionMode):
    """While active, every functional ReLU call computes JumpReLU_κ instead (in place if the
    call was in place). Other torch functions run unchanged.

    ``kappa`` is read at each call, so it can be changed between forward passes. Rerouting
    pauses inside :meth:`suspended`; a :class:`JumpReLU` module whose ``reroute_mode`` is this
    mode suspends it while it (and its hooks) run, so hooks that call ``F.relu`` on purpose
    (e.g. BPDA's ReLU substitute for JumpReLU) get the real ReLU.
    """

    def __init__(self, kappa: float = 0.0) -> None:
        super().__init__()
        self.kappa = check_kappa(kappa)
        self._suspended = 0
        self.calls = 0  # ReLU calls rerouted (diagnostics / tests)

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        self._suspended += 1
        try:
            yield
        finally:
            self._suspended -= 1

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func in RELU_FUNCTIONS and not self._suspended:
            x = args[0] if args else kwargs["input"]
            inplace = func in _INPLACE or bool(kwargs.get("inplace", args[1] if len(args) > 1
                                                          else False))
            self.calls += 1
            return jump_relu(x, self.kappa, inplace=inplace)
        return func(*args, **kwargs)
