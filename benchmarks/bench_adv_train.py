"""Cost of one adversarial-training step over one plain training step, per recipe.

Targets (issue 12): fast AT ≈ 2×, PGD-k ≈ (k + 1)×, within 10 % of that ideal. The ideals used
here count one "unit" per forward + backward of the batch: a plain step is 1; PGD-k is k attack
steps + the training step = k + 1; fast AT is PGD-1 = 2; mix (FGSM on a fraction f of the batch)
is 1 + f; TRADES is k attack steps + a training step with two forward passes = k + 2. An attack
step skips the weight gradients, so it costs a little less than a training step, and every
attack call ends with one judging forward pass (success check); both are inside the measured
ratio.

A step = the recipe's batch hook and loss, backward, optimizer step, exactly as the trainer
runs it (same callables). Configurations are timed round-robin (``--repeats``) in one process,
median reported; on CPU the clock is the process's CPU time (other processes' load does not
count).

    python benchmarks/bench_adv_train.py [--model madry_mnist] [--steps 10] [--repeats 7]
    python benchmarks/bench_adv_train.py --quick   # smoke run: a tiny MLP on 8×8 random images,
                                                   # k = 3, 3 repeats (seconds, runs/quick/)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import harness as H

from robustact.models import create_model
from robustact.train.adversarial import adversarial_spec, recipe_parts
from robustact.train.loop import cross_entropy_loss

SCRIPT = "bench_adv_train"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="madry_mnist")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--steps", type=int, default=10, help="k of PGD-k and TRADES")
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (see setup_threads)")
    p.add_argument("--device", default="cpu", help="auto, cpu or cuda[:i]")
    p.add_argument("--quick", action="store_true", help=H.QUICK_HELP)
    p.add_argument("--out", default=f"results/{SCRIPT}.json",
                   help="results JSON ('' to write none)")
    a = p.parse_args(argv)
    started = time.perf_counter()
    H.setup_threads(a.threads)
    device = H.resolve_device(a.device)
    a.out = H.quick_output(a.out or None, default=p.get_default("out"), quick=a.quick,
                           script=SCRIPT)
    if a.quick:  # the same five recipes and code path on a model that steps in milliseconds
        a.model, a.dataset, a.batch_size, a.repeats, a.steps = "mlp", "digits", 32, 3, 3
    for name in ("batch_size", "repeats"):
        if getattr(a, name) < 1:  # an empty median would fail far from the cause
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, "
                             f"got {getattr(a, name)}")
    torch.manual_seed(0)
    model = create_model(a.model, dataset=a.dataset).to(device)
    shape = (model.in_channels, model.input_size, model.input_size)
    x = torch.rand(a.batch_size, *shape, device=device)
    y = torch.randint(0, model.num_classes, (a.batch_size,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    k = a.steps
    configs: dict[str, tuple[dict | None, float]] = {
        "plain": (None, 1.0),
        "mix (f 0.3)": (adversarial_spec("mix", a.eps, fraction=0.3), 1.3),
        "fast": (adversarial_spec("fast", a.eps), 2.0),
        f"pgd-{k}": (adversarial_spec("pgd", a.eps, steps=k), k + 1.0),
        f"trades-{k}": (adversarial_spec("trades", a.eps, steps=k), k + 2.0),
    }
    steps = {}
    for name, (spec, _) in configs.items():
        hook, loss, _ = recipe_parts(spec, model) if spec else (None, None, [])
        steps[name] = (hook, loss or cross_entropy_loss)

    def one(name: str) -> float:
        hook, loss = steps[name]
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        clock = time.perf_counter if device.type == "cuda" else time.process_time
        sync()
        t0 = clock()
        model.train()
        xb, yb = hook(model, x, y, 0) if hook is not None else (x, y)
        opt.zero_grad(set_to_none=True)
        loss(model, xb, yb)[0].backward()
        opt.step()
        sync()
        return clock() - t0

    for name in configs:  # warm-up
        one(name)
    times: dict[str, list[float]] = {n: [] for n in configs}
    for _ in range(a.repeats):
        for name in configs:
            times[name].append(one(name))
    base = statistics.median(times["plain"])
    rows = []
    for name, (_, ideal) in configs.items():
        med = statistics.median(times[name])
        ratio = med / base
        rows.append({"recipe": name, "ms": 1000 * med, "ratio": ratio, "ideal": ideal,
                     "vs_ideal": ratio / ideal})
    print(f"{a.model} on {device}, batch {a.batch_size}, {a.threads} thread(s), "
          f"median of {a.repeats}")
    print(H.format_table(rows, [("recipe", "recipe", ""), ("ms", "ms/step", ".1f"),
                                ("ratio", "× plain", ".2f"), ("ideal", "ideal", ".1f"),
                                ("vs_ideal", "ratio/ideal", ".2f")]))
    results = {"rows": rows, "model": a.model, "batch_size": a.batch_size}
    H.save_if_asked(a, script=f"{SCRIPT}.py", started=started, results=results)
    return results


if __name__ == "__main__":
    H.run_script(main)
