"""``robustact certify``: certified accuracy of a model on its data, without any attack.

The lower half of the sandwich on its own (``robustact evaluate`` reports it under the attack
figure): per sample, IBP and CROWN-IBP lower bounds of its margins over the ε-ball
(:mod:`robustact.certify`); the certified accuracy is the share whose every bound is positive.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from robustact.certify import certify
from robustact.core.budget import check_budget, default_budget
from robustact.core.storage import atomic_write_json, environment_info
from robustact.data import as_tensors, to_float
from robustact.models.predict import predict
from robustact.runs.sources import ModelSource, load_target

__all__ = ["certify_source"]


def certify_source(source: ModelSource, *, dataset: str | None = None, n: int | None = 1000,
                   eps: float | None = None, norm: str = "linf", method: str = "crown-ibp",
                   split: str = "test", batch_size: int = 128,
                   data_root: str | Path | None = None, download: bool = False,
                   device: str | torch.device = "auto", out: str | Path | None = None
                   ) -> dict[str, Any]:
    """Certified accuracy (IBP and, with ``method="crown-ibp"``, CROWN-IBP) of ``source`` on
    the first ``n`` images of ``split`` at ``eps`` (default: the dataset's standard budget);
    written to ``out`` (a JSON file) when given."""
    t = load_target(source, dataset=dataset, split=split, n=n, data_root=data_root,
                    download=download, device=device)
    x, y = as_tensors(t.data, "data")
    x = to_float(x)
    eps = default_budget(t.dataset, norm) if eps is None else eps
    eps = check_budget(eps, norm, math.prod(x.shape[1:]))
    t0 = time.perf_counter()
    cert = certify(t.model, x, y, eps=eps, norm=norm, method=method, batch_size=batch_size)
    seconds = time.perf_counter() - t0
    clean = predict(t.model, (x, y), batch_size=batch_size)
    record = {"model": source.info(), "dataset": t.dataset, "split": split, "n": int(len(y)),
              "eps": eps, "norm": norm, "method": method, "clean_accuracy": clean.accuracy,
              "certified_ibp": float(cert.certified_ibp.float().mean()),
              "certified_crown_ibp": None if cert.crown_ibp is None
              else float(cert.certified.float().mean()),
              "seconds": seconds, "environment": environment_info()}
    if out is not None:
        atomic_write_json(out, record)
    return record
