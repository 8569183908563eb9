"""Does APGD-T break what APGD-CE and APGD-DLR leave? A cascade on a checkpoint's test images.

Why: on a fast-AT ResNet-20 (CIFAR-10) AutoAttack, which runs APGD-T, reported 8 points in 1000
fewer robust than robustact's ``standard`` protocol, which does not. This measures what the new
``apgd_t`` adds on the survivors of the two untargeted losses, before any protocol runs it:

    python scripts/apgd_t_cascade.py CHECKPOINT [--n 1000] [--data-root DIR] [--threads 2]

Prints one JSON object: per attack, the points attacked, broken, and left robust after it.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from robustact.attacks import APGD, APGDT
from robustact.attacks.registry import default_budget
from robustact.models.predict import predict
from robustact.runs.sources import ModelSource, load_target


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--n", type=int, default=1000, help="first N test images (default 1000)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    target = load_target(ModelSource(checkpoint=a.checkpoint), n=a.n, data_root=a.data_root,
                         device="cpu")
    model, dataset, x, y = target.model.eval(), target.dataset, target.data.x(), target.data.y()
    eps, keys = default_budget(dataset, "linf"), torch.arange(len(y))
    robust = predict(model, (x, y)).correct  # a tied top output is not correct
    assert robust is not None
    out: dict = {"checkpoint": a.checkpoint, "dataset": dataset, "n": len(y), "eps": eps,
                 "clean": int(robust.sum())}
    for name, attack in (("apgd-ce", APGD(eps, loss="ce")), ("apgd-dlr", APGD(eps, loss="dlr")),
                         ("apgd-t", APGDT(eps))):
        idx = robust.nonzero().squeeze(1)
        t0 = time.perf_counter()
        r = attack(model, x[idx], y[idx], keys=keys[idx])
        robust[idx[r.success]] = False
        out[name] = {"attacked": len(idx), "broken": int(r.success.sum()),
                     "robust_after": int(robust.sum()),
                     "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
