"""High-level workflows: the library calls behind each CLI command.

Why a module of its own: the CLI should only parse arguments and print. Everything a command
does (load data, build the model, train, evaluate, write files) lives here as plain functions
with typed arguments, so notebooks and scripts get exactly what the CLI does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from robustact.attacks import verify, with_bpda
from robustact.attacks.registry import create_attack, default_budget, resolve_attack
from robustact.core.runlock import RunLock, refuse_finished
from robustact.core.storage import atomic_write_json, environment_info, read_json, save_tensors
from robustact.core.validate import (
    check_eval_mode,
    check_model_output,
    check_positive_int,
    match_model_dtype,
    resolve_device,
)
from robustact.data import binary_task, load_dataset, train_val_split
from robustact.defenses import paper_kappa_grid, retrofit_jumprelu, tune_jumprelu
from robustact.defenses.output_activation import OutputActivationModel, add_output_activation
from robustact.evaluate import evaluate, get_protocol, summarize
from robustact.evaluate.audit import run_audit
from robustact.modelfile import load_model_file, parse_model_spec
from robustact.models import create_model
from robustact.nn.bounded import check_temperature
from robustact.report import write_reports
from robustact.train import (
    CheckpointError,
    TrainConfig,
    Trainer,
    as_tensors,
    load_checkpoint,
    read_card,
    save_checkpoint,
    seeded,
)
from robustact.train.adversarial import adversarial_train
from robustact.train.recipes import differential_train

__all__ = [
    "TrainOutcome",
    "load_splits",
    "accuracy",
    "train_classifier",
    "evaluate_checkpoint",
    "defend_checkpoint",
    "default_attack_out",
    "default_run_out",
    "checkpoint_run_name",
    "EvaluationTarget",
    "load_evaluation_target",
    "evaluate_model",
    "evaluation_summary",
    "check_budget",
    "MAX_TRAIN_TEMPERATURE",
]

log = logging.getLogger(__name__)

#: Largest output-activation temperature :func:`train_classifier` trains at without ``force``.
#: Measured by experiments/outact_train_temperature.py (digits, SmallCNN, 3 epochs, SGD lr 0.05
#: and Adam lr 2e-3, four f): test accuracy > 50 % in 8/8 (f, optimizer) cells at T ≤ 2, 4/8 at
#: T = 20 (Adam only), 3/8 at T = 50 and 0/8 at T = 100, where the loss stays at ≈ 2.4. The
#: outputs saturate at initialisation and the gradient vanishes; the working protocol is train at
#: T = 1, then raise T on the trained model (:func:`defend_checkpoint`).
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
                download: bool = False) -> tuple[Any, Any, Any]:
    """(train, val, test) ImageDatasets; ``classes`` keeps two classes relabelled 0/1."""
    train = load_dataset(dataset, "train", root=data_root, download=download)
    test = load_dataset(dataset, "test", root=data_root, download=download)
    if classes is not None:
        train, test = binary_task(train, classes), binary_task(test, classes)
    if val_fraction > 0:
        train, val = train_val_split(train, val_fraction=val_fraction, seed=seed)
    else:
        val = None
    return train, val, test


@torch.no_grad()
def accuracy(model: nn.Module, data: Any, batch_size: int = 500,
             device: str | torch.device | None = None) -> float:
    """Clean accuracy (in [0, 1]) of a model in eval mode on an ImageDataset or (x, y)."""
    check_eval_mode(model, "measuring accuracy")
    check_positive_int(batch_size, "batch_size")
    x, y = as_tensors(data, "data")
    device = device or next(model.parameters()).device
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size].to(device)
        xb = match_model_dtype(model, xb.float() / 255 if xb.dtype == torch.uint8 else xb)
        z = check_model_output(model(xb))
        correct += int((z.argmax(1).cpu() == y[i:i + batch_size]).sum())
    return correct / max(1, x.shape[0])


def train_classifier(
    model_name: str,
    dataset: str,
    *,
    out_dir: str | Path | None,
    config: Any = None,
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
    force: bool = False,
    download: bool = False,
) -> TrainOutcome:
    """Train ``model_name`` on ``dataset`` and save ``out_dir/final`` with its test accuracy.

    ``loss="differential"`` trains a two-class model (``classes``, default cat/dog) with the
    pairwise loss on balanced batches and sets the bias by the margin rule (papers.md §4);
    ``output_activation`` wraps the model in f(T·z) *before* training (papers.md §3). A temperature
    above :data:`MAX_TRAIN_TEMPERATURE` is refused unless ``force`` (it does not learn; train at
    T = 1 and raise T with :func:`defend_checkpoint`).

    ``out_dir`` is locked for the whole run (a concurrent run into it fails at once), and a run
    folder that already holds a model (``final/``, or ``train/last`` of an interrupted run) is
    refused unless ``resume`` (continue it) or ``force`` (start over and replace it).
    ``download=True`` fetches missing dataset files into the data root.
    ``config.seed`` seeds everything random: the split, the initial weights, the batches.
    """
    if output_activation is not None and not force:
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
    if out_dir is None:
        lock: Any = contextlib.nullcontext()
    else:
        lock = RunLock(out_dir, "training run")
    with lock:
        if out_dir is not None and not resume:
            hint = "pass --resume to continue it, "
            refuse_finished(out_dir, "final/card.json", "a trained model (final/)",
                            force=force, hint=hint)
            refuse_finished(out_dir, "train/last/card.json",
                            "an unfinished training run (train/last/)", force=force, hint=hint)
        return _train_classifier(model_name, dataset, out_dir=out_dir, config=config,
                                 activation=activation, data_root=data_root,
                                 val_fraction=val_fraction, classes=classes, loss=loss,
                                 output_activation=output_activation, temperature=temperature,
                                 resume=resume, progress=progress, model_kwargs=model_kwargs,
                                 download=download)


def _train_classifier(
    model_name: str,
    dataset: str,
    *,
    out_dir: str | Path | None,
    config: Any,
    activation: str,
    data_root: str | Path | None,
    val_fraction: float,
    classes: tuple[str | int, str | int] | None,
    loss: str,
    output_activation: str | None,
    temperature: float,
    resume: bool,
    download: bool,
    progress: bool,
    model_kwargs: dict[str, Any] | None,
) -> TrainOutcome:
    """:func:`train_classifier` after its checks, with ``out_dir`` locked."""
    t0 = time.perf_counter()
    config = config if config is not None else TrainConfig()
    resolve_device(config.device)  # fail before loading data, not after
    if loss not in ("ce", "differential"):
        raise ValueError(f"loss must be 'ce' or 'differential', got {loss!r}")
    if loss == "differential" and config.adv:
        raise ValueError(f"adversarial training (--adv {config.adv['recipe']}) cannot be "
                         "combined with --loss differential: the pairwise loss and the margin "
                         "bias are fitted on clean data; train one or the other")
    if resume and out_dir is not None:
        config = _saved_recipe(Path(out_dir) / "train" / "last", config)
    if loss == "differential" and classes is None:
        classes = ("cat", "dog")
    train, val, test = load_splits(dataset, data_root=data_root, val_fraction=val_fraction,
                                   classes=classes, seed=config.seed, download=download)
    with seeded(config.seed, "model"):  # the initial weights are part of the seeded run
        model = create_model(model_name, dataset=dataset, num_classes=train.num_classes,
                             activation=activation, **(model_kwargs or {}))
        if output_activation is not None:
            model = add_output_activation(model, output_activation, temperature)
    data_desc = {"dataset": dataset, "classes": list(train.classes), "n_train": len(train),
                 "n_val": len(val) if val is not None else 0, "n_test": len(test),
                 "val_fraction": val_fraction}
    run_dir = Path(out_dir) / "train" if out_dir is not None else None
    history, extra = _fit_recipe(model, train, val, config, loss=loss, run_dir=run_dir,
                                 resume=resume, progress=progress)
    model.eval()
    test_acc = accuracy(model, test)
    train_acc = accuracy(model, train)
    seconds = time.perf_counter() - t0
    ckpt = None
    metrics = {"test_accuracy": test_acc, "train_accuracy": train_acc,
               "val_accuracy": history[-1].get("val_acc") if history else None,
               "epochs": len(history), "seconds": seconds}
    if out_dir is not None:
        ckpt = save_checkpoint(Path(out_dir) / "final", model, epoch=len(history), config=config,
                               metrics=metrics, history=history, data=data_desc,
                               extra={"loss": loss, **extra})
        atomic_write_json(Path(out_dir) / "results.json", {
            "model": model_name, "dataset": dataset, "activation": activation, "loss": loss,
            "output_activation": output_activation, "temperature": temperature,
            "data": data_desc, "metrics": metrics, "extra": extra,
            "config": config.to_dict(), "environment": environment_info(),
        })
    return TrainOutcome(model, history, test_acc, ckpt, seconds, {"train_accuracy": train_acc,
                                                                   **extra})


def _fit_recipe(model: nn.Module, train: Any, val: Any, config: TrainConfig, *, loss: str,
                run_dir: Path | None, resume: bool, progress: bool
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train with the run's recipe (differential, adversarial or plain); returns the history and
    what the card should record about the recipe."""
    if loss == "differential":
        history, bias_info = differential_train(model, train, val, config, out_dir=run_dir,
                                                resume=resume, progress=progress)
        return history, {"bias": bias_info}
    if config.adv:
        history, _ = adversarial_train(model, train, val, config, out_dir=run_dir,
                                       resume=resume, progress=progress)
        return history, {"adv": config.adv}
    trainer = Trainer(model, train, val, config, out_dir=run_dir, progress=progress)
    return trainer.fit(resume=resume), {}


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


def evaluate_checkpoint(path: str | Path, *, dataset: str | None = None, split: str = "test",
                        data_root: str | Path | None = None, limit: int | None = None,
                        download: bool = False,
                        device: str | torch.device = "auto") -> dict[str, Any]:
    """Clean accuracy of a saved model on a dataset split (the card's dataset by default).

    The model runs on ``device`` (``"auto"``: CUDA when available); batches are moved there.
    """
    if limit is not None:
        check_positive_int(limit, "limit")
    model, card = load_checkpoint(path, device=resolve_device(device))
    data_desc = card.get("data") or {}
    dataset = _card_dataset(data_desc, dataset)
    ds = load_dataset(dataset, split, root=data_root, download=download)
    classes = data_desc.get("classes")
    if classes and len(classes) == 2 and ds.num_classes != 2:
        ds = binary_task(ds, tuple(classes))
    if limit is not None:
        ds = ds.subset(torch.arange(min(limit, len(ds))))
    t0 = time.perf_counter()
    acc = accuracy(model, ds)
    return {"checkpoint": str(path), "dataset": dataset, "split": split, "n": len(ds),
            "accuracy": acc, "device": str(next(model.parameters()).device),
            "seconds": time.perf_counter() - t0}


def _card_dataset(data_desc: dict[str, Any], dataset: str | None) -> str:
    """The dataset asked for, else the one the card records; one clear line when neither."""
    dataset = dataset or data_desc.get("dataset")
    if dataset is None:
        raise ValueError("the checkpoint does not record its dataset; name it (--dataset on the "
                         "command line, dataset= in Python)")
    return dataset


def _load_eval_data(card: dict[str, Any], dataset: str | None, split: str,
                    data_root: str | Path | None, limit: int | None = None,
                    download: bool = False) -> Any:
    """The split a checkpoint was evaluated on; the validation split is re-carved exactly as in
    training (same fraction and seed), so tuning never touches the test set."""
    data_desc = card.get("data") or {}
    dataset = _card_dataset(data_desc, dataset)
    if limit is not None:
        check_positive_int(limit, "limit")
    ds = load_dataset(dataset, "test" if split == "test" else "train", root=data_root,
                      download=download)
    classes = data_desc.get("classes")
    if classes and len(classes) == 2 and ds.num_classes != 2:
        ds = binary_task(ds, tuple(classes))
    if split == "val":
        frac = data_desc.get("val_fraction") or 0.1
        seed = (card.get("train") or {}).get("seed", 0)
        _, ds = train_val_split(ds, val_fraction=frac, seed=seed)
    elif split not in ("train", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    if limit is not None:
        ds = ds.subset(torch.arange(min(limit, len(ds))))
    return ds


def _defend_and_save(path: str | Path, out: str | Path, defend: Callable[[nn.Module], nn.Module],
                     metrics: dict[str, Any], extra: dict[str, Any], *, before: str,
                     data_root: str | Path | None, evaluate: bool, force: bool,
                     download: bool = False, device: str | torch.device = "auto"
                     ) -> dict[str, Any]:
    """Load a checkpoint, apply ``defend`` and save the result to ``out`` (locked; a checkpoint
    already there is replaced only with ``force``). With ``evaluate``, ``metrics`` gains the test
    accuracy before (key ``before``, measured first: ``defend`` may change the model in place)
    and after the defense."""
    with RunLock(out, "defended checkpoint"):
        refuse_finished(out, "card.json", "a checkpoint", force=force)
        model, card = load_checkpoint(path, device=resolve_device(device))
        test = (_load_eval_data(card, None, "test", data_root, download=download)
                if evaluate else None)
        if test is not None:
            metrics[before] = accuracy(model, test)
        defended = defend(model).eval()
        if test is not None:
            metrics["test_accuracy"] = accuracy(defended, test)
        ckpt = save_checkpoint(out, defended, epoch=card.get("epoch"), config=card.get("train"),
                               metrics=metrics, history=card.get("history"),
                               data=card.get("data"), extra=extra)
    return {"checkpoint": str(ckpt), **metrics}


def retrofit_checkpoint(path: str | Path, kappa: float, out: str | Path, *,
                        data_root: str | Path | None = None, evaluate: bool = True,
                        force: bool = False, download: bool = False,
                        device: str | torch.device = "auto") -> dict[str, Any]:
    """Retrofit a saved ReLU model with JumpReLU(κ) and save it (the card records the defense)."""
    return _defend_and_save(path, out, lambda m: retrofit_jumprelu(m, kappa), {"kappa": kappa},
                            {"retrofit_of": str(path)}, before="test_accuracy_relu",
                            data_root=data_root, evaluate=evaluate, force=force,
                            download=download, device=device)


def defend_checkpoint(path: str | Path, output_activation: str, temperature: float,
                      out: str | Path, *, data_root: str | Path | None = None,
                      evaluate: bool = True, force: bool = False,
                      download: bool = False, device: str | torch.device = "auto"
                      ) -> dict[str, Any]:
    """Give a trained model the output activation f(T·z) for inference, and save it.

    The working protocol for this defense (docs/choices.md): train with f at T = 1 (``train
    --output-activation f``), then raise T here; training at a high T does not learn. If the
    model already has an output activation, its f and T are replaced (the card records the old
    ones); otherwise one is added, which at a high T can cost clean accuracy on a model trained
    without it (float32 saturation ties logits), so the metrics report both accuracies.
    """
    t = check_temperature(temperature)
    previous: dict[str, Any] = {}

    def defend(model: nn.Module) -> nn.Module:
        existing = [m for m in model.modules() if isinstance(m, OutputActivationModel)]
        if not existing:
            return add_output_activation(model, output_activation, t)
        previous.update(f=existing[0].f, temperature=existing[0].temperature)
        existing[0].f, existing[0].temperature = output_activation, t
        return model

    extra: dict[str, Any] = {"defense_of": str(path), "previous_output_activation": previous}
    result = _defend_and_save(path, out, defend,
                              {"output_activation": output_activation, "temperature": t},
                              extra, before="test_accuracy_before", data_root=data_root,
                              evaluate=evaluate, force=force, download=download,
                              device=device)
    result["previous_output_activation"] = previous or None
    return result


def tune_jump_checkpoint(path: str | Path, max_drop: float, *, grid: list[float] | None = None,
                         out: str | Path | None = None, data_root: str | Path | None = None,
                         progress: bool = True, force: bool = False,
                         download: bool = False, device: str | torch.device = "auto"
                         ) -> dict[str, Any]:
    """Pick κ on the checkpoint's validation split (largest κ within ``max_drop`` points).

    The sweep runs on ``device`` (``"auto"``: CUDA when available).
    """
    if out is not None:  # refuse before tuning, not after; retrofit_checkpoint locks ``out``
        refuse_finished(out, "card.json", "a checkpoint", force=force)
    dev = resolve_device(device)
    model, card = load_checkpoint(path, device=dev)
    val = _load_eval_data(card, None, "val", data_root, download=download)
    model_cfg = card.get("model") or {}
    dataset = (card.get("data") or {}).get("dataset", "")
    grid = list(grid) if grid else list(paper_kappa_grid(model_cfg.get("name", ""), dataset))
    tuning = tune_jumprelu(model, val.x().to(dev), val.labels.to(dev), grid, max_drop,
                           progress=progress)
    result: dict[str, Any] = {
        "kappa": tuning.kappa, "max_drop_points": max_drop,
        "baseline_val_accuracy": tuning.baseline_acc,
        "curve": [{"kappa": k, "val_accuracy": a} for k, a in tuning.curve],
        "n_val": len(val),
    }
    if out is not None:
        result.update(retrofit_checkpoint(path, tuning.kappa, out, data_root=data_root,
                                          force=force, download=download,
                                          device=dev))
    return result


def checkpoint_run_name(path: str | Path) -> str:
    """A short name for the model at checkpoint ``path``: the folder's name, prefixed by its
    parent's when it is a generic ``final``/``last``/``best``."""
    ckpt = Path(path).absolute()
    generic = ckpt.name in ("final", "last", "best")
    return f"{ckpt.parent.name}-{ckpt.name}" if generic else ckpt.name


def default_run_out(name: str, tag: str, root: str | Path) -> Path:
    """A fresh folder ``root/<name>-<tag>-<YYYYmmdd-HHMMSS>`` (created; ``-2``, ``-3``, … if
    taken), so successive runs never overwrite each other."""
    stem = f"{name}-{tag}-{time.strftime('%Y%m%d-%H%M%S')}"
    Path(root).mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        candidate = Path(root) / (stem if i == 1 else f"{stem}-{i}")
        try:
            candidate.mkdir()  # atomic: two runs in the same second get different folders
            return candidate
        except FileExistsError:
            continue
    raise ValueError(f"cannot find a free output folder for {stem} in {root}; pass out=")


def default_attack_out(path: str | Path, attack: str, root: str | Path = "runs/attack") -> Path:
    """:func:`default_run_out` for an attack on the checkpoint at ``path``."""
    return default_run_out(checkpoint_run_name(path), attack, root)


def attack_checkpoint(path: str | Path, attack: str, params: dict[str, Any], *,
                      out: str | Path | None = None, split: str = "test", n: int | None = 500,
                      batch_size: int = 250, bpda: bool = False,
                      data_root: str | Path | None = None, progress: bool = True,
                      force: bool = False,
                      download: bool = False,
                      device: str | torch.device = "auto") -> dict[str, Any]:
    """Run one attack on the first ``n`` examples of a split and write the adversarial examples
    (``adversarial.safetensors``) and a JSON summary; success is re-verified independently.

    ``attack`` is a name or spec string; a fixed-budget attack given no ``eps`` gets the default
    budget of the checkpoint's dataset (``summary["defaults"]`` says which).

    ``out`` defaults to a new folder from :func:`default_attack_out`; the summary's ``out`` says
    where. ``out`` is locked while the attack runs, and one that already holds an attack's
    results is refused unless ``force``. Model and batches live on ``device`` (``"auto"``:
    CUDA when available); results are gathered on the CPU.
    """
    read_card(path)  # a missing or edited checkpoint fails before any folder is made
    made = out is None
    out = Path(out) if out is not None else default_attack_out(path, attack)
    try:
        with RunLock(out, "attack"):
            refuse_finished(out, "summary.json", "an attack's results", force=force)
            summary = _attack_checkpoint(path, attack, params, out=out, split=split, n=n,
                                         batch_size=batch_size, bpda=bpda, data_root=data_root,
                                         progress=progress, download=download,
                                         device=device)
    except BaseException:
        if made:  # do not leave an empty default folder behind a failed attack
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    return {**summary, "out": str(out)}


def _attack_checkpoint(path: str | Path, attack: str, params: dict[str, Any], *,
                       out: Path, split: str, n: int | None, batch_size: int, bpda: bool,
                       data_root: str | Path | None, progress: bool, download: bool,
                       device: str | torch.device
                       ) -> dict[str, Any]:
    """:func:`attack_checkpoint` with ``out`` chosen and locked."""
    if n is not None:
        check_positive_int(n, "n")
    check_positive_int(batch_size, "batch_size")
    t0 = time.perf_counter()
    dev = resolve_device(device)
    model, card = load_checkpoint(path, device=dev)
    spec, defaults = resolve_attack(attack, params,
                                    dataset=(card.get("data") or {}).get("dataset", ""))
    atk = create_attack(**spec)  # before loading data: a bad parameter fails at once
    ds = _load_eval_data(card, None, split, data_root, limit=n, download=download)
    target_model = with_bpda(model) if bpda else model
    advs, succ, norms, ys, clean = [], [], [], [], []
    for i in tqdm(range(0, len(ds), batch_size), desc=f"{attack}", disable=not progress):
        x = ds.x(slice(i, i + batch_size)).to(dev)
        y = ds.labels[i:i + batch_size].to(dev)
        res = atk(target_model, x, y)
        v = verify(model, x, y, res, eps=atk.spec().get("eps"), norm=atk.norm)
        with torch.no_grad():
            clean.append((model(x).argmax(1) == y).cpu())
        advs.append(res.x_adv.cpu())
        succ.append(v.success.cpu())
        norms.append(res.norms.cpu())
        ys.append(y.cpu())
    adv, ok, nrm, y_all, clean_ok = (torch.cat(t) for t in (advs, succ, norms, ys, clean))
    out = Path(out)
    save_tensors(out / "adversarial.safetensors",
                 {"x_adv": adv, "labels": y_all, "success": ok.to(torch.uint8)})
    summary: dict[str, Any] = {
        "checkpoint": str(path), "attack": spec["name"], "params": params,
        "defaults": defaults, "attack_spec": atk.spec(), "bpda": bpda, "split": split,
        "n": int(len(y_all)),
        "clean_accuracy": float(clean_ok.double().mean()),
        "success_rate": float(ok.double().mean()),
        "robust_accuracy": float((clean_ok & ~ok).double().mean()),
        "norm": atk.norm, "device": str(dev),
        "median_norm_successful": float(nrm[ok].median()) if ok.any() else None,
        "seconds": time.perf_counter() - t0,
        "environment": environment_info(),
    }
    atomic_write_json(out / "summary.json", summary)
    return summary


# --- evaluate: a protocol, the audit and a summary, for a checkpoint or any model -----------------

#: The audit counts :func:`evaluate_model` uses (``run_audit``'s own defaults are for a study):
#: the model-level checks on the first 100 samples, random search with 1000 points per sample on
#: them (C17; 10⁴ cost as much as the whole quick protocol), binarization on 20.
EVALUATE_AUDIT_DEFAULTS: dict[str, int] = {"max_samples": 100, "random_points": 1000,
                                           "random_samples": 100, "binarization_samples": 20}
#: What an evaluation writes into its folder; ``force`` removes exactly these.
EVALUATION_FILES = ("table.json", "clean.safetensors", "cells", "summary.json")


@dataclass
class EvaluationTarget:
    """A model ready to evaluate, its evaluation data and where both came from."""

    model: nn.Module
    data: Any  # ImageDataset: the first n test images
    dataset: str
    name: str  # short, for the default output folder
    info: dict[str, Any]


def load_evaluation_target(*, checkpoint: str | Path | None = None,
                           model_file: str | None = None, weights: str | Path | None = None,
                           normalize: str | tuple[Any, Any] | None = None,
                           factory_kwargs: dict[str, Any] | None = None,
                           dataset: str | None = None, num_classes: int | None = None,
                           n: int | None = 1000, data_root: str | Path | None = None,
                           download: bool = False, device: str | torch.device = "auto"
                           ) -> EvaluationTarget:
    """The model (a robustact ``checkpoint``, or ``model_file`` ``"path.py:Factory"`` with
    ``weights``, see :func:`robustact.modelfile.load_model_file`) and the first ``n`` test
    images of its dataset (the card's, or ``dataset``, which a model file needs)."""
    if (checkpoint is None) == (model_file is None):
        raise ValueError("give the model either as a robustact checkpoint (--model) or as "
                         "--model-file path.py:Factory, not both")
    if n is not None:
        check_positive_int(n, "n")
    dev = resolve_device(device)
    if checkpoint is not None:
        extra = [k for k, v in (("--weights", weights), ("--normalize", normalize),
                                ("--factory-arg", factory_kwargs),
                                ("--num-classes", num_classes)) if v]
        if extra:
            raise ValueError(f"{', '.join(extra)} only apply to --model-file; a checkpoint "
                             "carries its weights and normalization")
        card = read_card(checkpoint)
        data = _load_eval_data(card, dataset, "test", data_root, limit=n, download=download)
        model, card = load_checkpoint(checkpoint, device=dev)
        name = dataset or (card.get("data") or {}).get("dataset")
        return EvaluationTarget(model, data, str(name), checkpoint_run_name(checkpoint), {
            "source": "checkpoint", "checkpoint": str(checkpoint), "model": card.get("model"),
            "defenses": card.get("defenses")})
    assert model_file is not None
    if dataset is None:
        raise ValueError("--model-file needs --dataset (mnist, cifar10, cifar100 or digits): "
                         "the data the model was trained for")
    path, factory = parse_model_spec(model_file)
    data = load_dataset(dataset, "test", root=data_root, download=download)
    if n is not None:
        data = data.subset(torch.arange(min(n, len(data))))
    model = load_model_file(model_file, weights, normalize, factory_kwargs,
                            probe=data.x(slice(0, 8)), device=dev,
                            num_classes=num_classes or data.num_classes)
    return EvaluationTarget(model, data, dataset, f"{path.stem}-{factory}", {
        "source": "model_file", "model_file": model_file,
        "weights": None if weights is None else str(weights),
        "normalize": normalize if normalize is None or isinstance(normalize, str)
        else [list(normalize[0]), list(normalize[1])],
        "factory_kwargs": factory_kwargs or {}})


def check_budget(eps: float, norm: str, image_shape: tuple[int, ...]) -> float:
    """``eps`` as a float inside the norm's range for [0, 1] images: (0, 1] for L∞ (a larger
    one is a typo, e.g. 8 for 8/255), (0, √d] for L2 (the diameter of the box)."""
    if norm not in ("linf", "l2"):
        raise ValueError(f"unknown norm {norm!r}; choose linf or l2")
    top = 1.0 if norm == "linf" else math.sqrt(math.prod(image_shape))
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (
            math.isfinite(eps) and 0 < eps <= top):
        raise ValueError(f"eps must be in (0, {top:.4g}] for {norm} on [0, 1] images (pixel "
                         f"units: write 8/255, not 8), got {eps!r}")
    return float(eps)


def _clear_evaluation(out: Path) -> None:
    for name in EVALUATION_FILES:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


# Long by design: a documented signature and one run: resolve ε and the folder, evaluate, audit,
# write the summary and the reports under the lock.
def evaluate_model(model: nn.Module, data: Any, *, dataset: str | None = None,
                   name: str = "model", protocol: str = "standard", eps: float | None = None,
                   norm: str = "linf", batch_size: int = 256,
                   device: str | torch.device | None = None, out: str | Path | None = None,
                   seed: int = 0, progress: bool = True, audit: bool = True,
                   audit_options: dict[str, Any] | None = None, force: bool = False,
                   info: dict[str, Any] | None = None, command: str | None = None,
                   adaptive: bool = True, overrides: dict[str, Any] | None = None,
                   extra_curves: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``protocol`` on ``data`` into ``out``, audit it, write ``out/summary.json``.

    ``model`` is any ``nn.Module`` taking [0, 1] images and returning logits (eval mode);
    ``data`` an ImageDataset or ``(x, y)``. ``eps`` defaults to ``dataset``'s standard budget
    (:data:`~robustact.attacks.registry.DEFAULT_BUDGETS`). ``out`` defaults to a fresh
    ``runs/evaluate/<name>-<protocol>-<time>``; a rerun with the same ``out`` resumes (finished
    cells are read, not re-attacked), one with another protocol, ε, model or data is refused by
    the engine and leaves the folder as it was, unless ``force`` (start over: the folder's
    evaluation files are removed first). ``device``: None keeps the model where it is; given,
    the model is moved there. The audit uses :data:`EVALUATE_AUDIT_DEFAULTS` updated with
    ``audit_options``. The reports (``report.json`` with every number, ``report.md``,
    a self-contained ``report.html``) go to ``out`` too. Returns the summary plus ``"out"``.
    ``adaptive``/``overrides`` go to the engine (False: the protocol alone, without the
    defense-specific attacks; overrides: e.g. fewer steps for a smoke run, recorded in the
    table); ``extra_curves`` (e.g. a κ sweep) go to the reports.
    """
    check_eval_mode(model, "evaluating it")
    protocol_id = get_protocol(protocol, overrides)["id"]  # bad: fails before any folder
    x, y = as_tensors(data, "data")
    x = x.float() / 255 if x.dtype == torch.uint8 else x
    if eps is None:
        if dataset is None:
            raise ValueError("no eps given and no dataset to take the standard budget from; "
                             "pass eps")
        eps = default_budget(dataset, norm)
    eps = check_budget(eps, norm, tuple(x.shape[1:]))
    if device is not None:
        model = model.to(resolve_device(device))
    made = out is None
    out = Path(out) if out is not None else default_run_out(
        name, protocol_id.split("@")[0], "runs/evaluate")
    meta = {"dataset": dataset, "source": info or {}}
    try:
        if force:
            with RunLock(out, "evaluation"):
                _clear_evaluation(out)
        t0 = time.perf_counter()
        table = evaluate(model, x, y, protocol, eps=eps, norm=norm, out=str(out),
                         batch_size=batch_size, seed=seed, progress=progress, meta=meta,
                         adaptive=adaptive, overrides=overrides)
    except BaseException:
        if made:  # do not leave an empty default folder behind a failed start
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    wall = time.perf_counter() - t0
    report = None
    with RunLock(out, "evaluation"):
        if audit:
            dev = next((p.device for p in model.parameters()), x.device)
            report = run_audit(model, x.to(dev), y.to(dev), table, eps=eps, norm=norm,
                               seed=seed, progress=progress,
                               **{**EVALUATE_AUDIT_DEFAULTS, **(audit_options or {})})
        summary = evaluation_summary(table, report, wall_seconds=wall, command=command,
                                     info={"name": name, "dataset": dataset, **(info or {})})
        if report is None:  # keep the verdict of an earlier audit of this very table
            _keep_audit(out / "summary.json", summary)
        reports = write_reports(out, table, report,
                                info={"name": name, "dataset": dataset, **(info or {})},
                                extra_curves=extra_curves)
        summary["reports"] = {kind: str(path) for kind, path in reports.items()}
        atomic_write_json(out / "summary.json", summary)
    return {**summary, "out": str(out)}


def _table_key(table: Any) -> dict[str, Any]:
    """What identifies a finished table: a rerun with the same key gives the same rows."""
    m = table.meta
    return {"protocol": m.get("protocol"), "eps_grid": m.get("eps_grid"), "norm": m.get("norm"),
            "seed": m.get("seed"), "model": (m.get("model") or {}).get("fingerprint"),
            "data": m.get("data_fingerprint")}


def _keep_audit(path: Path, summary: dict[str, Any]) -> None:
    """A ``--no-audit`` rerun over a finished, audited table keeps that audit's verdict."""
    try:
        old = read_json(path)
    except (OSError, ValueError):
        return
    if (isinstance(old, dict) and old.get("table") == summary["table"]
            and (old.get("verdict") or {}).get("label") not in (None, "not audited")):
        summary["verdict"] = {**old["verdict"], "from_earlier_run": True}
        for k in ("audit", "audit_model_forward_rows"):
            summary["seconds"][k] = (old.get("seconds") or {}).get(k)


def evaluation_summary(table: Any, report: Any, *, wall_seconds: float,
                       command: str | None = None, info: dict[str, Any] | None = None
                       ) -> dict[str, Any]:
    """The compact ``summary.json``: clean and robust accuracy, each attack's cell at ε, the
    worst case per ε, the verdict with its evidence, and what the evaluation and the audit
    cost (attack seconds over every run that filled the table; this run's wall time)."""
    s = summarize(table)
    eps = float(table.meta["eps"])
    at_eps = s["per_eps"].get(repr(eps), {})
    roles = table.meta.get("attacks", {})
    attack_seconds = float(table["seconds"].sum()) if len(table) else 0.0
    verdict_ = ({"label": report.verdict.label, "evidence": list(report.verdict.evidence),
                 "fired": report.fired(),
                 "notes": [c.id for c in report.checks if c.fired and c.kind == "info"]}
                if report is not None else
                {"label": "not audited", "evidence": ["the audit was skipped (--no-audit)"],
                 "fired": [], "notes": []})
    return {
        "model": info or {}, "protocol": s["protocol"], "norm": s["norm"], "eps": eps,
        "eps_grid": table.meta.get("eps_grid"), "n": s["n"], "seed": table.meta.get("seed"),
        "clean_accuracy": s["clean_accuracy"],
        "robust_accuracy": at_eps.get("worst_case"),
        "attacks_at_eps": [{**c, "role": roles.get(c["attack"], {}).get("role")}
                           for c in at_eps.get("attacks", [])],
        "worst_case": {repr(float(e)): acc for e, acc in s["curve"]},
        "min_norm": s["min_norm"], "unavailable": s["unavailable"],
        "verdict": verdict_,
        "cost": {"forward_per_image": s["cost"]["forward_per_image"],
                 "backward_per_image": s["cost"]["backward_per_image"],
                 "per_attack": s["cost"]["per_attack"]},
        "seconds": {"attacks": attack_seconds, "evaluation_wall_this_run": wall_seconds,
                    "audit": report.seconds if report is not None else None,
                    "audit_model_forward_rows": (report.model_forward_rows
                                                 if report is not None else None)},
        "command": command, "environment": environment_info(), "table": _table_key(table),
    }
