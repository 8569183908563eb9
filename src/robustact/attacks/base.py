"""The attack protocol: configure once, call on ``(model, x, y)``, get an :class:`AttackResult`.

Separation of concerns (after Foolbox 3):
- *what counts as adversarial*: misclassification (untargeted) or hitting ``target``;
  decided on the model's real output, always, by :meth:`Attack.__call__`;
- *how far*: the attack's ``norm`` and (for fixed-budget attacks) ``eps``;
- *how to search*: the subclass's :meth:`Attack.perturb`.

The base class does the bookkeeping every attack needs, so a subclass is only its search:
input validation, refusing a model in train mode (or switching it to eval and back with
``force_eval=True``), turning off parameter gradients for the duration (attacks never touch
``param.grad`` and skip the weight-gradient work), choosing the tensor the loss is computed on
(``logits_from``: the logits, or a named inner module's output, for adaptive attacks), and the
final success / norm computation.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustact.attacks._utils import keyed_random_start, random_start
from robustact.core.spec import bind_params
from robustact.core.validate import (
    check_images,
    check_labels,
    check_logits,
    check_model_output,
    match_model_dtype,
)
from robustact.losses.attack import AttackLoss, get_attack_loss

__all__ = ["Attack", "AttackResult", "LogitsView", "lp_norms", "prepared_model"]

NORMS = ("linf", "l2", "l1", "l0")


def lp_norms(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm of a perturbation batch (N, ...)."""
    flat = delta.flatten(1)
    if norm == "linf":  # abs then amax: measured 13x faster on CPU than vector_norm(inf)
        return flat.abs().amax(1)
    if norm == "l2":
        return flat.norm(p=2, dim=1)
    if norm == "l1":
        return flat.abs().sum(1)
    if norm == "l0":
        return (flat != 0).sum(1).to(delta.dtype)
    raise ValueError(f"unknown norm {norm!r}; choose from {NORMS}")


@dataclass
class AttackResult:
    """Per-sample outcome of an attack. All tensors have N rows, on the inputs' device."""

    x_adv: torch.Tensor
    success: torch.Tensor  # bool: adversarial according to the model's real output
    norms: torch.Tensor  # ‖x_adv − x‖ in ``norm``
    norm: str
    logits: torch.Tensor  # the model's logits on x_adv
    # (success and logits are None only for a call with check=False: unverified x_adv)
    queries: torch.Tensor | None = None  # forward passes spent per sample (black-box attacks)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean())

    def summary(self) -> dict[str, Any]:
        ok = self.success
        s: dict[str, Any] = {
            "n": int(ok.numel()),
            "success_rate": self.success_rate,
            "norm": self.norm,
        }
        if ok.any():
            n = self.norms[ok].float()
            s["median_norm_successful"] = float(n.median())
            s["mean_norm_successful"] = float(n.mean())
        if self.queries is not None:
            s["mean_queries"] = float(self.queries.float().mean())
        s.update({k: v for k, v in self.info.items() if isinstance(v, (int, float, str, bool))})
        return s


class LogitsView:
    """Calls the model once and returns ``(loss_logits, logits)``.

    ``loss_logits`` is the output of the submodule named ``layer`` (captured with a forward
    hook) or the logits themselves when ``layer`` is None. Why: adaptive attacks on output-
    activation defenses compute the loss on the pre-activation logits z while success is still
    judged on the defended model's output.
    """

    def __init__(self, model: nn.Module, layer: str | None = None,
                 check: Callable[[torch.Tensor], None] | None = None, *,
                 keys: torch.Tensor | None = None, record: bool = False) -> None:
        self.model = model
        self.layer = layer
        # Per-call context for the search (see Attack.__call__): sample keys for keyed
        # randomness, whether to record the per-sample instrumentation, and the totals of
        # sample-forwards / sample-backwards spent (counted always: two integer additions).
        self.keys = keys
        self.record = record
        self.forwards = 0
        self.backwards = 0
        # Run once, on the logits of the first call: validating the model's output on the
        # forward pass the attack needs anyway costs nothing extra (no probe pass).
        self._check = check
        self._module: nn.Module | None = None
        if layer is not None:
            try:
                self._module = model.get_submodule(layer)
            except AttributeError as e:
                names = [n for n, _ in model.named_modules() if n]
                raise ValueError(
                    f"logits_from={layer!r} is not a submodule of the model; "
                    f"available: {', '.join(names[:30])}"
                ) from e

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.forwards += x.shape[0]
        zl, z = self._forward(x)
        self.check_if_pending(z)
        return zl, z

    def check_if_pending(self, z: torch.Tensor) -> None:
        """Run the output check on ``z`` unless it already ran (it runs once)."""
        if self._check is not None:
            check, self._check = self._check, None
            check(check_model_output(z).detach())

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._module is None:
            z = self.model(x)
            return z, z
        captured: list[torch.Tensor] = []
        handle = self._module.register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            z = self.model(x)
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f"submodule {self.layer!r} was not called in the forward pass")
        inner = captured[-1]
        return inner.flatten(1) if inner.ndim > 2 else inner, z


@contextlib.contextmanager
def prepared_model(model: nn.Module, force_eval: bool = False) -> Iterator[nn.Module]:
    """Eval mode required (or forced and restored); parameter gradients off, then restored.

    "Train mode" means any submodule in train mode (a dropout layer switched back on inside an
    eval model counts). Only what changes is touched and restored, module by module: calling
    ``Module.train`` walks and re-sets every submodule, a measurable share of a one-step attack
    on a small batch.
    """
    states = [(m, m.training) for m in model.modules()]
    in_training = [m for m, mode in states if mode]
    if in_training and not force_eval:
        where = "the model" if model.training else f"{len(in_training)} of its submodules"
        raise ValueError(
            f"{where} is in train mode; call model.eval() before attacking it, or pass "
            "force_eval=True to let the attack switch it to eval mode and back"
        )
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        if in_training:
            model.eval()
        for p in trainable:
            p.requires_grad_(False)
        yield model
    finally:
        for p in trainable:
            p.requires_grad_(True)
        if in_training:  # root first, so a wrapper that forwards its mode is overridden below
            for m, mode in states:
                m.training = mode


class Attack:
    """Base class. Subclasses set ``name`` and ``norm`` and implement :meth:`perturb`.

    Args:
        loss: "ce", "margin" (C&W) or "dlr", or a callable ``(z, y, targeted) -> (N,)`` to
            maximise. Attacks whose search is defined by a specific loss may ignore it.
        logits_from: name of a submodule whose output the loss is computed on (adaptive
            attacks), e.g. ``"base"`` for an output-activation wrapper; None for the logits.
        force_eval: switch a model in train mode to eval for the attack, then restore it.
        seed: seed of the attack's own ``torch.Generator`` (random starts, Square's sampling);
            attacks never touch the global RNG, so runs are reproducible and independent.

    Every subclass's constructor is checked and recorded generically (see
    :meth:`__init_subclass__`): a parameter it does not take, a missing one, or a value of the
    wrong type for its annotation (``early_stop="maybe"`` for a ``bool``) is one
    :class:`~robustact.core.spec.ParameterError` line, and :meth:`spec` returns the parameters
    the attack was built with, so ``create_attack(**attack.spec())`` rebuilds it.
    """

    name: str = "attack"
    norm: str = "linf"
    #: Whether ``target=`` is meaningful: False for attacks that are untargeted by design
    #: (DeepFool, the trust region, APGD-T, which picks its own targets); protocols refuse a
    #: targeted entry of such an attack when they are read, not mid-run.
    takes_target: bool = True

    _spec: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wrap the subclass's ``__init__``: check its arguments, then record them for spec().

        Only the outermost constructor call is checked and recorded (``BIM.__init__`` calling
        ``PGD.__init__`` with derived values is an implementation detail, not the user's spec).
        Why generic: the types are declared once, in the signature, and every attack (including
        a user's subclass) gets the same one-line errors and a spec() without writing either.
        """
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def checked_init(self: Attack, *args: Any, **kw: Any) -> None:
            if type(self).__init__ is not checked_init:  # called via super(): already checked
                init(self, *args, **kw)
                return
            params = bind_params(init, args, kw, owner=f"attack {type(self).name!r}",
                                 skip=1)
            init(self, *args, **kw)
            self._spec = {"name": type(self).name, **params}

        cls.__init__ = checked_init  # type: ignore[method-assign]

    def __init__(self, *, loss: str | AttackLoss = "ce", logits_from: str | None = None,
                 force_eval: bool = False, seed: int = 0) -> None:
        self.loss_fn: AttackLoss = get_attack_loss(loss)
        self.logits_from = logits_from
        self.force_eval = force_eval
        self.seed = seed

    # -- to implement -------------------------------------------------------------------------
    def perturb(self, view: LogitsView, x: torch.Tensor, y: torch.Tensor,
                target: torch.Tensor | None) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        """Return x_adv (or ``(x_adv, info)``). ``view(x) -> (loss_logits, logits)``.

        ``info`` may carry a ``"queries"`` tensor (N,) and scalars for the summary.
        """
        raise NotImplementedError

    # -- helpers for subclasses -----------------------------------------------------------------
    def generator(self, device: torch.device) -> torch.Generator:
        g = torch.Generator(device=device)
        g.manual_seed(self.seed)
        return g

    def start_point(self, view: LogitsView, x: torch.Tensor, idx: torch.Tensor | None,
                    restart: int, gen: torch.Generator | None) -> torch.Tensor:
        """A random start in the ε-ball for the rows ``idx`` of the call's batch (None: all).

        Without keys (the default), draws from the call's generator ``gen`` in batch order, as
        always; with keys (``attack(..., keys=ids)``), each sample's draw depends only on
        (seed, its key, ``restart``), so the result does not depend on batching.
        """
        eps = self.eps  # type: ignore[attr-defined]
        if view.keys is None:
            return random_start(x, eps, self.norm, gen)
        keys = view.keys if idx is None else view.keys[idx]
        return keyed_random_start(x, eps, self.norm, self.seed, keys, restart)

    def is_adversarial(self, logits: torch.Tensor, y: torch.Tensor,
                       target: torch.Tensor | None) -> torch.Tensor:
        pred = logits.argmax(1)
        return pred == target if target is not None else pred != y

    def spec(self) -> dict[str, Any]:
        """``{"name": registered name, **constructor parameters}``, defaults included.

        ``create_attack(**attack.spec())`` rebuilds an identical attack (same spec, same outputs
        for the same inputs). The values are the ones given, not derived ones (``alpha=None``
        stays None: PGD derives it from eps and steps again). Everything the CLI or a spec string
        can express is a plain value (JSON-ready); a callable ``loss`` stays the callable.
        """
        return dict(self._spec)

    # -- the call --------------------------------------------------------------------------------
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 target: torch.Tensor | None = None, *, keys: torch.Tensor | None = None,
                 record: bool = False, check: bool = True) -> AttackResult:
        """Run the attack.

        ``keys`` (N,) integer sample identities (e.g. indices in the dataset): random draws
        are then keyed per sample (:meth:`start_point`), so a sample's result does not depend
        on the batch it is in. ``record``: attacks that support it add per-sample
        instrumentation to ``info`` (``forward``/``backward`` counts, ``loss_first``,
        ``loss_best``, ``stall``, ``ever_adversarial``, ``grad_zero``: see
        :mod:`robustact.evaluate.table`). ``info["forward_total"]`` and
        ``info["backward_total"]`` (sample-passes of the whole call) are always there.
        ``check=False`` skips the final judging forward pass on x_adv: ``success`` and
        ``logits`` are then None (``info["checked"]`` is False) and x_adv is unverified. Why:
        adversarial training only needs x_adv, and for a one-step attack that forward is a
        sixth of the training step (measured in ``benchmarks/bench_adv_train.py``); never use
        it to report robustness.
        """
        check_images(x)
        check_labels(y, x.shape[0])
        if keys is not None:
            if not isinstance(keys, torch.Tensor) or keys.shape != (x.shape[0],) or (
                    keys.dtype.is_floating_point or keys.dtype == torch.bool):
                raise ValueError(f"keys must be an integer tensor of shape ({x.shape[0]},)")
            keys = keys.to(x.device)
        if target is not None:
            check_labels(target, x.shape[0], name="target")
            if bool((target == y).any()):
                raise ValueError("target equals the true label for some samples")
        # A float64 batch on a float32 model (or the reverse) is cast to the model's dtype: [0, 1]
        # images survive it, and x_adv, norms and logits then come back in that dtype.
        x = match_model_dtype(model, x.detach())

        def check_output(z: torch.Tensor) -> None:
            # The model's output and the labels against its class count, checked on the first
            # forward pass of the attack (before any loss reads the labels).
            check_logits(z, name="model output")
            check_labels(y, x.shape[0], num_classes=z.shape[1])
            if target is not None:
                check_labels(target, x.shape[0], num_classes=z.shape[1], name="target")

        with prepared_model(model, self.force_eval):
            view = LogitsView(model, self.logits_from, check=check_output, keys=keys,
                              record=record)
            out = self.perturb(view, x, y, target)
            x_adv, info = out if isinstance(out, tuple) else (out, {})
            x_adv = x_adv.detach().clamp(0.0, 1.0)
            if not check:
                info.pop("queries", None)
                info.update(checked=False, forward_total=view.forwards,
                            backward_total=view.backwards)
                return AttackResult(x_adv=x_adv, success=None,  # type: ignore[arg-type]
                                    norms=lp_norms(x_adv - x, self.norm), norm=self.norm,
                                    logits=None, info=info)  # type: ignore[arg-type]
            with torch.inference_mode():
                logits = check_model_output(model(x_adv))
            logits = logits.clone()  # a normal tensor again: callers may edit or reuse it
            view.check_if_pending(logits)  # the search never called the model (e.g. ε = 0)
        success = self.is_adversarial(logits, y, target)
        queries = info.pop("queries", None)
        info["forward_total"], info["backward_total"] = view.forwards, view.backwards
        return AttackResult(x_adv=x_adv, success=success, norms=lp_norms(x_adv - x, self.norm),
                            norm=self.norm, logits=logits, queries=queries, info=info)
