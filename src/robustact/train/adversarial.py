"""Adversarial training recipes, built on :mod:`robustact.attacks` (no second gradient step).

A recipe is a spec (a plain dict recorded in ``TrainConfig.adv``, hence in every checkpoint
card and compared on resume) that :func:`adversarial_train` turns into the trainer's extension
points:

========  ==========================================================  ======================
recipe    what replaces the clean batch                               extension point
========  ==========================================================  ======================
mix       FGSM examples for a ``fraction`` of each batch (JumpReLU    ``batch_hook``
          paper: MNIST 0.3 at ε 0.3, CIFAR 0.6 at ε 0.031)
pgd       PGD examples (Madry et al. 2018): ``steps``, ``alpha``       ``batch_hook``
fast      FGSM from a uniform random start, step ``alpha`` = 1.25ε     ``batch_hook`` + guard
          (Wong et al. 2020) = PGD with one step and a random start   callback
trades    CE(f(x), y) + β·KL(f(x) ‖ f(x_adv)), x_adv from PGD on the   ``loss``
          KL (Zhang et al. 2019)
========  ==========================================================  ======================

Examples are always crafted with the model in eval mode (``force_eval``: no dropout, batch-norm
statistics untouched), then train mode is restored; attacks never touch ``param.grad``. The
attacks' random starts draw their seed from the global RNG, which the trainer seeds per epoch,
so a run is a pure function of its seed and a resumed run ends bit for bit where an
uninterrupted one does. Training attacks skip the attacks' final judging forward pass
(``check=False``: training needs x_adv, not its verdict; it cost 18 % of a fast-AT step) and run
with ``early_stop=False``: training wants the final
iterate for every sample (Madry, Wong and Zhang all train on it), not the first adversarial one.

Under DDP (:mod:`robustact.train.distributed`) a rank crafts examples for its rows of the global
batch only, yet gets the examples one process would: the per-call seed comes from the
one-process stream (``LocalBatch.seeds``) and the random start is drawn for the whole global
batch and sliced to the rank's rows (an L∞ start is one uniform draw per pixel in batch order).
Keying the start by sample index (the attacks' ``keys=``) would have served too, but it would
change every existing one-process run; this way one-process runs stay bit for bit as they were.

Why fast AT has a guard: FGSM training can collapse within an epoch ("catastrophic
overfitting": FGSM accuracy high, PGD accuracy near 0). :class:`OverfittingGuard` measures PGD
accuracy on a fixed held-out batch after every epoch, keeps the best such model
(``robust_best/``) and warns when accuracy drops well below the best; the run then ends with
the best weights restored, as Wong et al. do by early stopping.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustact.attacks import random_start
from robustact.attacks.base import LogitsView
from robustact.attacks.pgd import PGD
from robustact.checkpoint import CheckpointError, load_weights, read_card, save_checkpoint
from robustact.core.budget import check_budget
from robustact.train.batches import as_tensors, to_float
from robustact.train.certified import CERTIFIED_RECIPES, CertifiedLoss
from robustact.train.config import TrainConfig
from robustact.train.distributed import DistEnv, LocalBatch, unwrap
from robustact.train.loop import BatchHook, LossFn, Trainer
from robustact.train.recipes import fgsm_batch_hook

__all__ = [
    "ADV_RECIPES",
    "OverfittingGuard",
    "TradesLoss",
    "adversarial_spec",
    "adversarial_train",
    "pgd_batch_hook",
]

log = logging.getLogger("robustact.train")

ADV_RECIPES = ("mix", "pgd", "fast", "trades")

#: Folder (next to ``last/``) where the guard keeps the model with the best held-out PGD accuracy.
ROBUST_BEST = "robust_best"


def _number(value: Any, name: str, lo: float, hi: float, lo_open: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and (value > lo if lo_open else value >= lo) and value <= hi:
        return float(value)
    left = "(" if lo_open else "["
    raise ValueError(f"{name} must be a number in {left}{lo:g}, {hi:g}], got {value!r}")


def _steps(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def adversarial_spec(recipe: str, eps: float, *, steps: int | None = None,
                     alpha: float | None = None, fraction: float | None = None,
                     beta: float | None = None, guard_steps: int = 10, guard_n: int = 256,
                     guard_drop: float = 0.2) -> dict[str, Any]:
    """The checked, complete spec of a recipe (defaults filled in), as recorded in the card.

    Parameters a recipe does not use are refused (``--adv-fraction`` with ``pgd`` is a mistake,
    not a no-op). Defaults: ``pgd`` 10 steps of 2.5ε/steps (Madry's MNIST run: 40 steps of
    0.01); ``fast`` α = 1.25ε; ``trades`` β = 6, 10 steps of 2.5ε/steps; ``mix`` fraction 0.3.
    ``guard_*`` (fast only): held-out images, PGD steps, and the accuracy drop below the best
    that counts as a collapse.
    """
    if recipe not in ADV_RECIPES:
        raise ValueError(f"unknown adversarial training recipe {recipe!r}; "
                         f"choose from {', '.join(ADV_RECIPES)}")
    eps = check_budget(eps, "linf")  # the recipes' attacks are L∞: the one budget rule
    uses = {"mix": {"fraction"}, "pgd": {"steps", "alpha"}, "fast": {"alpha"},
            "trades": {"steps", "alpha", "beta"}}[recipe]
    given = {"steps": steps, "alpha": alpha, "fraction": fraction, "beta": beta}
    extra = sorted(k for k, v in given.items() if v is not None and k not in uses)
    if extra:
        raise ValueError(f"adversarial recipe {recipe!r} takes no {', '.join(extra)} "
                         f"(it uses: {', '.join(sorted(uses)) or 'eps only'})")
    spec: dict[str, Any] = {"recipe": recipe, "eps": eps}
    if recipe == "mix":
        spec["fraction"] = _number(0.3 if fraction is None else fraction,
                                   "adversarial fraction", 0.0, 1.0)
        spec["attack"] = "fgsm"
        return spec
    if recipe == "fast":
        spec["steps"] = 1
        spec["alpha"] = _number(1.25 * eps if alpha is None else alpha, "alpha", 0.0, 1.0)
        spec["guard"] = {"n": _steps(guard_n, "guard_n"), "steps": _steps(guard_steps,
                                                                          "guard_steps"),
                         "drop": _number(guard_drop, "guard_drop", 0.0, 1.0)}
    else:
        spec["steps"] = _steps(10 if steps is None else steps, "adversarial steps")
        spec["alpha"] = _number(2.5 * eps / spec["steps"] if alpha is None else alpha,
                                "alpha", 0.0, 1.0)
    if recipe == "trades":
        spec["beta"] = _number(6.0 if beta is None else beta, "TRADES beta", 0.0, 1e6)
    spec["attack"] = "pgd"
    spec["random_start"] = True
    return spec


def _fresh_seed(part: LocalBatch | None = None) -> int:
    """A seed for one attack call, drawn from the global RNG (which the trainer seeds per epoch),
    or under DDP from the one-process stream the trainer hands over in ``part``.

    Why not the attack's fixed seed: its random start would be the same noise for every batch.
    """
    return int(torch.randint(0, 2**62, (), generator=part.seeds if part is not None else None))


class _GlobalBatchPGD(PGD):
    """PGD on one rank's rows whose random start is the one-process start of those rows.

    The start is drawn for the whole global batch (``part.size`` rows) from the attack's
    generator and sliced to ``part.rows``: exactly the noise a single process draws for them.
    """

    part: LocalBatch

    def start_point(self, view: LogitsView, x: torch.Tensor, idx: torch.Tensor | None,
                    restart: int, gen: torch.Generator | None) -> torch.Tensor:
        if view.keys is not None or idx is not None or restart:  # not a training attack's
            return super().start_point(view, x, idx, restart, gen)
        rows = self.part.rows.to(x.device)
        full = x.new_zeros((self.part.size, *x.shape[1:]))
        full[rows] = x
        return random_start(full, self.eps, self.norm, gen)[rows]


def _pgd(spec: dict[str, Any], loss: Any = "ce", part: LocalBatch | None = None) -> PGD:
    args = (spec["eps"], spec["alpha"], spec["steps"])
    kw: dict[str, Any] = dict(random_start=True, early_stop=False, loss=loss, force_eval=True,
                              seed=_fresh_seed(part))
    if part is None:
        return PGD(*args, **kw)
    attack = _GlobalBatchPGD(*args, **kw)
    attack.part = part
    return attack


def pgd_batch_hook(spec: dict[str, Any]) -> BatchHook:
    """Replace every batch by PGD examples (``pgd``; ``fast`` is the one-step case).

    ``part`` (under DDP, from the trainer): this rank's rows of the global batch.
    """

    def hook(model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int,
             part: LocalBatch | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return _pgd(spec, part=part)(model, x, y, check=False).x_adv, y

    return hook


class TradesLoss:
    """TRADES: ``CE(f(x), y) + β · KL(softmax f(x) ‖ softmax f(x_adv))`` (batch mean).

    x_adv maximises the same KL from a random start in the ε-ball (the KL is exactly 0, with zero
    gradient, at x itself), crafted in eval mode against the clean prediction. Both terms are
    then computed in train mode and the gradient flows through both, as in Zhang et al.'s code.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.beta = float(spec["beta"])

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 part: LocalBatch | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # The clean prediction and the attack skip a DDP wrapper (no gradient to reduce);
        # the two forwards of the loss go through it.
        inner = unwrap(model)
        was_training = inner.training
        inner.eval()
        try:
            with torch.no_grad():
                p_clean = F.softmax(inner(x), dim=1)
        finally:
            inner.train(was_training)
        log_p = torch.log(p_clean.clamp_min(1e-12))

        def kl(z: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
            # early_stop=False and one restart: the rows of z are always the batch's rows.
            return (p_clean * (log_p - F.log_softmax(z, dim=1))).sum(1)

        x_adv = _pgd(self.spec, loss=kl, part=part)(inner, x, y, check=False).x_adv
        logits = model(x)
        robust = F.kl_div(F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1),
                          reduction="batchmean")
        return F.cross_entropy(logits, y) + self.beta * robust, logits


class OverfittingGuard:
    """Trainer callback: held-out PGD accuracy each epoch; keep the best, warn on a collapse.

    After each epoch's optimizer steps, PGD (``steps``, α = 2.5ε/steps, fixed seed: the same
    attack every epoch) runs on the first ``n`` held-out images. When the accuracy beats the
    best so far, the weights are kept in memory and, with an ``out_dir``, saved to
    ``out_dir/robust_best`` (its card's metrics hold ``robust_acc`` and ``epoch``; a resumed run
    reads the best back from there). When it falls more than ``drop`` below the best, the guard
    logs a warning naming the epochs (catastrophic overfitting), and also when it is more than
    ``gap`` below the epoch's accuracy on the training attack's examples; at the end of the run
    the best weights are restored if a drop was seen (``restore=True``).
    """

    def __init__(self, data: Any, eps: float, *, n: int = 256, steps: int = 10,
                 drop: float = 0.2, gap: float = 0.5, restore: bool = True) -> None:
        x, y = as_tensors(data, "guard data")
        self.x, self.y = x[:n], y[:n]
        self.attack = PGD(eps, None, steps, random_start=True, early_stop=True,
                          force_eval=True, seed=0)
        self.drop = drop
        self.gap = gap
        self.restore = restore
        self.best_acc: float | None = None
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.collapsed_epoch: int | None = None
        self.accs: dict[int, float] = {}

    def robust_accuracy(self, model: nn.Module) -> float:
        """PGD accuracy on the held-out batch (a sample counts if it is not broken)."""
        device = next(model.parameters()).device
        x, y = to_float(self.x.to(device)), self.y.to(device)
        return float((~self.attack(model, x, y).success).float().mean())

    def _dir(self, trainer: Trainer) -> Path | None:
        return trainer.out_dir / ROBUST_BEST if trainer.out_dir is not None else None

    def on_fit_start(self, trainer: Trainer) -> None:
        where = self._dir(trainer)
        if where is None or trainer.state.epoch == 0:
            return
        try:  # resumed: the best so far is on disk
            m = read_card(where).get("metrics") or {}
        except CheckpointError:
            return
        self.best_acc, self.best_epoch = m.get("robust_acc"), m.get("epoch")

    def on_train_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        acc = self.robust_accuracy(trainer.model)
        self.accs[epoch] = acc
        if self.best_acc is None or acc > self.best_acc:
            self.best_acc, self.best_epoch = acc, epoch
            self.best_state = copy.deepcopy(trainer.model.state_dict())
            where = self._dir(trainer) if trainer.writes else None  # rank 0 writes, under DDP
            if where is not None:
                save_checkpoint(where, trainer.model, epoch=epoch, config=trainer.config,
                                metrics={"robust_acc": acc, "epoch": epoch},
                                data=trainer.data_info)
        elif acc < self.best_acc - self.drop:
            if self.collapsed_epoch is None:
                self.collapsed_epoch = epoch
            _warn(trainer, "catastrophic overfitting: held-out PGD accuracy fell to %.1f%% in "
                  "epoch %d (best %.1f%% in epoch %d); the best model is kept%s and restored at "
                  "the end", 100 * acc, epoch, 100 * self.best_acc, self.best_epoch,
                  f" in {self._dir(trainer)}" if trainer.out_dir is not None else "")

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        acc = self.accs.get(epoch)
        record["robust_acc"] = acc
        train_acc = record.get("train_acc")
        # The other face of the collapse: it can happen before any epoch was good (no drop to
        # see), and then shows as high accuracy on the training attack's examples next to
        # near-zero PGD accuracy.
        if acc is not None and isinstance(train_acc, float) and train_acc - acc > self.gap:
            _warn(trainer, "catastrophic overfitting: held-out PGD accuracy %.1f%% in epoch %d "
                  "against %.1f%% on the training attack's examples; the model resists the "
                  "single-step attack only (try a smaller step, --adv-alpha, or --adv pgd)",
                  100 * acc, epoch, 100 * train_acc)

    def on_fit_end(self, trainer: Trainer, history: list[dict[str, Any]]) -> None:
        if not self.restore or self.collapsed_epoch is None:
            return
        if self.best_state is not None:
            trainer.model.load_state_dict(self.best_state)
        elif self._dir(trainer) is not None:
            load_weights(self._dir(trainer), trainer.model)
        _warn(trainer, "restored the weights of epoch %s (held-out PGD accuracy %.1f%%)",
              self.best_epoch, 100 * (self.best_acc or 0.0))


def _warn(trainer: Trainer, msg: str, *args: Any) -> None:
    """A warning from the process that writes (once per run, not once per DDP rank); without a
    trainer (a guard called directly) there is one process."""
    if getattr(trainer, "writes", True):
        log.warning(msg, *args)


def recipe_parts(spec: dict[str, Any], model: nn.Module, guard_data: Any = None
                 ) -> tuple[BatchHook | None, LossFn | None, list[Any]]:
    """(batch_hook, loss, callbacks) of a recipe spec (see :func:`adversarial_spec`)."""
    recipe = spec.get("recipe")
    if recipe == "mix":
        return fgsm_batch_hook(spec["fraction"], spec["eps"]), None, []
    if recipe == "pgd":
        return pgd_batch_hook(spec), None, []
    if recipe == "fast":
        g = spec["guard"]
        guard = [OverfittingGuard(guard_data, spec["eps"], n=g["n"], steps=g["steps"],
                                  drop=g["drop"])] if guard_data is not None else []
        return pgd_batch_hook(spec), None, guard
    if recipe in CERTIFIED_RECIPES:
        loss = CertifiedLoss(spec, model)
        return None, loss, [loss]
    if recipe == "trades":
        k = Trainer._num_classes(model)  # the trainer's reading of the class count
        if k is not None and k < 2:
            raise ValueError(f"TRADES needs a model with at least 2 outputs (its KL term compares "
                             f"class distributions), this one has {k}")
        return None, TradesLoss(spec), []
    raise ValueError(f"unknown adversarial training recipe {recipe!r}; "
                     f"choose from {', '.join(ADV_RECIPES)}")


def adversarial_train(model: nn.Module, train_data: Any, val_data: Any = None,
                      config: TrainConfig | None = None, *, out_dir: str | Path | None = None,
                      resume: bool = False, progress: bool = False,
                      callbacks: Any = (), dist: DistEnv | None = None
                      ) -> tuple[list[dict[str, Any]], Trainer]:
    """Train with the recipe in ``config.adv`` (a spec from :func:`adversarial_spec`).

    Fast AT's guard measures on ``val_data`` (the training data when there is none). Returns the
    history and the trainer (its callbacks hold the guard's figures). ``dist``: this process's
    place in a DDP run (see :class:`~robustact.train.Trainer`).
    """
    if config is None or not config.adv:
        raise ValueError("adversarial_train needs config.adv (see adversarial_spec)")
    spec = config.adv
    if spec.get("recipe") in CERTIFIED_RECIPES and dist is not None and dist.world_size > 1:
        raise ValueError(f"certified training ({spec['recipe']}) runs in one process: its bound "
                         "is computed outside DDP's gradient hooks")
    guard_data = val_data if val_data is not None else train_data
    hook, loss, extra = recipe_parts(spec, model, guard_data)
    trainer = Trainer(model, train_data, val_data, config, out_dir=out_dir, loss=loss,
                      batch_hook=hook, progress=progress, callbacks=[*extra, *callbacks],
                      dist=dist)
    return trainer.fit(resume=resume), trainer
