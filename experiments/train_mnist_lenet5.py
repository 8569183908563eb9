"""Benchmark: train LeNet-5 on real MNIST with the robustact trainer; report test accuracy.

Target: >= 99.0 % test accuracy with a short schedule that fits in minutes on a 2-core CPU
(SGD, momentum 0.9, lr 0.05, cosine, 10 epochs, batch 128). No model selection on the test set:
the run trains for a fixed number of epochs and the test set is evaluated once, at the end.

    python experiments/train_mnist_lenet5.py [--data-root DIR] [--epochs 10] [--out FILE]

Writes ``results/mnist_lenet5.json`` (atomically) with the config, environment, command line,
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
from robustact.train import TrainConfig, Trainer

SCRIPT = "train_mnist_lenet5"
TARGET = 0.99


def main(argv: list[str] | None = None) -> dict:
    p = H.training_parser(__doc__.splitlines()[0], ckpt_dir="runs/mnist_lenet5",
                          out="results/mnist_lenet5.json")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    p.add_argument("--schedule", choices=["cosine", "step", "constant"], default="cosine")
    p.add_argument("--augment", choices=["none", "shift"], default="shift",
                   help="'shift': random translation by up to 2 pixels")
    a = H.parse_training_args(p, argv, SCRIPT)
    if a.quick:  # one epoch on synthetic data; the checkpoint stays out of the real one's way
        a.epochs = 1
        if a.ckpt_dir == p.get_default("ckpt_dir"):
            a.ckpt_dir = Path("runs/quick") / SCRIPT
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    train = H.load_data("mnist", "train", a.data_root, quick=a.quick)
    test = H.load_data("mnist", "test", a.data_root, quick=a.quick)
    val = None
    if a.val_size > 0:
        train, val = train_val_split(train, val_size=a.val_size, seed=a.seed)
    config = TrainConfig(
        epochs=a.epochs, batch_size=a.batch_size, optimizer=a.optimizer, lr=a.lr,
        schedule=a.schedule, seed=a.seed, device=a.device,
        momentum=0.9, weight_decay=5e-4, augment=a.augment,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(a.seed)  # the initial weights are part of the experiment
        model = create_model("lenet5", dataset="mnist", activation="relu")
    trainer = Trainer(model, train, val, config, out_dir=a.ckpt_dir, progress=not a.no_progress)
    t0 = time.perf_counter()
    history = trainer.fit()
    train_seconds = time.perf_counter() - t0
    test_metrics = trainer.evaluate(test)
    result = {
        "benchmark": "train_mnist_lenet5",
        "command": " ".join(H.command_line()),
        "quick": a.quick,
        "model": model.robustact_config,
        "train_config": config.to_dict(),
        "data": {"root": H.data_source(a.data_root, quick=a.quick), "n_train": len(train),
                 "n_val": len(val) if val else 0, "n_test": len(test)},
        "epochs": a.epochs,
        "train_wall_seconds": round(train_seconds, 1),
        "test_accuracy": test_metrics["acc"],
        "test_loss": test_metrics["loss"],
        "target_accuracy": TARGET,
        "target_met": test_metrics["acc"] >= TARGET,
        "checkpoint": str(a.ckpt_dir / "last"),
        "history": history,
        "environment": environment_info(),
    }
    atomic_write_json(a.out, result)
    print(f"LeNet-5 / MNIST: test accuracy {100 * test_metrics['acc']:.2f} % after {a.epochs} "
          f"epochs, {train_seconds:.0f} s training wall time -> {a.out}")
    return result


if __name__ == "__main__":
    H.run_script(main)
