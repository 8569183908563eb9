"""Benchmark: train ResNet-20 on CIFAR-10 with the robustact trainer; report test accuracy.

On a GPU the default is the JumpReLU paper's schedule (papers.md §1): 120 epochs, SGD momentum 0.9,
weight decay 5e-4, batch 128, lr 0.1 ×0.1 at epochs 30/60/90, random crop 32 (pad 4) + flip.
On a CPU that takes days, so the default there is a short cosine schedule (2 epochs, optionally
on a stratified ``--subset`` of the training images) and the result is labelled
``"schedule": "short-cpu"`` so nobody mistakes it for the paper's number.

    python experiments/train_cifar_resnet20.py [--data-root DIR] [--epochs N] [--subset N]

Writes ``results/cifar_resnet20.json`` (atomically) with the config, environment, command line,
per-epoch history, wall time and test accuracy; the checkpoint goes to ``--ckpt-dir``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import harness as H

from robustact.core.storage import atomic_write_json, environment_info
from robustact.data import train_val_split
from robustact.models import create_model
from robustact.train import TrainConfig, Trainer, jumprelu_resnet_config

SCRIPT = "train_cifar_resnet20"
PAPER_EPOCHS = 120


def main(argv: list[str] | None = None) -> dict:
    p = H.training_parser(__doc__.splitlines()[0], ckpt_dir="runs/cifar_resnet20",
                          out="results/cifar_resnet20.json")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"default: {PAPER_EPOCHS} (paper schedule) on CUDA, 2 on CPU")
    p.add_argument("--subset", type=int, default=None,
                   help="train on a stratified subset of this many images (quick CPU checks)")
    p.add_argument("--test-subset", type=int, default=None,
                   help="evaluate on the first N test images only (quick CPU checks)")
    p.add_argument("--resume", action="store_true", help="continue from --ckpt-dir/last")
    a = H.parse_training_args(p, argv, SCRIPT)
    if a.quick:  # one epoch on 256 stand-in images; the checkpoint stays out of the real one's way
        a.epochs, a.subset = 1, min(a.subset or 256, 256)
        a.test_subset = min(a.test_subset or 128, 128)
        if a.ckpt_dir == p.get_default("ckpt_dir"):
            a.ckpt_dir = Path("runs/quick") / SCRIPT
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    cuda = a.device.startswith("cuda") or (a.device == "auto" and torch.cuda.is_available())
    epochs = a.epochs if a.epochs is not None else (PAPER_EPOCHS if cuda else 2)
    if epochs == PAPER_EPOCHS and a.subset is None:
        schedule = "paper"
        config = jumprelu_resnet_config(seed=a.seed, device=a.device)
    else:
        schedule = "short" if cuda else "short-cpu"
        config = TrainConfig(epochs=epochs, lr=0.1, schedule="cosine", augment="cifar",
                             seed=a.seed, device=a.device)

    train = H.load_data("cifar10", "train", a.data_root, quick=a.quick)
    test = H.load_data("cifar10", "test", a.data_root, quick=a.quick)
    val = None
    if a.val_size > 0:
        train, val = train_val_split(train, val_size=a.val_size, seed=a.seed)
    if a.subset is not None:  # the "validation" part of a split is a seeded stratified sample
        _, train = train_val_split(train, val_size=a.subset, seed=a.seed)
    if a.test_subset is not None:
        test = test.subset(torch.arange(min(a.test_subset, len(test))))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(a.seed)  # the initial weights are part of the experiment
        model = create_model("resnet20", dataset="cifar10", activation="relu")
    trainer = Trainer(model, train, val, config, out_dir=a.ckpt_dir, progress=not a.no_progress)
    t0 = time.perf_counter()
    history = trainer.fit(resume=a.resume)
    train_seconds = time.perf_counter() - t0
    test_metrics = trainer.evaluate(test)
    result = {
        "benchmark": "train_cifar_resnet20",
        "schedule": schedule,
        "command": " ".join(H.command_line()),
        "quick": a.quick,
        "model": model.robustact_config,
        "train_config": config.to_dict(),
        "data": {"root": H.data_source(a.data_root, quick=a.quick), "n_train": len(train),
                 "n_val": len(val) if val else 0, "n_test": len(test), "subset": a.subset,
                 "test_subset": a.test_subset},
        "epochs": epochs,
        "device": str(trainer.device),
        "train_wall_seconds": round(train_seconds, 1),
        "resumed": a.resume,
        "test_accuracy": test_metrics["acc"],
        "test_loss": test_metrics["loss"],
        "checkpoint": str(a.ckpt_dir / "last"),
        "history": history,
        "environment": environment_info(),
    }
    atomic_write_json(a.out, result)
    print(f"ResNet-20 / CIFAR-10 ({schedule}): test accuracy {100 * test_metrics['acc']:.2f} % "
          f"after {epochs} epochs, {train_seconds:.0f} s training wall time -> {a.out}")
    return result


if __name__ == "__main__":
    H.run_script(main)
