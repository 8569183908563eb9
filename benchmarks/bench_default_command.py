"""The command users run, ``robustact evaluate``, against AutoAttack standard: time and strength.

Why a second AutoAttack benchmark: ``bench_evaluate_vs_autoattack.py`` times the engine on
MNIST models it builds. What a user runs is ``robustact evaluate --model CKPT``: the default
protocol over its ε grid, the adaptive attacks, the audit, the files. This times exactly that
(:func:`robustact.runs.evaluate.evaluate_model` with its defaults, into a temporary folder), the
protocol at the main ε alone without the audit (AutoAttack's task), and AutoAttack standard
(``pip install --no-deps pyautoattack``: APGD-CE, APGD-T, FAB-T, Square 5000), in one process
on the same first ``--n`` test images of each checkpoint's dataset, alternating which runs first.

Per checkpoint: clean accuracy; AutoAttack's robust accuracy and time; robustact's at one ε and
with the default command, each time as a ratio to AutoAttack's; the audit's share and its
costliest checks; the points AutoAttack broke that the default command reports robust (should
be none) and the reverse.

    python benchmarks/bench_default_command.py --n 100 --threads 2 \\
        --checkpoints results/models/cifar_resnet20_fast_at_gpu \\
        --out results/default_command_vs_autoattack_cifar_cpu.json
    python benchmarks/bench_default_command.py --quick     # seconds, runs/quick/

``--quick``: an untrained small CNN on the synthetic MNIST stand-in (labelled by the model),
tiny attack, audit and AutoAttack budgets (AutoAttack skipped with a note when missing).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import harness as H
from eval_models import (
    QUICK_AUDIT,
    QUICK_OVERRIDES,
    autoattack_available,
    label_by_model,
    robustact_masks,
    run_autoattack,
    run_robustact,
)

from robustact.checkpoint import read_card
from robustact.core.budget import default_budget
from robustact.evaluate.storage import load_table
from robustact.models import create_model
from robustact.runs.evaluate import evaluate_model
from robustact.runs.sources import ModelSource, load_target

SCRIPT = "bench_default_command"
#: The committed fast-AT ResNet-20 (CIFAR-10), found from any working directory.
DEFAULT_CHECKPOINT = (Path(__file__).resolve().parents[1] / "results" / "models"
                      / "cifar_resnet20_fast_at_gpu")
COLUMNS = [("model", "model", ""), ("n", "n", "d"), ("eps", "ε", ".4g"),
           ("clean", "clean %", ".1f"),
           ("aa", "AA %", ".1f"), ("aa_s", "AA s", ".1f"), ("one", "RA@ε %", ".1f"),
           ("one_s", "RA@ε s", ".1f"), ("one_ratio", "RA@ε/AA", ".2f"),
           ("default", "default %", ".1f"), ("default_s", "default s", ".1f"),
           ("default_ratio", "default/AA", ".2f"), ("audit_s", "audit s", ".1f"),
           ("aa_only", "AA-only", "d"), ("ra_only", "RA-only", "d")]


def _targets(args: Any) -> list[tuple[str, nn.Module, str, torch.Tensor, torch.Tensor, float]]:
    """(name, model, dataset, x, y, ε) per checkpoint (ε: the one given after ``@``, else the
    dataset's default); under --quick one untrained stand-in CNN."""
    if args.quick:
        test = H.load_data("mnist", "test", None, quick=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = create_model("smallcnn", dataset="mnist", width=4, hidden=16).eval()
        x = test.x()[: args.n]
        return [("quick-smallcnn", model, "mnist", x, label_by_model(model, x),
                 default_budget("mnist", "linf"))]
    out = []
    for ckpt, eps in args.checkpoints:
        # the data first: a machine without it gets the one-line data message, not a model load
        H.load_data(str(read_card(ckpt)["data"]["dataset"]), "test", args.data_root, quick=False)
        t = load_target(ModelSource(checkpoint=ckpt), n=args.n, data_root=args.data_root,
                        device="cpu")
        x, y = t.data.x(), t.data.y()
        name = Path(ckpt).name if eps is None else f"{Path(ckpt).name}@{eps:g}"
        eps = default_budget(t.dataset, "linf") if eps is None else eps
        out.append((name, t.model.eval(), t.dataset, x, y, eps))
    return out


def _default_command(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dataset: str,
                     eps: float, quick: bool) -> dict[str, Any]:
    """``robustact evaluate``'s library call with its defaults, timed, into a temporary folder;
    the per-sample worst case read back from its table."""
    extra: dict[str, Any] = {"overrides": QUICK_OVERRIDES, "audit_options": QUICK_AUDIT,
                             "allow_chance": True} if quick else {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        s = evaluate_model(model, (x, y), dataset=dataset, eps=eps, out=tmp, progress=False,
                           **extra)
        seconds = time.perf_counter() - t0
        masks = robustact_masks(load_table(tmp), float(s["eps"]))
    audit = s["seconds"].get("audit") or 0.0
    return {"seconds": seconds, "eps": s["eps"], "clean_accuracy": s["clean_accuracy"],
            "robust_accuracy": s["robust_accuracy"], "audit_seconds": audit,
            "verdict": s["verdict"]["label"], "protocol": s["protocol"], "_worst": masks["worst"]}


def _one(name: str, model: nn.Module, dataset: str, x: torch.Tensor, y: torch.Tensor,
         eps: float, args: Any, have_aa: bool, first_aa: bool
         ) -> tuple[dict[str, Any], dict[str, Any]]:
    """One model: the three runs (AutoAttack first when ``first_aa``), its row and its record."""
    overrides = QUICK_OVERRIDES if args.quick else None
    runs: dict[str, Any] = {}
    order = ("aa", "default", "one") if first_aa else ("default", "one", "aa")
    for who in order:
        if who == "default":
            runs[who] = _default_command(model, x, y, dataset, eps, args.quick)
        elif who == "one":
            runs[who] = run_robustact(model, x, y, eps=eps, seed=0, overrides=overrides,
                                      audit=False, eps_grid=[eps])
        elif have_aa:
            runs[who] = run_autoattack(model, x, y, eps=eps, seed=0,
                                       batch_size=args.batch_size, tiny=args.quick)
    d, one, aa = runs["default"], runs["one"], runs.get("aa")
    row: dict[str, Any] = {"model": name, "n": int(x.shape[0]), "eps": eps,
                           "clean": 100 * d["clean_accuracy"],
                           "one": 100 * one["worst_case_robust_accuracy"],
                           "one_s": one["seconds"], "default": 100 * d["robust_accuracy"],
                           "default_s": d["seconds"], "audit_s": d["audit_seconds"]}
    if aa is not None:
        worst, robust_aa = d["_worst"], aa["_robust"]
        row.update({"aa": 100 * aa["robust_accuracy"], "aa_s": aa["seconds"],
                    "one_ratio": one["seconds"] / aa["seconds"],
                    "default_ratio": d["seconds"] / aa["seconds"],
                    "aa_only": int((worst & ~robust_aa).sum()),
                    "ra_only": int((robust_aa & ~worst).sum())})
        # the points themselves (test-set positions), not only their count: issue 21 asks
        # that every point AutoAttack breaks be broken or listed
        row["aa_only_samples"] = np.nonzero(worst & ~robust_aa)[0].tolist()
    record = {"dataset": dataset, "eps": eps, "first": order[0],
              **{k: {f: v for f, v in r.items() if not f.startswith("_")}
                 for k, r in runs.items()}, "row": row}
    return row, record


def _checkpoint_eps(text: str) -> tuple[str, float | None]:
    """``PATH`` or ``PATH@EPS`` → (path, ε or None); a bad ε is one line, not a trace."""
    path, at, eps = text.rpartition("@")
    if not at:
        return text, None
    try:
        return path, float(eps)
    except ValueError:
        raise SystemExit(f"--checkpoints: {text!r}: the part after '@' must be a number "
                         "(the L-inf eps)") from None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    p = H.base_parser(__doc__.splitlines()[0],
                      default_out="results/default_command_vs_autoattack.json", default_epochs=0)
    p.add_argument("--checkpoints", default=str(DEFAULT_CHECKPOINT),
                   help="comma-separated robustact checkpoint folders, each optionally with "
                        "@EPS (L-inf; default: the dataset's default budget)")
    p.add_argument("--n", type=int, default=500, help="first N test images of each dataset")
    p.add_argument("--batch-size", type=int, default=250, help="AutoAttack's batch size")
    args = p.parse_args(argv)
    args.checkpoints = [_checkpoint_eps(c.strip()) for c in args.checkpoints.split(",")
                        if c.strip()]
    if args.quick:
        args.n = min(args.n, 16)
    args.out = str(H.quick_output(args.out, default=p.get_default("out"), quick=args.quick,
                                  script=SCRIPT))
    H.setup_threads(args.threads)
    have_aa = autoattack_available()
    if not have_aa:
        print("note: pyautoattack is not installed; AutoAttack is skipped "
              "(pip install --no-deps pyautoattack)")
    rows, records = [], {}
    for i, (name, model, dataset, x, y, eps) in enumerate(_targets(args)):
        row, records[name] = _one(name, model, dataset, x, y, eps, args, have_aa, i % 2 == 1)
        rows.append(row)
        print(H.format_table([row], COLUMNS), flush=True)
    print()
    print(H.format_table(rows, COLUMNS))
    path = H.write_results(args.out, script=f"{SCRIPT}.py", args=args, started=started,
                           results={"threads": torch.get_num_threads(),
                                    "have_autoattack": have_aa, "models": records,
                                    "table": rows,
                                    "data": H.data_source(args.data_root, quick=args.quick)})
    print(f"wrote {path}")
    return records


if __name__ == "__main__":
    H.run_script(main)
