"""High-level workflows: the library calls behind each CLI command.

Why a module of its own: the CLI should only parse arguments and print. Everything a command
does (load data, build the model, train, evaluate, write files) lives here as plain functions
with typed arguments, so notebooks and scripts get exactly what the CLI does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from robustact.attacks import verify, with_bpda
from robustact.attacks.registry import create_attack, resolve_attack
from robustact.core.runlock import RunLock, refuse_finished
from robustact.core.storage import atomic_write_json, environment_info, save_tensors
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
from robustact.models import create_model
from robustact.nn.bounded import check_temperature
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
    "MAX_TRAIN_TEMPERATURE",
]

log = logging.getLogger(__name__)

#: Largest output-activation temperature :func:`train_classifier` trains at without ``force``.
#: Measured by benchmarks/outact_train_temperature.py (digits, SmallCNN, 3 epochs, SGD lr 0.05
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
    if resume and out_dir is not None and config.adv is None:
        config = _saved_adv(Path(out_dir) / "train" / "last", config)
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
    extra: dict[str, Any] = {}
    if loss == "differential":
        history, bias_info = differential_train(model, train, val, config, out_dir=run_dir,
                                                resume=resume, progress=progress)
        extra["bias"] = bias_info
    elif config.adv:
        history, _ = adversarial_train(model, train, val, config, out_dir=run_dir,
                                       resume=resume, progress=progress)
        extra["adv"] = config.adv
    else:
        trainer = Trainer(model, train, val, config, out_dir=run_dir, progress=progress)
        history = trainer.fit(resume=resume)
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


def _saved_adv(last: Path, config: TrainConfig) -> TrainConfig:
    """``config`` with the adversarial recipe of an interrupted run's card, if it had one.

    Why: ``train --resume`` without repeating ``--adv ...`` must continue the same recipe (the
    card records it), not silently switch to plain training.
    """
    try:
        saved = (read_card(last).get("train") or {}).get("adv")
    except CheckpointError:
        return config
    if saved:
        log.info("resuming adversarial training with the run's recipe %s", saved)
        return dataclasses.replace(config, adv=saved)
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
    dataset = dataset or data_desc.get("dataset")
    if dataset is None:
        raise ValueError("the checkpoint does not record its dataset; pass dataset=")
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


def _load_eval_data(card: dict[str, Any], dataset: str | None, split: str,
                    data_root: str | Path | None, limit: int | None = None,
                    download: bool = False) -> Any:
    """The split a checkpoint was evaluated on; the validation split is re-carved exactly as in
    training (same fraction and seed), so tuning never touches the test set."""
    data_desc = card.get("data") or {}
    dataset = dataset or data_desc.get("dataset")
    if dataset is None:
        raise ValueError("the checkpoint does not record its dataset; pass dataset=")
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


def default_attack_out(path: str | Path, attack: str, root: str | Path = "runs/attack") -> Path:
    """A fresh folder ``root/<model>-<attack>-<YYYYmmdd-HHMMSS>`` (created; ``-2``, ``-3``, … if
    taken), so successive attacks never overwrite each other. ``<model>`` is the checkpoint
    folder's name, prefixed by its parent's when it is a generic ``final``/``last``/``best``."""
    ckpt = Path(path).absolute()
    generic = ckpt.name in ("final", "last", "best")
    name = f"{ckpt.parent.name}-{ckpt.name}" if generic else ckpt.name
    stem = f"{name}-{attack}-{time.strftime('%Y%m%d-%H%M%S')}"
    Path(root).mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        candidate = Path(root) / (stem if i == 1 else f"{stem}-{i}")
        try:
            candidate.mkdir()  # atomic: two runs in the same second get different folders
            return candidate
        except FileExistsError:
            continue
    raise ValueError(f"cannot find a free output folder for {stem} in {root}; pass out=")


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
