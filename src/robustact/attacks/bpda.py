"""BPDA: Backward Pass Differentiable Approximation (Athalye, Carlini, Wagner 2018).

A defense whose layers have useless derivatives (JumpReLU's jump makes the gradient vanish or
point nowhere near κ; a saturated output activation f(T·z) has an exactly-zero derivative) is
attacked by keeping each such layer's *forward* value and replacing only its *backward* pass
with the derivative of a smooth substitute: JumpReLU → ReLU, output activation → identity.

:func:`with_bpda` returns a wrapper module to pass to any attack in place of the model::

    PGD(eps=8 / 255)(with_bpda(model), x, y)

Exactness, which the attack protocol relies on: each matched layer's output in the wrapper is a
copy of the original layer's output tensor (the substitute only feeds the gradient), so the
wrapper's logits equal the original model's bit for bit, and
:meth:`~robustact.attacks.base.Attack.__call__`'s success decision, made on the wrapper's
output, is the decision on the real model. The wrapper adds no parameters and shares the
model's train/eval mode (its ``training`` flag *is* the model's).

Only *module* sites are substituted (:meth:`BPDA.matched_layers` lists them). robustact models
build every activation as a module; a foreign model whose forward calls ``F.relu`` and gets
JumpReLU through the retrofit's function-rerouting keeps the jump's backward at those calls.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BPDA", "with_bpda", "default_substitutes"]

#: A rule's key: a module class (isinstance), a class name (matched along the MRO, so classes
#: written elsewhere need not be importable), or a predicate ``module -> bool``.
MatchKey = type | str | Callable[[nn.Module], bool]
#: A substitute maps the layer's input to a tensor of the layer's output shape; its derivative
#: is used in the backward pass. ``None`` means the identity.
Substitute = Callable[[torch.Tensor], torch.Tensor] | None


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def default_substitutes() -> dict[MatchKey, Substitute]:
    """JumpReLU → ReLU; OutputActivation (f(T·z) on logits) → identity.

    Matched by class name: the classes live in ``robustact.nn.jumprelu`` and
    ``robustact.nn.bounded`` and need not be imported (or even exist) for the rule.
    """
    return {"JumpReLU": F.relu, "OutputActivation": _identity}


class _ForwardValueBackwardSubstitute(torch.autograd.Function):
    """Returns ``value`` (a copy, so bits are preserved) and routes the gradient to ``sub``."""

    @staticmethod
    def forward(ctx: Any, value: torch.Tensor, sub: torch.Tensor) -> torch.Tensor:
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, grad


def _matcher(key: MatchKey) -> Callable[[nn.Module], bool]:
    if isinstance(key, type):
        return lambda m: isinstance(m, key)
    if isinstance(key, str):
        return lambda m: any(c.__name__ == key for c in type(m).__mro__)
    if callable(key):
        return key
    raise TypeError(f"a BPDA rule key must be a class, a class name or a predicate, got {key!r}")


class BPDA(nn.Module):
    """Wrapper: forward = the model's, backward through matched layers = the substitutes'.

    Args:
        model: the classifier (inputs in [0, 1], logits out).
        substitutes: ``{key: substitute}`` rules, tried in order before the defaults (see
            :data:`MatchKey`, :data:`Substitute`); the first matching rule wins per module.
        use_defaults: also apply :func:`default_substitutes`.
        strict: raise if no module of ``model`` matches any rule (BPDA would silently be a
            plain white-box attack).

    Submodule names seen by ``logits_from=`` are prefixed with ``model.``.
    """

    def __init__(self, model: nn.Module, substitutes: Mapping[MatchKey, Substitute] | None = None,
                 *, use_defaults: bool = True, strict: bool = True) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        rules: dict[MatchKey, Substitute] = dict(substitutes or {})
        if use_defaults:
            for k, v in default_substitutes().items():
                rules.setdefault(k, v)
        self._rules = [(_matcher(k), fn if fn is not None else _identity, k)
                       for k, fn in rules.items()]
        if strict and not self.matched_layers():
            keys = ", ".join(repr(k) for _, _, k in self._rules)
            raise ValueError(f"BPDA: no layer of the model matches any rule ({keys}); "
                             "pass substitutes= for the layers to approximate")

    # The wrapper has no mode of its own: nn.Module.train()/eval() set ``training`` on it,
    # which is forwarded to the model, and reading it reports the model's mode.
    @property  # type: ignore[override]
    def training(self) -> bool:
        model = self.__dict__.get("_modules", {}).get("model")
        return bool(model.training) if model is not None else False

    @training.setter
    def training(self, mode: bool) -> None:
        model = self.__dict__.get("_modules", {}).get("model")
        if model is not None:
            model.train(mode)

    def _layers(self) -> list[tuple[str, nn.Module, Callable[[torch.Tensor], torch.Tensor]]]:
        out = []
        for name, m in self.model.named_modules():
            for match, fn, _ in self._rules:
                if match(m):
                    out.append((name, m, fn))
                    break
        return out

    def matched_layers(self) -> list[str]:
        """Names (inside the model) of the layers whose backward pass is substituted."""
        return [name for name, _, _ in self._layers()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self.model(x)  # no backward pass: nothing to substitute
        handles = []
        try:
            for name, module, fn in self._layers():
                pre, post = self._hooks(name, fn)
                handles.append(module.register_forward_pre_hook(pre))
                handles.append(module.register_forward_hook(post))
            return self.model(x)
        finally:
            for h in handles:
                h.remove()

    @staticmethod
    def _hooks(name: str, fn: Callable[[torch.Tensor], torch.Tensor]
               ) -> tuple[Callable[..., None], Callable[..., torch.Tensor]]:
        """A pre-hook evaluating the substitute on the layer's input *before* the layer runs
        (an in-place layer, e.g. ``JumpReLU(inplace=True)``, overwrites its input), and a
        forward hook returning the layer's own value with the substitute's backward."""
        pending: list[torch.Tensor] = []

        def pre(module: nn.Module, inputs: tuple[Any, ...]) -> None:
            if not inputs or not isinstance(inputs[0], torch.Tensor):
                raise TypeError(f"BPDA layer {name!r} must take a tensor as its first input")
            pending.append(fn(inputs[0]))

        def post(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> torch.Tensor:
            sub = pending.pop()
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"BPDA layer {name!r} must return a single tensor")
            if sub.shape != output.shape:
                raise ValueError(
                    f"BPDA substitute for layer {name!r} returns shape {tuple(sub.shape)} but "
                    f"the layer returns {tuple(output.shape)}; a substitute must be shape-"
                    "preserving like the layer it stands in for"
                )
            return _ForwardValueBackwardSubstitute.apply(output.detach(), sub.to(output.dtype))

        return pre, post

    def extra_repr(self) -> str:
        return f"substituted={self.matched_layers()}"


def with_bpda(model: nn.Module, substitutes: Mapping[MatchKey, Substitute] | None = None,
              *, use_defaults: bool = True, strict: bool = True) -> BPDA:
    """Wrap ``model`` for BPDA attacks; see :class:`BPDA`. The model itself is not modified."""
    return BPDA(model, substitutes, use_defaults=use_defaults, strict=strict)
