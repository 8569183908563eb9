"""Cost of SPLASH vs ReLU in a ResNet-20 training step (time and activation memory).

Target (issue): with S = 7, one SGD step (batch 128, CIFAR shape 3×32×32) takes ≤ 1.3× the
time and ≤ 1.5× the peak memory of the same step with ReLU. The target applies to ``splash``,
the default spec (``kernel=auto``: the compiled C++ kernel on CPU when it builds; the JSON
records which ran). For comparison: ``splash_eager`` (the fused function as eager PyTorch ops,
``kernel=eager``, the fallback) and ``splash_naive`` (the literal sum, plain autograd,
``fused=false``).

Time: median over ``--iters`` steps after ``--warmup`` steps, the models interleaved step by
step so background load hits all of them alike. Memory: on CUDA, ``max_memory_allocated`` of
one step; everywhere, the bytes of *distinct* storages autograd saves for the backward pass
(``saved_tensors_hooks``), i.e. the activation memory that differs between the models (a
tensor saved by two layers, like a ReLU output that the next convolution also keeps, counts
once).

    python benchmarks/bench_splash.py                       # CPU, 128 × 3 × 32 × 32
    python benchmarks/bench_splash.py --threads 1 --clock process   # steadier on a busy box
    python benchmarks/bench_splash.py --device cuda --out results/bench_splash.json
    python benchmarks/bench_splash.py --quick     # smoke run: batch 8, 2 steps (runs/quick/)
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import harness as H

from robustact.core.storage import atomic_write_json, environment_info
from robustact.models import create_model
from robustact.nn.splash import splash_implementation


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, int]:
    """Bytes autograd keeps for backward in one forward pass: distinct storages and raw sum."""
    distinct: dict[int, int] = {}
    raw = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal raw
        storage = t.untyped_storage()
        distinct[storage.data_ptr()] = storage.nbytes()
        raw += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return {"distinct": sum(distinct.values()), "raw": raw}


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Any:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--S", type=int, default=7)
    p.add_argument("--per-channel", action="store_true")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--iters", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--clock", choices=("wall", "process"), default="wall",
                   help="wall time, or this process's CPU time (steadier on a shared machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--quick", action="store_true", help=H.QUICK_HELP)
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.iters, args.warmup = min(args.batch_size, 8), 2, 1
    args.out = H.quick_output(args.out, default=None, quick=args.quick, script="bench_splash")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    pc = ",per_channel=true" if args.per_channel else ""
    specs = {"relu": "relu", "splash": f"splash:S={args.S}{pc}",
             "splash_eager": f"splash:S={args.S}{pc},kernel=eager",
             "splash_naive": f"splash:S={args.S}{pc},fused=false"}

    g = torch.Generator().manual_seed(args.seed)
    x = torch.rand(args.batch_size, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch_size,), generator=g).to(device)
    models, steps = {}, {}
    for name, spec in specs.items():
        torch.manual_seed(args.seed)  # same weights for every variant (script, not library)
        models[name] = create_model(args.model, dataset="cifar10", activation=spec).to(device)
        models[name].train()
        steps[name] = make_step(models[name], x, y)

    memory: dict[str, dict[str, int]] = {}
    for name, model in models.items():
        memory[name] = saved_activation_bytes(model, x, y)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            steps[name]()
            sync(device)
            memory[name]["cuda_peak_over_baseline"] = torch.cuda.max_memory_allocated(device) - base

    clock = time.perf_counter if args.clock == "wall" else time.process_time
    times: dict[str, list[float]] = {name: [] for name in models}
    for it in range(args.warmup + args.iters):
        for name, step in steps.items():
            sync(device)
            t0 = clock()
            step()
            sync(device)
            if it >= args.warmup:
                times[name].append(clock() - t0)

    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"{args.model}, batch {args.batch_size}, S={args.S}{pc}, device {device}, "
          f"threads {torch.get_num_threads()}, {args.iters} timed steps (median {args.clock} time)")
    print(f"{'variant':14s} {'step ms':>9s} {'time x':>7s} {'saved MiB':>10s} {'mem x':>6s}"
          + ("  cuda peak MiB  cuda x" if device.type == "cuda" else ""))
    results: dict[str, Any] = {}
    for name in models:
        r = {"step_seconds_median": med[name], "step_seconds": times[name],
             "time_ratio": med[name] / med["relu"],
             "saved_bytes_distinct": memory[name]["distinct"],
             "saved_bytes_raw": memory[name]["raw"],
             "memory_ratio": memory[name]["distinct"] / memory["relu"]["distinct"]}
        line = (f"{name:14s} {1e3 * med[name]:9.1f} {r['time_ratio']:7.2f} "
                f"{memory[name]['distinct'] / 2**20:10.1f} {r['memory_ratio']:6.2f}")
        if device.type == "cuda":
            peak = memory[name]["cuda_peak_over_baseline"]
            r["cuda_peak_bytes"] = peak
            r["cuda_memory_ratio"] = peak / memory["relu"]["cuda_peak_over_baseline"]
            line += f"  {peak / 2**20:13.1f} {r['cuda_memory_ratio']:6.2f}"
        print(line)
        results[name] = r
    kernel = splash_implementation(x)  # what the default spec ran (the build was tried above)
    results["splash"]["kernel"] = kernel
    ok = results["splash"]["time_ratio"] <= 1.3 and results["splash"]["memory_ratio"] <= 1.5
    print(f"targets (time <= 1.3x, memory <= 1.5x) for fused SPLASH (kernel {kernel}): "
          f"{'met' if ok else 'NOT met'}")
    if args.out:
        atomic_write_json(args.out, {"command": shlex.join(H.command_line()), "quick": args.quick,
                                     "config": {**vars(args), "out": str(args.out)},
                                     "specs": specs,
                                     "results": results, "targets_met": ok,
                                     "environment": environment_info()})


if __name__ == "__main__":
    H.run_script(main)
