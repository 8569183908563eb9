"""robustact's attacks against torchattacks and the Adversarial Robustness Toolbox (ART).

Same model, same images, same settings where the libraries allow it: for each attack we record
the wall time, the success rate among the correctly classified images and the median L2 / L∞
norm of the successful perturbations, all recomputed here from the returned images (no
library's own bookkeeping is trusted), plus whether fixed-budget attacks stayed in their budget.
Then a table of robustact / best-peer ratios and the issue's targets, met or not.

    python benchmarks/bench_attacks_peers.py --model runs/mnist_lenet5/last
    python benchmarks/bench_attacks_peers.py --dataset cifar10 --model runs/cifar_resnet20/last \\
        --n 100 --out results/attacks_peers_cifar10.json

MNIST without ``--model`` trains a LeNet-5 in-script (a few epochs, ≥ 98.5 % wanted). CIFAR-10
without ``--model`` runs a randomly initialised ResNet-20 and reports timings only: success
rates on an untrained model mean nothing. Peers that are not installed are skipped and say so.
CPU threads default to 1 (see ``benchmarks/_common.setup_threads``); every library gets the
same threads and one untimed warm-up call on two images.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import format_table, resolve_data_root, setup_threads, write_results  # noqa: E402

from robustact import attacks as ra  # noqa: E402
from robustact.data import load_dataset  # noqa: E402
from robustact.models import create_model  # noqa: E402

AttackFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]

#: Budgets and PGD settings per dataset (MNIST: Madry et al.; CIFAR-10: the usual 8/255).
SETTINGS: dict[str, dict[str, float | int]] = {
    "mnist": {"eps": 0.3, "alpha": 0.01, "pgd_steps": 40},
    "cifar10": {"eps": 8 / 255, "alpha": 2 / 255, "pgd_steps": 20},
}


# --- the attacks, library by library -----------------------------------------------------------

def robustact_attacks(s: dict[str, Any], square_queries: int, cw_steps: int
                      ) -> dict[str, AttackFn]:
    eps = s["eps"]

    def run(attack: ra.Attack) -> AttackFn:
        return lambda m, x, y: attack(m, x, y).x_adv

    return {
        "fgsm": run(ra.FGSM(eps)),
        "pgd": run(ra.PGD(eps, alpha=s["alpha"], steps=s["pgd_steps"], random_start=True)),
        "apgd_ce": run(ra.APGD(eps, steps=100)),
        "cw_l2": run(ra.CarliniWagnerL2(steps=cw_steps, binary_search_steps=9, lr=0.01,
                                        c_init=1e-2)),
        "deepfool_l2": run(ra.DeepFool("l2", steps=50, overshoot=0.02, candidates=10)),
        "deepfool_linf": run(ra.DeepFool("linf", steps=50, overshoot=0.02, candidates=10)),
        "trust_region_l2": run(ra.TrustRegion("l2", radius=0.01, steps=40)),
        "square": run(ra.Square(eps, n_queries=square_queries, p_init=0.8, seed=0)),
    }


def torchattacks_attacks(s: dict[str, Any], square_queries: int, cw_steps: int
                         ) -> dict[str, AttackFn]:
    import torchattacks as ta

    eps = s["eps"]
    return {
        "fgsm": lambda m, x, y: ta.FGSM(m, eps=eps)(x, y),
        "pgd": lambda m, x, y: ta.PGD(m, eps=eps, alpha=s["alpha"], steps=s["pgd_steps"],
                                      random_start=True)(x, y),
        "apgd_ce": lambda m, x, y: ta.APGD(m, eps=eps, steps=100, loss="ce")(x, y),
        # torchattacks' C&W has no binary search on c; c = 1 is its recommended setting
        "cw_l2": lambda m, x, y: ta.CW(m, c=1.0, kappa=0, steps=cw_steps, lr=0.01)(x, y),
        "deepfool_l2": lambda m, x, y: ta.DeepFool(m, steps=50, overshoot=0.02)(x, y),
        "square": lambda m, x, y: ta.Square(m, eps=eps, n_queries=square_queries, p_init=0.8,
                                            loss="margin", seed=0)(x, y),
    }


def art_attacks(s: dict[str, Any], square_queries: int, cw_steps: int, batch: int
                ) -> dict[str, AttackFn]:
    from art.attacks.evasion import (
        AutoProjectedGradientDescent,
        CarliniL2Method,
        DeepFool,
        FastGradientMethod,
        ProjectedGradientDescent,
        SquareAttack,
    )
    from art.estimators.classification import PyTorchClassifier

    eps = s["eps"]

    def wrap(make: Callable[[Any], Any]) -> AttackFn:
        def fn(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            clf = PyTorchClassifier(model=m, loss=nn.CrossEntropyLoss(),
                                    input_shape=tuple(x.shape[1:]), nb_classes=10,
                                    clip_values=(0.0, 1.0), device_type="cpu")
            adv = make(clf).generate(x=x.numpy(), y=y.numpy())
            return torch.from_numpy(np.asarray(adv, dtype=np.float32))
        return fn

    return {
        "fgsm": wrap(lambda c: FastGradientMethod(c, eps=eps, batch_size=batch)),
        "pgd": wrap(lambda c: ProjectedGradientDescent(
            c, eps=eps, eps_step=s["alpha"], max_iter=s["pgd_steps"], num_random_init=1,
            batch_size=batch, verbose=False)),
        "apgd_ce": wrap(lambda c: AutoProjectedGradientDescent(
            c, eps=eps, eps_step=2 * eps, max_iter=100, nb_random_init=1, batch_size=batch,
            loss_type="cross_entropy", verbose=False)),
        "cw_l2": wrap(lambda c: CarliniL2Method(
            c, confidence=0.0, learning_rate=0.01, binary_search_steps=9, max_iter=cw_steps,
            initial_const=1e-2, batch_size=batch, verbose=False)),
        "deepfool_l2": wrap(lambda c: DeepFool(c, max_iter=50, epsilon=0.02, nb_grads=10,
                                               batch_size=batch, verbose=False)),
        "square": wrap(lambda c: SquareAttack(c, norm=np.inf, eps=eps, max_iter=square_queries,
                                              p_init=0.8, nb_restarts=1, batch_size=batch,
                                              verbose=False)),
    }


#: attack -> (norm it is judged in, fixed budget?)
KIND: dict[str, tuple[str, bool]] = {
    "fgsm": ("linf", True), "pgd": ("linf", True), "apgd_ce": ("linf", True),
    "square": ("linf", True), "cw_l2": ("l2", False), "deepfool_l2": ("l2", False),
    "deepfool_linf": ("linf", False), "trust_region_l2": ("l2", False),
}


# --- measuring -----------------------------------------------------------------------------------

def measure(fn: AttackFn, model: nn.Module, x: torch.Tensor, y: torch.Tensor, correct: torch.Tensor,
            attack: str, eps: float, batch: int
            ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """One timed run: the summary row, and per-sample (broken, L2, L∞) for paired comparisons."""
    fn(model, x[:2], y[:2])  # warm-up, untimed
    t0 = time.perf_counter()
    adv = torch.cat([fn(model, x[i:i + batch], y[i:i + batch]).detach().float()
                     for i in range(0, x.shape[0], batch)])
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        pred = torch.cat([model(adv[i:i + 500]).argmax(1) for i in range(0, adv.shape[0], 500)])
    delta = (adv - x).flatten(1)
    l2, linf = delta.norm(dim=1), delta.abs().amax(1)
    in_box = bool(((adv >= 0) & (adv <= 1)).all())
    ok = (pred != y) & correct
    norm, budgeted = KIND[attack]
    row: dict[str, Any] = {
        "seconds": seconds,
        "success_rate": float(ok.sum()) / max(1, int(correct.sum())),
        "median_l2": float(l2[ok].median()) if ok.any() else None,
        "median_linf": float(linf[ok].median()) if ok.any() else None,
        "in_box": in_box,
    }
    if budgeted:
        row["in_budget"] = float((linf[correct] <= eps + 1e-5).float().mean())
    return row, {"ok": ok, "l2": l2, "linf": linf}


# --- model and data ------------------------------------------------------------------------------

def train_lenet_quickly(root: Path, seed: int, epochs: int) -> nn.Module:
    """A LeNet-5 in a few epochs (SGD, momentum 0.9, lr 0.05 then ×0.1 for the last epoch)."""
    ds = load_dataset("mnist", split="train", root=root)
    x, y = ds.x(), ds.y()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model("lenet5", dataset="mnist")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = 0.05 if epoch < epochs - 1 else 0.005
        model.train()
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], 128):
            b = perm[i:i + 128]
            opt.zero_grad()
            F.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
        print(f"  trained epoch {epoch + 1}/{epochs}", flush=True)
    return model.eval()


def load_model(args: argparse.Namespace, root: Path) -> tuple[nn.Module, dict[str, Any]]:
    if args.model:
        from robustact.train import load_checkpoint

        model, card = load_checkpoint(args.model)
        return model.eval(), {"source": str(args.model), "config": card.get("model"),
                              "trained": True}
    if args.dataset == "mnist":
        print(f"no --model: training a LeNet-5 for {args.train_epochs} epochs", flush=True)
        model = train_lenet_quickly(root, args.seed, args.train_epochs)
        return model, {"source": f"trained in-script ({args.train_epochs} epochs)",
                       "config": model.robustact_config, "trained": True}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = create_model("resnet20", dataset=args.dataset)
    return model.eval(), {"source": "random init (timing only)",
                          "config": model.robustact_config, "trained": False}


# --- main ---------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", choices=sorted(SETTINGS), default="mnist")
    p.add_argument("--model", default=None, help="robustact checkpoint (train.load_checkpoint)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--n", type=int, default=500, help="first n test images")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--train-epochs", type=int, default=4, help="MNIST without --model")
    p.add_argument("--square-queries", type=int, default=5000)
    p.add_argument("--cw-steps", type=int, default=100)
    p.add_argument("--attacks", default=",".join(KIND), help="comma-separated subset")
    p.add_argument("--libraries", default="robustact,torchattacks,art")
    p.add_argument("--skip", default="",
                   help="comma-separated library:attack pairs not to run (e.g. art:cw_l2, "
                        "whose numpy C&W takes ~20 min on 500 MNIST images)")
    p.add_argument("--out", default=None,
                   help="results JSON (default results/attacks_peers_<dataset>.json)")
    return p.parse_args(argv)


def ratios(rows: list[dict[str, Any]], samples: dict[tuple[str, str], dict[str, torch.Tensor]]
           ) -> list[dict[str, Any]]:
    """Per attack and peer: robustact's time and success against that peer's, and the median
    norm ratio on the images *both* broke (a peer that only breaks the easy images would
    otherwise look like it finds smaller perturbations)."""
    out = []
    for row in rows:
        attack, lib = row["attack"], row["library"]
        mine = next((r for r in rows if r["attack"] == attack and r["library"] == "robustact"),
                    None)
        if lib == "robustact" or mine is None:
            continue
        key = KIND[attack][0]
        a, b = samples[(attack, "robustact")], samples[(attack, lib)]
        both = a["ok"] & b["ok"]
        ratio = (float(a[key][both].median()) / float(b[key][both].median())
                 if both.any() and float(b[key][both].median()) > 0 else None)
        out.append({
            "attack": attack,
            "peer": lib,
            "time_ratio": mine["seconds"] / row["seconds"],
            "success_diff": mine["success_rate"] - row["success_rate"],
            "both_broken": int(both.sum()),
            f"median_{key}_ratio_on_both": ratio,
        })
    return out


def targets(rows: list[dict[str, Any]], table: list[dict[str, Any]], trained: bool,
            dataset: str) -> dict[str, Any]:
    """The issue's targets, each True/False with the numbers behind it."""
    if not trained:
        return {"note": "untrained model: timing only, no success targets"}
    get = {(r["attack"], r["library"]): r for r in rows}
    t: dict[str, Any] = {}
    pgd = get.get(("pgd", "robustact"))
    if pgd and dataset == "mnist":
        t["pgd40_eps0.3_success>=0.99"] = pgd["success_rate"] >= 0.99
    for attack in ("deepfool_l2", "cw_l2"):
        if (attack, "robustact") not in get:
            continue
        t[f"{attack}_success==1"] = get[(attack, "robustact")]["success_rate"] == 1.0
        paired = [r["median_l2_ratio_on_both"] for r in table
                  if r["attack"] == attack and r.get("median_l2_ratio_on_both") is not None]
        if paired:
            t[f"{attack}_median_l2_on_both<=each_peer"] = max(paired) <= 1.0
    # "never slower than the faster peer at equal or higher success": a peer that is faster
    # must also be less successful
    slower = sorted({r["attack"] for r in table
                     if r["time_ratio"] > 1.0 and r["success_diff"] <= 0})
    t["never_slower_than_fastest_peer_at_equal_or_higher_success"] = not slower
    if slower:
        t["slower_on"] = slower
    df = get.get(("deepfool_l2", "robustact"))
    full = [r for (a, lib), r in get.items()
            if a == "deepfool_l2" and lib != "robustact" and r["success_rate"] == 1.0]
    if df and full:
        speedup = min(r["seconds"] for r in full) / df["seconds"]
        t["deepfool_speedup_vs_fastest_full_success_peer"] = speedup
        t["deepfool_>=5x_faster"] = speedup >= 5.0
    return t


def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    args = parse_args(argv)
    setup_threads(args.threads)
    root = resolve_data_root(args.data_root)
    out = Path(args.out or f"results/attacks_peers_{args.dataset}.json")
    model, model_info = load_model(args, root)
    for p in model.parameters():
        p.requires_grad_(False)  # the same for every library: no weight gradients
    test = load_dataset(args.dataset, split="test", root=root)
    x, y = test.x(slice(0, args.n)), test.y(slice(0, args.n))
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    s = SETTINGS[args.dataset]
    print(f"{args.dataset}: {model_info['source']}; clean accuracy on the first {args.n} test "
          f"images {float(correct.float().mean()):.4f}", flush=True)

    wanted = [a.strip() for a in args.attacks.split(",") if a.strip()]
    unknown = sorted(set(wanted) - set(KIND))
    if unknown:
        raise SystemExit(f"unknown attacks {unknown}; choose from {list(KIND)}")
    libs: dict[str, dict[str, AttackFn]] = {}
    skipped: dict[str, str] = {}
    for lib in [v.strip() for v in args.libraries.split(",") if v.strip()]:
        try:
            if lib == "robustact":
                libs[lib] = robustact_attacks(s, args.square_queries, args.cw_steps)
            elif lib == "torchattacks":
                libs[lib] = torchattacks_attacks(s, args.square_queries, args.cw_steps)
            elif lib == "art":
                libs[lib] = art_attacks(s, args.square_queries, args.cw_steps, args.batch_size)
            else:
                raise SystemExit(f"unknown library {lib!r}")
        except ImportError as e:
            skipped[lib] = f"not installed ({e})"
            print(f"skipping {lib}: {skipped[lib]}", flush=True)

    skip = {tuple(v.strip().split(":", 1)) for v in args.skip.split(",") if ":" in v}
    rows: list[dict[str, Any]] = []
    samples: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for attack in wanted:
        for lib, fns in libs.items():
            if attack not in fns or (lib, attack) in skip:
                continue
            print(f"{attack:>16} {lib:<12}", end=" ", flush=True)
            summary, samples[(attack, lib)] = measure(fns[attack], model, x, y, correct, attack,
                                                      float(s["eps"]), args.batch_size)
            row = {"attack": attack, "library": lib, **summary}
            rows.append(row)
            print(f"{row['seconds']:8.2f} s  success {row['success_rate']:.4f}", flush=True)

    table = ratios(rows, samples)
    cols = [("attack", "attack", ""), ("library", "library", ""), ("seconds", "time s", ".2f"),
            ("success_rate", "success", ".4f"), ("median_l2", "med L2", ".4f"),
            ("median_linf", "med Linf", ".4f"), ("in_budget", "in budget", ".3f")]
    print()
    print(format_table(rows, cols))
    rcols = [("attack", "attack", ""), ("peer", "vs peer", ""),
             ("time_ratio", "time ratio", ".3f"), ("success_diff", "Δsuccess", "+.4f"),
             ("both_broken", "both broke", "d"),
             ("median_l2_ratio_on_both", "L2 ratio (both)", ".3f"),
             ("median_linf_ratio_on_both", "Linf ratio (both)", ".3f")]
    print()
    print(format_table(table, rcols))
    goal = targets(rows, table, model_info["trained"], args.dataset)
    print("\ntargets:", goal)
    path = write_results(out, script="bench_attacks_peers", args=args, started=started, results={
        "dataset": args.dataset,
        "model": model_info,
        "n": args.n,
        "clean_accuracy": float(correct.float().mean()),
        "settings": s,
        "timing_only": not model_info["trained"],
        "skipped_libraries": skipped,
        "peer_versions": peer_versions(),
        "rows": rows,
        "ratios": table,
        "targets": goal,
    })
    print(f"wrote {path}")


def peer_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("torchattacks", "art"):
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", None)
        except ImportError:
            out[name] = None
    return out


if __name__ == "__main__":
    main()
