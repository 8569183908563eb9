"""Which of AutoAttack's four attacks breaks the points a robustact protocol leaves robust?

Why: ``bench_default_command.py`` says how many points AutoAttack standard broke that robustact
left robust, not which of its attacks did it. This runs the protocol at one ε (or takes the
sample positions given), then AutoAttack's APGD-T, FAB-T, Square and APGD-CE (pyautoattack,
seed 0, each on all of those points, not as a cascade) and prints per attack the points it
broke. Measured this way on LeNet-5 (MNIST, ε 0.1): only APGD-T broke the three points
``standard@3`` missed, which is what ``standard@4``'s close targets answer.

    python scripts/aa_components.py CHECKPOINT EPS [SAMPLES] [--protocol standard@3]
"""

from __future__ import annotations

import time

import probe_cli  # scripts/ is on sys.path when run as a script
import torch

from robustact.evaluate import evaluate
from robustact.evaluate.summary import worst_case


def main() -> None:
    p = probe_cli.parser(__doc__)
    p.add_argument("samples", nargs="?", default="", help="positions, e.g. 15,95 (default: "
                   "the points the protocol leaves robust)")
    p.add_argument("--protocol", default="standard@3")
    a = p.parse_args()
    from pyautoattack import AutoAttack  # test-only dependency: pip install --no-deps

    model, x, y = probe_cli.load(a)
    if a.samples:
        ids = [int(s) for s in a.samples.split(",")]
    else:
        table = evaluate(model, x, y, a.protocol, eps=a.eps, eps_grid=[a.eps], progress=False)
        sid, robust = worst_case(table, a.eps)
        ids = sid[robust].tolist()
    xs, ys = x[ids], y[ids]
    aa = AutoAttack(model, norm="Linf", eps=a.eps, version="standard", seed=0, device=x.device)
    out: dict = {"command": probe_cli.command(), "points": len(ids), "attacks": {}}
    for name, att in (("apgd-t", aa.apgd_targeted), ("fab-t", aa.fab), ("square", aa.square),
                      ("apgd-ce", aa.apgd)):
        t0 = time.perf_counter()
        if name == "apgd-ce":
            att.loss = "ce"
        att.seed = 0
        x_adv = att.perturb(xs, ys)
        with torch.no_grad():
            hit = (model(x_adv).argmax(1) != ys).nonzero().flatten().tolist()
        out["attacks"][name] = {"broke": [ids[i] for i in hit],
                                "seconds": time.perf_counter() - t0}
        print(name, out["attacks"][name], flush=True)
    probe_cli.emit(out, a.out)


if __name__ == "__main__":
    main()
