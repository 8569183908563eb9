"""Where a command's model and data come from: a robustact checkpoint or any user model.

Why one module: every command that runs a model (``eval``, ``attack``, ``evaluate``,
``retrofit``, ``defend``, ``tune-jump``) takes the same two kinds of model, a checkpoint folder
(``--model``) or a model file with safe weights (``--model-file`` + ``--weights``), and the same
data rules (the card's dataset and two-class task; the validation split re-carved exactly as in
training; ``--n`` larger than the split said in one line). Writing that once is what makes
"any model in every command" true.

A defended model file (``retrofit``/``defend`` of a ``--model-file``) is saved as an ordinary
checkpoint whose card records the model file as its ``source`` (path, sha256 of the file,
factory arguments, normalization; integrity-checked like the rest of the card). Loading it
imports that file again, only when its sha256 still matches, so a later edit of the file can
never silently change the model the card describes.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustact.checkpoint import load_checkpoint, read_card
from robustact.core.validate import check_positive_int, resolve_device
from robustact.data import binary_task, load_dataset, train_val_split
from robustact.defenses.registry import apply_defenses, describe_defenses
from robustact.modelfile import load_model_file, parse_model_spec
from robustact.models.outputs import logit_model

__all__ = ["as_logits", "ModelSource", "LoadedModel", "Target", "load_model", "load_split",
           "load_target", "checkpoint_run_name", "recorded_source"]

log = logging.getLogger(__name__)

MODEL_CHOICE = ("give the model either as a robustact checkpoint (--model DIR) or as --model-file "
                "path.py:Factory with --weights FILE and --dataset NAME, not both")


def checkpoint_run_name(path: str | Path) -> str:
    """A short name for the model at checkpoint ``path``: the folder's name, prefixed by its
    parent's when it is a generic ``final``/``last``/``best``."""
    ckpt = Path(path).absolute()
    generic = ckpt.name in ("final", "last", "best")
    return f"{ckpt.parent.name}-{ckpt.name}" if generic else ckpt.name


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()



def as_logits(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, str | None]:
    """``model`` with probabilities wrapped into their logarithm (and the sentence saying so),
    judged on the first inputs ``x``: the one rule `evaluate` attacks by and `verify` re-checks
    by. Exactly one-hot rows count as a saturated softmax unless the model's own output
    activation (robustact's defense, attacked as it is) explains them."""
    dev = next((p.device for p in model.parameters()), x.device)
    bounded = any(d["type"] == "output_activation" for d in describe_defenses(model))
    return logit_model(model, x[:8].to(dev), one_hot_counts=not bounded)

@dataclass(frozen=True)
class ModelSource:
    """A model as the user names it: a ``checkpoint`` folder, or ``model_file``
    (``"path.py:Factory"``) with ``weights`` (safetensors or a state dict), ``normalize``
    (``"MEANS/STDS"``), ``factory_kwargs`` and ``num_classes``."""

    checkpoint: str | Path | None = None
    model_file: str | None = None
    weights: str | Path | None = None
    normalize: str | None = None
    factory_kwargs: dict[str, Any] | None = None
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.model_file is None):
            raise ValueError(MODEL_CHOICE)
        if self.checkpoint is not None:
            extra = [k for k, v in (("--weights", self.weights), ("--normalize", self.normalize),
                                    ("--factory-arg", self.factory_kwargs),
                                    ("--num-classes", self.num_classes)) if v]
            if extra:
                raise ValueError(f"{', '.join(extra)} only apply to --model-file; a checkpoint "
                                 "carries its weights and normalization")

    @property
    def name(self) -> str:
        """Short, for default output folders."""
        if self.checkpoint is not None:
            return checkpoint_run_name(self.checkpoint)
        path, factory = parse_model_spec(str(self.model_file))
        return f"{path.stem}-{factory}"

    def file_record(self) -> dict[str, Any]:
        """What a card records to rebuild this model file (``source`` field)."""
        path, factory = parse_model_spec(str(self.model_file))
        if not path.is_file():
            raise ValueError(f"model file {path} does not exist")
        return {"kind": "model_file", "model_file": f"{path.resolve()}:{factory}",
                "sha256": _sha256(path), "factory_kwargs": dict(self.factory_kwargs or {}),
                "normalize": self.normalize,
                "weights": None if self.weights is None else str(self.weights)}

    def info(self) -> dict[str, Any]:
        """How the reports describe where the model came from."""
        if self.checkpoint is not None:
            return {"source": "checkpoint", "checkpoint": str(self.checkpoint)}
        return {"source": "model_file", "model_file": self.model_file,
                "weights": None if self.weights is None else str(self.weights),
                "normalize": self.normalize, "factory_kwargs": self.factory_kwargs or {}}


def recorded_source(info: dict[str, Any], where: str | Path, model: str | Path | None = None,
                    model_file: str | None = None, weights: str | Path | None = None
                    ) -> ModelSource:
    """The model a run recorded (its ``info``: :meth:`ModelSource.info` and more), with the
    user's overrides (a moved checkpoint or file); ``where`` names the run in errors.

    Why: ``verify``, ``export`` and ``merge`` rebuild the very model an evaluation ran on from
    its folder alone, so a user does not retype the options."""
    if model is not None:
        return ModelSource(checkpoint=model)
    if info.get("source") == "model_file" or model_file is not None:
        same = info.get("source") == "model_file"
        return ModelSource(model_file=model_file or info.get("model_file"),
                           weights=weights or info.get("weights"),
                           normalize=info.get("normalize") if same else None,
                           factory_kwargs=(info.get("factory_kwargs") or None) if same else None)
    if weights is not None:
        raise ValueError("--weights goes with --model-file; the run's model is a checkpoint "
                         "(give a moved one with --model)")
    if info.get("source") == "checkpoint":
        return ModelSource(checkpoint=info["checkpoint"])
    raise ValueError(f"{where} does not record where its model came from (evaluated from "
                     "Python?): give it with --model DIR or --model-file/--weights")


@dataclass
class LoadedModel:
    """A model ready to run (eval mode, on its device) and its card.

    For a model file the card is made up of what the command line says (``data.dataset``) so
    that the data rules below need no second path.
    """

    model: nn.Module
    card: dict[str, Any]
    source: ModelSource
    info: dict[str, Any] = field(default_factory=dict)


def _card_dataset(card: dict[str, Any], dataset: str | None) -> str:
    """The dataset asked for, else the one the card records; one clear line when neither."""
    dataset = dataset or (card.get("data") or {}).get("dataset")
    if dataset is None:
        raise ValueError("the model does not record its dataset; name it with --dataset "
                         "(mnist, cifar10, cifar100 or digits)")
    return str(dataset)


def _rebuild_from_file(ckpt: str | Path, card: dict[str, Any], device: torch.device
                       ) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint whose model came from a user's model file (see the module doc)."""
    src = card["source"]
    path, factory = parse_model_spec(src["model_file"])
    if not path.is_file():
        raise ValueError(f"{ckpt} was made from the model file {path}, which no longer exists")
    if _sha256(path) != src.get("sha256"):
        raise ValueError(f"{ckpt} was made from the model file {path}, which has changed since "
                         "(sha256 differs): the checkpoint no longer describes that code; "
                         "restore the file or redo the defense")
    base = load_model_file(src["model_file"], None, src.get("normalize"),
                           src.get("factory_kwargs"))
    if card.get("defenses"):
        base = apply_defenses(base, card["defenses"], inplace=True)
    return load_checkpoint(ckpt, device=device, model=base)


def _need_dataset(dataset: str | None) -> None:
    if dataset is None:
        raise ValueError("--model-file needs --dataset (mnist, cifar10, cifar100 or digits): "
                         "the data the model was trained for")


def load_model(source: ModelSource, *, dataset: str | None = None,
               device: str | torch.device = "auto", probe: Any = None,
               data_root: str | Path | None = None, download: bool = False) -> LoadedModel:
    """Load ``source`` on ``device`` (``"auto"``: CUDA when available), in eval mode.

    A model file is built, given its weights and checked on ``probe`` (a few images of its
    data; default: the first 8 test images of ``dataset``). Without ``--weights`` a warning line
    says the factory's own weights are evaluated (random ones make every figure meaningless).
    ``probe`` is an ImageDataset: its first 8 images and its class count check the outputs.
    """
    dev = resolve_device(device)
    if source.checkpoint is not None:
        card = read_card(source.checkpoint)  # an edited or missing card fails here, first
        if (card.get("source") or {}).get("kind") == "model_file":
            model, card = _rebuild_from_file(source.checkpoint, card, dev)
        else:
            model, card = load_checkpoint(source.checkpoint, device=dev)
        return LoadedModel(model, card, source, {
            **source.info(), "model": card.get("model"), "defenses": card.get("defenses")})
    _need_dataset(dataset)
    if probe is None:
        probe = load_dataset(dataset, "test", root=data_root, download=download)
    if source.weights is None:
        log.warning("no --weights given: evaluating the weights %s builds by itself (random "
                    "unless it loads its own); pass --weights FILE for trained ones",
                    source.model_file)
    model = load_model_file(str(source.model_file), source.weights, source.normalize,
                            source.factory_kwargs, probe=probe.x(slice(0, 8)), device=dev,
                            num_classes=source.num_classes or probe.num_classes)
    card = {"data": {"dataset": dataset}, "source": source.file_record()}
    return LoadedModel(model, card, source, source.info())


def load_split(card: dict[str, Any], dataset: str | None, split: str, *,
               data_root: str | Path | None = None, n: int | None = None,
               download: bool = False) -> Any:
    """The ``split`` (train, val or test) of the model's data, first ``n`` images.

    Why from the card: a two-class model is evaluated on its two classes, and the validation
    split is re-carved exactly as in training (same fraction and seed), so tuning never touches
    the test set. A model file has no card: its validation split is the last 10 % of the train
    split under seed 0 (said in one line, since that model may have trained on it).
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    if n is not None:
        check_positive_int(n, "n")
    data_desc = card.get("data") or {}
    name = _card_dataset(card, dataset)
    ds = load_dataset(name, "test" if split == "test" else "train", root=data_root,
                      download=download)
    classes = data_desc.get("classes")
    if classes and len(classes) == 2 and ds.num_classes != 2:
        ds = binary_task(ds, tuple(classes))
    if split == "val":
        if "val_fraction" not in data_desc:
            log.warning("the model does not record its validation split: using 10 %% of the "
                        "%s train split (seed 0), which it may have been trained on", name)
        frac = data_desc.get("val_fraction") or 0.1
        seed = (card.get("train") or {}).get("seed", 0)
        _, ds = train_val_split(ds, val_fraction=frac, seed=seed)
    if n is not None:
        if n > len(ds):
            log.warning("asked for the first %d images, but the %s %s split has %d: using "
                        "all %d", n, name, split, len(ds), len(ds))
        ds = ds.subset(torch.arange(min(n, len(ds))))
    return ds


@dataclass
class Target:
    """A loaded model, its data, its dataset's name, a short name and where it came from."""

    model: nn.Module
    data: Any
    dataset: str
    name: str
    info: dict[str, Any]
    card: dict[str, Any]


def load_target(source: ModelSource, *, dataset: str | None = None, split: str = "test",
                n: int | None = 1000, data_root: str | Path | None = None,
                download: bool = False, device: str | torch.device = "auto") -> Target:
    """The model of ``source`` and the first ``n`` images of its ``split``."""
    if n is not None:
        check_positive_int(n, "n")
    if source.checkpoint is not None:
        card = read_card(source.checkpoint)
        data = load_split(card, dataset, split, data_root=data_root, n=n, download=download)
        loaded = load_model(source, device=device)
    else:
        _need_dataset(dataset)
        data = load_split({}, dataset, split, data_root=data_root, n=n, download=download)
        loaded = load_model(source, dataset=dataset, device=device, probe=data)
    name = _card_dataset(loaded.card, dataset)
    return Target(loaded.model, data, name, source.name, loaded.info, loaded.card)
