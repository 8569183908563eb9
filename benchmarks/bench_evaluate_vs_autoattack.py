"""robustact's ``standard`` evaluation vs AutoAttack standard: strength, speed, passes, audit cost.

For each model (see ``scripts/eval_models.py``), on the same first ``--n`` MNIST test images, in the
same process with the same ``torch.set_num_threads``, alternating which runs first:

- robustact: ``evaluate(model, x, y, "standard", eps=ε)`` (the engine's default: ε grid
  0, ε/4, ε/2, ε, 2ε, plus the adaptive attacks the model's defenses call for), then
  ``run_audit`` on its table;
- AutoAttack standard (``pyautoattack``: APGD-CE, APGD-T, FAB-T, Square 5000; L∞).

Reported per model: robust accuracy at ε under robustact's protocol attacks, its adaptive
attacks and the per-sample worst case, AutoAttack's; the per-sample disagreements (robust under
robustact but broken by AutoAttack, and the reverse); wall times and their ratio; forward and
backward passes per image of both (counted by the same hooks on the model); the audit's time
against the evaluation's; the verdict. AutoAttack is a benchmark-only dependency
(``pip install --no-deps pyautoattack``); it is never imported by the library or the tests.

    python benchmarks/bench_evaluate_vs_autoattack.py --models lenet5,sigmoid100,jumprelu1.5
    python benchmarks/bench_evaluate_vs_autoattack.py --quick     # seconds, runs/quick/

``--quick``: the models untrained, the first 16 images of the synthetic MNIST stand-in
(labelled by the first model), tiny attack and audit budgets, AutoAttack with tiny budgets (or
skipped with a note when ``pyautoattack`` is missing); the JSON goes to
``runs/quick/bench_evaluate_vs_autoattack.json``.
"""

from __future__ import annotations

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
    compare,
    prepare,
    run_autoattack,
    run_robustact,
)

SCRIPT = "bench_evaluate_vs_autoattack"


def parse_args(argv: list[str] | None = None) -> Any:
    p = H.base_parser(__doc__.splitlines()[0], default_out="results/eval_vs_autoattack_mnist.json",
                      default_epochs=6)
    p.add_argument("--models", default="lenet5,sigmoid100,jumprelu1.5",
                   help=f"comma-separated, from {', '.join(MODEL_NAMES)}")
    p.add_argument("--n", type=int, default=1000, help="first N test images")
    p.add_argument("--eps", type=float, default=0.3, help="L∞ budget")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--eps-grid", choices=["default", "main"], default="default",
                   help="robustact's ε grid: the engine's default (0, ε/4, ε/2, ε, 2ε: a curve) "
                        "or only the main ε (AutoAttack's task, for a like-for-like time)")
    p.add_argument("--adv-checkpoint", default=None,
                   help="the 'adv' model's checkpoint (default: <runs-dir>/adv_mnist/final)")
    p.add_argument("--no-audit", action="store_true")
    p.add_argument("--audit-random-points", type=int, default=10_000,
                   help="the audit's random-search draws per sample (C17; run_audit default)")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.n < 1:
        p.error("--n must be >= 1")
    if not args.models:
        p.error("--models names no model")
    if args.quick:
        args.n = min(args.n, 16)
    args.out = str(H.quick_output(args.out, default=p.get_default("out"), quick=args.quick,
                                  script=SCRIPT))
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    args = parse_args(argv)
    H.setup_threads(args.threads)
    test = H.load_data("mnist", "test", args.data_root, quick=args.quick)
    models, made, _, have_aa, x, y = prepare(args, test)
    overrides = QUICK_OVERRIDES if args.quick else None
    audit_kwargs = QUICK_AUDIT if args.quick else {"random_points": args.audit_random_points}
    rows, per_model = [], {}
    for i, name in enumerate(args.models):
        model = models[name]
        with torch.no_grad():  # warm-up: SPLASH builds its C++ kernel on the first call
            model(x[:2])
        load = os.getloadavg()
        ra_first = i % 2 == 0 or not have_aa
        runs: dict[str, Any] = {}
        for who in (("ra", "aa") if ra_first else ("aa", "ra")):
            if who == "ra":
                runs["ra"] = run_robustact(model, x, y, eps=args.eps, seed=args.seed,
                                           overrides=overrides, audit=not args.no_audit,
                                           audit_kwargs=audit_kwargs,
                                           eps_grid=[args.eps] if args.eps_grid == "main"
                                           else None)
            elif have_aa:
                runs["aa"] = run_autoattack(model, x, y, eps=args.eps, seed=args.seed,
                                            batch_size=args.batch_size, tiny=args.quick)
        ra, aa = runs["ra"], runs.get("aa")
        entry = {k: v for k, v in ra.items() if not k.startswith("_")}
        res: dict[str, Any] = {"robustact": entry, "made": made[name], "n": args.n,
                               "first": "robustact" if ra_first else "autoattack",
                               "loadavg_before": load, "loadavg_after": os.getloadavg()}
        row = {"model": name, "clean": 100 * ra["clean_accuracy"],
               "ra_std": 100 * ra["standard_robust_accuracy"],
               "ra_worst": 100 * ra["worst_case_robust_accuracy"],
               "ra_s": ra["seconds"], "ra_fb": f"{ra['forward_per_image']:.0f}/"
                                              f"{ra['backward_per_image']:.0f}",
               "audit_s": ra.get("audit_seconds"), "verdict": ra.get("verdict")}
        if aa is not None:
            res["autoattack"] = {k: v for k, v in aa.items() if not k.startswith("_")}
            res["per_sample"] = compare(ra, aa)
            row["aa_only"] = res["per_sample"]["standard_robust_ra_broken_aa"]
            res["time_ratio_ra_over_aa"] = ra["seconds"] / aa["seconds"]
            row.update({"aa": 100 * aa["robust_accuracy"], "aa_s": aa["seconds"],
                        "aa_fb": f"{aa['forward_per_image']:.0f}/{aa['backward_per_image']:.0f}",
                        "ratio": res["time_ratio_ra_over_aa"]})
        per_model[name] = res
        rows.append(row)
        print(H.format_table([row], COLUMNS), flush=True)
    print()
    print(H.format_table(rows, COLUMNS))
    path = H.write_results(args.out, script="bench_evaluate_vs_autoattack.py", args=args,
                           started=started, results={
                               "threads": torch.get_num_threads(), "have_autoattack": have_aa,
                               "data": H.data_source(args.data_root, quick=args.quick),
                               "models": per_model, "table": rows,
                               "quick_overrides": overrides})
    print(f"wrote {path}")
    return per_model


COLUMNS = [("model", "model", ""), ("clean", "clean %", ".1f"), ("ra_std", "RA std %", ".1f"),
           ("ra_worst", "RA worst %", ".1f"), ("aa", "AA %", ".1f"),
           ("aa_only", "AA-only breaks", ""), ("ra_s", "RA s", ".1f"), ("aa_s", "AA s", ".1f"),
           ("ratio", "RA/AA", ".2f"), ("ra_fb", "RA fwd/bwd", ""), ("aa_fb", "AA fwd/bwd", ""),
           ("audit_s", "audit s", ".1f"), ("verdict", "verdict", "")]

if __name__ == "__main__":
    H.run_script(main)
