"""Time per LeNet-5 training batch vs torch CPU threads, alone and next to other CPU-bound work.

Why: a user saw LeNet-5 train 35–45× slower per batch while two other CPU-bound processes ran
on a 2-core machine, far more than the CPU share it lost. The suspect is oversubscription:
torch's intra-op pool defaults to one thread per core, and its workers spin-wait for each other
at every parallel region, so when another process holds a core a step waits for a worker that
is not scheduled. This script measures it, which is what the CLI's ``--threads`` default rests on.

Each configuration runs in a fresh subprocess (so the thread pool is created with the setting
under test): an SGD step of LeNet-5 (batch 128, MNIST-shaped random data), ``--warmup`` steps,
then the median wall time of ``--steps`` steps. Loads, started before and killed after each
measurement: ``spin`` (two ``while True: pass`` processes) and ``train`` (two more copies of the
same training loop with the same thread setting: three users training at once). The 1-minute
load average before each measurement is recorded, because the machine may be shared.

    python benchmarks/bench_threads.py                 # all loads, 20 timed steps each
    python benchmarks/bench_threads.py --quick         # spin load only, 5 steps (~1 min)
    python benchmarks/bench_threads.py --out results/bench_threads.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
N_LOAD = 2


def _worker(threads: int, steps: int, warmup: int, forever: bool) -> None:
    """Time LeNet-5 SGD steps in this process; print a JSON line (or loop forever as a load)."""
    import torch
    import torch.nn.functional as F

    from robustact.models import create_model

    if threads > 0:
        torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(128, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (128,), generator=g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_model("lenet5", dataset="mnist").train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    if forever:
        while True:
            step()
    for _ in range(warmup):
        step()
    times = []
    cpu0 = time.process_time()
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    cpu = time.process_time() - cpu0
    print(json.dumps({"threads": torch.get_num_threads(), "step_ms": [1e3 * t for t in times],
                      "cpu_per_wall": cpu / sum(times)}))


def _start_load(kind: str, threads: int) -> list[subprocess.Popen[bytes]]:
    if kind == "none":
        return []
    if kind == "spin":
        cmd = [sys.executable, "-c", "while True: pass"]
    else:
        cmd = [sys.executable, str(HERE), "--worker", "--forever", "--threads", str(threads)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL) for _ in range(N_LOAD)]
    time.sleep(3.0 if kind == "train" else 0.5)  # let the loads get going (imports, warm-up)
    return procs


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def measure(kind: str, threads: int, steps: int, warmup: int) -> dict[str, Any]:
    """One configuration: ``threads`` (0 = torch's default) under load ``kind``."""
    load_before = os.getloadavg()[0]
    procs = _start_load(kind, threads)
    try:
        out = subprocess.run(
            [sys.executable, str(HERE), "--worker", "--threads", str(threads),
             "--steps", str(steps), "--warmup", str(warmup)],
            check=True, capture_output=True, text=True, timeout=1800).stdout
    finally:
        _stop(procs)
    rec = json.loads(out.strip().splitlines()[-1])
    ms = rec.pop("step_ms")
    return {"load": kind, "threads_arg": threads or "default", **rec,
            "median_ms": statistics.median(ms), "mean_ms": statistics.fmean(ms),
            "min_ms": min(ms), "max_ms": max(ms), "loadavg_1min_before": load_before}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="spin load only, 5 steps")
    p.add_argument("--out", default=None, help="results JSON (default: print only)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--forever", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        _worker(a.threads, a.steps, a.warmup, a.forever)
        return
    from robustact.core.storage import atomic_write_json, environment_info

    started = time.perf_counter()
    steps = 5 if a.quick else a.steps
    loads = ("none", "spin") if a.quick else ("none", "spin", "train")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = []
    for kind in loads:
        for threads in (0, 1):
            r = measure(kind, threads, steps, a.warmup)
            rows.append(r)
            print(f"load {kind:5s} threads {r['threads']} ({r['threads_arg']}): "
                  f"median {r['median_ms']:8.1f} ms/batch  (min {r['min_ms']:.1f}, "
                  f"max {r['max_ms']:.1f}; loadavg before {r['loadavg_1min_before']:.2f})",
                  flush=True)
    base = {r["threads"]: r["median_ms"] for r in rows if r["load"] == "none"}
    ratios = []
    for r in rows:
        if r["load"] == "none":
            continue
        t = r["threads"]
        # Fair CPU share: this process's t threads among t + N_LOAD busy ones on `cores` cores,
        # against the min(t, cores) cores it had alone.
        share = cores * t / (t + N_LOAD)
        fair = min(t, cores) / min(share, t)
        ratio = r["median_ms"] / base[t]
        ratios.append({"load": r["load"], "threads": t, "slowdown": ratio,
                       "fair_share_slowdown": fair, "excess": ratio / fair})
        print(f"load {r['load']:5s} threads {t}: {ratio:6.1f}x slower than alone "
              f"(fair CPU share explains {fair:.1f}x; excess {ratio / fair:.1f}x)")
    for kind in loads[1:]:
        by_t = {r["threads"]: r["median_ms"] for r in rows if r["load"] == kind}
        if 1 in by_t and len(by_t) > 1:
            other = max(by_t)
            print(f"load {kind:5s}: {other} threads take {by_t[other] / by_t[1]:.1f}x the "
                  "time of 1 thread per batch")
    if a.out:
        atomic_write_json(a.out, {
            "script": "bench_threads.py", "command": shlex.join([sys.executable, *sys.argv]),
            "config": {"steps": steps, "warmup": a.warmup, "quick": a.quick, "batch": 128,
                       "model": "lenet5", "load_processes": N_LOAD, "cores": cores},
            "environment": environment_info(), "rows": rows, "ratios": ratios,
            "wall_seconds": time.perf_counter() - started,
        })
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
