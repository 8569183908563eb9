"""The MNIST models the evaluation benchmarks compare on, trained once and cached under ``runs/``.

Why one module: ``benchmarks/bench_evaluate_vs_autoattack.py`` and
``experiments/eval_mnist_defenses.py`` must evaluate the *same* models (same weights, same κ,
same T), and training them is the slow part on a shared CPU; both scripts call :func:`prepare`
(through :func:`get_models`), which trains what is missing into ``<runs>/evalbench/<name>/final``
and loads what is there. It lives in ``scripts/`` beside ``harness.py`` (shared plumbing, not a
script: ``tests/test_scripts_quick.py`` runs only ``benchmarks/`` and ``experiments/``), and
finds the data by the library's rule (``robustact.data.resolve_data_root``).

The models (LeNet-5, MNIST, SGD as in the README, a short CPU schedule):

- ``lenet5``: ReLU, undefended;
- ``sigmoid100``: trained with a sigmoid output activation at T = 1, then raised to T = 100
  (the output-activation paper's protocol; training at T = 100 does not learn);
- ``jumprelu``: the ReLU model retrofitted with JumpReLU at the tuner's κ (validation split,
  max drop 0.5 points, the paper's MNIST grid);
- ``jumprelu1.5``: the same retrofit at κ = 1.5;
- ``splash``: LeNet-5 with SPLASH units (``splash:S=7``);
- ``adv``: an adversarially trained model, not trained here: the checkpoint that
  ``experiments/adv_train_mnist.py`` writes (``<runs>/adv_mnist/final``, or ``adv_checkpoint``).

``quick=True`` builds untrained models of the same kinds on nothing (no data, no disk): smoke
runs only check that every code path runs. AutoAttack (``pyautoattack``) is a benchmark-only
dependency, installed ``--no-deps`` and never imported by the library or the tests; without it
:data:`pyautoattack` is ``None`` and the scripts skip it with a note.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

try:  # benchmark-only dependency (pip install --no-deps pyautoattack)
    import pyautoattack
    from pyautoattack import AutoAttack
except ImportError:
    pyautoattack = None
    AutoAttack = None

from robustact.checkpoint import load_checkpoint
from robustact.data import ImageDataset, resolve_data_root
from robustact.defenses.jumprelu_retrofit import MNIST_KAPPA_GRID, retrofit_jumprelu, tune_jumprelu
from robustact.defenses.output_activation import (
    OutputActivationModel,
    add_output_activation,
    tie_rate,
)
from robustact.evaluate import evaluate, summarize, worst_case
from robustact.evaluate.audit import run_audit
from robustact.models import create_model
from robustact.runs.train import load_splits, train_classifier
from robustact.train import TrainConfig

__all__ = ["MODEL_NAMES", "QUICK_AUDIT", "QUICK_OVERRIDES", "PassCounter",
           "autoattack_available", "compare", "get_models", "prepare", "robustact_masks",
           "run_autoattack", "run_robustact", "label_by_model"]

MODEL_NAMES = ("lenet5", "sigmoid100", "jumprelu", "jumprelu1.5", "splash", "adv")
SEED = 1
VAL_FRACTION = 0.1
#: Tiny attack and audit budgets for --quick (a smoke run checks the plumbing, not figures).
QUICK_OVERRIDES = {"steps": 3, "n_queries": 20, "refine": 0}
QUICK_AUDIT = {"random_points": 50, "random_samples": 4, "binarization_samples": 2,
               "max_samples": 8}
#: SPLASH trains several times slower on the CPU (266 s for 2 epochs on the loaded machine) and
#: reaches 99.2 % in 2 epochs, so it gets 2 epochs whatever ``epochs`` says.
SPLASH_EPOCHS = 2


def _train(name: str, out: Path, root: Path, epochs: int, **kw: Any) -> tuple[nn.Module, dict]:
    """Train (or load the cached) ``out/final``; returns (model in eval mode, description)."""
    final = out / "final"
    if (final / "card.json").is_file():
        model, card = load_checkpoint(final)
        return model.eval(), {"checkpoint": str(final), "cached": True,
                              "metrics": card.get("metrics")}
    cfg = TrainConfig(epochs=epochs, lr=0.05, schedule="cosine", seed=SEED, device="cpu")
    t0 = time.perf_counter()
    res = train_classifier("lenet5", "mnist", out_dir=out, config=cfg, data_root=root,
                           val_fraction=VAL_FRACTION, progress=False, **kw)
    return res.model.eval(), {"checkpoint": str(res.checkpoint), "cached": False,
                              "train_seconds": time.perf_counter() - t0, "epochs": epochs,
                              "test_accuracy": res.test_accuracy, "config": cfg.to_dict()}


def get_models(names: list[str], *, runs_dir: str | Path, root: Path | None, epochs: int = 6,
               quick: bool = False, adv_checkpoint: str | Path | None = None
               ) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """``{name: model in eval mode}`` and ``{name: how it was made}`` for ``names``."""
    bad = [n for n in names if n not in MODEL_NAMES]
    if bad:
        raise ValueError(f"unknown model(s) {bad}; choose from {', '.join(MODEL_NAMES)}")
    models: dict[str, nn.Module] = {}
    info: dict[str, Any] = {}
    if quick:
        with torch.random.fork_rng():
            torch.manual_seed(SEED)
            relu = create_model("lenet5", dataset="mnist").eval()
            # the eager kernel: no C++ build in a smoke run
            splash = create_model("lenet5", dataset="mnist",
                                  activation="splash:S=7,kernel=eager").eval()
        built = {"lenet5": relu, "sigmoid100": OutputActivationModel(relu, "sigmoid", 100.0),
                 "jumprelu": retrofit_jumprelu(relu, 0.5).eval(),
                 "jumprelu1.5": retrofit_jumprelu(relu, 1.5).eval(), "splash": splash,
                 "adv": relu}
        return ({n: built[n] for n in names},
                {n: {"quick": "untrained, no data"} for n in names})
    base = Path(runs_dir) / "evalbench"
    relu = None
    if {"lenet5", "jumprelu", "jumprelu1.5"} & set(names):
        relu, info["lenet5"] = _train("lenet5", base / "lenet5", root, epochs)
        models["lenet5"] = relu
    if "sigmoid100" in names:
        sig, d = _train("sigmoid1", base / "sigmoid1", root, epochs,
                        output_activation="sigmoid", temperature=1.0)
        assert isinstance(sig, OutputActivationModel)
        _, _, test = load_splits("mnist", data_root=root, val_fraction=VAL_FRACTION, seed=SEED)
        x = test.x()[:2000]
        y = test.y()[:2000]
        with torch.no_grad():
            acc1 = float((sig(x).argmax(1) == y).float().mean())
        hot = add_output_activation(sig.base, "sigmoid", 100.0)
        with torch.no_grad():
            acc100 = float((hot(x).argmax(1) == y).float().mean())
        d.update({"trained_at_T": 1.0, "T": 100.0, "tie_rate_T100_first2000": tie_rate(hot, x),
                  "clean_acc_T1_first2000": acc1, "clean_acc_T100_first2000_argmax": acc100})
        models["sigmoid100"], info["sigmoid100"] = hot.eval(), d
    if "jumprelu" in names:
        _, val, _ = load_splits("mnist", data_root=root, val_fraction=VAL_FRACTION, seed=SEED)
        tuning = tune_jumprelu(relu, val.x(), val.y(), grid=MNIST_KAPPA_GRID, max_drop=0.5,
                               progress=False)
        models["jumprelu"] = retrofit_jumprelu(relu, tuning.kappa).eval()
        info["jumprelu"] = {"of": "lenet5", "tuning": tuning.to_dict()}
    if "jumprelu1.5" in names:
        models["jumprelu1.5"] = retrofit_jumprelu(relu, 1.5).eval()
        info["jumprelu1.5"] = {"of": "lenet5", "kappa": 1.5}
    if "splash" in names:
        models["splash"], info["splash"] = _train("splash", base / "splash", root, SPLASH_EPOCHS,
                                                  activation="splash:S=7")
    if "adv" in names:
        path = Path(adv_checkpoint or Path(runs_dir) / "adv_mnist" / "final")
        if not (path / "card.json").is_file():
            raise FileNotFoundError(
                f"no adversarially trained checkpoint at {path}: make it with "
                "`python experiments/adv_train_mnist.py` (or give --adv-checkpoint)")
        adv, card = load_checkpoint(path)
        models["adv"] = adv.eval()
        info["adv"] = {"checkpoint": str(path), "train": card.get("train"),
                       "metrics": card.get("metrics")}
    return {n: models[n] for n in names}, {n: info[n] for n in names}


def prepare(args: Any, test: ImageDataset) -> tuple[dict[str, nn.Module], dict[str, Any],
                                                  Path | None, bool, torch.Tensor, torch.Tensor]:
    """What both evaluation scripts start with, from their parsed arguments and the MNIST test
    split (the scripts load it with ``harness.load_data`` first, so missing data stops them
    before any training): the models, how they were made, the data root, whether AutoAttack is
    installed, and the first ``args.n`` test images (labelled by the first model under
    ``--quick``, see :func:`label_by_model`)."""
    root = None if args.quick else resolve_data_root(args.data_root)
    models, made = get_models(args.models, runs_dir=args.runs_dir, root=root, epochs=args.epochs,
                              quick=args.quick,
                              adv_checkpoint=getattr(args, "adv_checkpoint", None))
    have_aa = autoattack_available()
    if not have_aa:
        print("note: pyautoattack is not installed; AutoAttack is skipped "
              "(pip install --no-deps pyautoattack)")
    x = test.x()[: args.n]
    y = label_by_model(models[args.models[0]], x) if args.quick else test.y()[: args.n]
    return models, made, root, have_aa, x, y


def label_by_model(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model``'s own predictions on ``x``, as labels.

    Why: the ``--quick`` models are untrained, so on the stand-in's true labels they would be
    right on about one image in ten and the attacks and the audit would have almost nothing to
    do; labelled by the model, every image is clean-correct and every code path runs.
    """
    with torch.no_grad():
        return model(x).argmax(1)


# -- running both evaluators on the same model and images ----------------------------------------

class PassCounter:
    """Counts a model's forward rows and input-gradient rows (backward passes per image).

    Why hooks and not a wrapper module: robustact's engine reads the model's defenses to choose
    its adaptive attacks, and a wrapper would hide them. A forward pre-hook counts the rows
    going in; when the input needs a gradient, a tensor hook on it counts the rows whose
    gradient was computed. Both evaluators are counted the same way, including their own clean
    predictions and re-checks.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.forward = 0
        self.backward = 0
        self._handle: Any = None

    def _hook(self, _m: nn.Module, args: tuple[Any, ...]) -> None:
        if not args or not isinstance(args[0], torch.Tensor):
            return
        x = args[0]
        self.forward += int(x.shape[0])
        if x.requires_grad:
            rows = int(x.shape[0])

            def on_grad(_g: torch.Tensor) -> None:
                self.backward += rows

            x.register_hook(on_grad)

    def __enter__(self) -> PassCounter:
        self._handle = self.model.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()


def robustact_masks(table: Any, eps: float) -> dict[str, np.ndarray]:
    """Per-sample robust flags at ``eps`` (sample order of the table): after the protocol's own
    attacks (every role but ``adaptive``/``transfer``), and the worst case over every row."""
    ids, worst = worst_case(table, eps)
    roles = {k: v.get("role") for k, v in table.meta.get("attacks", {}).items()}
    pos = {int(s): i for i, s in enumerate(ids)}
    correct = np.zeros(len(ids), dtype=bool)
    std_broken = np.zeros(len(ids), dtype=bool)
    adaptive_broken = np.zeros(len(ids), dtype=bool)
    norm = table.meta.get("norm", "linf")
    for s, a, e, ok, cc, d in zip(table["sample"], table["attack"], table["eps"],
                                  table["success"], table["clean_correct"], table[norm],
                                  strict=True):
        i = pos[int(s)]
        correct[i] = cc
        hit = ok and (abs(e - eps) < 1e-12 or (math.isinf(e) and roles.get(a) == "min_norm"
                                               and d <= eps + 1e-6))
        if not hit:
            continue
        if roles.get(a) in ("adaptive", "transfer"):
            adaptive_broken[i] = True
        else:
            std_broken[i] = True
    has_adaptive = any(r in ("adaptive", "transfer") for r in roles.values())
    # adaptive attacks run on what the protocol's attacks left (AutoAttack's cascade), so the
    # adaptive figure is the robust accuracy once they are added; None without any
    return {"ids": ids, "clean": correct, "standard": correct & ~std_broken,
            "adaptive": correct & ~(std_broken | adaptive_broken) if has_adaptive else None,
            "worst": worst}


def run_robustact(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, seed: int,
                  protocol: str = "standard", overrides: dict[str, Any] | None = None,
                  audit: bool = True, audit_kwargs: dict[str, Any] | None = None,
                  eps_grid: list[float] | None = None) -> dict[str, Any]:
    """robustact's ``protocol`` through the engine (with the adaptive attacks), then the audit;
    wall times, pass counts, per-sample robust flags and the verdict. ``eps_grid``: the engine's
    default grid (0, ε/4, ε/2, ε, 2ε) when None; ``[eps]`` is AutoAttack's task (one ε)."""
    with PassCounter(model) as c:
        t0 = time.perf_counter()
        table = evaluate(model, x, y, protocol, eps=eps, norm="linf", seed=seed,
                         progress=False, overrides=overrides, eps_grid=eps_grid)
        seconds = time.perf_counter() - t0
    n = x.shape[0]
    masks = robustact_masks(table, eps)
    s = summarize(table)
    out: dict[str, Any] = {
        "seconds": seconds, "forward_per_image": c.forward / n,
        "backward_per_image": c.backward / n,
        "engine_forward_per_image": s["cost"]["forward_per_image"],
        "engine_backward_per_image": s["cost"]["backward_per_image"],
        "per_attack": s["cost"]["per_attack"],
        "clean_accuracy": float(masks["clean"].sum()) / n,
        "standard_robust_accuracy": float(masks["standard"].sum()) / n,
        "adaptive_robust_accuracy": (float(masks["adaptive"].sum()) / n
                                     if masks["adaptive"] is not None else None),
        "worst_case_robust_accuracy": float(masks["worst"].sum()) / n,
        "unavailable": s["unavailable"],
        "_masks": masks,
    }
    if audit:
        with PassCounter(model) as c:
            t0 = time.perf_counter()
            rep = run_audit(model, x, y, table, eps=eps, norm="linf", seed=seed,
                            **(audit_kwargs or {}))
            out["audit_seconds"] = time.perf_counter() - t0
        out["audit_forward_per_image"] = c.forward / n
        out["audit_over_eval"] = out["audit_seconds"] / seconds
        out["verdict"] = rep.verdict.label
        confirming = [ch for ch in rep.checks if ch.fired and ch.breaks_points]
        firing = [ch for ch in rep.checks if ch.fired and ch.kind != "info"]
        out["verdict_checks"] = [f"{ch.id} {ch.name}" for ch in (confirming or firing)]
        out["fired"] = rep.fired()
        out["evidence"] = list(rep.verdict.evidence)
    return out


def autoattack_available() -> bool:
    """Whether ``pyautoattack`` could be imported (it is optional, see the module docstring)."""
    return pyautoattack is not None


def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, seed: int,
                   batch_size: int = 250, tiny: bool = False) -> dict[str, Any]:
    """AutoAttack ``standard`` (APGD-CE, APGD-T, FAB-T, Square 5000), L∞: robust flags per sample
    (AutoAttack's own: the prediction on its returned point equals the label), time, passes.

    ``tiny``: cut every budget (3 iterations, 2 target classes, 20 queries) for smoke runs.
    """
    if AutoAttack is None:
        raise ValueError("AutoAttack needs pyautoattack (pip install --no-deps pyautoattack)")
    aa = AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=seed, device=x.device)
    if tiny:
        for att in (aa.apgd, aa.apgd_targeted, aa.fab):
            att.n_iter = 3
        aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = 2
        aa.square.n_queries = 20
    n = x.shape[0]
    with PassCounter(model) as c:
        t0 = time.perf_counter()
        x_adv, y_adv = aa.run_standard_evaluation(x, y, batch_size=batch_size)
        seconds = time.perf_counter() - t0
    robust = (y_adv == y).cpu().numpy()
    linf = (x_adv - x).flatten(1).abs().amax(1)
    return {"seconds": seconds, "forward_per_image": c.forward / n,
            "backward_per_image": c.backward / n,
            "robust_accuracy": float(robust.sum()) / n,
            "max_linf": float(linf.max()), "version": pyautoattack.__version__,
            "attacks": list(aa.attacks_to_run), "_robust": robust}


def compare(ra: dict[str, Any], aa: dict[str, Any]) -> dict[str, Any]:
    """Per-sample disagreement: robust under robustact's figure but broken by AutoAttack (AA
    stronger there), and the reverse, for the standard-attack and the worst-case figures."""
    out = {}
    for k in ("standard", "worst"):
        r, a = ra["_masks"][k], aa["_robust"]
        out[f"{k}_robust_ra_broken_aa"] = int((r & ~a).sum())
        out[f"{k}_robust_aa_broken_ra"] = int((a & ~r).sum())
    return out
