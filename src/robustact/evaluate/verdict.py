"""The audit's verdict and the report that carries it with every check's result.

Why apart from :mod:`robustact.evaluate.audit`: the verdict reads only check results (their
numbers included), never a model or a table, so reports, the self-test and the calibration zoo
can rebuild or re-judge it from stored results without re-running anything.

The audit answers two questions, apart (issue 20):

1. **Is the reported number complete?** Every point an attack outside the standard ones broke
   (FGSM, APGD-DLR, Square, random search, more restarts, label-only, adaptive, transfer) is
   already in the per-sample worst case; the gap between the standard attacks' figure and the
   reported one is stated, by attack (:attr:`Verdict.completeness`). A gap is not masking.
2. **Is there gradient masking?**

   - **masking confirmed**: evidence of a mechanism (a check in :data:`MECHANISM` fired:
     randomness, probabilities, a broken graph, gradients exactly zero where the function is
     not flat, saturated outputs, optimization inside forward, a gradient that does not
     describe the function), or a protocol gap far beyond the disagreement that sound attacks
     show on healthy models (an exact binomial test, ``breaks_points``);
   - **masking suspected**: otherwise, a diagnostic fired (unstable predictions, a stalled or
     non-monotone attack, a failed unbounded attack, the binarization test, ...);
   - **no evidence of masking found**: nothing fired. Never "robust": passing is necessary, not
     sufficient (Popovic et al., CVPR-W 2022).

   A check that saw fewer than :data:`MIN_DECIDING_SAMPLES` samples never decides the verdict
   alone: it is a note unless another check fired too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from robustact.evaluate.check_base import (
    ADAPTIVE_GAP_RATE,
    HEALTHY_GAP_RATE,
    SATURATION_FRACTION,
    CheckResult,
    gap_test,
)
from robustact.evaluate.checks import gradient_mismatch_fires, zero_gradients_fire

__all__ = ["VERDICTS", "MECHANISM", "GAP", "QUESTIONS", "MIN_DECIDING_SAMPLES", "Verdict",
           "verdict", "verdict_from_dicts", "AuditReport"]

VERDICTS = ("masking confirmed", "masking suspected", "no evidence of masking found")
#: Checks that measure a masking mechanism on the model itself: one firing confirms.
MECHANISM = ("C1", "C2", "C3", "C4", "C5", "C6", "C7")
#: Checks that compare another attack with the standard ones: they answer "is the number
#: complete?", and count for masking only through their binomial test (``breaks_points``;
#: C19, another loss, never: losses disagree on healthy models too).
GAP = ("C11", "C15", "C16", "C17", "C18", "C19", "C20", "C25")
#: Which question each check answers, for the reports.
QUESTIONS = {**{c: "masking (mechanism)" for c in MECHANISM},
             **{c: "completeness (and masking, by a test)" for c in GAP},
             "C19": "completeness",
             **{c: "masking (diagnostic)" for c in ("C8", "C10", "C12", "C13", "C14", "C21")},
             **{c: "completeness" for c in ("C9", "C22")}, "C23": "information"}
#: A check that saw fewer samples than this never decides the verdict alone (the demo's
#: binarization test on 5 samples once made every undefended model "suspected").
MIN_DECIDING_SAMPLES = 20


# -- the verdict --------------------------------------------------------------------------------

@dataclass
class Verdict:
    """``label`` in :data:`VERDICTS` (the masking question), the sentences behind it, the
    checks it read, and the answer to the completeness question."""

    label: str
    evidence: list[str]
    checks: list[CheckResult]
    completeness: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "evidence": list(self.evidence),
                "completeness": dict(self.completeness),
                "checks": [c.as_dict() for c in self.checks]}


def _sentence(c: CheckResult) -> str:
    return f"{c.id} {c.name}: {c.evidence}"


def _few_samples(c: CheckResult) -> bool:
    n = c.numbers.get("samples")
    return isinstance(n, int) and not isinstance(n, bool) and n < MIN_DECIDING_SAMPLES


def _completeness(checks: Sequence[CheckResult]) -> dict[str, Any]:
    """The protocol gap: per gap check, the points it broke beyond the standard attacks."""
    by = {c.id: int(c.numbers.get("extra_broken", 0)) for c in checks
          if c.id in GAP and c.fired}
    base = max((int(c.numbers.get("standard_robust", 0)) for c in checks
                if c.id in GAP and c.fired is not None), default=None)
    if not by:
        text = ("complete as far as the audit can tell: no other attack broke a point the "
                "standard attacks left robust.")
    else:
        parts = ", ".join(f"{c.id} {k}" for c, k in
                          ((c, by[c.id]) for c in checks if c.id in by))
        text = (f"other attacks broke points the standard attacks left robust ({parts}; of "
                f"{base}); the reported worst case already counts them.")
    return {"gap": by, "standard_robust": base, "text": text,
            "label": "complete" if not by else "gap found (already in the reported figure)"}


def verdict(checks: Sequence[CheckResult]) -> Verdict:
    """The two answers (module docstring) from ``checks``."""
    checks = list(checks)
    # what bears on masking: a gap only through its test (otherwise it answers completeness)
    fired = [c for c in checks if c.fired and c.kind != "info"
             and (c.kind != "gap" or c.breaks_points)]
    decisive = [c for c in fired if not _few_samples(c)]
    if decisive:  # a check on a handful of samples may add to others, never decide alone
        decisive = fired
    mechanism = [c for c in decisive if c.id in MECHANISM]
    tested = [c for c in decisive if c.breaks_points]
    diagnostic = [c for c in decisive if c.id not in MECHANISM and c.kind != "gap"]
    quiet = [c for c in fired if c not in decisive]
    if mechanism or tested:
        label = VERDICTS[0]
        evidence = [_sentence(c) for c in mechanism + tested + diagnostic]
    elif diagnostic:
        label = VERDICTS[1]
        evidence = [_sentence(c) for c in diagnostic]
        evidence.append("no mechanism was found and no gap exceeds what sound attacks show on "
                        "healthy models: run the attacks the fired checks point to.")
    else:
        label = VERDICTS[2]
        ran = sum(c.fired is not None for c in checks)
        evidence = [f"no masking mechanism and no gap beyond healthy disagreement in the {ran} "
                    "applicable checks; this is necessary, not sufficient, for a sound "
                    "evaluation (Popovic et al., CVPR-W 2022)."]
    evidence += [f"note: {_sentence(c)} (on {c.numbers.get('samples')} samples: too few to "
                 "decide alone)" for c in quiet]
    evidence += [f"note: {_sentence(c)}" for c in checks
                 if c.fired and c.kind == "info"]
    return Verdict(label, evidence, checks, _completeness(checks))


def _rejudged(c: Mapping[str, Any]) -> CheckResult:
    """A stored check result with the *current* thresholds applied to its numbers, where the
    decision is a threshold on numbers it stored (the gap test, C4's and C5's fractions, C7's
    counts); the other checks keep their stored outcome."""
    nb = dict(c.get("numbers") or {})
    fired, breaks = c.get("fired"), bool(c.get("breaks_points"))
    cid = c["id"]
    if cid == "C19":  # a completeness question only (audit.check_loss_choice)
        breaks = False
    elif cid in GAP and "extra_broken" in nb and "standard_robust" in nb:
        rate = ADAPTIVE_GAP_RATE if cid in ("C18", "C20") else HEALTHY_GAP_RATE
        breaks, nb["p_value"] = gap_test(int(nb["extra_broken"]), int(nb["standard_robust"]),
                                         rate)
    elif cid == "C4" and "max_fraction" in nb and nb.get("samples"):
        fired = any(zero_gradients_fire(nb))
    elif cid == "C7" and "counts" in nb:
        fired = any(gradient_mismatch_fires(nb))
    elif cid == "C5" and "ce_grad_zero_margin_not_fraction" in nb:
        fired = float(nb["ce_grad_zero_margin_not_fraction"]) > SATURATION_FRACTION
    return CheckResult(cid, c.get("name") or cid, fired, nb, c.get("evidence", ""),
                       kind=c.get("kind") or "diagnostic", breaks_points=breaks)


def verdict_from_dicts(checks: Sequence[Mapping[str, Any]]) -> Verdict:
    """:func:`verdict` of stored check results (``CheckResult.as_dict()`` of a report.json or
    the calibration zoo's rows), re-judged by the current thresholds (:func:`_rejudged`), so a
    change of the rules is measured on the zoo without re-running any attack."""
    return verdict([_rejudged(c) for c in checks])


# -- the report ---------------------------------------------------------------------------------

@dataclass
class AuditReport:
    """Every check's result, the verdict, and what the audit itself cost."""

    checks: list[CheckResult]
    verdict: Verdict
    seconds: float
    model_forward_rows: int
    meta: dict[str, Any] = field(default_factory=dict)

    def check(self, cid: str) -> CheckResult:
        for c in self.checks:
            if c.id == cid:
                return c
        raise KeyError(f"no check {cid!r} in this audit")

    def fired(self) -> list[str]:
        return [c.id for c in self.checks if c.fired]

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict.label, "evidence": list(self.verdict.evidence),
                "completeness": dict(self.verdict.completeness),
                "checks": [{**c.as_dict(), "question": QUESTIONS.get(c.id, "")}
                           for c in self.checks], "seconds": self.seconds,
                "model_forward_rows": self.model_forward_rows, **self.meta}

    def lines(self) -> list[str]:
        """Plain text: the verdict, its evidence, then one line per check."""
        out = [f"verdict: {self.verdict.label}"]
        out += [f"  - {s}" for s in self.verdict.evidence]
        for c in self.checks:
            state = "n/a" if c.fired is None else ("FIRED" if c.fired else "pass")
            out.append(f"{c.id:>5} {state:<5} {c.name}: {c.evidence}")
        out.append(f"audit cost: {self.seconds:.2f} s, {self.model_forward_rows} model "
                   "forward rows")
        return out
