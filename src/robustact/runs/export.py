"""``robustact export RUN --format robustbench``: a finished evaluation in another tool's format.

RobustBench lists a model as one JSON file, ``model_info/<dataset>/<threat model>/<name>.json``,
with the fields ``link``, ``name``, ``authors``, ``additional_data``,
``number_forward_passes``, ``dataset``, ``venue``, ``architecture``, ``eps``, ``clean_acc``,
``reported``, ``autoattack_acc``, ``external`` and ``footnote`` (accuracies as percent strings
with two decimals, ε as ``"8/255"`` or ``"0.3"``). What robustact can fill it fills; what only
the author knows (paper link, authors, venue, the paper's own figure, extra training data) is
left empty and listed under ``robustact.fill_in``.

Why ``external`` and never ``autoattack_acc``: RobustBench ranks by its AutoAttack figure, and a
robustact protocol is not AutoAttack (other attacks, other budgets of iterations). Writing our
number there would present it as something it is not, so it goes into ``external`` (RobustBench's
field for a stronger evaluation by someone else) and the footnote says AutoAttack was not run.
``autoattack_acc`` is written only when the record says the run was AutoAttack
(``protocol.autoattack``), which no shipped protocol is.

Beside the entry, the adversarial examples as AutoAttack's tools write and read them: a
``torch.save``d ``{"adv_complete": (n, C, H, W)}`` holding x_adv for every broken point and the
clean image for the others, so the whole n-image set can be re-evaluated by any tool (the
model's accuracy on it is the robust accuracy). Both files are written atomically.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from robustact import __version__
from robustact.attacks.verify import judged_input
from robustact.core.storage import atomic_write_bytes, atomic_write_json
from robustact.runs.verify import EvaluatedRun, read_evaluation, run_images

__all__ = ["EXPORT_FORMATS", "export_run", "eps_text"]

#: Formats :func:`export_run` writes.
EXPORT_FORMATS = ("robustbench",)
#: RobustBench's threat-model folder names, by robustact norm.
THREAT_MODELS = {"linf": "Linf", "l2": "L2"}
#: Fields of the entry robustact cannot know: the author fills them in.
FILL_IN = ("link", "authors", "venue", "reported", "additional_data")


def eps_text(eps: float) -> str:
    """ε as RobustBench writes it: a short decimal when one is exact (``"0.3"``, ``"0.5"``),
    else k/255 when ε is a whole number of 8-bit steps (``"8/255"``), else 6 digits."""
    short = f"{eps:.3g}"
    if float(short) == eps:
        return short
    steps = eps * 255
    if math.isclose(steps, round(steps), rel_tol=0, abs_tol=1e-9):
        return f"{round(steps)}/255"
    return f"{eps:.6g}"


def _pct(v: float | None) -> str:
    """An accuracy in [0, 1] as RobustBench's percent string with two decimals."""
    return "" if v is None else f"{100 * float(v):.2f}"


def _architecture(ev: EvaluatedRun) -> str:
    """The model's name as the record gives it: the card's model, the model file's factory,
    else the class."""
    info = ev.info
    model = info.get("model")
    if isinstance(model, Mapping) and model.get("name"):
        return str(model["name"])
    if info.get("model_file"):
        return str(info["model_file"]).rsplit(":", 1)[-1]
    return str((ev.record.get("model") or {}).get("class") or "")


def _ran_autoattack(record: Mapping[str, Any]) -> bool:
    """Whether the run was AutoAttack itself: only when its record says so."""
    return bool((record.get("protocol") or {}).get("autoattack"))


def _footnote(ev: EvaluatedRun, dataset: str, split: str, autoattack: bool) -> str:
    r, s = ev.record, ev.record["summary"]
    attacks = ", ".join(s.get("attacks_at_eps") or []) or "none"
    aa = ("" if autoattack else " AutoAttack was not run, so there is no autoattack_acc.")
    draws = ev.randomized()
    if draws is not None:
        aa += (f" Randomized model, judged by a majority vote over {draws} draws: re-evaluating"
               " adv_complete draws fresh noise." if draws else " Randomized model, judged on"
               " single draws (EOT off): the figure is not reproducible.")
    return (f"Robust accuracy ('external') from robustact {ev.meta.get('robustact', __version__)}"
            f", protocol {r['protocol']['id']} ({attacks}; per-sample worst case, every break "
            f"re-verified on the model) on the first {ev.n} {dataset} {split} images.{aa} "
            f"Gradient-masking audit verdict: {(r.get('verdict') or {}).get('label')}.")


def robustbench_entry(ev: EvaluatedRun, adversarial: str | None = None) -> dict[str, Any]:
    """The RobustBench model-info entry of a finished evaluation (see the module doc)."""
    r, s, info = ev.record, ev.record["summary"], ev.info
    norm = str(s["norm"])
    if norm not in THREAT_MODELS:
        raise ValueError(f"RobustBench has no {norm} threat model (only Linf and L2)")
    dataset, split = str(info.get("dataset") or ""), str(info.get("split") or "test")
    autoattack = _ran_autoattack(r)
    draws = ev.randomized()  # a majority vote over N draws is N forward passes
    entry: dict[str, Any] = {
        "link": "", "name": str(info.get("name") or ev.path.name), "authors": "",
        "additional_data": None, "number_forward_passes": int(draws or 1),
        "dataset": dataset, "venue": "", "architecture": _architecture(ev),
        "threat_model": THREAT_MODELS[norm], "eps": eps_text(float(s["eps"])),
        "clean_acc": _pct(s["clean_accuracy"]), "reported": "",
        **({"autoattack_acc": _pct(s["robust_accuracy"])} if autoattack else {}),
        "external": _pct(s["robust_accuracy"]),
        "footnote": _footnote(ev, dataset, split, autoattack),
    }
    entry["robustact"] = {
        "version": ev.meta.get("robustact", __version__), "protocol": r["protocol"]["id"],
        "verdict": (r.get("verdict") or {}).get("label"), "n": ev.n, "split": split,
        "norm": norm, "eps": float(s["eps"]), "seed": r["protocol"].get("seed"),
        "model_digest": ev.meta.get("model_digest") or None,
        "defenses": (r.get("model") or {}).get("defenses") or [],
        "run": str(ev.path), "adversarial": adversarial, "fill_in": list(FILL_IN)}
    return entry


def adv_complete(ev: EvaluatedRun, x: torch.Tensor) -> torch.Tensor:
    """(n, C, H, W): the stored x_adv at every broken point, the clean image elsewhere; each
    example as the engine judged it (non-finite entries from the clean image, clamped to
    [0, 1]), in the examples' dtype."""
    adv = ev.adversarial
    sample, x_adv = adv["sample"].long(), adv["x_adv"]
    dtype = x_adv.dtype if x_adv.is_floating_point() else x.dtype
    out = x.detach().cpu().to(dtype).clone()
    if sample.numel():
        clean = out[sample]
        out[sample] = judged_input(x_adv.to(dtype), clean)
    return out


def _paths(ev: EvaluatedRun, out: str | Path | None) -> tuple[Path, Path]:
    """(entry JSON, adversarial .pt): ``out`` and ``out`` with the suffix .pt; by default
    ``RUN/robustbench.json`` and ``RUN/robustbench.pt``."""
    json_path = Path(out) if out is not None else ev.path / "robustbench.json"
    if json_path.suffix == ".pt":
        raise ValueError(f"--out {json_path} names the entry JSON; the examples go beside it "
                         "as .pt: give a .json name")
    return json_path, json_path.with_suffix(".pt")


def _atomic_torch_save(path: Path, obj: Any) -> Path:
    """``torch.save`` to ``path`` through :func:`atomic_write_bytes` (never half a file)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def export_run(run: str | Path, *, fmt: str = "robustbench", out: str | Path | None = None,
               data_root: str | Path | None = None, download: bool = False) -> dict[str, Any]:
    """Write the finished evaluation in ``run`` in format ``fmt`` (only ``"robustbench"``).

    Writes the model-info entry to ``out`` (default ``RUN/robustbench.json``) and the examples
    (``{"adv_complete": ...}``) beside it as ``.pt``. The clean images come from the recorded
    dataset (``data_root`` as in every command) and must match the run's data fingerprint.
    One ValueError line for an unknown format and for a folder that is not a finished
    evaluation with its ``adversarial.safetensors``. Returns both paths and the entry.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; available: {', '.join(EXPORT_FORMATS)}")
    ev = read_evaluation(run, need_provenance=False)
    json_path, pt_path = _paths(ev, out)
    entry = robustbench_entry(ev, str(pt_path))  # refuses a norm RobustBench lacks, first
    x, _ = run_images(ev, data_root=data_root, download=download)
    _atomic_torch_save(pt_path, {"adv_complete": adv_complete(ev, x)})
    atomic_write_json(json_path, entry)
    return {"format": fmt, "entry": str(json_path), "adversarial": str(pt_path),
            "n": ev.n, "clean_acc": entry["clean_acc"], "external": entry["external"],
            "autoattack_acc": entry.get("autoattack_acc"), "eps": entry["eps"],
            "threat_model": entry["threat_model"]}
