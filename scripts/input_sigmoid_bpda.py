"""Is the calibration zoo's steep input sigmoid masking, and where? APGD through it vs BPDA.

Why: the audit flags the zoo's ``input_sigmoid`` kind (x → sigmoid(50 (x − 0.5)) before the
network) in only 2 of its 6 cells. A miss is only a miss if there is masking to find: this
attacks each base + input_sigmoid with APGD-CE (100 steps) three ways, through the real
gradient, with a straight-through backward (the sigmoid's derivative replaced by 1), and with
the backward of a gentle sigmoid(5 (x − 0.5)); the forward is always the real model, and
robustness is judged on it. Where BPDA finds no more than plain APGD the robustness is real (a
binarizing preprocessor on near-binary images), not an artefact of the gradient.

    python scripts/input_sigmoid_bpda.py [--cache results/calibration/models] [--data-root DIR]

Prints one JSON object per (dataset, ε); ``--out FILE`` also writes them all.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustact.attacks import APGD
from robustact.core.storage import atomic_write_json
from robustact.data import as_tensors, to_float
from robustact.evaluate.selftest import BrokenModel
from robustact.models.predict import correct_untied
from robustact.runs.zoo import EPS, N_TEST, full_zoo, load_or_train, test_data

STEEPNESS = 50.0  # BROKEN_KINDS["input_sigmoid"]


class _BackwardOf(nn.Module):
    """The broken model's exact forward; the input sigmoid's backward replaced by that of
    sigmoid(``soft`` (x − 0.5)), or by the identity when ``soft`` is None."""

    def __init__(self, broken: BrokenModel, soft: float | None) -> None:
        super().__init__()
        self.broken, self.soft = broken, soft

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hard = torch.sigmoid(self.broken.steepness * (x - 0.5))
        sub = x if self.soft is None else torch.sigmoid(self.soft * (x - 0.5))
        z = hard.detach() + sub - sub.detach()  # value of ``hard``, gradient of ``sub``
        base = self.broken.base
        return base.head(base.features(z))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", default="results/calibration/models",
                   help="the zoo's model cache (trained there first when absent)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default=None, help="also write the results to this JSON file")
    a = p.parse_args()
    torch.set_num_threads(1)
    zoo, results = full_zoo(), []
    for base_name in ("mnist-lenet5", "digits-smallcnn-w32"):
        spec = zoo.base(base_name)
        base, _ = load_or_train(spec, Path(a.cache), data_root=a.data_root)
        broken = BrokenModel(base.eval(), "input_sigmoid", steepness=STEEPNESS).eval()
        x, y = as_tensors(test_data(spec.dataset, N_TEST[spec.dataset],
                                    data_root=a.data_root), "test data")
        x = to_float(x)
        with torch.no_grad():
            clean = correct_untied(broken(x), y)
        for eps in EPS[spec.dataset]:
            row: dict[str, Any] = {"base": base_name, "dataset": spec.dataset, "eps": eps,
                                   "n": len(y), "clean": clean.float().mean().item()}
            ways = (("apgd-ce", broken), ("bpda-identity", _BackwardOf(broken, None)),
                    ("bpda-sigmoid5", _BackwardOf(broken, 5.0)))
            for name, attacked in ways:
                adv = APGD(eps=eps, steps=100, loss="ce", seed=0)(attacked.eval(), x, y).x_adv
                with torch.no_grad():
                    robust = correct_untied(broken(adv), y) & clean
                row[name] = robust.float().mean().item()
            print(json.dumps(row), flush=True)
            results.append(row)
    if a.out:
        atomic_write_json(a.out, {"command": "python scripts/input_sigmoid_bpda.py "
                                  f"--out {a.out}", "attack": "APGD-CE, 100 steps, seed 0",
                                  "rows": results})


if __name__ == "__main__":
    main()
