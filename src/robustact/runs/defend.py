"""``retrofit``, ``defend`` and ``tune-jump`` as library calls, for checkpoints and model files.

Each loads a model (:class:`~robustact.runs.sources.ModelSource`: a checkpoint or a user's
model file with safe weights), applies a defense without retraining and saves the result as a
checkpoint whose card records the defense (and, for a model file, the file it came from), so
``evaluate --model OUT`` evaluates exactly the defended model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustact.checkpoint import save_checkpoint
from robustact.core.runfolder import open_run
from robustact.core.validate import resolve_device
from robustact.defenses import paper_kappa_grid, retrofit_jumprelu, tune_jumprelu
from robustact.defenses.output_activation import OutputActivationModel, add_output_activation
from robustact.models.predict import accuracy
from robustact.nn.bounded import check_temperature
from robustact.runs.sources import ModelSource, load_model, load_split

__all__ = ["retrofit_checkpoint", "defend_checkpoint", "tune_jump_checkpoint"]

Source = ModelSource | str | Path


def _source(model: Source) -> ModelSource:
    """A checkpoint path is the common case: accept it as it is."""
    return model if isinstance(model, ModelSource) else ModelSource(checkpoint=model)


def _defend_and_save(model: Source, out: str | Path, defend: Callable[[nn.Module], nn.Module],
                     metrics: dict[str, Any], extra: dict[str, Any], *, before: str,
                     dataset: str | None, data_root: str | Path | None, evaluate: bool,
                     force: bool, download: bool = False, device: str | torch.device = "auto"
                     ) -> dict[str, Any]:
    """Load a model, apply ``defend`` and save the result to ``out`` (locked; a checkpoint
    already there is replaced only with ``force``). With ``evaluate``, ``metrics`` gains the
    test accuracy before (key ``before``, measured first: ``defend`` may change the model in
    place) and after the defense."""
    src = _source(model)
    with open_run(out, "defend", what="defended checkpoint", force=force, record=False,
                  markers={"card.json": "a checkpoint"}):
        loaded = load_model(src, dataset=dataset, device=device, data_root=data_root,
                            download=download)
        card = loaded.card
        test = (load_split(card, dataset, "test", data_root=data_root, download=download)
                if evaluate else None)
        if test is not None:
            metrics[before] = accuracy(loaded.model, test)
        defended = defend(loaded.model).eval()
        if test is not None:
            metrics["test_accuracy"] = accuracy(defended, test)
        ckpt = save_checkpoint(out, defended, epoch=card.get("epoch"), config=card.get("train"),
                               metrics=metrics, history=card.get("history"),
                               data=card.get("data"), extra=extra, source=card.get("source"))
    return {"checkpoint": str(ckpt), **metrics}


def _origin(model: Source) -> str:
    src = _source(model)
    return str(src.checkpoint if src.checkpoint is not None else src.model_file)


def retrofit_checkpoint(model: Source, kappa: float, out: str | Path, *,
                        dataset: str | None = None, data_root: str | Path | None = None,
                        evaluate: bool = True, force: bool = False, download: bool = False,
                        device: str | torch.device = "auto") -> dict[str, Any]:
    """Retrofit a ReLU model with JumpReLU(κ) and save it (the card records the defense)."""
    return _defend_and_save(model, out, lambda m: retrofit_jumprelu(m, kappa), {"kappa": kappa},
                            {"retrofit_of": _origin(model)}, before="test_accuracy_relu",
                            dataset=dataset, data_root=data_root, evaluate=evaluate,
                            force=force, download=download, device=device)


def defend_checkpoint(model: Source, output_activation: str, temperature: float,
                      out: str | Path, *, dataset: str | None = None,
                      data_root: str | Path | None = None, evaluate: bool = True,
                      force: bool = False, download: bool = False,
                      device: str | torch.device = "auto") -> dict[str, Any]:
    """Give a trained model the output activation f(T·z) for inference, and save it.

    The working protocol for this defense (docs/choices.md): train with f at T = 1 (``train
    --output-activation f``), then raise T here; training at a high T does not learn. If the
    model already has an output activation, its f and T are replaced (the card records the old
    ones); otherwise one is added, which at a high T can cost clean accuracy on a model trained
    without it (float32 saturation ties logits), so the metrics report both accuracies.
    """
    t = check_temperature(temperature)
    previous: dict[str, Any] = {}

    def defend(m: nn.Module) -> nn.Module:
        existing = [w for w in m.modules() if isinstance(w, OutputActivationModel)]
        if not existing:
            return add_output_activation(m, output_activation, t)
        previous.update(f=existing[0].f, temperature=existing[0].temperature)
        existing[0].f, existing[0].temperature = output_activation, t
        return m

    extra: dict[str, Any] = {"defense_of": _origin(model), "previous_output_activation": previous}
    result = _defend_and_save(model, out, defend,
                              {"output_activation": output_activation, "temperature": t},
                              extra, before="test_accuracy_before", dataset=dataset,
                              data_root=data_root, evaluate=evaluate, force=force,
                              download=download, device=device)
    result["previous_output_activation"] = previous or None
    return result


def tune_jump_checkpoint(model: Source, max_drop: float, *, grid: list[float] | None = None,
                         out: str | Path | None = None, dataset: str | None = None,
                         data_root: str | Path | None = None, progress: bool = True,
                         force: bool = False, download: bool = False,
                         device: str | torch.device = "auto") -> dict[str, Any]:
    """Pick κ on the model's validation split (largest κ within ``max_drop`` points) and,
    with ``out``, save the model retrofitted with it. The sweep runs on ``device``."""
    if out is not None and not force and (Path(out) / "card.json").exists():
        # refuse before tuning, not after (retrofit_checkpoint locks and re-checks ``out``)
        raise ValueError(f"{out} already holds a checkpoint: pass --force to replace it, or "
                         "choose another output folder")
    dev = resolve_device(device)
    loaded = load_model(_source(model), dataset=dataset, device=dev, data_root=data_root,
                        download=download)
    val = load_split(loaded.card, dataset, "val", data_root=data_root, download=download)
    model_cfg = loaded.card.get("model") or {}
    name = (loaded.card.get("data") or {}).get("dataset", "")
    grid = list(grid) if grid else list(paper_kappa_grid(model_cfg.get("name", ""), name))
    tuning = tune_jumprelu(loaded.model, val.x().to(dev), val.labels.to(dev), grid, max_drop,
                           progress=progress)
    result: dict[str, Any] = {
        "kappa": tuning.kappa, "max_drop_points": max_drop,
        "baseline_val_accuracy": tuning.baseline_acc,
        "curve": [{"kappa": k, "val_accuracy": a} for k, a in tuning.curve],
        "n_val": len(val),
    }
    if out is not None:
        result.update(retrofit_checkpoint(model, tuning.kappa, out, dataset=dataset,
                                          data_root=data_root, force=force, download=download,
                                          device=dev))
    return result
