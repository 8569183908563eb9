"""High-level workflows: the library calls behind each CLI command.

Why a module of its own: the CLI should only parse arguments and print. Everything a command
does (load data, build the model, train, evaluate, write files) lives here as plain functions
with typed arguments, so notebooks and scripts get exactly what the CLI does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustact._validate import check_eval_mode, resolve_device
from robustact.io import atomic_write_json, environment_info

__all__ = [
    "TrainOutcome",
    "load_splits",
    "accuracy",
    "train_classifier",
    "evaluate_checkpoint",
]


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
    from robustact.data import binary_task, load_dataset, train_val_split

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
    from robustact.train.trainer import as_tensors

    check_eval_mode(model, "measuring accuracy")
    x, y = as_tensors(data, "data")
    device = device or next(model.parameters()).device
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size].to(device)
        xb = xb.float() / 255 if xb.dtype == torch.uint8 else xb
        correct += int((model(xb).argmax(1).cpu() == y[i:i + batch_size]).sum())
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
) -> TrainOutcome:
    """Train ``model_name`` on ``dataset`` and save ``out_dir/final`` with its test accuracy.

    ``loss="differential"`` trains a two-class model (``classes``, default cat/dog) with the
    pairwise loss on balanced batches and sets the bias by the margin rule (SPEC §4);
    ``output_activation`` wraps the model in f(T·z) *before* training (SPEC §3).
    ``config.seed`` seeds everything random: the split, the initial weights, the batches.
    """
    from robustact.models import create_model
    from robustact.train import TrainConfig, Trainer, save_checkpoint, seeded

    t0 = time.perf_counter()
    config = config if config is not None else TrainConfig()
    resolve_device(config.device)  # fail before loading data, not after
    if loss not in ("ce", "differential"):
        raise ValueError(f"loss must be 'ce' or 'differential', got {loss!r}")
    if loss == "differential" and classes is None:
        classes = ("cat", "dog")
    train, val, test = load_splits(dataset, data_root=data_root, val_fraction=val_fraction,
                                   classes=classes, seed=config.seed)
    with seeded(config.seed, "model"):  # the initial weights are part of the seeded run
        model = create_model(model_name, dataset=dataset, num_classes=train.num_classes,
                             activation=activation, **(model_kwargs or {}))
        if output_activation is not None:
            from robustact.defenses.output_activation import add_output_activation

            model = add_output_activation(model, output_activation, temperature)
    data_desc = {"dataset": dataset, "classes": list(train.classes), "n_train": len(train),
                 "n_val": len(val) if val is not None else 0, "n_test": len(test),
                 "val_fraction": val_fraction}
    run_dir = Path(out_dir) / "train" if out_dir is not None else None
    extra: dict[str, Any] = {}
    if loss == "differential":
        from robustact.defenses.differential import differential_train

        history, bias_info = differential_train(model, train, val, config, out_dir=run_dir,
                                                resume=resume, progress=progress)
        extra["bias"] = bias_info
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


def evaluate_checkpoint(path: str | Path, *, dataset: str | None = None, split: str = "test",
                        data_root: str | Path | None = None, limit: int | None = None,
                        device: str | torch.device = "auto") -> dict[str, Any]:
    """Clean accuracy of a saved model on a dataset split (the card's dataset by default).

    The model runs on ``device`` (``"auto"``: CUDA when available); batches are moved there.
    """
    from robustact.data import binary_task, load_dataset
    from robustact.train import load_checkpoint

    model, card = load_checkpoint(path, device=resolve_device(device))
    data_desc = card.get("data") or {}
    dataset = dataset or data_desc.get("dataset")
    if dataset is None:
        raise ValueError("the checkpoint does not record its dataset; pass dataset=")
    ds = load_dataset(dataset, split, root=data_root)
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
                    data_root: str | Path | None, limit: int | None = None) -> Any:
    """The split a checkpoint was evaluated on; the validation split is re-carved exactly as in
    training (same fraction and seed), so tuning never touches the test set."""
    from robustact.data import binary_task, load_dataset, train_val_split

    data_desc = card.get("data") or {}
    dataset = dataset or data_desc.get("dataset")
    if dataset is None:
        raise ValueError("the checkpoint does not record its dataset; pass dataset=")
    ds = load_dataset(dataset, "test" if split == "test" else "train", root=data_root)
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


def retrofit_checkpoint(path: str | Path, kappa: float, out: str | Path, *,
                        data_root: str | Path | None = None, evaluate: bool = True,
                        device: str | torch.device = "auto") -> dict[str, Any]:
    """Retrofit a saved ReLU model with JumpReLU(κ) and save it (the card records the defense).

    ``device`` is where the test accuracies are measured (``"auto"``: CUDA when available).
    """
    from robustact.defenses import retrofit_jumprelu
    from robustact.train import load_checkpoint, save_checkpoint

    model, card = load_checkpoint(path, device=resolve_device(device))
    defended = retrofit_jumprelu(model, kappa).eval()
    metrics: dict[str, Any] = {"kappa": kappa}
    if evaluate:
        test = _load_eval_data(card, None, "test", data_root)
        metrics["test_accuracy_relu"] = accuracy(model, test)
        metrics["test_accuracy"] = accuracy(defended, test)
    ckpt = save_checkpoint(out, defended, epoch=card.get("epoch"), config=card.get("train"),
                           metrics=metrics, history=card.get("history"), data=card.get("data"),
                           extra={"retrofit_of": str(path)})
    return {"checkpoint": str(ckpt), **metrics}


def tune_jump_checkpoint(path: str | Path, max_drop: float, *, grid: list[float] | None = None,
                         out: str | Path | None = None, data_root: str | Path | None = None,
                         progress: bool = True, device: str | torch.device = "auto"
                         ) -> dict[str, Any]:
    """Pick κ on the checkpoint's validation split (largest κ within ``max_drop`` points).

    The sweep runs on ``device`` (``"auto"``: CUDA when available).
    """
    from robustact.defenses import paper_kappa_grid, tune_jumprelu
    from robustact.train import load_checkpoint

    dev = resolve_device(device)
    model, card = load_checkpoint(path, device=dev)
    val = _load_eval_data(card, None, "val", data_root)
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
                                          device=dev))
    return result


def attack_checkpoint(path: str | Path, attack: str, params: dict[str, Any], *,
                      out: str | Path, split: str = "test", n: int | None = 500,
                      batch_size: int = 250, bpda: bool = False,
                      data_root: str | Path | None = None, progress: bool = True,
                      device: str | torch.device = "auto") -> dict[str, Any]:
    """Run one attack on the first ``n`` examples of a split and write the adversarial examples
    (``adversarial.safetensors``) and a JSON summary; success is re-verified independently.

    Model and batches live on ``device`` (``"auto"``: CUDA when available); results are
    gathered on the CPU.
    """
    from tqdm.auto import tqdm

    from robustact.attacks import verify, with_bpda
    from robustact.attacks.registry import create_attack
    from robustact.io import save_tensors
    from robustact.train import load_checkpoint

    t0 = time.perf_counter()
    dev = resolve_device(device)
    model, card = load_checkpoint(path, device=dev)
    ds = _load_eval_data(card, None, split, data_root, limit=n)
    atk = create_attack(attack, **params)
    target_model = with_bpda(model) if bpda else model
    advs, succ, norms, ys, clean = [], [], [], [], []
    for i in tqdm(range(0, len(ds), batch_size), desc=f"{attack}", disable=not progress):
        x = ds.x(slice(i, i + batch_size)).to(dev)
        y = ds.labels[i:i + batch_size].to(dev)
        res = atk(target_model, x, y)
        v = verify(model, x, y, res, eps=params.get("eps"), norm=atk.norm)
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
        "checkpoint": str(path), "attack": attack, "params": params,
        "attack_config": atk.config(), "bpda": bpda, "split": split, "n": int(len(y_all)),
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
