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
    python benchmarks/bench_threads.py --out results/bench_threads.json
    python benchmarks/bench_threads.py --quick         # smoke run, seconds (runs/quick/)

``--quick`` checks that the script works, not the effect: no added load, 2 threads vs 1, batch
16, 2 timed steps, measured in this process (no subprocesses, whose torch start-up alone would
take most of a minute on a busy machine).
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
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve()
SCRIPT = "bench_threads"
N_LOAD = 2
BATCH = 128
#: ``--quick``: (threads, batch, timed steps, warm-up steps), in this process, no added load.
QUICK = ((2, 1), 16, 2, 1)


def _harness() -> ModuleType:
    """The shared script plumbing (``scripts/harness.py``), imported by the parent process only.

    Why lazily: the measured workers and the ``train`` loads are this same file run again, and
    they must start as they always did (torch and the model, nothing else), so that the loads are
    as far into their loops when a measurement starts as in the committed results.
    """
    sys.path.insert(0, str(HERE.parents[1] / "scripts"))
    import harness

    return harness


def time_steps(threads: int, steps: int, warmup: int, batch: int,
               forever: bool = False) -> dict[str, Any]:
    """Time LeNet-5 SGD steps in this process (or loop forever as a load).

    Returns the thread count torch used, the wall time of each timed step in ms and the
    process's CPU seconds per wall second over them.
    """
    import torch
    import torch.nn.functional as F

    from robustact.models import create_model

    if threads > 0:
        torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
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
    return {"threads": torch.get_num_threads(), "step_ms": [1e3 * t for t in times],
            "cpu_per_wall": cpu / sum(times)}


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


def measure(kind: str, threads: int, steps: int, warmup: int, *,
            in_process: bool = False) -> dict[str, Any]:
    """One configuration: ``threads`` (0 = torch's default) under load ``kind``.

    Normally in a fresh subprocess, so that torch's thread pool is created with the setting
    under test; ``in_process`` (``--quick`` only) times it here at batch 16 instead.
    """
    load_before = os.getloadavg()[0]
    if in_process:
        rec = time_steps(threads, steps, warmup, QUICK[1])
    else:
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
    p.add_argument("--quick", action="store_true",
                   help="smoke run in seconds: no added load, 2 threads vs 1, batch 16, 2 steps, "
                   "in this process; writes runs/quick/bench_threads.json unless --out says "
                   "otherwise, never into results/")
    p.add_argument("--out", default=None, help="results JSON (default: print only)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--forever", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(time_steps(a.threads, a.steps, a.warmup, BATCH, a.forever)))
        return
    from robustact.core.storage import atomic_write_json, environment_info

    harness = _harness()
    started = time.perf_counter()
    out = harness.quick_output(a.out, default=None, quick=a.quick, script=SCRIPT)
    steps, warmup, batch = a.steps, a.warmup, BATCH
    loads: tuple[str, ...] = ("none", "spin", "train")
    thread_counts: tuple[int, ...] = (0, 1)
    if a.quick:
        thread_counts, batch, steps, warmup = QUICK
        loads = ("none",)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = []
    for kind in loads:
        for threads in thread_counts:
            r = measure(kind, threads, steps, warmup, in_process=a.quick)
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
    if out:
        atomic_write_json(out, {
            "script": "bench_threads.py", "command": shlex.join(harness.command_line()),
            "quick": a.quick,
            "config": {"steps": steps, "warmup": warmup, "quick": a.quick, "batch": batch,
                       "model": "lenet5", "load_processes": 0 if a.quick else N_LOAD,
                       "cores": cores},
            "environment": environment_info(), "rows": rows, "ratios": ratios,
            "wall_seconds": time.perf_counter() - started,
        })
        print(f"wrote {out}")


if __name__ == "__main__":
    if "--worker" in sys.argv[1:]:
        main()
    else:
        _harness().run_script(main)
