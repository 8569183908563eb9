"""A model as a graph of bound-propagation steps: affine maps, element-wise activations, joins.

Why a graph and not the model's modules in order: user models and ours (ResNet-20) add
residuals in ``forward`` code and call ``torch.relu``/``flatten`` as functions. ``torch.fx``
traces that code into nodes; each node becomes one :class:`Step` that the bound passes
(:mod:`robustact.certify.bounds`) know how to cross. Anything else is refused in one line
naming the module or function, before any bound is computed.

Steps, and how each is bounded:

- ``affine``: any map that is affine per sample: Linear, Conv2d, BatchNorm (eval), average
  pooling, Flatten/view/reshape, Normalize, Dropout in eval, Identity, adding a constant.
  Intervals pass as centre and radius (the radius through the map's absolute linear part);
  linear bounds pass back exactly (a vector-Jacobian product).
- ``act``: element-wise activations. ReLU: the triangle relaxation (CROWN). JumpReLU(κ)
  (x·1[x > κ], monotone for κ ≥ 0): its exact pieces, else below by max(0, x − κ) or 0 and
  above by ReLU's chord. Monotone ones (sigmoid, tanh, the output activations f(T·z)):
  [f(l), f(u)]. SPLASH (piecewise linear, not monotone): the minimum and maximum over
  [l, u] of its values at l, u and the hinges inside; with ``norm`` its standardization is
  an affine step first.
- ``const``: steps bounded by constants of their input interval in the backward pass: max
  pooling (max over the window of l and of u).
- ``add``: two tensors summed (residual connections).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from robustact.defenses.jumprelu_retrofit import JumpReLURetrofit
from robustact.defenses.output_activation import OutputActivationModel
from robustact.nn.bounded import OutputActivation
from robustact.nn.jumprelu import JumpReLU
from robustact.nn.normalize import Normalize
from robustact.nn.splash import SPLASH, splash_reference

__all__ = ["Step", "UnsupportedModel", "bound_graph", "shared_weight_abs"]

#: Modules traced as one step (fx would otherwise trace into ours, whose forward checks shapes).
LEAVES = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.AvgPool2d,
          nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity, nn.Dropout, nn.ReLU, nn.Sigmoid,
          nn.Tanh, nn.MaxPool2d, Normalize, JumpReLU, SPLASH, OutputActivation)
#: Monotone non-decreasing element-wise functions: bounded by their values at l and u.
MONOTONE: dict[Any, Callable[[torch.Tensor], torch.Tensor]] = {
    nn.Sigmoid: torch.sigmoid, nn.Tanh: torch.tanh}


class UnsupportedModel(ValueError):
    """The model holds a layer the bounds cannot cross (named in the message)."""


@dataclass
class Step:
    """One node of the bound graph.

    ``kind``: input | affine | act | const | add. ``inputs``: indices of earlier steps.
    ``fn``: the step's forward on a batch (affine, act, const). ``abs_fn``: an affine step's
    absolute linear part (for the interval radius). ``act``: for ``act`` steps, the
    relaxation's name (relu, jump, monotone, pwl), ``kappa`` for jump, ``range_fn`` (l, u) →
    (min, max) of the function over [l, u] for pwl. ``monotone``: an affine step with a
    non-negative linear part (pooling, normalization, reshapes), so that an interval's end
    points map to the image's (IBP's cheapest step: no centre and radius). ``reshape``: one
    that only rearranges its input's entries (flatten, view, identity, eval dropout), so that
    linear bounds cross it by a reshape, with no product or Jacobian.
    """

    kind: str
    name: str
    inputs: list[int] = field(default_factory=list)
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    abs_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    act: str | None = None
    kappa: float = 0.0
    range_fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None \
        = None
    monotone: bool = False
    reshape: bool = False

    def __post_init__(self) -> None:
        self.monotone = self.monotone or self.reshape


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, LEAVES) or super().is_leaf_module(m, qualname)


def _unwrap(model: nn.Module) -> tuple[nn.Module, float, nn.Module | None]:
    """(the network to trace, the retrofit's κ or 0, an output activation applied last)."""
    kappa, head = 0.0, None
    if isinstance(model, OutputActivationModel):
        model, head = model.base, model.activation
    if isinstance(model, JumpReLURetrofit):
        kappa, model = float(model.kappa), model.base
    if isinstance(model, (OutputActivationModel, JumpReLURetrofit)):
        raise UnsupportedModel(f"nested defenses ({type(model).__name__} inside another) are "
                               "not supported by the bounds")
    return model, kappa, head


#: |W| per weight while :func:`shared_weight_abs` is active (id of the module → |W|).
_ABS_WEIGHTS: ContextVar[dict[int, torch.Tensor] | None] = ContextVar("abs_weights",
                                                                      default=None)


@contextmanager
def shared_weight_abs() -> Iterator[None]:
    """Within: each layer's |W| computed once and shared, by the blocks of samples of one
    bound computation (the radius maps recompute it otherwise: 20 % of IBP's time on the
    small benchmark model). Scoped to the call, so a weight changed between calls (an
    optimizer step, ``.data`` edits that no version counter sees) is never stale."""
    token = _ABS_WEIGHTS.set({})
    try:
        yield
    finally:
        _ABS_WEIGHTS.reset(token)


def _weight_abs(m: nn.Linear | nn.Conv2d) -> torch.Tensor:
    """|W| of a layer, shared within :func:`shared_weight_abs`."""
    memo = _ABS_WEIGHTS.get()
    if memo is None:
        return m.weight.abs()
    if id(m) not in memo:
        memo[id(m)] = m.weight.abs()
    return memo[id(m)]


def _abs_linear(m: nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda r: F.linear(r, _weight_abs(m))


def _abs_conv(m: nn.Conv2d) -> Callable[[torch.Tensor], torch.Tensor]:
    if m.padding_mode != "zeros":
        raise UnsupportedModel(f"Conv2d with padding_mode={m.padding_mode!r} is not supported")
    return lambda r: F.conv2d(r, _weight_abs(m), None, m.stride, m.padding, m.dilation,
                              m.groups)


def _bn_scale(m: nn.Module) -> torch.Tensor:
    var = m.running_var
    if var is None:
        raise UnsupportedModel(f"{type(m).__name__} without running statistics is not supported")
    scale = torch.rsqrt(var + m.eps)
    return scale * m.weight if m.weight is not None else scale


def _channel_abs(scale: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The radius through a per-channel (dim 1) scaling: ``r·|scale|``."""
    def f(r: torch.Tensor) -> torch.Tensor:
        shape = [1, -1] + [1] * (r.ndim - 2)
        return r * scale.abs().view(shape)
    return f


def _module_step(m: nn.Module, name: str, kappa: float) -> Step:
    """The step of one leaf module (refused in one line when unsupported)."""
    if isinstance(m, nn.Linear):
        return Step("affine", name, fn=m, abs_fn=_abs_linear(m))
    if isinstance(m, nn.Conv2d):
        return Step("affine", name, fn=m, abs_fn=_abs_conv(m))
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if m.training:
            raise UnsupportedModel(f"{name} ({type(m).__name__}) is in train mode: bounds need "
                                   "the model in eval mode (model.eval()), and certified "
                                   "training a model without BatchNorm (e.g. ibp_small)")
        return Step("affine", name, fn=m, abs_fn=_channel_abs(_bn_scale(m)))
    if isinstance(m, Normalize):  # its std is positive
        return Step("affine", name, fn=m, abs_fn=lambda r: r / m.std, monotone=True)
    if isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return Step("affine", name, fn=m, abs_fn=m, monotone=True)
    if isinstance(m, (nn.Flatten, nn.Identity)):
        return Step("affine", name, fn=m, abs_fn=m, reshape=True)
    if isinstance(m, nn.Dropout):
        if m.training:
            raise UnsupportedModel(f"{name} (Dropout) is in train mode: bounds need eval mode, "
                                   "and certified training a model without dropout")
        return Step("affine", name, fn=m, abs_fn=m, reshape=True)
    if isinstance(m, nn.ReLU):
        return Step("act", name, fn=m, act="jump" if kappa > 0 else "relu", kappa=kappa)
    if isinstance(m, JumpReLU):
        if m.kappa < 0:
            raise UnsupportedModel(f"{name}: JumpReLU with kappa < 0 is not monotone")
        return Step("act", name, fn=m, act="jump" if m.kappa > 0 else "relu",
                    kappa=float(m.kappa))
    if isinstance(m, (nn.Sigmoid, nn.Tanh, OutputActivation)):
        return Step("act", name, fn=m, act="monotone")
    if isinstance(m, SPLASH):
        if m.norm and m.training:
            raise UnsupportedModel(f"{name} (SPLASH, norm=true) standardizes with batch "
                                   "statistics in train mode: bounds need eval mode, and "
                                   "certified training splash:norm=false")
        return Step("act", name, fn=m, act="pwl", range_fn=_splash_range(m))
    if isinstance(m, nn.MaxPool2d):
        return Step("const", name, fn=m)
    raise UnsupportedModel(f"the bounds cannot cross {name} ({type(m).__name__}); supported: "
                           f"{', '.join(sorted({c.__name__ for c in LEAVES}))}, residual adds, "
                           "relu, flatten/view/reshape")


def _splash_range(m: SPLASH) -> Callable[[torch.Tensor, torch.Tensor],
                                          tuple[torch.Tensor, torch.Tensor]]:
    """(min, max) of a SPLASH unit over [l, u]: its values at l, u and at the hinges ±b inside
    (a piecewise-linear function reaches its extremes there). Its standardization (``norm``,
    running statistics) is increasing, so it maps [l, u] onto [s(l), s(u)] first."""
    def rng(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if m.norm:
            lo, hi = m._standardize(lo), m._standardize(hi)
        ap, an = m.a_pos.to(lo.dtype), m.a_neg.to(lo.dtype)
        b = m.offsets.to(lo.dtype)
        vl, vu = splash_reference(lo, ap, an, b), splash_reference(hi, ap, an, b)
        low, high = torch.minimum(vl, vu), torch.maximum(vl, vu)
        for h in torch.cat([b, -b]).unique().tolist():
            inside = (lo < h) & (h < hi)
            v = splash_reference(torch.full_like(lo, h), ap, an, b)
            low = torch.where(inside, torch.minimum(low, v), low)
            high = torch.where(inside, torch.maximum(high, v), high)
        return low, high
    return rng


_RELU_FUNCTIONS = (torch.relu, F.relu)
_FLATTEN_METHODS = ("view", "reshape", "flatten")


def _is_selection(node: fx.Node) -> bool:
    """Indexing by constants, or zero padding: maps that copy or zero entries."""
    if node.target is operator.getitem:
        index = node.args[1]
        items = index if isinstance(index, tuple) else (index,)
        return all(isinstance(i, (slice, int)) or i is Ellipsis or i is None for i in items) \
            and not any(isinstance(getattr(i, a, None), fx.Node) for i in items
                        if isinstance(i, slice) for a in ("start", "stop", "step"))
    if node.target is F.pad:
        mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
        value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
        return mode == "constant" and not value
    return False


def _replay(node: fx.Node) -> Callable[[torch.Tensor], torch.Tensor]:
    """The node's call on a new first argument, with its other (constant) arguments."""
    target, rest, kw = node.target, node.args[1:], dict(node.kwargs)
    if node.op == "call_method":
        return lambda x: getattr(x, str(target))(*rest, **kw)
    return lambda x: target(x, *rest, **kw)  # type: ignore[operator]


def _function_step(node: fx.Node, kappa: float) -> tuple[Step, list[fx.Node]]:
    """The step of a call_function / call_method node and its tensor inputs."""
    target, args = node.target, node.args
    tensors = [a for a in args if isinstance(a, fx.Node)]
    if target in (operator.add, torch.add) and len(tensors) == 2:
        return Step("add", node.name), tensors
    if target in (operator.add, operator.sub, torch.add) and len(tensors) == 1:
        const = next(a for a in args if not isinstance(a, fx.Node))
        sign = -1.0 if target is operator.sub else 1.0

        def shift(x: torch.Tensor) -> torch.Tensor:
            return x + sign * const
        return Step("affine", node.name, fn=shift, abs_fn=lambda r: r, monotone=True), tensors
    if target in _RELU_FUNCTIONS:
        return Step("act", node.name, fn=torch.relu, act="jump" if kappa > 0 else "relu",
                    kappa=kappa), tensors
    reshape = target is torch.flatten or (node.op == "call_method"
                                          and target in _FLATTEN_METHODS)
    if reshape or target in (F.avg_pool2d, F.adaptive_avg_pool2d) or _is_selection(node):
        # reshapes, average pooling, constant slicing, zero padding: linear with non-negative
        # weights, so the same call maps the centre and the radius
        fn = _replay(node)
        return Step("affine", node.name, fn=fn, abs_fn=fn, monotone=True,
                    reshape=reshape), tensors
    what = target if isinstance(target, str) else getattr(target, "__name__", repr(target))
    raise UnsupportedModel(f"the bounds cannot cross the operation {what!r} (node "
                           f"{node.name}); supported: residual adds, relu, flatten/view/"
                           "reshape, average pooling and the modules listed in the docs")


def bound_graph(model: nn.Module) -> list[Step]:
    """The model's steps in execution order (step 0 is the input); one line when a layer is
    not supported (:class:`UnsupportedModel`)."""
    net, kappa, head = _unwrap(model)
    try:
        graph = _Tracer().trace(net)
    except Exception as e:  # fx raises many types for code it cannot trace
        raise UnsupportedModel(f"the model's forward cannot be traced for bounds "
                               f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                               "; data-dependent control flow is not supported") from None
    modules = dict(net.named_modules())
    steps: list[Step] = []
    where: dict[fx.Node, int] = {}
    out_index = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if steps:
                raise UnsupportedModel("the model takes more than one input")
            steps.append(Step("input", node.name))
        elif node.op == "get_attr":
            raise UnsupportedModel(f"the model reads the tensor {node.target} in forward; "
                                   "the bounds need it inside a module")
        elif node.op == "call_module":
            steps.append(_module_step(modules[str(node.target)], str(node.target), kappa))
            steps[-1].inputs = [where[a] for a in node.args if isinstance(a, fx.Node)]
        elif node.op in ("call_function", "call_method"):
            step, inputs = _function_step(node, kappa)
            step.inputs = [where[a] for a in inputs]
            steps.append(step)
        elif node.op == "output":
            arg = node.args[0]
            if not isinstance(arg, fx.Node):
                raise UnsupportedModel("the model must return one tensor of logits")
            out_index = where[arg]
            continue
        where[node] = len(steps) - 1
        if len(steps[-1].inputs) != (0 if steps[-1].kind == "input" else
                                     2 if steps[-1].kind == "add" else 1):
            raise UnsupportedModel(f"{steps[-1].name}: a step with an unexpected number of "
                                   "tensor inputs")
    if out_index is None or out_index != len(steps) - 1:
        raise UnsupportedModel("the model's output is not its last operation")
    if head is not None:
        steps.append(Step("act", "activation", inputs=[len(steps) - 1], fn=head,
                          act="monotone"))
    return steps

