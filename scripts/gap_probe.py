"""Which attack closes a gap to AutoAttack? The protocol's cascade at one ε, with candidates added.

Why: on LeNet-5/MNIST at ε 0.1 (1000 images) ``standard@3`` left 3 points robust that AutoAttack
broke. This runs FGSM, APGD-CE, APGD-T with 3 targets (``standard@3``), then on what is left
APGD-T with AutoAttack's 9 targets, untargeted APGD-DLR and Square with AutoAttack's 5000
queries on every survivor, and prints per attack the points it attacked and broke:

    python scripts/gap_probe.py CHECKPOINT EPS [--n 1000] [--data-root DIR] [--out FILE]
"""

from __future__ import annotations

import time

import probe_cli  # scripts/ is on sys.path when run as a script

from robustact.evaluate import evaluate

ENTRIES = [
    {"key": "fgsm", "attack": {"name": "fgsm"}, "role": "single_step", "on": "all"},
    {"key": "apgd-ce", "attack": {"name": "apgd", "steps": 100}, "role": "standard", "on": "all"},
    {"key": "apgd-t3", "attack": {"name": "apgd_t", "steps": 100, "n_targets": 3},
     "role": "loss_variant"},
    {"key": "apgd-t9", "attack": {"name": "apgd_t", "steps": 100, "n_targets": 9},
     "role": "loss_variant"},
    {"key": "apgd-dlr", "attack": {"name": "apgd", "steps": 100, "loss": "dlr"},
     "role": "loss_variant"},
    {"key": "square5000", "attack": {"name": "square", "n_queries": 5000}, "role": "black_box"},
]


def main() -> None:
    a = probe_cli.parser(__doc__).parse_args()
    model, x, y = probe_cli.load(a)
    t0 = time.perf_counter()
    table = evaluate(model, x, y, {"name": "probe", "entries": ENTRIES},
                     eps=a.eps, eps_grid=[a.eps], progress=False, adaptive=False)
    out: dict = {"command": probe_cli.command(), "n": a.n, "eps": a.eps, "attacks": {}}
    for e in ENTRIES:
        c = table.cell(e["key"], a.eps)
        hit = c["success"] & ~c["skipped"]
        out["attacks"][e["key"]] = {"attacked": int((~c["skipped"]).sum()),
                                    "broken": int(hit.sum()),
                                    "samples": c["sample"][hit][:50].tolist(),
                                    "seconds": float(c["seconds"].sum())}
    out["wall_seconds"] = time.perf_counter() - t0
    probe_cli.emit(out, a.out)


if __name__ == "__main__":
    main()
