"""Cost of one attack step vs a raw forward + input-gradient step, and vs torchattacks.

Target: an iterative attack's time per step (BIM, PGD, MIM, APGD; whole call divided by its
step count, so validation, the random start and the final judging forward are included) is at
most 1.10× the raw loop's (forward, loss, ``autograd.grad`` w.r.t. the input, nothing else).
Also times FGSM / PGD / APGD against torchattacks' on the same model and batch and prints the
success rates of both, so a speed-up cannot hide a weaker attack.

Random data of the dataset's shape and a randomly initialised model in eval mode: the cost of a
step does not depend on the weights. Each configuration is timed ``--repeats`` times,
interleaved round-robin so background load hits all of them alike; the median is reported.
On CPU the clock is the process's CPU time by default (``--clock``): on a shared machine the
wall clock mostly measures the other processes; on CUDA it is the synchronised wall clock.

    python benchmarks/bench_attack_step.py                       # CPU, LeNet-5 + ResNet-20
    python benchmarks/bench_attack_step.py --models lenet5 --steps 20 --repeats 5
    python benchmarks/bench_attack_step.py --device cuda --out results/bench_attack_step.json
    python benchmarks/bench_attack_step.py --quick   # smoke run: LeNet-5, batch 16 (runs/quick/)

torchattacks is optional here: without it the comparison rows are skipped, with a message.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import harness as H

from robustact.attacks import APGD, BIM, FGSM, MIM, PGD
from robustact.attacks.base import prepared_model

#: model name -> (dataset, ε for L∞)
CONFIGS = {"lenet5": ("mnist", 0.3), "resnet20": ("cifar10", 8 / 255)}


def build(name: str, dataset: str, device: torch.device) -> nn.Module:
    """The registry model, or a stand-in of similar cost if the registry lacks it."""
    try:
        from robustact.models import create_model

        return create_model(name, dataset=dataset).to(device).eval()
    except (ImportError, ValueError):  # pragma: no cover - only before the models land
        c = 1 if dataset == "mnist" else 3
        return nn.Sequential(nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                             nn.Flatten(), nn.Linear(512, 10)).to(device).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def raw_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    """The baseline: forward + loss + input gradient, ``steps`` times, parameter grads off."""
    with prepared_model(model):
        xa = x.clone()
        for _ in range(steps):
            xa.requires_grad_(True)
            loss = F.cross_entropy(model(xa), y, reduction="sum")
            (g,) = torch.autograd.grad(loss, xa)
            xa = xa.detach()
        del g


def timed(fn: Callable[[], Any], device: torch.device, clock: str) -> float:
    """Seconds of ``fn()``: wall clock (CUDA synchronised) or this process's CPU time."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    sync(device)
    t0 = now()
    fn()
    sync(device)
    return now() - t0


def bench_model(name: str, args: argparse.Namespace, device: torch.device,
                ta_module: Any | None) -> list[dict[str, Any]]:
    """Rows for one model; ``ta_module`` is torchattacks, or None to skip the comparison."""
    dataset, eps = CONFIGS[name]
    torch.manual_seed(args.seed)
    model = build(name, dataset, device)
    c, hw = (1, 28) if dataset == "mnist" else (3, 32)
    g = torch.Generator().manual_seed(args.seed)
    x = torch.rand(args.batch, c, hw, hw, generator=g).to(device)
    with torch.no_grad():  # labels = the model's own predictions: every sample starts correct,
        y = model(x).argmax(1)  # so no attack can skip work on already-misclassified ones
    s, alpha = args.steps, 2.5 * eps / args.steps

    ours: dict[str, tuple[Callable[[], Any], int]] = {
        "raw": (lambda: raw_loop(model, x, y, s), s),
        "BIM": (lambda: BIM(eps, alpha=alpha, steps=s, early_stop=False)(model, x, y), s),
        "PGD": (lambda: PGD(eps, alpha=alpha, steps=s, early_stop=False)(model, x, y), s),
        "MIM": (lambda: MIM(eps, alpha=alpha, steps=s, early_stop=False)(model, x, y), s),
        "APGD": (lambda: APGD(eps, steps=s, early_stop=False)(model, x, y), s),
        "FGSM": (lambda: FGSM(eps)(model, x, y), 1),
    }
    ta = {} if ta_module is None else {
        "FGSM": ta_module.FGSM(model, eps=eps),
        "PGD": ta_module.PGD(model, eps=eps, alpha=alpha, steps=s, random_start=True),
        "APGD": ta_module.APGD(model, norm="Linf", eps=eps, steps=s, n_restarts=1,
                               loss="ce", seed=args.seed),
    }
    theirs = {f"ta-{k}": (lambda a=a: a(x, y), 1) for k, a in ta.items()}

    def judged(a: Any) -> Any:
        # Equal work: robustact's result includes per-sample success, which takes one forward
        # pass on x_adv; torchattacks returns x_adv only, so add that pass to its time too.
        x_adv = a(x, y)
        with torch.no_grad():
            return model(x_adv).argmax(1) != y

    theirs_judged = {f"ta+judge-{k}": (lambda a=a: judged(a), 1) for k, a in ta.items()}
    jobs = {**ours, **theirs, **theirs_judged}
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for fn, _ in jobs.values():  # warm-up
        fn()
    for _ in range(args.repeats):
        for k, (fn, _) in jobs.items():
            times[k].append(timed(fn, device, args.clock))
    med = {k: statistics.median(v) for k, v in times.items()}
    raw_step = med["raw"] / s

    def success_ours(key: str) -> float:
        atk = {"FGSM": FGSM(eps), "PGD": PGD(eps, alpha=alpha, steps=s, early_stop=False),
               "APGD": APGD(eps, steps=s, early_stop=False)}[key]
        return atk(model, x, y).success_rate

    def success_theirs(key: str) -> float:
        x_adv = ta[key](x, y)
        with torch.no_grad():
            return float((model(x_adv).argmax(1) != y).float().mean())

    rows: list[dict[str, Any]] = []
    for k in ("BIM", "PGD", "MIM", "APGD"):
        step = med[k] / s
        rows.append({"model": name, "what": k, "ms_per_step": 1e3 * step,
                     "raw_ms_per_step": 1e3 * raw_step, "ratio_vs_raw": step / raw_step})
    for k in ta:
        rows.append({"model": name, "what": f"{k} vs torchattacks", "ms": 1e3 * med[k],
                     "ta_ms": 1e3 * med[f"ta-{k}"], "ratio_vs_ta": med[k] / med[f"ta-{k}"],
                     "ta_judged_ms": 1e3 * med[f"ta+judge-{k}"],
                     "ratio_vs_ta_judged": med[k] / med[f"ta+judge-{k}"],
                     "success": success_ours(k), "ta_success": success_theirs(k)})
    return rows


def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", default="lenet5,resnet20", help="comma list of " + ",".join(CONFIGS))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="steps of each iterative attack")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per configuration")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clock", choices=("auto", "cpu", "wall"), default="auto",
                   help="auto: CPU time of this process on CPU (robust to other processes "
                        "competing for the cores), synchronised wall clock on CUDA")
    p.add_argument("--out", default=None, help="optional results JSON")
    p.add_argument("--quick", action="store_true", help=H.QUICK_HELP)
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.batch, args.steps, args.repeats = "lenet5", 16, 2, 1
    args.out = H.quick_output(args.out, default=None, quick=args.quick, script="bench_attack_step")
    device = H.resolve_device(args.device)
    H.setup_threads(args.threads)
    if args.clock == "auto":
        args.clock = "wall" if device.type == "cuda" else "cpu"
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {list(CONFIGS)}")
    try:
        import torchattacks as ta_module
    except ImportError as e:
        ta_module = None
        print(f"skipping the torchattacks comparison: not installed ({e})", flush=True)
    rows: list[dict[str, Any]] = []
    for n in names:
        rows += bench_model(n, args, device, ta_module)
    print(f"device={device} threads={args.threads} batch={args.batch} steps={args.steps} "
          f"repeats={args.repeats} clock={args.clock} (median)")
    print(H.format_table([r for r in rows if "ratio_vs_raw" in r], [
        ("model", "model", ""), ("what", "attack", ""), ("ms_per_step", "ms/step", ".2f"),
        ("raw_ms_per_step", "raw ms/step", ".2f"), ("ratio_vs_raw", "ratio", ".3f")]))
    print()
    print(H.format_table([r for r in rows if "ratio_vs_ta" in r], [
        ("model", "model", ""), ("what", "attack", ""), ("ms", "ms", ".1f"),
        ("ta_ms", "torchattacks ms", ".1f"), ("ratio_vs_ta", "ratio", ".3f"),
        ("ta_judged_ms", "ta+judge ms", ".1f"), ("ratio_vs_ta_judged", "ratio (equal work)",
                                                 ".3f"),
        ("success", "success", ".3f"), ("ta_success", "ta success", ".3f")]))
    worst = max(r["ratio_vs_raw"] for r in rows if "ratio_vs_raw" in r)
    print(f"\nworst attack-step / raw-step ratio: {worst:.3f} (target <= 1.10)")
    if args.out:
        H.write_results(args.out, script="bench_attack_step", args=args, started=started,
                      results={"rows": rows, "worst_ratio_vs_raw": worst,
                               "torchattacks": getattr(ta_module, "__version__", None)})


if __name__ == "__main__":
    H.run_script(main)
