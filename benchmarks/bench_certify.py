"""Cost of certified bounds against the plain forward pass, in this process.

Per model and dtype, the median seconds of: the forward pass of a batch (the baseline), IBP
(intervals through every layer plus the last layer merged with the margin specification) and
CROWN-IBP (IBP's intervals, then linear bounds backward through every layer), each as a ratio
to the forward pass. Issue 24's targets: IBP within 3x, CROWN-IBP within 20x. float32 is what
certified training runs; float64 what ``robustact certify`` and ``evaluate`` run.

    python benchmarks/bench_certify.py --out results/bench_certify.json
    python benchmarks/bench_certify.py --quick
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
import harness  # noqa: E402

from robustact.certify import bound_graph, margin_bounds  # noqa: E402
from robustact.models import create_model  # noqa: E402

SCRIPT = "bench_certify"
MODELS = ("ibp_small", "ibp_medium", "lenet5", "madry_mnist")


def _median(fn: Any, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def measure(arch: str, dtype: torch.dtype, batch: int, repeats: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = create_model(arch, dataset="mnist").eval().to(dtype)
    x = torch.rand(batch, 1, 28, 28, dtype=dtype)
    y = model(x).argmax(1)
    steps = bound_graph(model)
    fwd = _median(lambda: model(x), repeats)
    ibp = _median(lambda: margin_bounds(steps, x, y, 0.1, "linf", 10, crown=False), repeats)
    crown = _median(lambda: margin_bounds(steps, x, y, 0.1, "linf", 10, crown=True), repeats)
    row = {"model": arch, "dtype": str(dtype).removeprefix("torch."), "batch": batch,
           "forward_s": fwd, "ibp_s": ibp, "crown_ibp_s": crown,
           "ibp_ratio": ibp / fwd, "crown_ibp_ratio": crown / fwd}
    print(f"{arch:12s} {row['dtype']:8s} forward {fwd * 1e3:7.2f} ms  IBP {ibp / fwd:5.2f}x  "
          f"CROWN-IBP {crown / fwd:6.2f}x", flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="results/bench_certify.json")
    p.add_argument("--quick", action="store_true", help=harness.QUICK_HELP)
    args = p.parse_args()
    started = time.perf_counter()
    harness.setup_threads(args.threads)
    out = harness.quick_output(args.out, default="results/bench_certify.json",
                               quick=args.quick, script=SCRIPT)
    models, dtypes = MODELS, (torch.float32, torch.float64)
    if args.quick:
        models, dtypes, args.batch, args.repeats = ("ibp_small",), (torch.float32,), 8, 1
    rows = [measure(m, d, args.batch, args.repeats) for m in models for d in dtypes]
    if out is not None:
        harness.write_results(out, script=SCRIPT, args=args, started=started,
                              results={"rows": rows})
        print(f"written to {out}")


if __name__ == "__main__":
    harness.run_script(main)
