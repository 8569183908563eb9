"""Rerun the audit's gradient checks C4 and C7 on a checkpoint, on the CPU, and print JSON.

Why: to recheck on a CPU what an evaluation on a lent GPU reported (the GPU is gone by then),
e.g. the weights ``scripts/gpu_cifar_at.sh`` brings back:

    python scripts/audit_checks.py CHECKPOINT [--n 100] [--data-root DIR]
"""

from __future__ import annotations

import argparse
import json

import torch

from robustact.attacks.registry import default_budget
from robustact.evaluate.checks import check_gradient_mismatch, check_zero_gradients
from robustact.runs.sources import ModelSource, load_target


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--n", type=int, default=100, help="first N test images (default 100)")
    p.add_argument("--data-root", default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    target = load_target(ModelSource(checkpoint=a.checkpoint), n=a.n, data_root=a.data_root,
                         device="cpu")
    model, dataset, x, y = target.model, target.dataset, target.data.x(), target.data.y()
    eps = default_budget(dataset, "linf")
    out = {"checkpoint": a.checkpoint, "dataset": dataset, "n": a.n, "eps": eps,
           "torch": torch.__version__, "device": "cpu"}
    for check in (check_zero_gradients, check_gradient_mismatch):
        r = check(model.eval(), x, y, eps=eps)
        out[r.id] = {"fired": r.fired, "numbers": r.numbers, "evidence": r.evidence}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
