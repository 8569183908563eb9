"""Differential training vs cross-entropy on CIFAR-10 cat vs dog (papers.md §4, Nar et al. 2019).

The same network, same seed, same schedule is trained twice on the 10000 cat/dog training
images: (a) with cross-entropy, (b) with differential training (pairwise loss
log(1 + exp(−wᵀ(φ(x_i) − φ(x_j)))) over all cat×dog pairs of class-balanced batches, then the
bias set to the middle of the training-set margin). Reported: train and test accuracy of both,
and the paper's headline metric, the fraction of the first ``--attack-n`` training and test
images for which PGD (L∞, 20 steps, step 2.5·ε/20, random start) finds an adversarial example,
at ε ∈ {1, 2, 4, 8}/255.

Two losses for the attack, because differential training makes logits large: the pairwise loss
keeps pushing the classes apart in score, and cross-entropy's gradient σ(−margin)·∇margin
underflows when the margin is large, which would make a CE attack look weak for the wrong
reason. ``pgd20-ce`` is the brief's attack; ``pgd20-margin`` (the C&W margin z_other − z_y,
scale-free) is the check against that gradient masking. An image already misclassified counts as
"adversarial example found" (it needs ε = 0); the fraction among correctly classified images is
in the JSON too.

Architecture choice for a 2-core CPU: ``smallcnn`` (conv 32 → conv 64 → fc 128, about 0.5 M
parameters), SGD momentum 0.9, lr 0.01, weight decay 5e-4, cosine, batch 128, no augmentation
(the metric is about the training set as well, so the training set is not perturbed).

    python experiments/differential_cifar.py                # both models + PGD, ~13 min CPU
    python experiments/differential_cifar.py --quick        # smoke run on synthetic data
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import harness as H

from robustact.attacks import PGD
from robustact.data import binary_task
from robustact.models import create_model
from robustact.models.predict import accuracy
from robustact.train import TrainConfig, Trainer, save_checkpoint
from robustact.train.recipes import differential_train

EPS_255 = (1, 2, 4, 8)  # default L-inf budgets, units of 1/255
LOSSES = ("ce", "margin")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = H.base_parser(__doc__.splitlines()[0], default_out="results/differential_cifar.json",
                    default_epochs=10)
    p.add_argument("--arch", default="smallcnn", help="architecture from the model registry")
    p.add_argument("--classes", default="cat,dog", help="the CIFAR-10 pair (second = positive)")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--augment", default="none", choices=("none", "cifar"))
    p.add_argument("--attack-n", type=int, default=500, help="first N train and test images")
    p.add_argument("--steps", type=int, default=20, help="PGD steps")
    p.add_argument("--eps", default=",".join(str(e) for e in EPS_255),
                   help="comma-separated L-inf budgets in units of 1/255")
    p.add_argument("--no-attacks", action="store_true")
    args = p.parse_args(argv)
    pair = tuple(c.strip() for c in args.classes.split(","))
    if len(pair) != 2:
        p.error(f"--classes must name two classes, got {args.classes!r}")
    args.classes = pair
    try:
        args.eps = tuple(int(e) for e in args.eps.split(",") if e.strip())
    except ValueError:
        p.error(f"--eps must be comma-separated integers (units of 1/255), got {args.eps!r}")
    if not args.eps or min(args.eps) < 1:
        p.error("--eps needs at least one budget >= 1")
    if args.epochs < 1 or args.attack_n < 1 or args.steps < 1:
        p.error("--epochs, --attack-n and --steps must be >= 1")
    if args.quick:
        args.epochs = 1
        args.attack_n = min(args.attack_n, 32)
        args.steps = min(args.steps, 5)
        args.eps = (args.eps[0], args.eps[-1])
    args.out = str(H.quick_output(args.out, default=p.get_default("out"), quick=args.quick,
                                script="differential_cifar"))
    return args


def train_model(kind: str, train: Any, test: Any, args: argparse.Namespace,
                device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """Train one model (``kind`` "ce" or "differential"); returns it (eval mode) and its row."""
    with torch.random.fork_rng():
        torch.manual_seed(args.seed)  # same initial weights for both losses
        model = create_model(args.arch, dataset="cifar10", num_classes=2)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer="sgd",
                      lr=args.lr, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                      augment=args.augment, seed=args.seed, device=str(device),
                      balanced=(kind == "differential"))
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if kind == "differential":
        history, bias = differential_train(model, train, None, cfg, progress=args.progress)
        extra["bias"] = bias
    else:
        history = Trainer(model, train, None, cfg, progress=args.progress).fit()
    seconds = time.perf_counter() - t0
    model.eval()
    row = {"model": kind, "train_acc": accuracy(model, train), "test_acc": accuracy(model, test),
           "epochs": len(history), "train_seconds": seconds, **extra, "history": history}
    sub = "quick/differential" if args.quick else "differential"
    ckpt = save_checkpoint(
        Path(args.runs_dir) / sub / kind / "final", model, epoch=len(history), config=cfg,
        history=history, metrics={"train_accuracy": row["train_acc"],
                                  "test_accuracy": row["test_acc"]},
        data={"dataset": "cifar10", "classes": list(train.classes), "n_train": len(train),
              "n_test": len(test)},
        extra={"experiment": "differential_cifar", "loss": kind, **extra})
    row["checkpoint"] = str(ckpt)
    return model, row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    args = parse_args(argv)
    H.setup_threads(args.threads)
    device = H.resolve_device(args.device)
    t_load = time.perf_counter()
    train = binary_task(H.load_data("cifar10", "train", args.data_root, quick=args.quick),
                        args.classes)
    test = binary_task(H.load_data("cifar10", "test", args.data_root, quick=args.quick),
                       args.classes)
    print(f"CIFAR-10 {train.classes[0]} (0) vs {train.classes[1]} (1): {len(train)} train / "
          f"{len(test)} test; {args.arch}, {args.epochs} epoch(s), device {device}, "
          f"{args.threads} thread(s); data loaded in {time.perf_counter() - t_load:.1f} s")

    models, rows = {}, []
    for kind in ("ce", "differential"):
        model, row = train_model(kind, train, test, args, device)
        models[kind] = model
        rows.append(row)
        print(f"  {kind:12s} train {row['train_acc']:.4f}  test {row['test_acc']:.4f}  "
              f"({row['train_seconds']:.0f} s)", flush=True)
    acc_table = H.format_table(
        [{**r, "train_pct": 100 * r["train_acc"], "test_pct": 100 * r["test_acc"]} for r in rows],
        [("model", "training", ""), ("train_pct", "train acc %", ".2f"),
         ("test_pct", "test acc %", ".2f"), ("epochs", "epochs", "d"),
         ("train_seconds", "train s", ".0f")])
    print("\n" + acc_table)

    attack_rows: list[dict[str, Any]] = []
    if not args.no_attacks:
        splits = {"train": train, "test": test}
        for kind, model in models.items():
            for split, ds in splits.items():
                n = min(args.attack_n, len(ds))
                x, y = ds.x(slice(0, n)).to(device), ds.y(slice(0, n)).to(device)
                for e in args.eps:
                    row: dict[str, Any] = {"model": kind, "split": split, "eps_255": e}
                    for loss in LOSSES:
                        attack = PGD(e / 255, steps=args.steps, loss=loss, seed=args.seed,
                                     early_stop=False)  # last iterate, as committed
                        r = H.attack_metrics(attack, model, x, y)
                        row[f"found_{loss}"] = r["success_rate"]
                        row[f"{loss}_detail"] = {**r, "attack_spec": attack.spec()}
                    row["n"] = n
                    attack_rows.append(row)
                print(f"  attacked {kind} / {split}", flush=True)
    attack_table = H.format_table(
        [{**r, "ce_pct": 100 * r["found_ce"], "margin_pct": 100 * r["found_margin"]}
         for r in attack_rows],
        [("model", "training", ""), ("split", "split", ""), ("eps_255", "eps x255", "d"),
         ("n", "n", "d"), ("ce_pct", "found % (PGD-CE)", ".1f"),
         ("margin_pct", "found % (PGD-margin)", ".1f")])
    if attack_rows:
        print("\nfraction of images with an adversarial example found (PGD-"
              f"{args.steps}, L-inf)\n" + attack_table)

    out = H.write_results(args.out, script="experiments/differential_cifar.py", args=args,
                        started=started,
                        results={"data": {"classes": list(train.classes), "n_train": len(train),
                                          "n_test": len(test),
                                          "source": H.data_source(args.data_root,
                                                                quick=args.quick)},
                                 "models": rows, "attacks": attack_rows,
                                 "tables": {"accuracy": acc_table, "attacks": attack_table}})
    print(f"wrote {out}")
    return {"models": rows, "attacks": attack_rows}


if __name__ == "__main__":
    H.run_script(main)
