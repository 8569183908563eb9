"""JumpReLU on MNIST: the κ curve, the κ tuner, and accuracy under the paper's and adaptive attacks.

Protocol (papers.md §1, Erichson et al. 2019): train an ordinary ReLU network (LeNetLike by default,
or load one with ``--model``, e.g. the zoo's ``runs/zoo/relu/final`` LeNet-5), then retrofit
JumpReLU_κ at inference only, no retraining. Reported:

1. clean validation and test accuracy for κ over the paper's MNIST grid {0, 0.5, 1, 1.5} and a
   finer grid (0 … 2 in steps of 0.25 by default);
2. the tuner's choice (:func:`robustact.defenses.jumprelu_retrofit.tune_jumprelu`, on the validation
   split) for accuracy-drop budgets of 0.5 and 1.0 percentage points, on both grids;
3. accuracy under attack on the first ``--attack-n`` test images for κ = 0 and each tuned κ:
   the paper's I-FGSM (step 0.01, ≤ 40 iterations, per-sample early stop, no ε projection),
   white-box and gray-box (crafted on the κ = 0 network); PGD-40 L∞ ε = 0.3 (random start,
   step 0.01); and the adaptive BPDA versions of both (forward through JumpReLU, backward as
   through ReLU). The model stays in eval mode throughout.

Units: robustact measures perturbations in [0, 1] pixel units. The paper states its I-FGSM step
(0.01) in normalized-input units, i.e. 0.01 · 0.3081 ≈ 0.0031 in pixels on MNIST, so both steps
are run: ``ifgsm`` (0.01 px, the brief's setting, L∞ reach 0.4) and ``ifgsm-paper-units``
(0.0031 px, L∞ reach 0.12, what the paper's numbers correspond to).

Training schedule when training here: the paper's optimizer (SGD, momentum 0.9, weight decay
5e-4, lr 0.02, batch 128) with its step schedule (×0.2 at 1/3, 2/3 and 8/9 of the run)
compressed from 90 epochs to ``--epochs`` (a short CPU run).

    python experiments/jumprelu_kappa_mnist.py                                # train + evaluate
    python experiments/jumprelu_kappa_mnist.py --model runs/zoo/relu/final    # reuse a model
    python experiments/jumprelu_kappa_mnist.py --quick             # smoke run on synthetic data
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

from robustact.attacks import IFGSM, PGD, TransferAttack, with_bpda
from robustact.attacks.base import Attack
from robustact.data import (
    dataset_info,
    train_val_split,
)
from robustact.defenses.jumprelu_retrofit import (
    MNIST_KAPPA_GRID,
    retrofit_jumprelu,
    tune_jumprelu,
)
from robustact.models import create_model
from robustact.models.predict import accuracy
from robustact.train import TrainConfig, Trainer, load_checkpoint, save_checkpoint

MAX_DROPS = (0.5, 1.0)  # percentage points


def parse_grid(text: str) -> tuple[float, ...]:
    """``"0:2:0.25"`` (start:stop:step, stop included) or ``"0,0.5,1"``."""
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            n = int(round((stop - start) / step))
            return tuple(round(start + i * step, 10) for i in range(n + 1))
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad grid {text!r}: use start:stop:step or a comma-separated list") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = H.base_parser(__doc__.splitlines()[0], default_out="results/jumprelu_kappa_mnist.json",
                    default_epochs=6)
    p.add_argument("--model", default=None,
                   help="checkpoint of a trained ReLU MNIST model (skips training)")
    p.add_argument("--arch", default="lenetlike", help="architecture to train (no --model)")
    p.add_argument("--val-size", type=int, default=5000,
                   help="validation split (a loaded checkpoint's own split wins if recorded)")
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--fine-grid", type=parse_grid, default=parse_grid("0:2:0.25"))
    p.add_argument("--attack-n", type=int, default=1000, help="first N test images attacked")
    p.add_argument("--attack-kappas", type=parse_grid, default=(),
                   help="extra kappas to attack besides 0 and the tuned ones, e.g. 1.0,1.5")
    p.add_argument("--no-attacks", action="store_true")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error("--epochs must be >= 1")
    if args.attack_n < 1:
        p.error("--attack-n must be >= 1")
    if args.quick:
        args.epochs = 1
        args.attack_n = min(args.attack_n, 32)
        # a 1-epoch model tunes to κ = 0; attack one κ > 0 anyway so every code path runs
        args.attack_kappas = tuple(args.attack_kappas) or (0.5,)
    args.out = str(H.quick_output(args.out, default=p.get_default("out"), quick=args.quick,
                                script="jumprelu_kappa_mnist"))
    return args


def compressed_milestones(epochs: int) -> tuple[int, ...]:
    """The paper's 30/60/80-of-90 milestones scaled to ``epochs`` (0-based, increasing)."""
    ms = sorted({min(epochs - 1, max(1, round(epochs * f))) for f in (1 / 3, 2 / 3, 8 / 9)})
    return tuple(m for m in ms if 0 < m < epochs)


def get_model(args: argparse.Namespace, device: torch.device
              ) -> tuple[nn.Module, Any, Any, Any, dict[str, Any]]:
    """(ReLU model in eval mode, train, val, test, description) — loaded or trained here."""
    full = H.load_data("mnist", "train", args.data_root, quick=args.quick)
    test = H.load_data("mnist", "test", args.data_root, quick=args.quick)
    val_size, split_seed = (300 if args.quick else args.val_size), args.seed
    info: dict[str, Any] = {"H.data_source": H.data_source(args.data_root, quick=args.quick)}
    if args.model is not None:
        model, card = load_checkpoint(args.model, device=device)
        data = card.get("data") or {}
        if data.get("dataset") not in (None, "mnist"):
            raise ValueError(f"{args.model} was trained on {data.get('dataset')!r}, not MNIST")
        # Tune κ on the split the model did *not* train on: reuse the checkpoint's split.
        if data.get("val_size") and data.get("split_seed") is not None:
            val_size, split_seed = int(data["val_size"]), int(data["split_seed"])
        else:
            info["warning"] = ("checkpoint does not record its validation split; the split used "
                               "here may overlap its training data")
        info.update({"source": "checkpoint", "checkpoint": args.model,
                     "arch": (card.get("model") or {}).get("name"),
                     "card_metrics": card.get("metrics")})
        train, val = train_val_split(full, val_size=val_size, seed=split_seed)
    else:
        train, val = train_val_split(full, val_size=val_size, seed=split_seed)
        with torch.random.fork_rng():
            torch.manual_seed(args.seed)
            model = create_model(args.arch, dataset="mnist", activation="relu")
        cfg = TrainConfig(epochs=args.epochs, batch_size=128, optimizer="sgd", lr=args.lr,
                          momentum=0.9, weight_decay=5e-4, schedule="step",
                          milestones=compressed_milestones(args.epochs), gamma=0.2,
                          seed=args.seed, device=str(device))
        t0 = time.perf_counter()
        history = Trainer(model, train, val, cfg, progress=args.progress).fit()
        seconds = time.perf_counter() - t0
        model.eval()
        desc = {"dataset": "mnist", "n_train": len(train), "n_val": len(val),
                "val_size": val_size, "split_seed": split_seed, "quick": args.quick}
        sub = "quick/kappa" if args.quick else "kappa"
        ckpt = save_checkpoint(Path(args.runs_dir) / sub / args.arch / "final", model,
                               epoch=len(history), config=cfg, history=history, data=desc,
                               metrics={"val_accuracy": history[-1]["val_acc"]},
                               extra={"experiment": "jumprelu_kappa_mnist"})
        info.update({"source": "trained", "arch": args.arch, "checkpoint": str(ckpt),
                     "train_config": cfg.to_dict(), "train_seconds": seconds,
                     "history": history})
    info.update({"n_train": len(train), "n_val": len(val), "n_test": len(test),
                 "val_size": val_size, "split_seed": split_seed})
    model.eval()
    return model, train, val, test, info


def jump_model(model: nn.Module, kappa: float) -> nn.Module:
    """A retrofitted copy in eval mode (the original stays a ReLU model)."""
    return retrofit_jumprelu(model, kappa).eval()


def attacks_for(model: nn.Module, seed: int) -> dict[str, tuple[Attack, bool]]:
    """name -> (attack, needs BPDA wrapper). ``model`` is the κ = 0 network (gray-box source)."""
    paper_step = 0.01 * dataset_info("mnist").std[0]  # 0.01 in normalized units, in pixels
    return {
        "ifgsm": (IFGSM(alpha=0.01, steps=40), False),
        "ifgsm-paper-units": (IFGSM(alpha=paper_step, steps=40), False),
        "ifgsm-graybox": (TransferAttack(model, IFGSM(alpha=0.01, steps=40)), False),
        "ifgsm-bpda": (IFGSM(alpha=0.01, steps=40), True),
        # the last iterate, as Madry et al. and the committed results (early stopping can only
        # lower these accuracies further)
        "pgd40": (PGD(0.3, alpha=0.01, steps=40, seed=seed, early_stop=False), False),
        "pgd40-bpda": (PGD(0.3, alpha=0.01, steps=40, seed=seed, early_stop=False), True),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    args = parse_args(argv)
    H.setup_threads(args.threads)
    device = H.resolve_device(args.device)
    model, _, val, test, model_info = get_model(args, device)
    x_val, y_val = val.x().to(device), val.y().to(device)
    print(f"model: {model_info['source']} {model_info.get('arch')} "
          f"({model_info['checkpoint']}); val {len(val)}, test {len(test)}; device {device}")

    # 1. the κ curve
    kappas = sorted(set(MNIST_KAPPA_GRID) | set(args.fine_grid))
    curve = []
    for k in kappas:
        m = jump_model(model, k)
        curve.append({"kappa": k, "val_acc": accuracy(m, (x_val, y_val)),
                      "test_acc": accuracy(m, test)})
    base = curve[0]
    for r in curve:
        r["val_drop_pp"] = 100 * (base["val_acc"] - r["val_acc"])
        r["test_drop_pp"] = 100 * (base["test_acc"] - r["test_acc"])
        r["val_pct"], r["test_pct"] = 100 * r["val_acc"], 100 * r["test_acc"]
    curve_table = H.format_table(curve, [
        ("kappa", "kappa", ".2f"), ("val_pct", "val acc %", ".2f"),
        ("val_drop_pp", "val drop pp", ".2f"), ("test_pct", "test acc %", ".2f"),
        ("test_drop_pp", "test drop pp", ".2f")])
    print("\nclean accuracy vs kappa\n" + curve_table)

    # 2. the tuner
    tuning = []
    for grid_name, grid in (("paper", MNIST_KAPPA_GRID), ("fine", tuple(args.fine_grid))):
        for drop in MAX_DROPS:
            t = tune_jumprelu(model, x_val, y_val, grid=grid, max_drop=drop, progress=False)
            chosen = next(r for r in curve if r["kappa"] == t.kappa)
            tuning.append({"grid": grid_name, "max_drop_pp": drop, "kappa": t.kappa,
                           "val_acc": dict(t.curve)[t.kappa], "test_acc": chosen["test_acc"],
                           "tuning": t.to_dict()})
    tuning_table = H.format_table(
        [{**t, "val_pct": 100 * t["val_acc"], "test_pct": 100 * t["test_acc"]} for t in tuning],
        [("grid", "grid", ""), ("max_drop_pp", "max drop pp", ".1f"), ("kappa", "kappa", ".2f"),
         ("val_pct", "val acc %", ".2f"), ("test_pct", "test acc %", ".2f")])
    print("\ntuned kappa (validation split)\n" + tuning_table)

    # 3. attacks, κ = 0 against each tuned κ
    attack_rows: list[dict[str, Any]] = []
    if not args.no_attacks:
        n = min(args.attack_n, len(test))
        xa, ya = test.x(slice(0, n)).to(device), test.y(slice(0, n)).to(device)
        attack_kappas = sorted({0.0, *(t["kappa"] for t in tuning), *args.attack_kappas})
        for k in attack_kappas:
            m = jump_model(model, k)
            for name, (attack, bpda) in attacks_for(model, args.seed).items():
                if k == 0.0 and (bpda or name.endswith("graybox")):
                    continue  # identical to the plain white-box attack on the ReLU model
                target = with_bpda(m) if bpda else m
                r = H.attack_metrics(attack, target, xa, ya)
                attack_rows.append({"kappa": k, "attack": name, **r,
                                    "attack_spec": attack.spec()})
                print(f"  kappa {k:.2f} {name:18s} acc {100 * r['accuracy']:6.2f} %  "
                      f"({r['seconds']:.0f} s)", flush=True)
    attack_table = H.format_table(
        [{**r, "clean_pct": 100 * r["clean_accuracy"], "acc_pct": 100 * r["accuracy"],
          "rho_pct": 100 * r["rho_broken"] if "rho_broken" in r else None}
         for r in attack_rows],
        [("kappa", "kappa", ".2f"), ("attack", "attack", ""), ("n", "n", "d"),
         ("clean_pct", "clean %", ".1f"), ("acc_pct", "acc under attack %", ".1f"),
         ("median_norm_broken", "median Linf", ".3f"), ("rho_pct", "rho %", ".1f")])
    if attack_rows:
        print(f"\naccuracy under attack (first {attack_rows[0]['n']} test images)\n"
              + attack_table)

    out = H.write_results(args.out, script="experiments/jumprelu_kappa_mnist.py", args=args,
                        started=started,
                        results={"model": model_info, "curve": curve, "tuning": tuning,
                                 "attacks": attack_rows,
                                 "tables": {"curve": curve_table, "tuning": tuning_table,
                                            "attacks": attack_table}})
    print(f"wrote {out}")
    return {"curve": curve, "tuning": tuning, "attacks": attack_rows}


if __name__ == "__main__":
    H.run_script(main)
