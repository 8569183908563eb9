"""C24, the auditor's self-test: deliberately broken models the audit must flag.

Why: an audit that never fires is indistinguishable from one that cannot. Carlini et al. (2019)
ask evaluators to check their methods on intentionally broken models; Foolbox tests input
thresholding. :func:`broken_models` builds them around any classifier with ``features``/``head``
(shared, not copied); :func:`self_test` audits each and the healthy base itself, and reports which
check caught each broken model. It passes when every broken model is flagged by one of its
expected checks and the healthy model is not flagged at all, so the checks are seen to fail both
ways.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustact.defenses.output_activation import OutputActivationModel
from robustact.evaluate.audit import VERDICTS, run_audit

__all__ = ["ALL_KINDS", "EXTRA_KINDS", "BrokenModel", "broken_models", "self_test",
           "SelfTestReport", "SelfTestRow"]


class BrokenModel(nn.Module):
    """``head(features(x))`` of ``base`` with one deliberate defect; keeps ``features``/``head``
    so the binarization test and adaptive attacks can still reach inside.

    Kinds: those of :func:`broken_models` and :data:`EXTRA_KINDS` (the calibration zoo's:
    thermometer encoding, a steep input sigmoid, Gaussian input noise, a stop-gradient branch,
    probabilities out, huge logits). Randomness (dropout, noise) comes from the model's own
    generator, seeded by ``seed``, never from the global RNG.
    """

    def __init__(self, base: nn.Module, kind: str, *, levels: int | None = None,
                 temperature: float = 1e3, p: float = 0.5, seed: int = 0, scale: float = 100.0,
                 sigma: float = 0.1, steepness: float = 50.0) -> None:
        super().__init__()
        if kind not in ALL_KINDS:
            raise ValueError(f"unknown broken model {kind!r}; choose from {', '.join(ALL_KINDS)}")
        self.base = base
        self.kind = kind
        # The thermometer needs enough levels to keep the digits legible; rounding does not.
        self.levels = levels if levels is not None else (16 if kind == "thermometer" else 4)
        self.temperature = temperature
        self.p = p
        self.scale = scale  # stop_gradient: weight of the detached copy; logit_scale: the factor
        self.sigma = sigma  # gaussian_noise: standard deviation of the input noise
        self.steepness = steepness  # input_sigmoid: slope of the soft threshold at 0.5
        # The randomized layer draws from its own generator: no global RNG state is touched.
        self._gen = torch.Generator().manual_seed(seed)
        self.train(base.training)

    @property
    def head(self) -> nn.Module:
        return self.base.head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "input_quantization":  # round: derivative exactly 0 everywhere
            x = torch.round(x * self.levels) / self.levels
        elif self.kind == "input_thresholding":  # a comparison: no graph back to x at all
            x = (x > 0.5).to(x.dtype)
        elif self.kind == "thermometer":  # Buckman et al. (2018), decoded: comparisons only
            steps = (torch.arange(self.levels, device=x.device, dtype=x.dtype) + 0.5) / self.levels
            x = (x.unsqueeze(-1) > steps).to(x.dtype).mean(-1)
        elif self.kind == "input_sigmoid":  # a steep soft threshold: gradients vanish, not 0
            x = torch.sigmoid(self.steepness * (x - 0.5))
        elif self.kind == "gaussian_noise":  # randomized input (own generator, fresh per call)
            noise = torch.randn(x.shape, generator=self._gen).to(x.device, x.dtype)
            x = (x + self.sigma * noise).clamp(0, 1)
        h = self.base.features(x)
        if self.kind == "gradient_killing":  # rounded features, no straight-through estimator
            h = torch.round(h * self.levels) / self.levels
        elif self.kind == "randomized":  # dropout that stays on in eval mode
            keep = torch.rand(h.shape, generator=self._gen) >= self.p
            h = h * keep.to(h.device, h.dtype) / (1 - self.p)
        return h

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The pre-activation logits (what an adaptive attack on the softmax output would use)."""
        h = self.features(x)
        z = self.head(h)
        if self.kind == "stop_gradient":  # a large part of the logits that gradients cannot see
            z = z + self.scale * self.head(h.detach())
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.logits(x)
        if self.kind == "saturated_softmax":  # probabilities of a very high-T softmax
            return torch.softmax(self.temperature * z, dim=1)
        if self.kind == "probabilities":  # plain softmax probabilities where logits are due
            return torch.softmax(z, dim=1)
        if self.kind == "logit_scale":  # huge logits: float32 softmax saturates, CE grads vanish
            return self.scale * z
        return z


_KINDS = ("gradient_killing", "input_quantization", "input_thresholding", "saturated_softmax",
          "randomized")
#: Further defects, first built for the audit's calibration zoo (:mod:`robustact.runs.calibrate`).
EXTRA_KINDS = ("thermometer", "input_sigmoid", "gaussian_noise", "stop_gradient",
               "probabilities", "logit_scale")
ALL_KINDS = _KINDS + EXTRA_KINDS

#: Broken model → the checks expected to catch it (any one suffices).
EXPECTED: dict[str, tuple[str, ...]] = {
    "gradient_killing": ("C4",),
    "input_quantization": ("C4", "C7"),
    "input_thresholding": ("C3",),
    "saturated_softmax": ("C2", "C4", "C5"),
    "randomized": ("C1", "C8"),
    "sigmoid_T100": ("C4", "C5"),
    # the calibration zoo's further kinds (what each defect should trip)
    "thermometer": ("C3",),
    "input_sigmoid": ("C4", "C7"),
    "gaussian_noise": ("C1", "C8"),
    "stop_gradient": ("C7",),  # a gradient check: autograd misses the detached branch
    "probabilities": ("C2",),
    "logit_scale": ("C5",),
    "sigmoid_saturated": ("C4", "C5"),
    "jumprelu": ("C7", "C20"),
}


def broken_models(base: nn.Module, seed: int = 0) -> dict[str, nn.Module]:
    """The deliberately broken variants of ``base`` (in ``base``'s train/eval mode), by name:
    every kind of :class:`BrokenModel` (gradient killing, input quantization, thresholding, a
    thermometer encoding, a steep input sigmoid, a saturated high-T softmax, dropout left on,
    Gaussian input noise, a stop-gradient branch, probabilities out, huge logits) and robustact's
    own sigmoid output activation at T = 100: the calibration zoo's kinds that need no
    training of their own (JumpReLU's κ and the T = 1 sigmoid base do)."""
    for attr in ("features", "head"):
        if not hasattr(base, attr):
            raise ValueError(f"the self-test needs a classifier with features(x) and head; "
                             f"{type(base).__name__} has no {attr}")
    out: dict[str, nn.Module] = {k: BrokenModel(base, k, seed=seed) for k in ALL_KINDS}
    out["sigmoid_T100"] = OutputActivationModel(base, "sigmoid", 100.0)
    return out


@dataclass
class SelfTestRow:
    name: str
    expected: tuple[str, ...]
    fired: list[str]
    verdict: str

    @property
    def caught_by(self) -> list[str]:
        return [c for c in self.expected if c in self.fired]

    @property
    def caught(self) -> bool:
        return bool(self.caught_by) and self.verdict != VERDICTS[2]


@dataclass
class SelfTestReport:
    rows: list[SelfTestRow]
    healthy_fired: list[str]
    healthy_verdict: str
    seconds: float = 0.0
    evidence: dict[str, list[str]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(r.caught for r in self.rows) and self.healthy_verdict == VERDICTS[2]

    def lines(self) -> list[str]:
        out = [f"{'model':<20} {'verdict':<30} caught by (expected)"]
        for r in self.rows:
            out.append(f"{r.name:<20} {r.verdict:<30} {', '.join(r.caught_by) or 'MISSED'} "
                       f"({', '.join(r.expected)}; fired: {', '.join(r.fired) or 'none'})")
        out.append(f"{'healthy base':<20} {self.healthy_verdict:<30} fired: "
                   f"{', '.join(self.healthy_fired) or 'none'}")
        out.append("self-test " + ("passed" if self.passed else "FAILED"))
        return out


def self_test(base: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
              norm: str = "linf", seed: int = 0,
              models: dict[str, nn.Module] | None = None,
              audit: Callable[..., Any] = run_audit, **audit_kwargs: Any) -> SelfTestReport:
    """Audit each broken variant of ``base`` (model-level checks; no results table) and the
    healthy ``base``; ``audit_kwargs`` go to :func:`~robustact.evaluate.audit.run_audit`
    (e.g. small ``random_points`` for tests)."""
    models = models if models is not None else broken_models(base, seed)
    rows, evidence, seconds = [], {}, 0.0
    for name, m in models.items():
        rep = audit(m, x, y, eps=eps, norm=norm, seed=seed, **audit_kwargs)
        seconds += rep.seconds
        rows.append(SelfTestRow(name, EXPECTED.get(name, ()), rep.fired(), rep.verdict.label))
        evidence[name] = list(rep.verdict.evidence)
    healthy = audit(base, x, y, eps=eps, norm=norm, seed=seed, **audit_kwargs)
    seconds += healthy.seconds
    evidence["healthy"] = list(healthy.verdict.evidence)
    return SelfTestReport(rows, [c.id for c in healthy.checks if c.fired and c.kind != "info"],
                          healthy.verdict.label, seconds, evidence)
