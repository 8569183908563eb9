"""LeNet-5 on MNIST with each of the ten activations of the SPLASH comparison (papers.md §2).

Claim under test (Tavakoli et al. 2021): SPLASH units give higher clean accuracy than ReLU,
Leaky ReLU, PReLU, ELU, tanh, sigmoid, Swish, Maxout and APL. Every network here gets the same
schedule, optimizer, seed, batch order and (for the layers all of them share) the same initial
weights; only the activation differs. Results: clean validation and test accuracy, epochs and
training seconds per activation; each trained model is saved to ``runs/zoo/<act>/final`` so the
JumpReLU κ experiment (``jumprelu_kappa_mnist.py --model runs/zoo/relu/final``) can reuse the
ReLU one.

Schedule choice: a short run fitted to a shared 2-core CPU, Adam (lr 1e-3, no weight decay,
cosine decay to 0) for *all* activations. Why Adam for all: with SGD a sigmoid LeNet barely
moves in a few epochs (its gradients vanish through four saturating layers), so an SGD schedule
tuned for ReLU would measure the optimizer, not the activation; one optimizer for all keeps the
comparison fair. SPLASH is placed where ReLU is (LeNet-5 has no BatchNorm), so its hinge offsets
are calibrated once, before training, to the spread of each layer's pre-activations on 512
training images (papers.md §2's option for layers without BatchNorm; ``--no-splash-calibration`` to
switch off).

    python experiments/activation_zoo_mnist.py            # full zoo, 6 epochs, ~15 min, 1 thread
    python experiments/activation_zoo_mnist.py --quick    # smoke run on synthetic data, seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import harness as H

from robustact.data import train_val_split
from robustact.models import create_model
from robustact.models.predict import accuracy
from robustact.nn.splash import calibrate_splash
from robustact.train import TrainConfig, Trainer, save_checkpoint

#: The ten activations of the comparison, name -> factory spec.
ACTIVATIONS: dict[str, str] = {
    "relu": "relu",
    "leaky_relu": "leaky_relu",
    "prelu": "prelu",
    "elu": "elu",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "swish": "swish",
    "maxout": "maxout",
    "apl": "apl",
    "splash": "splash:S=7",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = H.base_parser(__doc__.splitlines()[0], default_out="results/activation_zoo_mnist.json",
                    default_epochs=6)
    p.add_argument("--activations", default=",".join(ACTIVATIONS),
                   help="comma-separated subset of: " + ", ".join(ACTIVATIONS))
    p.add_argument("--model", default="lenet5", help="architecture from the model registry")
    p.add_argument("--val-size", type=int, default=5000, help="seeded stratified validation split")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--schedule", default="cosine", choices=("cosine", "step", "constant"))
    p.add_argument("--no-splash-calibration", action="store_true",
                   help="keep SPLASH's default unit-scale hinge offsets")
    args = p.parse_args(argv)
    names = [a.strip() for a in args.activations.split(",") if a.strip()]
    unknown = [a for a in names if a not in ACTIVATIONS]
    if not names or unknown:
        p.error(f"unknown activation(s) {unknown}; choose from {', '.join(ACTIVATIONS)}")
    args.activations = names
    if args.epochs < 1:
        p.error("--epochs must be >= 1")
    if args.quick:
        args.epochs = 1
    args.out = str(H.quick_output(args.out, default=p.get_default("out"), quick=args.quick,
                                script="activation_zoo_mnist"))
    return args


def train_one(name: str, spec: str, data: dict[str, Any], args: argparse.Namespace,
              device: torch.device) -> dict[str, Any]:
    """Train one activation's network; returns its row of the results table."""
    train, val, test = data["train"], data["val"], data["test"]
    # Same initial weights for every activation: the conv/linear layers draw from the same
    # seeded stream (the activations' own parameters are initialised deterministically).
    with torch.random.fork_rng():
        torch.manual_seed(args.seed)
        model = create_model(args.model, dataset="mnist", activation=spec)
    calibrated: list[str] = []
    if name == "splash" and not args.no_splash_calibration:
        calibrated = calibrate_splash(model, train.x(slice(0, 512)))
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
                      lr=args.lr, weight_decay=args.weight_decay, schedule=args.schedule,
                      seed=args.seed, device=str(device))
    t0 = time.perf_counter()
    trainer = Trainer(model, train, val, cfg, progress=args.progress)
    history = trainer.fit()
    train_seconds = time.perf_counter() - t0
    model.eval()
    test_acc = accuracy(model, test)
    val_acc = history[-1]["val_acc"]
    row = {
        "activation": name,
        "spec": spec,
        "params": sum(p.numel() for p in model.parameters()),
        "epochs": len(history),
        "train_acc_last_epoch": history[-1]["train_acc"],
        "val_acc": val_acc,
        "test_acc": test_acc,
        "train_seconds": train_seconds,
        "seconds_per_epoch": train_seconds / len(history),
        "splash_calibrated_layers": calibrated or None,
        "history": history,
    }
    sub = "quick/zoo" if args.quick else "zoo"
    ckpt = save_checkpoint(
        Path(args.runs_dir) / sub / name / "final", model, epoch=len(history), config=cfg,
        metrics={"val_accuracy": val_acc, "test_accuracy": test_acc},
        history=history, data=data["desc"], extra={"experiment": "activation_zoo_mnist"})
    row["checkpoint"] = str(ckpt)
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    args = parse_args(argv)
    H.setup_threads(args.threads)
    device = H.resolve_device(args.device)
    full = H.load_data("mnist", "train", args.data_root, quick=args.quick)
    test = H.load_data("mnist", "test", args.data_root, quick=args.quick)
    val_size = 300 if args.quick else args.val_size
    train, val = train_val_split(full, val_size=val_size, seed=args.seed)
    desc = {"dataset": "mnist", "source": H.data_source(args.data_root, quick=args.quick),
            "n_train": len(train), "n_val": len(val), "n_test": len(test),
            "val_size": val_size, "split_seed": args.seed, "quick": args.quick}
    data = {"train": train, "val": val, "test": test, "desc": desc}
    print(f"MNIST {args.model}: {len(train)} train / {len(val)} val / {len(test)} test, "
          f"{args.epochs} epoch(s), {args.optimizer} lr {args.lr} {args.schedule}, "
          f"device {device}, {args.threads} thread(s)")

    rows = []
    for name in args.activations:
        row = train_one(name, ACTIVATIONS[name], data, args, device)
        rows.append(row)
        print(f"  {name:10s} val {row['val_acc']:.4f}  test {row['test_acc']:.4f}  "
              f"({row['train_seconds']:.0f} s)", flush=True)

    by = {r["activation"]: r for r in rows}
    summary: dict[str, Any] = {}
    if "relu" in by:
        summary["test_acc_minus_relu_pp"] = {
            r["activation"]: 100 * (r["test_acc"] - by["relu"]["test_acc"]) for r in rows}
    summary["best_test"] = max(rows, key=lambda r: r["test_acc"])["activation"]
    summary["best_val"] = max(rows, key=lambda r: r["val_acc"])["activation"]

    table = H.format_table(
        [{**r, "test_pct": 100 * r["test_acc"], "val_pct": 100 * r["val_acc"]} for r in rows],
        [("activation", "activation", ""), ("val_pct", "val acc %", ".2f"),
         ("test_pct", "test acc %", ".2f"), ("epochs", "epochs", "d"),
         ("train_seconds", "train s", ".0f"), ("params", "params", "d")])
    print()
    print(table)
    print(f"best on validation: {summary['best_val']}; best on test: {summary['best_test']}")
    out = H.write_results(args.out, script="experiments/activation_zoo_mnist.py", args=args,
                        started=started,
                        results={"data": desc, "train_config": {
                            "optimizer": args.optimizer, "lr": args.lr,
                            "weight_decay": args.weight_decay, "schedule": args.schedule,
                            "batch_size": args.batch_size, "epochs": args.epochs,
                            "splash_calibration": not args.no_splash_calibration},
                            "rows": rows, "summary": summary, "table": table})
    print(f"wrote {out}")
    return {"rows": rows, "summary": summary}


if __name__ == "__main__":
    H.run_script(main)
