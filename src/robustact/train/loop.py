"""The training loop: one loop for every recipe of the papers, with seams where they differ.

Extension points (so new recipes slot in without touching the loop):

- ``loss(model, x, y) -> (loss, logits_or_None)``: cross-entropy by default; differential
  training (:class:`robustact.losses.differential.DifferentialLoss`) plugs in here. ``model`` is
  the module the forward should go through (the wrapped one under DDP).
- ``batch_hook(model, x, y, step) -> (x, y)``: rewrites each batch before the forward, e.g. the
  FGSM replacement of the JumpReLU paper's robust variants
  (:func:`robustact.train.recipes.fgsm_batch_hook`). ``model`` is the unwrapped module;
  ``step`` the global optimizer step.
- ``wrap_model(model) -> module``: e.g. DistributedDataParallel with options of one's own. The
  trainer keeps the unwrapped module for checkpoints, hooks and validation.
- ``dist``: a :class:`~robustact.train.distributed.DistEnv` (process group joined) trains this
  process's share of a multi-process run: the model in DDP (unless ``wrap_model`` says
  otherwise), rank ``r`` of ``W`` on rows ``r, r + W, …`` of the global batches one process
  would draw, validation split over the ranks and summed, ``out_dir`` read by every rank (to
  resume) and written by rank 0 only. A hook or loss that takes a ``part`` keyword gets the
  :class:`~robustact.train.distributed.LocalBatch` (the PGD and FGSM recipes use it to treat
  their rows as one process treats the global batch). See :mod:`robustact.train.distributed`
  for what is and is not identical to one process.
- ``callbacks``: objects with any of ``on_fit_start(trainer)``, ``on_epoch_start(trainer,
  epoch)``, ``on_train_epoch_end(trainer, epoch)`` (after the optimizer steps, before validation
  and checkpointing, so a callback may adjust the model, e.g. set a bias), ``on_epoch_end(trainer,
  epoch, record)`` (after the checkpoint) and ``on_fit_end(trainer, history)``. With a weight
  average (``TrainConfig.ema``, :mod:`robustact.train.averaging`) the two epoch-end hooks,
  validation and the checkpoints see the average, and ``fit`` hands it back.

Determinism (CPU): epoch ``e`` (1-based) draws its shuffle order, its augmentation and, via
``torch.manual_seed`` inside ``torch.random.fork_rng``, every global-RNG consumer (dropout) from
seeds derived from ``(seed, e)``. An epoch is therefore a pure function of the weights and
optimizer state at its start, so a run resumed from the epoch-``k`` checkpoint ends with
bit-identical weights, and the caller's global RNG state is left as it was. On CUDA the same
seeding applies but cuDNN/atomics may still be non-deterministic. Under DDP the global RNG of
rank ``r`` is seeded from ``(seed, e, r)`` instead (independent dropout masks per rank), and
the one-process stream goes to the training attacks' seeds (``LocalBatch.seeds``).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from robustact.checkpoint import (
    CheckpointError,
    load_checkpoint_tensors,
    load_training_state,
    read_card,
    resolve_checkpoint,
    save_checkpoint,
)
from robustact.core.validate import check_labels, resolve_device
from robustact.models.predict import correct_untied, predict
from robustact.train.augment import get_augmentation
from robustact.train.averaging import WeightAverage
from robustact.train.batches import (
    as_tensors,
    balanced_batches,
    balanced_layout,
    derive_seed,
    to_float,
)
from robustact.train.config import TRAJECTORY_FIELDS, TrainConfig, TrainingDivergedError
from robustact.train.distributed import DistEnv, LocalBatch
from robustact.train.schedules import LRSchedule

__all__ = ["BatchHook", "Callback", "LossFn", "Trainer", "cross_entropy_loss"]

log = logging.getLogger("robustact.train")

#: the tensor set of a ``last`` checkpoint that holds the optimizer's (raw) weights when the
#: model file holds their average (``TrainConfig.ema``)
RAW_WEIGHTS = "train_weights"

#: ``loss(model, x, y) -> (loss, logits or None)``
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor],
                  tuple[torch.Tensor, "torch.Tensor | None"]]
#: ``batch_hook(model, x, y, step) -> (x, y)``
BatchHook = Callable[[nn.Module, torch.Tensor, torch.Tensor, int],
                     tuple[torch.Tensor, torch.Tensor]]


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The default loss: mean cross-entropy of the model's logits."""
    logits = model(x)
    return F.cross_entropy(logits, y), logits


class Callback:
    """Optional base class for trainer callbacks: override any subset of these no-ops.

    Callbacks need not inherit from it; the trainer calls whichever of these methods exist.
    """

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...

    def on_train_epoch_end(self, trainer: Trainer, epoch: int) -> None: ...

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None: ...

    def on_fit_end(self, trainer: Trainer, history: list[dict[str, Any]]) -> None: ...


# --- the trainer ---------------------------------------------------------------------------------

@dataclass
class _Progress:
    epoch: int = 0  # epochs completed
    global_step: int = 0
    best_val_acc: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Train ``model`` on ``train_data`` with ``config``; see the module docstring.

    ``out_dir`` receives ``last/`` (every ``checkpoint_every`` epochs and at the end) and
    ``best/`` (best validation accuracy so far; needs ``val_data``). Without ``out_dir`` nothing
    is written and ``fit(resume=True)`` is an error. With ``dist`` (several processes) every
    rank reads ``out_dir`` and rank 0 alone writes it, logs and shows progress (``writes``).
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: Any,
        val_data: Any = None,
        config: TrainConfig | None = None,
        out_dir: str | Path | None = None,
        loss: LossFn | None = None,
        batch_hook: BatchHook | None = None,
        wrap_model: Callable[[nn.Module], nn.Module] | None = None,
        progress: bool = True,
        callbacks: Iterable[Any] = (),
        dist: DistEnv | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.config = config if config is not None else TrainConfig()
        if not isinstance(self.config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(self.config).__name__}")
        self.dist = self._check_dist(dist, self.config)
        #: whether this process writes checkpoints, logs and progress (rank 0, or the only one)
        self.writes = self.dist is None or self.dist.is_main
        self.device = (dist.device if dist is not None
                       else self._resolve_device(self.config.device))
        self.train_x, self.train_y = as_tensors(train_data, "train_data")
        self.val = as_tensors(val_data, "val_data") if val_data is not None else None
        num_classes = self._num_classes(model)
        if num_classes is not None:
            check_labels(self.train_y, self.train_x.shape[0], num_classes, "train_data labels")
            if self.val is not None:
                check_labels(self.val[1], self.val[0].shape[0], num_classes, "val_data labels")
        self.data_info = self._describe(train_data, self.train_x, self.val)
        self.model = model.to(self.device)
        if wrap_model is None and self.dist is not None:
            wrap_model = self.dist.wrap
        self.net = wrap_model(self.model) if wrap_model is not None else self.model
        if self.device.type == "cuda":  # keep the (usually uint8) data on the GPU once
            self.train_x, self.train_y = self.train_x.to(self.device), self.train_y.to(self.device)
            if self.val is not None:
                self.val = (self.val[0].to(self.device), self.val[1].to(self.device))
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.loss_fn: LossFn = loss if loss is not None else cross_entropy_loss
        self.batch_hook = batch_hook
        # which of them want this rank's LocalBatch (the ``part`` keyword) under DDP
        self._parts = (_takes_part(batch_hook), _takes_part(self.loss_fn))
        self.progress = progress and self.writes
        self.callbacks = list(callbacks)
        self.augment = get_augmentation(self.config.augment)
        cfg = self.config
        n = self.train_x.shape[0]
        self.steps_per_epoch = (balanced_layout(self.train_y, cfg.batch_size)[2]
                                if cfg.balanced else math.ceil(n / cfg.batch_size))
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        if cfg.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                nesterov=cfg.nesterov)
        else:
            self.optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                              betas=cfg.betas)
        self.scheduler = LRSchedule(
            self.optimizer, lr=cfg.lr, epochs=cfg.epochs, steps_per_epoch=self.steps_per_epoch,
            schedule=cfg.schedule, milestones=cfg.milestones, gamma=cfg.gamma,
            warmup_epochs=cfg.warmup_epochs)
        self.state = _Progress()
        #: the weight average (``config.ema``); made by ``fit``, from the checkpoint on resume
        self.average: WeightAverage | None = None

    # -- helpers --------------------------------------------------------------------------------
    @staticmethod
    def _resolve_device(spec: str) -> torch.device:
        return resolve_device(spec, "TrainConfig.device")

    @staticmethod
    def _check_dist(dist: DistEnv | None, cfg: TrainConfig) -> DistEnv | None:
        """``dist`` when it spans several processes (else None: one process), checked."""
        if dist is None:
            return None
        if not isinstance(dist, DistEnv):
            raise TypeError(f"dist must be a DistEnv, got {type(dist).__name__}")
        if dist.world_size == 1:
            return None
        if cfg.batch_size % dist.world_size:
            raise ValueError(f"batch_size {cfg.batch_size} (the global batch) must be divisible "
                             f"by the {dist.world_size} processes, so each gets an equal share")
        dist.check_ready()
        return dist

    @staticmethod
    def _num_classes(model: nn.Module) -> int | None:
        k = getattr(model, "num_classes", None)
        if isinstance(k, int):
            return k
        head = getattr(model, "head", None)
        return head.out_features if isinstance(head, nn.Linear) else None

    @staticmethod
    def _describe(train_data: Any, x: torch.Tensor,
                  val: tuple[torch.Tensor, torch.Tensor] | None) -> dict[str, Any]:
        info: dict[str, Any] = {"n_train": int(x.shape[0]), "image_shape": list(x.shape[1:]),
                                "dtype": str(x.dtype).replace("torch.", "")}
        for attr in ("name", "split"):
            v = getattr(train_data, attr, None)
            if isinstance(v, (str, int)):
                info[attr] = v
        if isinstance(info.get("name"), str):  # the key `robustact evaluate`/`predict` read
            info["dataset"] = info["name"]
        if val is not None:
            info["n_val"] = int(val[0].shape[0])
        return info

    def _call(self, method: str, *args: Any) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, method, None)
            if fn is not None:
                fn(self, *args)

    def _rng_devices(self) -> list[int]:
        if self.device.type != "cuda":
            return []
        if self.dist is not None:  # touching the other GPUs' RNGs would open a context on each
            return [self.device.index]
        return list(range(torch.cuda.device_count()))

    def _info(self, msg: str, *args: Any) -> None:
        """Log on the process that writes (one line per run, not one per rank)."""
        if self.writes:
            log.info(msg, *args)

    # -- epochs ---------------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch (1-based ``epoch``); runs inside the caller's ``fork_rng``."""
        cfg = self.config
        seeds = self._seed_epoch(epoch)
        g_shuffle = torch.Generator().manual_seed(derive_seed(cfg.seed, epoch, "shuffle"))
        g_aug = torch.Generator().manual_seed(derive_seed(cfg.seed, epoch, "augment"))
        labels_cpu = self.train_y.cpu()
        if cfg.balanced:
            batches = balanced_batches(labels_cpu, cfg.batch_size, g_shuffle)
        else:
            batches = list(torch.randperm(labels_cpu.numel(), generator=g_shuffle)
                           .split(cfg.batch_size))
        self.net.train()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        seen = counted = 0
        first_lr = None
        totals = (0.0, 0, 0.0, 0)
        bar = _bar(len(batches), f"epoch {epoch}/{cfg.epochs}", self.progress)
        try:
            for step, idx in enumerate(batches):
                lr = self.scheduler.apply(epoch - 1, step)
                first_lr = lr if first_lr is None else first_lr
                loss, logits, y, n = self._step(idx, g_aug, seeds)
                if n:
                    loss_sum += loss.detach().double() * n
                    seen += n
                    if logits is not None:
                        correct += correct_untied(logits.detach(), y).sum()
                        counted += n
                if (step + 1) % cfg.log_every == 0 or step + 1 == len(batches):
                    # Checked here, not every step, to avoid a device sync per step (and under
                    # DDP on the sums over all ranks, so that every rank stops together).
                    totals = self._totals(loss_sum, seen, correct, counted)
                    if not math.isfinite(totals[0]):
                        raise self._diverged(epoch, step, len(batches), lr)
                    post = {"loss": f"{totals[0] / totals[1]:.4f}"}
                    if totals[3]:
                        post["acc"] = f"{totals[2] / totals[3]:.4f}"
                    bar.set_postfix(post, refresh=False)
                bar.update(1)
        finally:
            bar.close()
        return {
            "train_loss": totals[0] / totals[1],
            "train_acc": totals[2] / totals[3] if totals[3] else float("nan"),
            "lr": float(first_lr if first_lr is not None else 0.0),
        }

    def _seed_epoch(self, epoch: int) -> torch.Generator | None:
        """Seed the global RNG for epoch ``epoch``; under DDP, also return the one-process
        stream for the training attacks' seeds.

        Why per rank under DDP: with one seed for all ranks each rank's i-th sample would get
        the same dropout mask. The attacks' seeds still follow one process's global RNG (what
        ``LocalBatch.seeds`` carries), so adversarial examples match a one-process run.
        """
        one_process = derive_seed(self.config.seed, epoch, "global")
        if self.dist is None:
            torch.manual_seed(one_process)
            return None
        torch.manual_seed(derive_seed(self.config.seed, epoch, f"global/rank{self.dist.rank}"))
        return torch.Generator().manual_seed(one_process)

    def _local_batch(self, idx: torch.Tensor, g_aug: torch.Generator,
                     seeds: torch.Generator | None
                     ) -> tuple[torch.Tensor, torch.Tensor, LocalBatch | None]:
        """(x, y, part) of global batch ``idx``: all of it, or under DDP this rank's rows."""
        idx = idx.to(self.train_x.device)
        if self.dist is None or seeds is None:
            x = to_float(self.train_x[idx])
            if self.augment is not None:
                x = self.augment(x, g_aug)
            return x, self.train_y[idx], None
        part = self.dist.part(idx.numel(), seeds)
        rows = part.rows.to(idx.device)
        if self.augment is not None:  # drawn for the global batch, so a sample is cropped as
            x = self.augment(to_float(self.train_x[idx]), g_aug)[rows]  # in one process
        else:
            x = to_float(self.train_x[idx[rows]])
        return x, self.train_y[idx[rows]], part

    def _step(self, idx: torch.Tensor, g_aug: torch.Generator, seeds: torch.Generator | None
              ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, int]:
        """One optimizer step on global batch ``idx``; (loss, logits, y, samples to count)."""
        x, y, part = self._local_batch(idx, g_aug, seeds)
        given = {"part": part} if part is not None else {}
        if self.batch_hook is not None:
            x, y = self.batch_hook(self.model, x, y, self.state.global_step,
                                   **(given if self._parts[0] else {}))
        self.optimizer.zero_grad(set_to_none=True)
        loss, logits = self.loss_fn(self.net, x, y, **(given if self._parts[1] else {}))
        # DDP averages the ranks' gradients: weighting each rank's mean by its share of the
        # global batch makes that average the one-process gradient (weight 1 when shares match)
        (loss if part is None or part.weight == 1.0 else loss * part.weight).backward()
        self.optimizer.step()
        if self.average is not None:
            self.average.update(self.model)
        self.state.global_step += 1
        return loss, logits, y, (y.shape[0] if part is None else part.samples)

    def _totals(self, loss_sum: torch.Tensor, seen: int, correct: torch.Tensor, counted: int
                ) -> tuple[float, int, float, int]:
        """(loss sum, samples, correct, samples with logits) so far, over all ranks."""
        if self.dist is None:
            return float(loss_sum), seen, float(correct), counted
        local = torch.zeros(4, dtype=torch.float64, device=loss_sum.device)
        local[0], local[1], local[2], local[3] = loss_sum, seen, correct, counted
        t = self.dist.sum(local).tolist()
        return t[0], int(t[1]), t[2], int(t[3])

    def _diverged(self, epoch: int, step: int, steps: int, lr: float) -> TrainingDivergedError:
        """The one-line error for a NaN/inf loss: where, at which rate, and what to change.

        Raised before the epoch's checkpoints are written, so those on disk stay the last good
        ones; the message says so, since a user's next question is whether the run is lost.
        """
        kept = (f"; checkpoints in {self.out_dir} are kept from before this epoch"
                if self.out_dir is not None else "")
        return TrainingDivergedError(
            f"training diverged: non-finite loss in epoch {epoch} by step {step + 1} of {steps} "
            f"(learning rate {lr:.3g}); lower the learning rate (--lr){kept}")

    def evaluate(self, data: Any = None) -> dict[str, float]:
        """Cross-entropy loss and accuracy in eval mode (on the validation data by default).

        The accuracy is :func:`robustact.models.predict.predict`'s (a tied top output is not
        correct), so the number training logs is the one ``robustact evaluate`` reports. The
        loss is cross-entropy of the logits whatever the training loss: a pairwise loss needs
        both classes in every batch, which unbalanced validation batches do not guarantee.
        Under DDP every rank must call it: each predicts on its rows (``r, r + W, …``, on the
        unwrapped model) and the sums are added up, so every rank gets the one-process numbers.
        """
        if data is None:
            if self.val is None:
                raise ValueError("no validation data: pass val_data to the Trainer or data here")
            x_all, y_all = self.val
        else:
            x_all, y_all = as_tensors(data, "data")
        if self.dist is None:
            loss_sum, correct, n = self._predict_sums(self.net, x_all, y_all)
            return {"loss": loss_sum / n, "acc": correct / n}
        rows = self.dist.rows(x_all.shape[0]).to(x_all.device)
        local = (self._predict_sums(self.model, x_all[rows], y_all[rows]) if rows.numel()
                 else (0.0, 0, 0))
        loss_sum, correct, n = self.dist.sum(torch.tensor(local, dtype=torch.float64)).tolist()
        return {"loss": loss_sum / n, "acc": correct / n}

    def _predict_sums(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor
                      ) -> tuple[float, int, int]:
        """(cross-entropy sum, correct, samples) of ``net`` in eval mode on ``(x, y)``."""
        loss_sum = 0.0

        def add_loss(logits: torch.Tensor, yb: torch.Tensor | None) -> None:
            nonlocal loss_sum
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))

        was_training = net.training
        net.eval()
        try:
            p = predict(net, (x, y), batch_size=self.config.eval_batch_size,
                        device=self.device, on_batch=add_loss)
        finally:
            net.train(was_training)
        return loss_sum, p.n_correct, p.n

    # -- checkpoints ----------------------------------------------------------------------------
    def _save(self, name: str, record: dict[str, Any], with_optimizer: bool) -> None:
        assert self.out_dir is not None
        s = self.state
        save_checkpoint(
            self.out_dir / name, self.model,
            self.optimizer if with_optimizer else None,
            self.scheduler if with_optimizer else None,
            epoch=s.epoch, config=self.config, metrics=record, history=s.history,
            data=self.data_info,
            extra={"trainer": {"global_step": s.global_step, "best_val_acc": s.best_val_acc,
                               "best_epoch": s.best_epoch}},
            # with an average in place the model file holds it; resume needs the raw weights
            tensors=({RAW_WEIGHTS: self.average.raw}
                     if with_optimizer and self.average is not None and self.average.raw
                     else None),
        )

    def _judged(self) -> contextlib.AbstractContextManager[Any]:
        """The weights that are validated, saved and handed out: the average when there is
        one (see :mod:`robustact.train.averaging`), else the trained weights themselves."""
        if self.average is None:
            return contextlib.nullcontext()
        return self.average.applied(self.model)

    def _resume(self) -> None:
        if self.out_dir is None:
            raise ValueError("fit(resume=True) needs out_dir (where the checkpoints are)")
        last = self.out_dir / "last"
        try:
            resolve_checkpoint(last)
        except CheckpointError:
            self._info("no checkpoint in %s: starting from scratch", last)
            return
        saved = (read_card(last).get("train") or {})
        mine = self.config.to_dict()
        diff = [f"{k}: saved {saved.get(k)!r} vs now {mine[k]!r}" for k in TRAJECTORY_FIELDS
                if k in saved and saved[k] != mine[k]]
        if diff:
            raise ValueError("cannot resume: the training config differs from the checkpoint's ("
                             + "; ".join(diff) + ")")
        card = load_training_state(last, self.model, self.optimizer, self.scheduler)
        t = (card.get("extra") or {}).get("trainer") or {}
        if self.config.ema is not None:  # the model file held the average: raw weights back
            self.average = WeightAverage(self.model, self.config.ema,
                                         updates=int(t.get("global_step", 0)))
            self.model.load_state_dict(load_checkpoint_tensors(last, RAW_WEIGHTS,
                                                               device=self.device))
        self.state = _Progress(
            epoch=int(card["epoch"]), global_step=int(t.get("global_step", 0)),
            best_val_acc=t.get("best_val_acc"), best_epoch=t.get("best_epoch"),
            history=[dict(h) for h in card.get("history") or []])
        self._info("resumed from %s at epoch %d", last, self.state.epoch)

    # -- main loop ------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> list[dict[str, Any]]:
        """Train to ``config.epochs``; returns the per-epoch history (resumed runs included).

        Each record: epoch, train_loss, train_acc, val_loss, val_acc (None without val_data), lr
        (the rate of the epoch's first step), seconds. The model is left in eval mode.
        """
        cfg = self.config
        self.state, self.average = _Progress(), None
        if resume:
            self._resume()
        if self.dist is not None:  # e.g. a run folder that only rank 0's node can see
            self.dist.agree(self.state.epoch, "the epoch to resume from")
        if cfg.ema is not None and self.average is None:  # a fresh run (or nothing to resume)
            self.average = WeightAverage(self.model, cfg.ema)
        self._call("on_fit_start")
        for epoch in range(self.state.epoch + 1, cfg.epochs + 1):
            t0 = time.perf_counter()
            with torch.random.fork_rng(devices=self._rng_devices()):
                self._call("on_epoch_start", epoch)
                train = self._train_epoch(epoch)
                self._sync_buffers()
                with self._judged():
                    self._call("on_train_epoch_end", epoch)
            with self._judged():
                self._end_epoch(epoch, train, t0)
        if self.average is not None:
            self.average.copy_to(self.model)
        self._call("on_fit_end", self.state.history)
        self.net.eval()  # hand back a model ready for evaluation and attacks
        return list(self.state.history)

    def _end_epoch(self, epoch: int, train: dict[str, float], t0: float) -> None:
        """Validate, record, checkpoint and tell the callbacks (with the judged weights)."""
        cfg = self.config
        val = self.evaluate() if self.val is not None else None
        record = {
            "epoch": epoch, **train,
            "val_loss": val["loss"] if val else None,
            "val_acc": val["acc"] if val else None,
            "seconds": time.perf_counter() - t0,
        }
        s = self.state
        s.epoch = epoch
        s.history.append(record)
        improved = val is not None and (
            s.best_val_acc is None or val["acc"] > s.best_val_acc)
        if improved:
            s.best_val_acc, s.best_epoch = val["acc"], epoch
        if self.out_dir is not None and self.writes:
            if improved:
                self._save("best", record, with_optimizer=False)
            if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs:
                self._save("last", record, with_optimizer=True)
        if self.dist is not None:  # no rank runs ahead of a checkpoint being written
            self.dist.barrier()
        self._info("epoch %d/%d %s", epoch, cfg.epochs,
                   " ".join(f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float)))
        self._call("on_epoch_end", epoch, record)

    def _sync_buffers(self) -> None:
        """Under DDP, give every rank rank 0's buffers (batch-norm running statistics, also
        in the weight average), which each rank updated from its own rows.

        Why: validation is split over the ranks and the checkpoint is rank 0's; both must see
        one model.
        """
        if self.dist is None:
            return
        named = list(self.model.named_buffers())
        tensors = [b for _, b in named]
        if self.average is not None:
            tensors += [self.average.shadow[k] for k, _ in named if k in self.average.shadow]
        self.dist.broadcast_tensors(tensors)


def _takes_part(fn: Callable[..., Any] | None) -> bool:
    """Whether a hook or loss takes the ``part`` keyword (this rank's :class:`LocalBatch`)."""
    if fn is None:
        return False
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    return any(p.name == "part" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


class _NoBar:
    def set_postfix(self, *a: Any, **k: Any) -> None: ...
    def update(self, n: int = 1) -> None: ...
    def close(self) -> None: ...


def _bar(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="batch", dynamic_ncols=True)
