"""A protocol at one ε against an AutoAttack run already recorded on the same images.

Why: AutoAttack standard takes 40-90 min per MNIST model on this CPU, and its answer does not
change with robustact's protocol. ``bench_default_command.py`` records, per model, AutoAttack's
robust accuracy, its passes per image and the points it broke that robustact left robust
(``aa_only_samples``). With the earlier protocol run here too, a new one is compared exactly:
its robust set R_new, the recorded AutoAttack-only points it still leaves robust, and the points
it leaves robust that the earlier protocol broke (R_new \\ R_old: AutoAttack may or may not have
broken those, so they are listed). Cost is the pass ratio (forward + 2 × backward per image)
against AutoAttack's recorded passes: a count, unlike seconds, does not depend on the load.

    python scripts/strength_check.py CHECKPOINT EPS --record results/default_command_v3_X.json
        [--model NAME] [--aa-only 1,2,3] [--protocols standard@3,standard@4] [--n 1000]
"""

from __future__ import annotations

import json
import time

import numpy as np
import probe_cli  # scripts/ is on sys.path when run as a script
from eval_models import run_robustact


def _passes(r: dict) -> float:
    return r["forward_per_image"] + 2 * r["backward_per_image"]


def main() -> None:
    p = probe_cli.parser(__doc__)
    p.add_argument("--record", required=True, help="a bench_default_command.py JSON")
    p.add_argument("--model", default=None, help="its model name (default: the only one)")
    p.add_argument("--aa-only", default=None,
                   help="AutoAttack-only sample positions, where the record predates the field")
    p.add_argument("--protocols", default="standard@3,standard@4")
    a = p.parse_args()
    with open(a.record, encoding="utf-8") as f:
        models = json.load(f)["models"]
    rec = models[a.model] if a.model else next(iter(models.values()))
    aa = rec["aa"]
    aa_only = ([int(s) for s in a.aa_only.split(",")] if a.aa_only
               else rec["row"]["aa_only_samples"])
    model, x, y = probe_cli.load(a)
    out: dict = {"command": probe_cli.command(), "n": a.n, "eps": a.eps,
                 "record": a.record, "aa_robust_accuracy": aa["robust_accuracy"],
                 "aa_passes_per_image": _passes(aa), "aa_only_recorded": aa_only,
                 "protocols": {}}
    robust: dict[str, np.ndarray] = {}
    for proto in a.protocols.split(","):
        t0 = time.perf_counter()
        r = run_robustact(model, x, y, eps=a.eps, seed=0, protocol=proto, audit=False,
                          eps_grid=[a.eps])
        robust[proto] = r["_masks"]["worst"]
        ids = set(np.nonzero(robust[proto])[0].tolist())
        out["protocols"][proto] = {
            "robust_accuracy": r["worst_case_robust_accuracy"],
            "robust": int(robust[proto].sum()),
            "aa_only_still_robust": sorted(ids & set(aa_only)),
            "passes_per_image": _passes(r), "pass_ratio": _passes(r) / _passes(aa),
            "seconds": time.perf_counter() - t0,
            "per_attack_seconds": {k: v["seconds"] for k, v in r["per_attack"].items()}}
    names = list(robust)
    for old, new in zip(names, names[1:], strict=False):
        out["protocols"][new][f"robust_here_broken_by_{old}"] = np.nonzero(
            robust[new] & ~robust[old])[0].tolist()
    probe_cli.emit(out, a.out)


if __name__ == "__main__":
    main()
