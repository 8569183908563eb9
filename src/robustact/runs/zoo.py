"""The audit's calibration zoo: healthy models and deliberately broken ones, with their ε.

Why a zoo: an audit's thresholds can only be judged on models whose answer is known. A healthy
model trained the ordinary way has no gradient masking, so any "masking" verdict on it is a
false positive; a broken model (a defect from :class:`robustact.evaluate.selftest.BrokenModel`,
a saturated output activation, a JumpReLU retrofit) masks gradients by construction, so a
"no evidence" verdict on it is a miss. :mod:`robustact.runs.calibrate` evaluates and audits
each of them at several ε and tabulates the outcome.

The split: each model is assigned once, here, to ``"calibration"`` (thresholds may be chosen
on it) or ``"held-out"`` (rates are reported on it), so a threshold tuned on one part is judged
on models it never saw. Healthy models alternate in list order (each dataset has both); each
broken kind is built on two bases, one per split, the dataset alternating between kinds so
neither split is one dataset. The assignment is part of the spec, not computed from results.

Training is cheap on purpose (subsets, 1–30 epochs of small models on one CPU core): the
calibration needs models of the kinds people evaluate, not good ones; each healthy model is
trained once and cached as a checkpoint under ``OUT/models/<name>``. A broken kind that needs
a base trained its own way (the saturated sigmoid: trained at T = 1, as the defense's paper
does) gets one in :attr:`Zoo.bases`, trained and cached the same way but never a cell itself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustact.checkpoint import load_checkpoint, read_card, save_checkpoint
from robustact.data import as_tensors, fixed_subset, load_dataset, to_float
from robustact.defenses.jumprelu_retrofit import (
    paper_kappa_grid,
    retrofit_jumprelu,
    tune_jumprelu,
)
from robustact.defenses.output_activation import OutputActivationModel, add_output_activation
from robustact.evaluate.selftest import ALL_KINDS, EXPECTED, BrokenModel
from robustact.models import create_model
from robustact.models.predict import accuracy
from robustact.train import TrainConfig, Trainer, adversarial_spec, adversarial_train, seeded

__all__ = ["EPS", "SPLITS", "BrokenSpec", "HealthySpec", "Zoo", "build_broken", "full_zoo",
           "load_or_train", "quick_zoo", "test_data"]

log = logging.getLogger(__name__)

SPLITS = ("calibration", "held-out")

#: ε per dataset (L∞, [0, 1] pixels): from one where most points of an undefended model survive
#: to one where almost none do (the protocols' grid adds ε/4, ε/2 and 2ε to each).
EPS: dict[str, tuple[float, ...]] = {
    "digits": (0.03, 0.1, 0.3),
    "mnist": (0.02, 0.1, 0.3),
    "cifar10": (0.5 / 255, 2 / 255, 8 / 255),
}
#: Test images per cell (the first n of the test split). CIFAR's is smaller: a ResNet-20
#: forward costs ~40× a digits CNN's and Square spends 5000 queries on every survivor.
N_TEST: dict[str, int] = {"digits": 360, "mnist": 200, "cifar10": 100}


@dataclass(frozen=True)
class HealthySpec:
    """A model trained the ordinary (or adversarial) way: no masking by construction."""

    name: str
    dataset: str
    arch: str
    split: str
    epochs: int
    n_train: int | None = None  # a fixed random subset of the training split; None: all of it
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    lr: float = 1e-3
    batch_size: int = 128
    adv_eps: float | None = None  # fast adversarial training at this ε
    note: str = ""
    output_activation: str | None = None  # trained with f(z) (T = 1) on the logits

    def describe(self) -> dict[str, Any]:
        out = {"arch": self.arch, "model_kwargs": dict(self.model_kwargs), "epochs": self.epochs,
               "n_train": self.n_train, "optimizer": "adam", "lr": self.lr,
               "batch_size": self.batch_size, "adv": None if self.adv_eps is None else
               {"recipe": "fast", "eps": self.adv_eps}, "note": self.note}
        if self.output_activation is not None:  # absent otherwise: cached models stay valid
            out["output_activation"] = {"f": self.output_activation, "temperature": 1.0}
        return out


@dataclass(frozen=True)
class BrokenSpec:
    """A healthy base with one deliberate defect (``kind``): masking by construction."""

    name: str
    base: str
    kind: str
    split: str
    params: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""

    def describe(self) -> dict[str, Any]:
        return {"base": self.base, "defect": self.kind, "params": dict(self.params),
                "note": self.note, "expected_checks": list(EXPECTED.get(self.kind, ()))}


@dataclass(frozen=True)
class Zoo:
    """The models, the ε of each dataset, the test images per cell, the protocol overrides;
    ``bases``: models trained only to carry a broken kind (no cells of their own)."""

    healthy: tuple[HealthySpec, ...]
    broken: tuple[BrokenSpec, ...]
    eps: Mapping[str, tuple[float, ...]]
    n: Mapping[str, int]
    overrides: Mapping[str, Any] = field(default_factory=dict)
    bases: tuple[HealthySpec, ...] = ()

    def base(self, name: str) -> HealthySpec:
        return next(h for h in (*self.healthy, *self.bases) if h.name == name)

    def dataset_of(self, spec: HealthySpec | BrokenSpec) -> str:
        return spec.dataset if isinstance(spec, HealthySpec) else self.base(spec.base).dataset


# Defects that do not come from BrokenModel: robustact's own defenses, used as broken models.
_DEFENSE_KINDS = {
    "sigmoid_saturated": "the base's recipe trained with a sigmoid output activation at T = 1, "
                         "then T raised to 100 (Tuna et al.; as robustact defend does)",
    "jumprelu": "JumpReLU retrofit (retrofit_jumprelu), the largest kappa of the paper's grid "
                "within 2 pp of clean accuracy (tune_jumprelu)"}

#: Broken kinds of the full zoo with their parameters and what they model.
BROKEN_KINDS: dict[str, tuple[dict[str, Any], str]] = {
    "input_quantization": ({"levels": 4}, "inputs rounded to 4 levels (bit-depth reduction)"),
    "input_thresholding": ({}, "inputs binarized at 0.5 by a comparison (no graph back to x)"),
    "thermometer": ({"levels": 16}, "thermometer encoding, 16 levels, decoded by the mean"),
    "input_sigmoid": ({"steepness": 50.0}, "steep soft threshold sigmoid(50 (x - 0.5))"),
    "gradient_killing": ({"levels": 4}, "features rounded, no straight-through estimator"),
    "stop_gradient": ({"scale": 100.0}, "logits = head(h) + 100 head(h.detach())"),
    "gaussian_noise": ({"sigma": 0.1}, "Gaussian noise sigma 0.1 added to the input in forward"),
    "randomized": ({"p": 0.5}, "dropout p = 0.5 left on in eval mode"),
    "probabilities": ({}, "softmax probabilities out instead of logits"),
    "saturated_softmax": ({"temperature": 1e3}, "softmax(1000 z) probabilities out"),
    "logit_scale": ({"scale": 1e4}, "logits multiplied by 1e4"),
    "sigmoid_saturated": ({"temperature": 100.0}, _DEFENSE_KINDS["sigmoid_saturated"]),
    "jumprelu": ({"max_drop": 2.0}, _DEFENSE_KINDS["jumprelu"]),
}


def _healthy_full() -> tuple[HealthySpec, ...]:
    """The healthy models; every other one (in this order) is held out."""
    specs = [
        ("digits-mlp-short", "digits", "mlp", 2, None, {"hidden": (64,)}, {}),
        ("digits-mlp", "digits", "mlp", 30, None, {"hidden": (128,)}, {}),
        ("digits-smallcnn-w8-short", "digits", "smallcnn", 3, None, {"width": 8, "hidden": 64},
         {}),
        ("digits-smallcnn-w32", "digits", "smallcnn", 20, None, {"width": 32}, {}),
        ("digits-smallcnn-w16-fastat", "digits", "smallcnn", 30, None, {"width": 16},
         {"adv_eps": 0.1}),
        ("mnist-mlp128-1ep", "mnist", "mlp", 1, 20000, {"hidden": (128,)},
         {"note": "784-128-10, one epoch of Adam on 20 000 MNIST images (issue 20's model)"}),
        ("mnist-mlp-3ep", "mnist", "mlp", 3, 20000, {"hidden": (256, 128)}, {}),
        ("mnist-lenet5", "mnist", "lenet5", 2, 20000, {}, {}),
        ("mnist-smallcnn-w8-1ep", "mnist", "smallcnn", 1, 20000, {"width": 8, "hidden": 64}, {}),
        ("mnist-smallcnn-w32", "mnist", "smallcnn", 2, 20000, {"width": 32}, {}),
        ("mnist-smallcnn-w16-fastat", "mnist", "smallcnn", 3, 20000, {"width": 16},
         {"adv_eps": 0.2}),
        ("cifar10-smallcnn-w16", "cifar10", "smallcnn", 3, 20000, {"width": 16}, {}),
        ("cifar10-resnet20", "cifar10", "resnet20", 3, 20000, {}, {}),
        ("cifar10-lenet5", "cifar10", "lenet5", 3, 20000, {}, {}),
    ]
    return tuple(HealthySpec(name, ds, arch, SPLITS[i % 2], epochs, n_train, kw, **extra)
                 for i, (name, ds, arch, epochs, n_train, kw, extra) in enumerate(specs))


#: Broken kinds whose base is trained its own way: the kind → the HealthySpec fields changed.
#: A sigmoid bolted onto a cross-entropy model at T = 100 saturates several outputs to 1.0 and
#: ties them (digits CNN: 2.5 % clean accuracy): a dead model, not the defense as published.
OWN_BASE: dict[str, dict[str, Any]] = {"sigmoid_saturated": {"output_activation": "sigmoid"}}


def _broken(healthy: tuple[HealthySpec, ...], plan: list[tuple[str, str, str]]
            ) -> tuple[tuple[BrokenSpec, ...], tuple[HealthySpec, ...]]:
    """The broken specs of ``plan`` ((base, kind, split)) and the extra bases they need."""
    by_name = {h.name: h for h in healthy}
    broken, bases = [], {}
    for base, kind, split in plan:
        params, note = BROKEN_KINDS[kind]
        name = f"{base}+{kind}"
        if kind in OWN_BASE:
            own = replace(by_name[base], name=f"{base}~{kind}", split=split, **OWN_BASE[kind],
                          note=f"{base}'s recipe for the {kind} kind")
            bases[own.name] = own
            base = own.name
        broken.append(BrokenSpec(name, base, kind, split, params, note))
    return tuple(broken), tuple(bases.values())


def full_zoo() -> Zoo:
    """14 healthy models on digits, MNIST and CIFAR-10; 13 broken kinds, each on two bases
    (the converged digits CNN and MNIST LeNet-5), one per split."""
    healthy = _healthy_full()
    plan = [(base, kind, SPLITS[(i + j) % 2]) for i, kind in enumerate(BROKEN_KINDS)
            for j, base in enumerate(("digits-smallcnn-w32", "mnist-lenet5"))]
    broken, bases = _broken(healthy, plan)
    return Zoo(healthy, broken, EPS, N_TEST, bases=bases)


def quick_zoo() -> Zoo:
    """Digits only, 3 healthy + 4 broken models, 2 ε, 40 images, Square with 200 queries:
    the whole loop in well under a minute on one core (tests, CI)."""
    full = {h.name: h for h in _healthy_full()}
    healthy = tuple(full[n] for n in ("digits-mlp-short", "digits-mlp", "digits-smallcnn-w32"))
    kinds = ("input_thresholding", "logit_scale", "sigmoid_saturated", "stop_gradient")
    broken, bases = _broken(healthy, [("digits-smallcnn-w32", k, SPLITS[i % 2])
                                      for i, k in enumerate(kinds)])
    return Zoo(healthy, broken, {"digits": (0.03, 0.3)}, {"digits": 40},
               {"n_queries": 200, "steps": 20}, bases=bases)


def test_data(dataset: str, n: int, *, data_root: str | Path | None = None,
              download: bool = False) -> Any:
    """The first ``n`` images of ``dataset``'s test split, as ``robustact evaluate --n`` takes."""
    test = load_dataset(dataset, "test", root=data_root, download=download)
    return test.subset(torch.arange(min(n, len(test))))


def _train_subset(spec: HealthySpec, data_root: str | Path | None, download: bool) -> Any:
    train = load_dataset(spec.dataset, "train", root=data_root, download=download)
    return fixed_subset(train, spec.n_train)


def _train(spec: HealthySpec, folder: Path, *, data_root: str | Path | None, download: bool,
           device: str) -> nn.Module:
    """Train ``spec`` with Adam and save it (atomically) as the checkpoint ``folder``."""
    train = _train_subset(spec, data_root, download)
    adv = None if spec.adv_eps is None else adversarial_spec("fast", spec.adv_eps)
    config = TrainConfig(epochs=spec.epochs, optimizer="adam", lr=spec.lr, weight_decay=0.0,
                         batch_size=spec.batch_size, schedule="constant", seed=0, device=device,
                         adv=adv)
    with seeded(0, "model"):  # the initial weights are part of the seeded run
        model = create_model(spec.arch, dataset=spec.dataset, **dict(spec.model_kwargs))
    if spec.output_activation is not None:
        model = add_output_activation(model, spec.output_activation, 1.0)
    if adv is not None:
        history, _ = adversarial_train(model, train, None, config, progress=False)
    else:
        history = Trainer(model, train, None, config, progress=False).fit()
    model.eval()
    test = load_dataset(spec.dataset, "test", root=data_root, download=download)
    metrics = {"test_accuracy": accuracy(model, test), "epochs": len(history),
               "train_loss": history[-1].get("train_loss") if history else None}
    save_checkpoint(folder, model, epoch=len(history), config=config, metrics=metrics,
                    data={"dataset": spec.dataset, "n_train": len(train)},
                    extra={"calibration_zoo": _identity(spec)})
    return model


def _identity(spec: HealthySpec) -> dict[str, Any]:
    """What a cached checkpoint must have been trained from (as JSON gives it back)."""
    trained = {k: v for k, v in spec.describe().items() if k != "note"}
    return json.loads(json.dumps({"name": spec.name, "dataset": spec.dataset, **trained}))


def load_or_train(spec: HealthySpec, cache: Path, *, data_root: str | Path | None = None,
                  download: bool = False, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """``spec``'s model from ``cache/<name>`` (trained and saved there first if absent), in eval
    mode, and its card's metrics (with ``"trained_now"``)."""
    folder = cache / spec.name
    try:
        cached = read_card(folder).get("extra", {}).get("calibration_zoo") == _identity(spec)
    except (OSError, ValueError):
        cached = False
    if not cached:  # absent, unreadable, or made from another spec of the same name
        log.info("training %s", spec.name)
        _train(spec, folder, data_root=data_root, download=download, device=device)
    model, card = load_checkpoint(folder, device=device)
    return model, {**(card.get("metrics") or {}), "trained_now": not cached}


def build_broken(spec: BrokenSpec, base: nn.Module, data: Any, dataset: str
                 ) -> tuple[nn.Module, dict[str, Any]]:
    """``spec``'s defect around ``base`` (shared, not copied; eval mode) and what was chosen for
    it. ``data``: the cell's test images, on which JumpReLU's κ is chosen (the largest that
    keeps clean accuracy; a calibration model, not a defense to report)."""
    params = dict(spec.params)
    if spec.kind == "sigmoid_saturated":
        if not isinstance(base, OutputActivationModel):
            raise ValueError(f"{spec.name}: the saturated sigmoid needs a base trained with a "
                             f"sigmoid output activation (OWN_BASE), got {type(base).__name__}")
        hot = OutputActivationModel(base.base, base.f, float(params["temperature"])).eval()
        return hot, {"temperature": hot.temperature, "trained_at_temperature": base.temperature,
                     "accuracy_trained": accuracy(base, data), "accuracy": accuracy(hot, data)}
    if spec.kind == "jumprelu":
        cfg = getattr(base, "robustact_config", {}) or {}
        x, y = as_tensors(data, "data")
        tuning = tune_jumprelu(base, to_float(x), y,
                               paper_kappa_grid(str(cfg.get("name", "")), dataset),
                               max_drop=float(params.get("max_drop", 2.0)), progress=False)
        return retrofit_jumprelu(base, tuning.kappa).eval(), {"kappa": tuning.kappa,
                                                               "kappa_curve": tuning.curve}
    if spec.kind not in ALL_KINDS:
        raise ValueError(f"unknown broken kind {spec.kind!r}")
    return BrokenModel(base, spec.kind, seed=0, **params).eval(), {}
