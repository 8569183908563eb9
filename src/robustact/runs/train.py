"""``robustact train`` as a library call: build a model, train it with a recipe, save it.

The run folder (``out``) goes through :func:`robustact.core.runfolder.open_run`: locked, a
finished model (``final/``) or an interrupted run (``train/last/``) refused unless ``resume``
or ``force``, ``--resume`` with nothing to resume said in one line, ``run.json`` recording how
the run ended, Ctrl-C turned into one line saying how to continue.

Under DDP (``dist``, see :mod:`robustact.train.distributed`) every rank calls
:func:`train_classifier` with the same arguments; rank 0 alone opens the run folder and tells the
others whether the run resumes (or the one line why it cannot start), trains with them, and
alone writes ``final/`` and ``results.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from robustact.core.runfolder import open_run
from robustact.core.storage import atomic_write_json, environment_info
from robustact.core.validate import resolve_device
from robustact.data import binary_task, fixed_subset, load_dataset, train_val_split
from robustact.defenses.output_activation import add_output_activation
from robustact.models import create_model
from robustact.models.predict import accuracy
from robustact.nn.bounded import check_temperature
from robustact.train import (
    CheckpointError,
    DistEnv,
    DistributedAbort,
    TrainConfig,
    Trainer,
    read_card,
    save_checkpoint,
    seeded,
)
from robustact.train.adversarial import adversarial_train
from robustact.train.recipes import differential_train

__all__ = ["TrainOutcome", "load_splits", "train_classifier", "MAX_TRAIN_TEMPERATURE"]

log = logging.getLogger(__name__)

#: Largest output-activation temperature :func:`train_classifier` trains at without ``force``.
#: Measured by experiments/outact_train_temperature.py (digits, SmallCNN, 3 epochs, SGD lr 0.05
#: and Adam lr 2e-3, four f): test accuracy > 50 % in 8/8 (f, optimizer) cells at T ≤ 2, 4/8 at
#: T = 20 (Adam only), 3/8 at T = 50 and 0/8 at T = 100, where the loss stays at ≈ 2.4. The
#: outputs saturate at initialisation and the gradient vanishes; the working protocol is train at
#: T = 1, then raise T on the trained model (``robustact defend``).
MAX_TRAIN_TEMPERATURE = 20.0
#: Above this a warning, not a refusal: SGD failed for tanh at T = 5 and for every f at T = 20.
WARN_TRAIN_TEMPERATURE = 5.0


@dataclass
class TrainOutcome:
    """What :func:`train_classifier` produced."""

    model: nn.Module
    history: list[dict[str, Any]]
    test_accuracy: float
    checkpoint: Path | None
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def load_splits(dataset: str, *, data_root: str | Path | None = None, val_fraction: float = 0.1,
                classes: tuple[str | int, str | int] | None = None, seed: int = 0,
                download: bool = False, n_train: int | None = None) -> tuple[Any, Any, Any]:
    """(train, val, test) ImageDatasets; ``classes`` keeps two classes relabelled 0/1;
    ``n_train``: a fixed subset of that many training images (after the validation split)."""
    train = load_dataset(dataset, "train", root=data_root, download=download)
    test = load_dataset(dataset, "test", root=data_root, download=download)
    if classes is not None:
        train, test = binary_task(train, classes), binary_task(test, classes)
    if val_fraction > 0:
        train, val = train_val_split(train, val_fraction=val_fraction, seed=seed)
    else:
        val = None
    return fixed_subset(train, n_train, seed), val, test


def _check_temperature(output_activation: str | None, temperature: float, force: bool) -> None:
    if output_activation is None or force:
        return
    t = check_temperature(temperature)
    if t > MAX_TRAIN_TEMPERATURE:
        raise ValueError(
            f"training with output activation {output_activation} at T = {t:g} does not "
            "learn (the outputs saturate at initialisation; the limit is T = "
            f"{MAX_TRAIN_TEMPERATURE:g}): train at T = 1, then raise T on the trained model "
            "with `robustact defend --output-activation ... --temperature ...` "
            "(or pass --force)")
    if t > WARN_TRAIN_TEMPERATURE:
        log.warning("training with an output activation at T = %g may not learn (on "
                    "digits SGD failed for every f at T = 20); the usual protocol is T = 1 "
                    "for training, then `robustact defend`", t)


def train_classifier(
    model_name: str,
    dataset: str,
    *,
    out_dir: str | Path | None,
    config: TrainConfig | None = None,
    activation: str = "relu",
    data_root: str | Path | None = None,
    val_fraction: float = 0.1,
    classes: tuple[str | int, str | int] | None = None,
    loss: str = "ce",
    output_activation: str | None = None,
    temperature: float = 1.0,
    resume: bool = False,
    progress: bool = True,
    model_kwargs: dict[str, Any] | None = None,
    n_train: int | None = None,
    force: bool = False,
    download: bool = False,
    command: str | None = None,
    dist: DistEnv | None = None,
) -> TrainOutcome:
    """Train ``model_name`` on ``dataset`` and save ``out_dir/final`` with its test accuracy.

    ``loss="differential"`` trains a two-class model (``classes``, default cat/dog) with the
    pairwise loss on balanced batches and sets the bias by the margin rule (papers.md §4);
    ``output_activation`` wraps the model in f(T·z) *before* training (papers.md §3). A temperature
    above :data:`MAX_TRAIN_TEMPERATURE` is refused unless ``force`` (it does not learn; train at
    T = 1 and raise T with ``robustact defend``). ``config.seed`` seeds everything random: the
    split, the initial weights, the batches. ``n_train``: train on a fixed subset of that many
    images (short runs: ``robustact reproduce --quick``). ``out_dir=None`` trains without
    writing anything. ``dist``: this process's place in a DDP run (process group joined); every
    rank calls this alike, ``out_dir`` must be one folder all ranks see (to resume), and a rank
    other than 0 raises :class:`~robustact.train.DistributedAbort` when rank 0 cannot start.
    """
    _check_temperature(output_activation, temperature, force)
    config = config if config is not None else TrainConfig()
    resolve_device(config.device)  # fail before loading data, not after
    if loss not in ("ce", "differential"):
        raise ValueError(f"loss must be 'ce' or 'differential', got {loss!r}")
    if loss == "differential" and config.adv:
        raise ValueError(f"adversarial training (--adv {config.adv['recipe']}) cannot be "
                         "combined with --loss differential: the pairwise loss and the margin "
                         "bias are fitted on clean data; train one or the other")
    settings = dict(model_name=model_name, dataset=dataset, activation=activation,
                    data_root=data_root, val_fraction=val_fraction, classes=classes, loss=loss,
                    output_activation=output_activation, temperature=temperature,
                    progress=progress, model_kwargs=model_kwargs, download=download,
                    n_train=n_train, dist=dist if dist is not None and dist.world_size > 1
                    else None)
    dist = settings["dist"]
    if out_dir is None:
        return _train(config=config, out_dir=None, resume=False, **settings)
    if dist is not None and not dist.is_main:
        return _follow(dist, Path(out_dir), settings)
    told = False  # whether the other ranks know how the run starts
    try:
        with open_run(out_dir, "train", what="training run",
                      markers={"final/card.json": "a trained model (final/)",
                               "train/last/card.json": "an unfinished training run "
                                                       "(train/last/)"},
                      resume_marker="train/last/card.json", resume=resume, force=force,
                      command=command, resume_hint="rerun with --resume to continue",
                      config={"model": model_name, "dataset": dataset,
                              **config.to_dict()}) as run:
            if run.resumed:
                config = _saved_recipe(Path(out_dir) / "train" / "last", config)
            told = True
            if dist is not None:
                dist.share((run.resumed, config.to_dict()))
            outcome = _train(config=config, out_dir=Path(out_dir), resume=run.resumed,
                             **settings)
            run.finish({"test_accuracy": outcome.test_accuracy,
                        "checkpoint": str(outcome.checkpoint), "epochs": len(outcome.history),
                        "seconds": outcome.seconds})
    except BaseException as e:
        if dist is not None and not told:  # the others wait to hear how the run starts
            dist.share(f"rank 0 could not start: {(str(e).splitlines() or [''])[0]}")
        raise
    return outcome


def _follow(dist: DistEnv, out_dir: Path, settings: dict[str, Any]) -> TrainOutcome:
    """A rank other than 0: train as rank 0 says (resumed or not, with which config)."""
    word = dist.share()
    if isinstance(word, str):
        raise DistributedAbort(word)
    resumed, config = word
    return _train(config=TrainConfig.from_dict(config), out_dir=out_dir, resume=resumed,
                  **settings)


def _train(model_name: str, dataset: str, *, out_dir: Path | None, config: TrainConfig,
           activation: str, data_root: str | Path | None, val_fraction: float,
           classes: tuple[str | int, str | int] | None, loss: str,
           output_activation: str | None, temperature: float, resume: bool, download: bool,
           progress: bool, model_kwargs: dict[str, Any] | None, n_train: int | None = None,
           dist: DistEnv | None = None) -> TrainOutcome:
    """:func:`train_classifier` after its checks, with ``out_dir`` locked (by rank 0)."""
    t0 = time.perf_counter()
    if loss == "differential" and classes is None:
        classes = ("cat", "dog")
    train, val, test = _load_splits_once(
        dist, download, dataset=dataset, data_root=data_root, val_fraction=val_fraction,
        classes=classes, seed=config.seed, n_train=n_train)
    with seeded(config.seed, "model"):  # the initial weights are part of the seeded run
        model = create_model(model_name, dataset=dataset, num_classes=train.num_classes,
                             activation=activation, **(model_kwargs or {}))
        if output_activation is not None:
            model = add_output_activation(model, output_activation, temperature)
    data_desc = {"dataset": dataset, "classes": list(train.classes), "n_train": len(train),
                 "n_val": len(val) if val is not None else 0, "n_test": len(test),
                 "val_fraction": val_fraction}
    run_dir = out_dir / "train" if out_dir is not None else None
    history, extra = _fit_recipe(model, train, val, config, loss=loss, run_dir=run_dir,
                                 resume=resume, progress=progress, dist=dist)
    model.eval()
    test_acc = accuracy(model, test)
    train_acc = accuracy(model, train)
    seconds = time.perf_counter() - t0
    ckpt = None
    metrics = {"test_accuracy": test_acc, "train_accuracy": train_acc,
               "val_accuracy": history[-1].get("val_acc") if history else None,
               "epochs": len(history), "seconds": seconds}
    if out_dir is not None and (dist is None or dist.is_main):
        ckpt = save_checkpoint(out_dir / "final", model, epoch=len(history), config=config,
                               metrics=metrics, history=history, data=data_desc,
                               extra={"loss": loss, **extra})
        atomic_write_json(out_dir / "results.json", {
            "model": model_name, "dataset": dataset, "activation": activation, "loss": loss,
            "output_activation": output_activation, "temperature": temperature,
            "data": data_desc, "metrics": metrics, "extra": extra,
            "config": config.to_dict(), "environment": environment_info(),
        })
    if dist is not None:  # the run ends for all ranks once final/ is written
        dist.barrier()
    return TrainOutcome(model, history, test_acc, ckpt, seconds, {"train_accuracy": train_acc,
                                                                   **extra})


def _load_splits_once(dist: DistEnv | None, download: bool, **kw: Any) -> tuple[Any, Any, Any]:
    """:func:`load_splits`; under DDP with ``download``, each node's local rank 0 fetches while
    the others wait (one writer per data folder; the files are replaced atomically)."""
    if dist is None or not download:
        return load_splits(download=download, **kw)
    if dist.local_rank == 0:
        splits = load_splits(download=True, **kw)
        dist.barrier()
        return splits
    dist.barrier()
    return load_splits(download=False, **kw)


def _fit_recipe(model: nn.Module, train: Any, val: Any, config: TrainConfig, *, loss: str,
                run_dir: Path | None, resume: bool, progress: bool, dist: DistEnv | None = None
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train with the run's recipe (differential, adversarial or plain); returns the history and
    what the card should record about the recipe (and, under DDP, the processes)."""
    ran = ({"distributed": {"world_size": dist.world_size, "backend": dist.backend}}
           if dist is not None else {})
    if loss == "differential":
        history, bias_info = differential_train(model, train, val, config, out_dir=run_dir,
                                                resume=resume, progress=progress, dist=dist)
        return history, {"bias": bias_info, **ran}
    if config.adv:
        history, _ = adversarial_train(model, train, val, config, out_dir=run_dir,
                                       resume=resume, progress=progress, dist=dist)
        return history, {"adv": config.adv, **ran}
    trainer = Trainer(model, train, val, config, out_dir=run_dir, progress=progress, dist=dist)
    return trainer.fit(resume=resume), ran


def _saved_recipe(last: Path, config: TrainConfig) -> TrainConfig:
    """``config`` with the adversarial recipe and weight averaging of an interrupted run's
    card, where ``config`` leaves them unset.

    Why: ``train --resume`` without repeating ``--adv ...`` or ``--ema`` must continue the same
    run (the card records both), not silently switch to plain training.
    """
    try:
        saved = read_card(last).get("train") or {}
    except CheckpointError:
        return config
    taken = {k: saved[k] for k in ("adv", "ema")
             if getattr(config, k) is None and saved.get(k) is not None}
    if taken:
        log.info("resuming with the run's %s", ", ".join(f"{k}={v}" for k, v in taken.items()))
        return dataclasses.replace(config, **taken)
    return config
