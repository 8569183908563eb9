"""Sharded evaluation: two CPU processes (one thread each) against one, on the default command.

What is timed is what a user runs: ``robustact evaluate --model M -n N`` (standard protocol,
audit, reports) in one process pinned to one core, against the same command under
``torchrun --standalone --nproc-per-node 2 ... --shard auto`` on two cores, where rank 0 waits
for rank 1's shard and merges (the deferred Square screen, the audit and the reports run once,
in rank 0). Both from the shell, so interpreter and torch start-up count on both sides.

Reported per N: wall seconds of each, their ratio (the throughput of two processes over one),
where the sharded run's time went (the slower shard, the merge), and the check that the merged
table is the single-process one: decision columns (success, pred, clean, skipped, counts)
equal bit for bit, the loss diagnostics' largest difference (kernels' batch-size dependence).

    python benchmarks/bench_sharded.py --model results/models/bench/mnist-lenet5 --eps 0.1 \\
        --n 1000 4000 --data-root DATA --out results/bench_sharded_cpu.json
    python benchmarks/bench_sharded.py --quick     # digits, a 1-epoch SmallCNN, seconds
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import harness  # noqa: E402

from robustact.core.storage import read_json  # noqa: E402
from robustact.evaluate import load_table  # noqa: E402
from robustact.evaluate.table import COLUMNS  # noqa: E402

SCRIPT = "bench_sharded"
DIAGNOSTICS = ("loss_first", "loss_best", "stall", "seconds")


def _pinned(cores: str) -> list[str]:
    """``taskset -c cores`` when the machine has it and enough cores, else nothing."""
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", cores]
    return []


def _timed(cmd: list[str]) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    secs = time.perf_counter() - t0
    if done.returncode != 0:
        raise ValueError(f"{' '.join(cmd[:8])} ... failed: {done.stderr.strip()[-800:]}")
    return secs


def compare(one: Path, two: Path) -> dict[str, Any]:
    """Differences between the single-process table and the merged one."""
    a, b = load_table(one), load_table(two)
    if len(a) != len(b) or list(a["attack"]) != list(b["attack"]):
        return {"same_rows": False}
    out: dict[str, Any] = {"same_rows": True, "rows": len(a), "decision_values_differing": 0}
    for c in COLUMNS:
        va, vb = a[c], b[c]
        if c in DIAGNOSTICS:
            if c != "seconds":
                d = np.abs(va.astype(np.float64) - vb.astype(np.float64))
                out[f"max_diff_{c}"] = float(np.nanmax(d)) if np.isfinite(d).any() else 0.0
            continue
        same = (va == vb) if va.dtype.kind != "f" else ((va == vb) | (np.isnan(va) & np.isnan(vb)))
        out["decision_values_differing"] += int((~same).sum())
    return out


def _where_time_went(two: Path) -> dict[str, Any]:
    shards = sorted((two / "shards").iterdir())
    per = [float(read_json(s / "run.json")["result"]["seconds"]) for s in shards]
    run = read_json(two / "report.json")["run"]["seconds"]
    return {"shard_seconds": per, "merge_evaluation_seconds": run["evaluation_wall_this_run"],
            "merge_audit_seconds": run["audit"]}


def measure(model: str, eps: str | None, n: int, work: Path, common: list[str]) -> dict[str, Any]:
    base = ["-m", "robustact", "evaluate", "--model", model, "-n", str(n), "--threads", "1",
            "--device", "cpu", "--no-progress", *(["--eps", eps] if eps else []), *common]
    one, two = work / f"one-{n}", work / f"two-{n}"
    for p in (one, two):
        shutil.rmtree(p, ignore_errors=True)
    t_one = _timed([*_pinned("0"), sys.executable, *base, "--out", str(one)])
    t_two = _timed([*_pinned("0,1"), sys.executable, "-m", "torch.distributed.run",
                    "--standalone", "--nproc-per-node", "2", *base, "--out", str(two),
                    "--shard", "auto"])
    s1, s2 = read_json(one / "summary.json"), read_json(two / "summary.json")
    row = {"n": n, "one_process_seconds": t_one, "two_processes_seconds": t_two,
           "throughput_ratio": t_one / t_two,
           "one_audit_seconds": read_json(one / "report.json")["run"]["seconds"]["audit"],
           **_where_time_went(two), "robust_accuracy": [s1["robust_accuracy"],
                                                         s2["robust_accuracy"]],
           "verdict": [s1["verdict"]["label"], s2["verdict"]["label"]],
           "protocol": s1["protocol"], **compare(one, two)}
    print(f"n={n}: one process {t_one:.1f} s, two {t_two:.1f} s -> {row['throughput_ratio']:.2f}x"
          f" (shards {', '.join(f'{s:.1f}' for s in row['shard_seconds'])} s, merge "
          f"{row['merge_evaluation_seconds']:.1f} s + audit {row['merge_audit_seconds']:.1f} s);"
          f" decision values differing: {row.get('decision_values_differing')}", flush=True)
    return row


def _quick_model(work: Path) -> str:
    out = work / "digits-cnn"
    subprocess.run([sys.executable, "-m", "robustact", "train", "--model", "smallcnn",
                    "--dataset", "digits", "--epochs", "1", "--optimizer", "adam", "--lr",
                    "0.003", "--out", str(out), "--no-progress", "--threads", "1", "--device",
                    "cpu"], check=True, capture_output=True)
    return str(out / "final")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_data_root_arg(p)
    p.add_argument("--model", default="results/models/bench/mnist-lenet5")
    p.add_argument("--eps", default=None, help="budget (default: the dataset's)")
    p.add_argument("--n", type=int, nargs="+", default=[1000])
    p.add_argument("--work", default="runs/bench_sharded", help="where the runs go")
    p.add_argument("--out", default="results/bench_sharded_cpu.json")
    p.add_argument("--quick", action="store_true", help=harness.QUICK_HELP)
    args = p.parse_args()
    started = time.perf_counter()
    out = harness.quick_output(args.out, default="results/bench_sharded_cpu.json",
                               quick=args.quick, script=SCRIPT)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    common = [] if args.data_root is None else ["--data-root", str(args.data_root)]
    model, ns = args.model, args.n
    if args.quick:
        model, ns = _quick_model(work), [40]
        common += ["--protocol", "quick", "--audit-samples", "5"]
    elif not Path(model).is_dir():
        raise ValueError(f"no checkpoint at {model} (train the benchmark models first: see "
                         "results/README.md)")
    rows = [measure(model, args.eps, n, work, common) for n in ns]
    if out is not None:
        harness.write_results(out, script=SCRIPT, args=args, started=started,
                              results={"model": model, "cores": os.cpu_count(), "rows": rows})
        print(f"written to {out}")


if __name__ == "__main__":
    harness.run_script(main)
