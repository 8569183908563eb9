"""Certified training on MNIST, evaluated from both sides: the sandwich with AutoAttack on top.

For a checkpoint trained with ``robustact train --adv ibp`` (or ``crown-ibp``), on the first
``--n`` MNIST test images, at each ε of ``--eps``: clean accuracy; certified accuracy (IBP and
CROWN-IBP, the lower bound); robustact's default command (``evaluate``: the standard protocol,
its audit and verdict, the certified figure under it); AutoAttack standard (``pyautoattack``,
benchmark-only); the gap between the attacks' figure and the certified one; and the sandwich's
check against AutoAttack too (no certified sample may be broken by it).

    python experiments/certified_mnist.py --checkpoint \\
        results/models/certified/mnist-ibp-small/final --eps 0.1 0.3 --n 1000 \\
        --data-root DATA --out results/certified_mnist.json
    python experiments/certified_mnist.py --quick      # seconds, runs/quick/

``--quick``: an ``ibp_small`` trained 2 epochs with IBP on the synthetic MNIST stand-in, 16
images, tiny attack, audit and AutoAttack budgets.
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
from eval_models import QUICK_AUDIT, QUICK_OVERRIDES, autoattack_available, run_autoattack

from robustact.certify import certify
from robustact.data import to_float
from robustact.models import create_model
from robustact.runs.evaluate import evaluate_model
from robustact.train import TrainConfig, load_checkpoint
from robustact.train.adversarial import adversarial_train
from robustact.train.certified import certified_spec

SCRIPT = "certified_mnist"


def _quick_model(data: Any) -> torch.nn.Module:
    model = create_model("ibp_small", dataset="mnist")
    spec = certified_spec("ibp", 0.1, warmup=0, ramp=1)
    cfg = TrainConfig(epochs=2, batch_size=100, lr=1e-3, optimizer="adam", adv=spec,
                      device="cpu")
    adversarial_train(model, data, None, cfg)
    return model.eval()


def measure(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
            args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    cert = certify(model, x, y, eps=eps)
    cert_s = time.perf_counter() - t0
    quick = {"overrides": QUICK_OVERRIDES, "audit_options": QUICK_AUDIT} if args.quick else {}
    tag = "quick" if args.quick else Path(args.checkpoint).parent.name
    s = evaluate_model(model, (x, y), dataset="mnist", name=f"{tag}-eps{eps:g}", eps=eps,
                       out=Path(args.runs_dir) / SCRIPT / f"{tag}-eps{eps:g}", force=True,
                       progress=args.progress, allow_chance=args.quick, **quick)
    row: dict[str, Any] = {
        "eps": eps, "n": len(y), "clean_accuracy": s["clean_accuracy"],
        "certified_ibp": float(cert.certified_ibp.float().mean()),
        "certified_crown_ibp": float(cert.certified.float().mean()),
        "certify_seconds": cert_s, "robustact_robust_accuracy": s["robust_accuracy"],
        "robustact_certified_accuracy": s["certified_accuracy"], "verdict": s["verdict"]["label"],
        "verdict_sandwich": s["verdict"].get("sandwich"), "robustact_seconds": s["seconds"],
        "protocol": s["protocol"]}
    if autoattack_available() and not args.no_autoattack:
        aa = run_autoattack(model, x, y, eps=eps, seed=0, tiny=args.quick)
        robust = torch.from_numpy(aa.pop("_robust"))
        row["autoattack"] = aa
        row["certified_but_broken_by_autoattack"] = int((cert.certified & ~robust).sum())
        attack = min(s["robust_accuracy"], aa["robust_accuracy"])
    else:
        row["autoattack"] = ("skipped (--no-autoattack)" if args.no_autoattack
                             else "skipped: pyautoattack is not installed")
        attack = s["robust_accuracy"]
    row["attack_figure"] = attack
    row["gap_points"] = 100 * (attack - row["certified_crown_ibp"])
    print(f"eps={eps:g}: clean {row['clean_accuracy']:.1%}, certified IBP "
          f"{row['certified_ibp']:.1%} / CROWN-IBP {row['certified_crown_ibp']:.1%}, robustact "
          f"{s['robust_accuracy']:.1%}, attacks' figure {attack:.1%}, gap "
          f"{row['gap_points']:.1f} points, verdict {row['verdict']}", flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    H.add_data_root_arg(p)
    p.add_argument("--checkpoint", default="results/models/certified/mnist-ibp-small/final")
    p.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.3])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--no-autoattack", action="store_true", help="robustact's figures only")
    p.add_argument("--out", default="results/certified_mnist.json")
    p.add_argument("--quick", action="store_true", help=H.QUICK_HELP)
    args = p.parse_args()
    started = time.perf_counter()
    H.setup_threads(args.threads)
    out = H.quick_output(args.out, default="results/certified_mnist.json", quick=args.quick,
                         script=SCRIPT)
    test = H.load_data("mnist", "test", args.data_root, quick=args.quick)
    n = 16 if args.quick else args.n
    x, y = to_float(test.x(slice(0, n))), test.y(slice(0, n)).long()
    if args.quick:
        model, card = _quick_model(H.load_data("mnist", "train", None, quick=True)), {}
    else:
        model, card = load_checkpoint(args.checkpoint)
        model.eval()
    rows = [measure(model, x, y, e, args) for e in args.eps]
    if out is not None:
        H.write_results(out, script=SCRIPT, args=args, started=started,
                        results={"checkpoint": None if args.quick else args.checkpoint,
                                 "training": card.get("train"), "data": H.data_source(
                                     args.data_root, quick=args.quick), "rows": rows})
        print(f"written to {out}")


if __name__ == "__main__":
    H.run_script(main)
