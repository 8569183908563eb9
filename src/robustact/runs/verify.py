"""``robustact verify RUN``: recompute a finished evaluation's robust accuracy from its files.

Why: a robust accuracy is a claim about a model, and the run folder holds the evidence, the
adversarial example of every point the protocol broke (``adversarial.safetensors``). Anyone
with the folder, the model and the data can check the claim without rerunning a single attack:
reload the model the run evaluated (its digest must equal the recorded one), reload the same
first n images (their fingerprint must equal the recorded one), check every stored example is
within ε of its image and inside [0, 1], run the model on the examples and recount. The count
must equal the reported one exactly: the examples are the whole of the reported breaks.

Deterministic models only. A randomized model (noise in forward, dropout on) was judged by a
seeded majority vote over EOT draws; repeating that vote on another machine or device is not
guaranteed to give the same draws, so an "exact" recount would be a claim this module cannot
back. Such runs are refused in one line rather than half-verified.

:func:`read_evaluation` and :func:`run_images` (what a finished evaluation folder holds, and
its images reloaded and checked) are shared with :mod:`robustact.runs.export`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from robustact.attacks.verify import judged_input, verify
from robustact.checkpoint import read_card
from robustact.core.digest import model_digest
from robustact.core.runfolder import read_run
from robustact.core.storage import read_json
from robustact.data import as_tensors, to_float
from robustact.evaluate.runner import data_fingerprint
from robustact.models.predict import predict
from robustact.report.evaluation import REPORT_FORMAT
from robustact.runs.sources import as_logits, load_split, load_target, recorded_source

__all__ = ["ADVERSARIAL_FILE", "EvaluatedRun", "read_evaluation", "run_images", "verify_run"]

ADVERSARIAL_FILE = "adversarial.safetensors"
#: Run kinds that write an evaluation folder (``attack`` is a one-attack protocol).
EVALUATION_KINDS = ("evaluate", "attack")
#: Slack on the budget and the box, the one the engine's re-check accepted the examples with
#: (:func:`robustact.attacks.verify.verify`'s default): float32 rounding of x + δ, no more.
TOLERANCE = 1e-6
#: Sample ids a failure line names before "...".
SHOWN = 5


@dataclass
class EvaluatedRun:
    """A finished evaluation folder: its record (report.json), its run.json and the stored
    adversarial examples (``sample``, ``label``, ``x_adv``, ``attack``) with their metadata."""

    path: Path
    record: dict[str, Any]
    run: dict[str, Any]
    adversarial: dict[str, torch.Tensor]
    meta: dict[str, str]

    @property
    def info(self) -> dict[str, Any]:
        return dict(self.record.get("info") or {})

    @property
    def n(self) -> int:
        return int(self.record["summary"]["n"])

    def randomized(self) -> int | None:
        """The EOT draws of a randomized model's run (0: randomized, EOT off), None if not."""
        r = self.info.get("randomness")
        if isinstance(r, str):  # the report's sentence for a randomized model: the table's
            try:                # metadata holds the numbers
                r = read_json(self.path / "table.json")["meta"]["randomness"]
            except (OSError, ValueError, KeyError, TypeError):
                return 0
        if isinstance(r, dict) and (r.get("randomized") or r.get("eot")):
            return int(r.get("eot") or 0)
        return None


def _refuse_older(path: Path, what: str) -> ValueError:
    return ValueError(f"{path} was written by an older robustact: {what}; rerun its evaluation "
                      "command into the same --out to add it (finished cells are reused)")


def read_evaluation(run: str | Path, *, need_provenance: bool = True) -> EvaluatedRun:
    """The finished evaluation in folder ``run``; one ValueError line when it is not one.

    Refused: a missing folder, a folder without ``run.json`` or of another kind (a training
    run), an evaluation that did not finish, one without ``report.json``, one with no robust
    accuracy at a fixed ε (minimum-norm attacks only), one without
    ``adversarial.safetensors`` (older format), and, with ``need_provenance``, one whose
    examples do not record the model's digest (written before provenance was recorded).
    """
    path = Path(run)
    if not path.is_dir():
        raise ValueError(f"{path} is not a run folder (no such folder)")
    rec = read_run(path)
    if rec is None:
        raise ValueError(f"{path} is not a run folder (no run.json): give the folder that "
                         "`robustact evaluate` or `attack` wrote")
    if rec.get("kind") not in EVALUATION_KINDS:
        raise ValueError(f"{path} holds a {rec.get('kind')} run, not an evaluation (evaluate "
                         "or attack)")
    if rec.get("status") != "finished":
        raise ValueError(f"the evaluation in {path} did not finish (status: "
                         f"{rec.get('status')}); rerun its command to complete it first")
    try:
        record = read_json(path / "report.json")
    except (OSError, ValueError):
        raise ValueError(f"{path} has no readable report.json: not a finished evaluation "
                         "folder") from None
    if not isinstance(record, dict) or record.get("format") != REPORT_FORMAT:
        raise ValueError(f"{path / 'report.json'} is not a robustact evaluation record")
    summary = record.get("summary") or {}
    if summary.get("robust_accuracy") is None or summary.get("eps") is None:
        raise ValueError(f"{path} has no robust accuracy at a fixed eps (minimum-norm attacks "
                         "only): there is no count to re-check or export")
    file = path / ADVERSARIAL_FILE
    if not file.is_file():
        if (record.get("run") or {}).get("adversarial_kept") is False:
            raise ValueError(f"{path} kept no adversarial examples (evaluated with "
                             "--no-adversarial): there is nothing to re-check or export; rerun "
                             "the evaluation without --no-adversarial")
        raise _refuse_older(path, f"it has no {ADVERSARIAL_FILE}")
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"cannot read {file}: {e}") from None
    if not {"sample", "label", "x_adv"} <= set(tensors):
        raise ValueError(f"{file} lacks the sample, label or x_adv tensor")
    if need_provenance and not meta.get("model_digest"):
        raise _refuse_older(path, f"its {ADVERSARIAL_FILE} records no provenance (model "
                                  "digest, versions, attack specs)")
    return EvaluatedRun(path, record, rec, tensors, meta)


def recorded_card(ev: EvaluatedRun) -> dict[str, Any]:
    """The card of the run's checkpoint (its two-class task, its validation split), or an empty
    one for a model file, whose data rules need none, and for a checkpoint no longer where the
    run found it (the data fingerprint then decides whether the images are the run's)."""
    info = ev.info
    if info.get("source") != "checkpoint":
        return {}
    try:
        return read_card(info["checkpoint"])
    except (OSError, ValueError):
        return {}


def _dataset(ev: EvaluatedRun) -> tuple[str, str]:
    """(dataset, split) the run evaluated; one line when the record does not say."""
    dataset = ev.info.get("dataset")
    if not dataset:
        raise ValueError(f"{ev.path} does not record its dataset (evaluated from Python on "
                         "data of its own?): its images cannot be reloaded")
    return str(dataset), str(ev.info.get("split") or "test")


def run_images(ev: EvaluatedRun, data: Any = None, *, data_root: str | Path | None = None,
               download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's n images (floats in [0, 1], as the engine saw them) and labels.

    ``data``: the split already loaded (e.g. by ``load_target``); None loads the first n
    images of the recorded dataset and split. Either way the fingerprint must equal the
    recorded one: another data root, a changed file or another split is one line, not a
    recount on the wrong images.
    """
    if data is None:
        dataset, split = _dataset(ev)
        data = load_split(recorded_card(ev), dataset, split, data_root=data_root, n=ev.n,
                          download=download)
    x, y = as_tensors(data, "data")
    x = to_float(x)
    if x.shape[0] != ev.n:
        raise ValueError(f"the data holds {x.shape[0]} images, the run evaluated {ev.n}")
    want = (ev.record.get("data") or {}).get("fingerprint")
    got = data_fingerprint(x, y.long(), torch.arange(x.shape[0], dtype=torch.int64))
    if want and got != want:
        raise ValueError(f"the images do not match the run: data fingerprint {got}, the run "
                         f"recorded {want} (another --data-root, dataset file or split?)")
    return x, y


def _ids(mask: torch.Tensor, sample: torch.Tensor) -> str:
    ids = sample[mask.cpu()].tolist()
    more = ", ..." if len(ids) > SHOWN else ""
    return f"samples {', '.join(str(i) for i in ids[:SHOWN])}{more}"


def _check_examples(model: nn.Module, ev: EvaluatedRun, x: torch.Tensor, y: torch.Tensor,
                    clean_ok: torch.Tensor, batch_size: int) -> tuple[int, list[str]]:
    """(verified breaks, problems) of the stored examples: each within ε and the box, its
    label the data's, its image correct clean, the model wrong on it (a tie is wrong)."""
    adv = ev.adversarial
    sample, x_adv = adv["sample"].long(), adv["x_adv"]
    if sample.numel() == 0:
        return 0, []
    if int(sample.min()) < 0 or int(sample.max()) >= ev.n or not torch.equal(
            adv["label"].long(), y[sample]):
        raise ValueError(f"the stored examples do not match the run's images (sample ids or "
                         f"labels differ) in {ev.path / ADVERSARIAL_FILE}")
    eps, norm = float(ev.record["summary"]["eps"]), str(ev.record["summary"]["norm"])
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    xs, ys = x[sample].to(dev), y[sample].to(dev)
    v = verify(model, xs, ys, x_adv.to(dev), eps=eps, norm=norm, tol=TOLERANCE,
               batch_size=batch_size)
    adv32 = x_adv.to(dev).to(xs.dtype)  # judged as the engine judged: cast, finite, clamped
    x_eval = judged_input(adv32, xs)
    correct = predict(model, (x_eval, ys), batch_size=batch_size).correct
    assert correct is not None  # labels were given
    budget, box = v.in_budget.cpu(), v.in_box.cpu()
    was_ok, fooled = clean_ok[sample], ~correct
    problems = []
    if not bool(budget.all()):
        problems.append(f"{int((~budget).sum())} stored examples are outside eps={eps:.6g} "
                        f"({norm}) of their image ({_ids(~budget, sample)})")
    if not bool(box.all()):
        problems.append(f"{int((~box).sum())} stored examples leave [0, 1] or are not finite "
                        f"({_ids(~box, sample)})")
    if not bool(was_ok.all()):
        problems.append(f"{int((~was_ok).sum())} stored examples belong to images the model "
                        f"gets wrong clean ({_ids(~was_ok, sample)})")
    stale = budget & box & was_ok & ~fooled
    if bool(stale.any()):
        problems.append(f"{int(stale.sum())} stored examples no longer fool the model "
                        f"({_ids(stale, sample)})")
    return int((budget & box & was_ok & fooled).sum()), problems


def verify_run(run: str | Path, *, model: str | Path | None = None,
               model_file: str | None = None, weights: str | Path | None = None,
               data_root: str | Path | None = None, download: bool = False,
               device: str | torch.device = "auto", batch_size: int = 256) -> dict[str, Any]:
    """Recompute the robust accuracy of the finished evaluation in ``run`` from its files.

    Reloads the model the run recorded (``model``: a checkpoint folder instead, e.g. a moved
    one; ``model_file``/``weights``: a moved model file or weights) and the same first n
    images (``data_root`` as in every command). Raises ValueError (one line) when the folder
    is not a finished evaluation, is of an older format, comes from a randomized model, or when
    the model's digest or the images' fingerprint differ from the recorded ones. Otherwise
    returns the recount: ``ok`` is True when every stored example is within ε and [0, 1] and
    still fools the model, and clean-correct minus verified breaks equals the reported robust
    count exactly; ``problems`` lists what failed, ``reason`` says it in one line.
    """
    ev = read_evaluation(run)
    draws = ev.randomized()
    if draws is not None:
        how = f"a majority vote over {draws} EOT draws" if draws else "single random draws"
        raise ValueError(f"verify supports deterministic models only: the model of {ev.path} "
                         f"is randomized (judged by {how}), so its count cannot be "
                         "recomputed exactly")
    dataset, split = _dataset(ev)
    source = recorded_source(ev.info, ev.path, model, model_file, weights)
    t = load_target(source, dataset=dataset, split=split, n=ev.n, data_root=data_root,
                    download=download, device=device)
    digest, recorded = model_digest(t.model), ev.meta["model_digest"]
    if digest != recorded:
        raise ValueError(f"the model does not match the run: digest {digest}, the run "
                         f"recorded {recorded}")
    x, y = run_images(ev, t.data)
    judge, _ = as_logits(t.model, x)
    clean = predict(judge, (x, y), batch_size=batch_size).correct
    assert clean is not None  # labels were given
    broken, problems = _check_examples(judge, ev, x, y, clean, batch_size)
    s, n = ev.record["summary"], ev.n
    clean_reported = round(float(s["clean_accuracy"]) * n)
    robust_reported = round(float(s["robust_accuracy"]) * n)
    clean_now = int(clean.sum())
    if clean_now != clean_reported:
        problems.append(f"the model gets {clean_now} of {n} images right clean, the run "
                        f"reported {clean_reported}")
    robust_now = clean_now - broken
    if robust_now != robust_reported:
        problems.append(f"robust accuracy recomputed {robust_now}/{n} = {robust_now / n:.2%}, "
                        f"the run reported {robust_reported}/{n} = {robust_reported / n:.2%}")
    ok = not problems
    return {"run": str(ev.path), "model_digest": digest, "model_digest_ok": True,
            "data_ok": True, "n": n, "clean_correct": clean_now,
            "clean_correct_reported": clean_reported,
            "stored_examples": int(ev.adversarial["sample"].numel()), "broken_verified": broken,
            "robust_correct_reported": robust_reported, "robust_correct_verified": robust_now,
            "robust_accuracy_reported": float(s["robust_accuracy"]),
            "robust_accuracy_verified": robust_now / n, "eps": float(s["eps"]),
            "norm": s["norm"], "protocol": ev.meta.get("protocol"), "ok": ok,
            "problems": problems,
            "reason": "verified: every stored example is within eps and fools the model; the "
                      "robust count matches exactly" if ok else
                      "verification failed: " + "; ".join(problems)}
