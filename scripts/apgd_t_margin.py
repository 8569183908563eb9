"""Where do the points that only APGD-T's later targets break sit? Evidence for standard@4.

Why: AutoAttack runs APGD-T with 9 target classes; ``standard@3`` ran 3, and on LeNet-5 (MNIST,
ε 0.1) AutoAttack broke 3 points it left robust. Running all 9 costs 3× the attack on every
survivor. This runs APGD-CE, then APGD-T one target rank at a time (0 … 8, each on the points
no earlier rank broke, keyed starts as in the engine) and records, per survivor of the first
3 ranks, its best targeted-DLR loss over them (0 is the decision boundary) and which later rank,
if any, broke it. ``standard@4`` gives targets 4-5 to the survivors whose best loss is at least
-0.2; the fractions of survivors above each threshold say what that costs:

    python scripts/apgd_t_margin.py CHECKPOINT EPS [--n 1000] [--data-root DIR] [--out FILE]
"""

from __future__ import annotations

import time

import probe_cli  # scripts/ is on sys.path when run as a script
import torch

from robustact.attacks import APGD, APGDT
from robustact.attacks.base import LogitsView

RANKS = 9
FIRST = 3  # the targets every survivor gets
THRESHOLDS = (-0.1, -0.2, -0.3)


def main() -> None:
    a = probe_cli.parser(__doc__).parse_args()
    model, x, y = probe_cli.load(a)
    t0 = time.perf_counter()
    ids = torch.arange(x.shape[0])
    with torch.no_grad():
        clean = torch.cat([model(x[i:i + 500]) for i in range(0, x.shape[0], 500)])
    ok = clean.argmax(1) == y
    ce = APGD(a.eps, seed=0)(model, x[ok], y[ok], keys=ids[ok])
    surv = ids[ok][~ce.success]
    xs, ys = x[surv], y[surv]
    ranked = clean[surv].scatter(1, ys[:, None], float("-inf")).argsort(1, descending=True)
    attack, view = APGDT(a.eps, n_targets=RANKS, seed=0), LogitsView(model, keys=surv)
    broken_at = torch.full((len(surv),), -1)
    best = torch.full((len(surv), RANKS), float("nan"))
    per_rank = []
    for r in range(RANKS):
        todo = (broken_at < 0).nonzero().squeeze(1)
        xr, yr = xs[todo], ys[todo]
        _, adv, loss = attack._run(view, xr, yr, ranked[todo, r],
                                   attack.start_point(view, xr, todo, r, None), None, todo, r)
        best[todo, r] = loss
        broken_at[todo[adv]] = r
        per_rank.append({"rank": r, "attacked": len(todo), "broken": int(adv.sum())})
    left = (broken_at < 0) | (broken_at >= FIRST)  # survivors of the first FIRST ranks
    score = best[:, :FIRST].nan_to_num(float("-inf")).amax(1)
    late = (broken_at >= FIRST).nonzero().flatten()
    out = {
        "command": probe_cli.command(), "n": a.n, "eps": a.eps,
        "apgd_ce_survivors": len(surv), "per_rank": per_rank,
        "survivors_after_first": int(left.sum()),
        "score_quantiles": dict(zip(("10%", "25%", "50%", "75%", "90%"), torch.quantile(
            score[left], torch.tensor([.1, .25, .5, .75, .9])).tolist(), strict=True)),
        "fraction_at_least": {str(th): float((score[left] >= th).float().mean())
                              for th in THRESHOLDS},
        "late_breaks": [{"sample": int(surv[i]), "rank": int(broken_at[i]),
                         "score": float(score[i]),
                         "closer_survivors": int((score[left] > score[i]).sum())}
                        for i in late.tolist()],
        "wall_seconds": time.perf_counter() - t0,
    }
    probe_cli.emit(out, a.out)


if __name__ == "__main__":
    main()
