"""Evaluation engine and audit on real MNIST: five LeNet-5 models, and the self-test.

For each model (``scripts/eval_models.py``: undefended ReLU, sigmoid output activation at
T = 100, the JumpReLU retrofit at the tuner's κ and at κ = 1.5, SPLASH S=7), on the first
``--n`` MNIST test images at L∞ ε = ``--eps``: clean accuracy, robust accuracy under robustact's
``standard`` protocol attacks, under its adaptive attacks, the per-sample worst case over all,
AutoAttack standard's figure (``pyautoattack``, a benchmark-only dependency; skipped with a note
when missing), the audit's verdict and the check(s) behind it. Then the audit's C24 self-test
(:func:`robustact.evaluate.selftest.self_test`) on the undefended model: every deliberately
broken model and the check that caught it.

``--reuse FILE`` takes the per-model figures from a ``bench_evaluate_vs_autoattack.py`` results
file made on the same models, n and ε (the same computation; it saves re-running AutoAttack on
a shared CPU) and runs only what is missing there.

    python experiments/eval_mnist_defenses.py --n 1000
    python experiments/eval_mnist_defenses.py --reuse results/eval_vs_autoattack_mnist.json
    python experiments/eval_mnist_defenses.py --quick      # seconds, runs/quick/

``--quick``: the first two models untrained, the first 16 images of the synthetic MNIST stand-in
(labelled by the first model), 8 for the self-test, tiny attack and audit budgets; the JSON goes
to ``runs/quick/eval_mnist_defenses.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import harness as H
from eval_models import (
    MODEL_NAMES,
    QUICK_AUDIT,
    QUICK_OVERRIDES,
    get_models,
    prepare,
    run_autoattack,
    run_robustact,
)

from robustact.evaluate.selftest import self_test

SCRIPT = "eval_mnist_defenses"


def parse_args(argv: list[str] | None = None) -> Any:
    p = H.base_parser(__doc__.splitlines()[0], default_out="results/eval_mnist_defenses.json",
                      default_epochs=6)
    p.add_argument("--models", default=",".join(MODEL_NAMES))
    p.add_argument("--n", type=int, default=1000, help="first N test images")
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--selftest-n", type=int, default=100, help="images for the self-test")
    p.add_argument("--audit-random-points", type=int, default=10_000,
                   help="the audit's random-search draws per sample (C17; run_audit default)")
    p.add_argument("--reuse", default=None, help="bench_evaluate_vs_autoattack.py results file")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.n < 1 or args.selftest_n < 1:
        p.error("--n and --selftest-n must be >= 1")
    if not args.models:
        p.error("--models names no model")
    if args.quick:
        args.n, args.selftest_n = min(args.n, 16), min(args.selftest_n, 8)
        args.models = args.models[:2]
    args.out = str(H.quick_output(args.out, default=p.get_default("out"), quick=args.quick,
                                  script=SCRIPT))
    return args


def _reused(path: str | None, name: str, n: int, eps: float) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"--reuse {path}: cannot read it as a results file ({e})") from None
    cfg = data.get("config", {})
    entry = data.get("models", {}).get(name)
    if entry is None or cfg.get("n") != n or cfg.get("eps") != eps or cfg.get("quick"):
        return None
    return entry


def main(argv: list[str] | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    args = parse_args(argv)
    H.setup_threads(args.threads)
    test = H.load_data("mnist", "test", args.data_root, quick=args.quick)
    models, made, root, have_aa, x, y = prepare(args, test)
    rows, per_model = [], {}
    for name in args.models:
        entry = _reused(args.reuse, name, args.n, args.eps)
        if entry is not None:
            ra, aa, source = entry["robustact"], entry.get("autoattack"), args.reuse
        else:
            ra = run_robustact(models[name], x, y, eps=args.eps, seed=args.seed,
                               overrides=QUICK_OVERRIDES if args.quick else None,
                               audit_kwargs=QUICK_AUDIT if args.quick else {
                                   "random_points": args.audit_random_points})
            ra = {k: v for k, v in ra.items() if not k.startswith("_")}
            aa = None
            if have_aa:
                aa = run_autoattack(models[name], x, y, eps=args.eps, seed=args.seed,
                                    tiny=args.quick)
                aa = {k: v for k, v in aa.items() if not k.startswith("_")}
            source = "this run"
        row = {"model": name, "clean": 100 * ra["clean_accuracy"],
               "standard": 100 * ra["standard_robust_accuracy"],
               "adaptive": (100 * ra["adaptive_robust_accuracy"]
                            if ra["adaptive_robust_accuracy"] is not None else None),
               "worst": 100 * ra["worst_case_robust_accuracy"],
               "aa": 100 * aa["robust_accuracy"] if aa else None,
               "verdict": ra["verdict"], "because": "; ".join(ra["verdict_checks"]) or "-"}
        rows.append(row)
        per_model[name] = {"row": row, "robustact": ra, "autoattack": aa, "made": made[name],
                           "source": source}
        print(H.format_table([row], COLUMNS), flush=True)

    base = models.get("lenet5")
    if base is None:
        base, _ = get_models(["lenet5"], runs_dir=args.runs_dir, root=root, epochs=args.epochs,
                             quick=args.quick)
        base = base["lenet5"]
    xs, ys = x[: args.selftest_n], y[: args.selftest_n]
    rep = self_test(base, xs, ys, eps=args.eps, seed=args.seed,
                    **(QUICK_AUDIT if args.quick else {
                        "random_points": args.audit_random_points}))
    st_rows = [{"model": r.name, "verdict": r.verdict, "caught_by": ", ".join(r.caught_by) or
                "MISSED", "expected": ", ".join(r.expected), "fired": ", ".join(r.fired)}
               for r in rep.rows]
    st_rows.append({"model": "healthy lenet5", "verdict": rep.healthy_verdict, "caught_by": "-",
                    "expected": "(none)", "fired": ", ".join(rep.healthy_fired)})
    print()
    print(H.format_table(rows, COLUMNS))
    print()
    print("\n".join(rep.lines()))
    path = H.write_results(
        args.out, script="eval_mnist_defenses.py", args=args, started=started,
        results={"threads": torch.get_num_threads(), "loadavg": os.getloadavg(),
                 "data": H.data_source(args.data_root, quick=args.quick),
                 "table": rows, "models": per_model,
                 "self_test": {"passed": rep.passed, "rows": st_rows, "seconds": rep.seconds,
                               "n": int(xs.shape[0]), "evidence": rep.evidence}})
    print(f"wrote {path}")
    return {"table": rows, "self_test": st_rows}


COLUMNS = [("model", "model", ""), ("clean", "clean %", ".1f"),
           ("standard", "standard %", ".1f"), ("adaptive", "adaptive %", ".1f"),
           ("worst", "worst case %", ".1f"), ("aa", "AutoAttack %", ".1f"),
           ("verdict", "verdict", ""), ("because", "check(s) behind it", "")]

if __name__ == "__main__":
    H.run_script(main)
