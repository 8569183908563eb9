"""Experiment: adversarial training on MNIST at ε = 0.3 (fast AT, PGD-AT, or fast AT then PGD-AT).

Targets (issue 12): clean accuracy >= 98 % and robust accuracy >= 88 % on the first 1000 test
images under robustact's evaluation at ε = 0.3 (anchors: Madry et al. ~89 % under PGD, AutoAttack
88.5 % on their model). Wong et al.'s MNIST settings: FGSM from a uniform random start, step
α = 0.375 (= 1.25ε), batch 100, Adam; our schedule: ``--warmup`` linear warm-up epochs then
cosine (``--warmup`` = half the epochs is close to their triangular cycle).

What reached the target on a 2-core CPU (results/README.md): a small CNN
(``smallcnn:width=24,hidden=150``, 2.5 M multiply-adds), fast AT for 10 epochs, then PGD-10 AT
for 8 epochs from those weights (``--init``) with a weight average (``--ema 0.999``). The same
recipe on the narrower ``width=16,hidden=100`` stops 0.3-0.6 points short. Measured on the way:
fast AT on Madry et al.'s CNN and on the 32/64-filter ``smallcnn`` overfits catastrophically
(PGD accuracy 0 % through the 2-3 epochs run); on width 24 the guard's PGD accuracy sits at
0-14 % in epochs 1-4 (it warns) and recovers to 89 % by epoch 9; PGD-10 AT from scratch stays
at chance for 3 epochs; PGD-3 AT (α = 0.25) collapses the clean accuracy; a TRADES fine-tune
costs clean accuracy (97.9 %) for no robust gain; the weight average changes robust accuracy
by at most 0.2 points.

    python experiments/adv_train_mnist.py --model smallcnn:width=24,hidden=150 --epochs 10 \
        --lr 5e-3 --warmup 5 --run-name adv_w24_fast                        # stage 1: fast AT
    python experiments/adv_train_mnist.py --model smallcnn:width=24,hidden=150 \
        --init runs/adv_w24_fast/final --recipe pgd --steps 10 --epochs 8 --lr 2e-3 \
        --warmup 1 --ema 0.999 --run-name adv_w24_pgd                       # stage 2: PGD-AT
    python experiments/adv_train_mnist.py --eval-only --run-name adv_w24_pgd --autoattack
    python experiments/adv_train_mnist.py --quick               # smoke run on synthetic data:
                       # 1 epoch on 400 images, 50 evaluated, 10-step APGD (seconds, runs/quick/)

Evaluation (first ``--n-eval`` test images, ε only): clean accuracy, optionally PGD-40 (α 0.01,
Madry's attack; ``--pgd40``), and a robustact protocol of FGSM + APGD-CE + APGD-DLR (100 steps
each; the standard protocol without Square and DeepFool, which do not fit a CPU budget on this
model); the worst
case over attacks is reported. AutoAttack (``pyautoattack``, installed with ``--no-deps``,
benchmark-only; the runner of ``scripts/eval_models.py``) runs when ``--autoattack`` is given.
Reads the real MNIST from ``--data-root`` or ``$ROBUSTACT_DATA`` (one ``error:`` line when it is
missing). Writes ``results/adv_train_mnist.json``; the checkpoint goes to runs/ (not committed).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import harness as H

from robustact.attacks.pgd import PGD
from robustact.checkpoint import load_checkpoint, save_checkpoint
from robustact.core.spec import parse_spec
from robustact.data import train_val_split
from robustact.evaluate import evaluate, summarize
from robustact.models import create_model
from robustact.train import TrainConfig, seeded
from robustact.train.adversarial import adversarial_spec, adversarial_train

SCRIPT = "adv_train_mnist"
EPS = 0.3


def protocol(steps: int = 100) -> dict:
    """FGSM + APGD-CE + APGD-DLR at ε. The real runs use 100 APGD steps (``standard-cpu`` v1);
    ``--quick`` uses fewer under another name, so its table cannot pass for the real protocol."""
    name = "standard-cpu" if steps == 100 else f"standard-cpu-apgd{steps}"
    return {"name": name, "version": 1, "entries": [
        {"key": "fgsm", "attack": {"name": "fgsm"}, "role": "single_step", "eps": "main",
         "on": "all"},
        {"key": "apgd-ce", "attack": {"name": "apgd", "steps": steps, "loss": "ce"},
         "role": "standard", "eps": "main", "on": "all"},
        {"key": "apgd-dlr", "attack": {"name": "apgd", "steps": steps, "loss": "dlr"},
         "role": "loss_variant", "eps": "main", "on": "survivors", "min_classes": 3},
    ]}


def main(argv: list[str] | None = None) -> dict:
    p = H.base_parser(__doc__.splitlines()[0], default_out=f"results/{SCRIPT}.json",
                      default_epochs=6)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--recipe", default="fast", choices=["fast", "pgd", "mix", "trades"])
    p.add_argument("--model", default="madry_mnist",
                   help="zoo spec, e.g. madry_mnist or smallcnn:width=16,hidden=100")
    p.add_argument("--alpha", type=float, default=None, help="attack step (recipe default)")
    p.add_argument("--steps", type=int, default=None, help="PGD/TRADES steps (recipe default)")
    p.add_argument("--warmup", type=int, default=1,
                   help="linear warm-up epochs before the cosine decay (epochs/2: a cycle)")
    p.add_argument("--run-name", default="adv_mnist", help="checkpoint folder under --runs-dir")
    p.add_argument("--init", default=None,
                   help="start from this checkpoint's weights (same architecture), e.g. a "
                        "fast-AT run to fine-tune with PGD-AT")
    p.add_argument("--ema", type=float, default=None,
                   help="average the weights (EMA decay per step, e.g. 0.999; TrainConfig.ema)")
    p.add_argument("--n-eval", type=int, default=1000)
    p.add_argument("--eval-only", action="store_true")
    p.add_argument("--autoattack", action="store_true")
    p.add_argument("--pgd40", action="store_true", help="also PGD-40 (Madry's attack)")
    a = p.parse_args(argv)
    started = time.perf_counter()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    H.setup_threads(a.threads)
    a.out = H.quick_output(a.out or None, default=p.get_default("out"), quick=a.quick,
                           script=SCRIPT)
    # a smoke run never touches the real run's checkpoint (nor, above, its results file)
    run = Path(a.runs_dir) / ("quick/adv_mnist" if a.quick else a.run_name)
    train = H.load_data("mnist", "train", a.data_root, quick=a.quick)
    test = H.load_data("mnist", "test", a.data_root, quick=a.quick)
    apgd_steps = 100
    if a.quick:  # seconds: 400 stand-in images, one epoch, 50 evaluated, short APGD
        train, a.epochs, a.n_eval, apgd_steps = train.subset(torch.arange(400)), 1, 50, 10
    train, val = train_val_split(train, val_size=min(1000, len(train) // 10), seed=a.seed)
    results: dict = {"data": H.data_source(a.data_root, quick=a.quick)}
    if not a.eval_only:
        spec = adversarial_spec(a.recipe, EPS, alpha=a.alpha, steps=a.steps)
        config = TrainConfig(epochs=a.epochs, batch_size=100, optimizer="adam", lr=a.lr,
                             weight_decay=0.0, schedule="cosine",
                             warmup_epochs=min(a.warmup, a.epochs), seed=a.seed,
                             device=a.device, adv=spec, ema=a.ema)
        arch, kwargs = parse_spec(a.model)
        with seeded(a.seed, "model"):
            model = create_model(arch, dataset="mnist", **kwargs)
        if a.init:
            start, start_card = load_checkpoint(a.init)
            model.load_state_dict(start.state_dict())  # a mismatch names the keys and stops
            results["init"] = {"checkpoint": a.init, "train": start_card.get("train")}
        t0 = time.perf_counter()
        history, trainer = adversarial_train(model, train, val, config, out_dir=run / "train",
                                             progress=a.progress)
        results["train_seconds"] = time.perf_counter() - t0
        results["history"] = history
        results["adv"] = spec
        save_checkpoint(run / "final", model, epoch=len(history), config=config,
                        history=history, metrics={"train_seconds": results["train_seconds"]},
                        data={"dataset": "mnist", "classes": list(train.classes),
                              "n_train": len(train), "n_val": len(val)})
    model, card = load_checkpoint(run / "final")
    model.eval()
    results.setdefault("adv", (card.get("train") or {}).get("adv"))
    results.setdefault("history", card.get("history"))
    results.setdefault("train_seconds", (card.get("metrics") or {}).get("train_seconds"))
    x = test.images[:a.n_eval].float().div(255)
    y = test.labels[:a.n_eval].long()
    robust = []
    if a.pgd40:
        t0 = time.perf_counter()
        pgd = H.attack_metrics(PGD(EPS, 0.01, 40, restarts=1), model, x, y)
        results["pgd40"] = {"accuracy": pgd["accuracy"], "seconds": time.perf_counter() - t0}
        robust.append(pgd["accuracy"])
    t0 = time.perf_counter()
    table = evaluate(model, x, y, protocol(apgd_steps), eps=EPS, eps_grid=[EPS],
                     progress=a.progress)
    s = summarize(table)
    results["robustact"] = {"summary": s, "seconds": time.perf_counter() - t0}
    results["clean_accuracy"] = s["clean_accuracy"]
    results["robust_accuracy"] = min([s["per_eps"][repr(EPS)]["worst_case"], *robust])
    if a.autoattack:  # the benchmark's runner (pyautoattack, benchmark-only, optional)
        from eval_models import run_autoattack  # noqa: PLC0415
        aa = run_autoattack(model, x, y, eps=EPS, seed=a.seed)
        results["autoattack"] = {k: v for k, v in aa.items() if not k.startswith("_")}
    print({k: v for k, v in results.items() if k not in ("history", "robustact")})
    H.save_if_asked(a, script=f"{SCRIPT}.py", started=started, results=results)
    return results


if __name__ == "__main__":
    H.run_script(main)
