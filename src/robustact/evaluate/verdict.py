"""The audit's verdict (AUDIT.md) and the report that carries it with every check's result.

Why apart from :mod:`robustact.evaluate.audit`: the verdict reads only check results, never a
model or a table, so reports and the self-test can rebuild or judge it without the checks'
machinery. The rules, exactly as AUDIT.md states them:

- **masking confirmed**: some attack broke extra points beyond noise (a check with
  ``breaks_points``);
- **masking suspected**: otherwise, some diagnostic or attack check fired;
- **no evidence of masking found**: nothing fired. Never "robust": passing is necessary, not
  sufficient (Popovic et al., CVPR-W 2022).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from robustact.evaluate.check_base import CheckResult

__all__ = ["VERDICTS", "Verdict", "verdict", "AuditReport"]

VERDICTS = ("masking confirmed", "masking suspected", "no evidence of masking found")


# -- the verdict --------------------------------------------------------------------------------

@dataclass
class Verdict:
    """``label`` in :data:`VERDICTS`, the sentences behind it, and the checks it read."""

    label: str
    evidence: list[str]
    checks: list[CheckResult]

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "evidence": list(self.evidence),
                "checks": [c.as_dict() for c in self.checks]}


def _sentence(c: CheckResult) -> str:
    return f"{c.id} {c.name}: {c.evidence}"


def verdict(checks: Sequence[CheckResult]) -> Verdict:
    """AUDIT.md's rules: confirmed if some check broke extra points beyond noise; suspected if
    some non-informational check fired; otherwise no evidence of masking found."""
    checks = list(checks)
    confirming = [c for c in checks if c.fired and c.breaks_points]
    firing = [c for c in checks if c.fired and c.kind != "info" and not c.breaks_points]
    notes = [c for c in checks if c.fired and c.kind == "info"]
    if confirming:
        label = VERDICTS[0]
        evidence = [_sentence(c) for c in confirming + firing]
    elif firing:
        label = VERDICTS[1]
        evidence = [_sentence(c) for c in firing]
        evidence.append("no attack has yet broken extra points beyond noise: run the adaptive "
                        "attacks the fired checks point to.")
    else:
        label = VERDICTS[2]
        ran = sum(c.fired is not None for c in checks)
        evidence = [f"all {ran} applicable checks passed; this is necessary, not sufficient, for "
                    "a sound evaluation (Popovic et al., CVPR-W 2022)."]
    evidence += [_sentence(c) for c in notes]
    return Verdict(label, evidence, checks)


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
                "checks": [c.as_dict() for c in self.checks], "seconds": self.seconds,
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
