"""``create_model(name, ...)``: the registry of architectures (timm-style).

Why a registry: the CLI, checkpoint cards and reproductions name models by string, and a card
must rebuild exactly the architecture it was saved from (``create_model(**card["model"])``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from robustact.nn.factory import ActivationSpec, activation_factory, parse_activation_spec
from robustact.nn.normalize import DATASET_STATS

__all__ = ["register_model", "create_model", "available_models", "DATASET_SHAPES"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}

#: (channels, height, width, classes) of each dataset, so ``create_model(..., dataset=...)``
#: fills in the input shape, class count and normalization.
DATASET_SHAPES: dict[str, tuple[int, int, int, int]] = {
    "mnist": (1, 28, 28, 10),
    "cifar10": (3, 32, 32, 10),
    "cifar100": (3, 32, 32, 100),
    "digits": (1, 8, 8, 10),
}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(cls: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name.lower()
        if key in _MODELS and _MODELS[key] is not cls:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[key] = cls
        return cls

    return deco


def _ensure_loaded() -> None:
    import robustact.models  # noqa: F401  (registers the architectures)


def _splash_needs_norm(activation: ActivationSpec, model: nn.Module) -> bool:
    """Whether a SPLASH spec should get its own input standardization in this model.

    SPLASH assumes BatchNorm in front of it (SPEC §2). A model with no BatchNorm at all
    (LeNet-5, LeNetLike, AlexLike, MLP, SmallCNN, NIN/All-CNN with ``batchnorm=False``) feeds
    it raw pre-activations, and its per-layer slopes then make SGD diverge at the learning
    rates ReLU trains with; ``norm=True`` standardizes each SPLASH input instead. A spec that
    sets ``norm`` itself, and factories passed as callables, are left as they are. Deciding
    from the built model (not a list of names) keeps the rule right for every architecture and
    option, and a card rebuilds the same model because the rule is re-applied to its spec.
    """
    if not isinstance(activation, str):
        return False
    name, kwargs = parse_activation_spec(activation)
    if name != "splash" or "norm" in kwargs:
        return False
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def available_models() -> list[str]:
    _ensure_loaded()
    return sorted(_MODELS)


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    activation: ActivationSpec = "relu",
    dataset: str | None = None,
    in_channels: int | None = None,
    input_size: int | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered architecture.

    ``dataset`` ("mnist", "cifar10", "cifar100", "digits") fills in whatever of
    ``num_classes``, ``in_channels``, ``input_size``, ``mean`` and ``std`` is not given. Every
    architecture accepts those five keywords plus ``activation`` (a spec string or a factory).
    """
    _ensure_loaded()
    key = name.lower()
    if key not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(_MODELS))}")
    if dataset is not None:
        ds = dataset.lower()
        if ds not in DATASET_SHAPES:
            raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASET_SHAPES)}")
        c, h, _, k = DATASET_SHAPES[ds]
        in_channels = c if in_channels is None else in_channels
        input_size = h if input_size is None else input_size
        num_classes = k if num_classes is None else num_classes
        m, s = DATASET_STATS[ds]
        mean = m if mean is None else mean
        std = s if std is None else std
    num_classes = 10 if num_classes is None else num_classes
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    in_channels = in_channels or 1
    if mean is None:
        mean, std = (0.5,) * in_channels, (0.5,) * in_channels
    def build(act: Callable[[int], nn.Module]) -> nn.Module:
        return _MODELS[key](
            num_classes=num_classes,
            activation=act,
            in_channels=in_channels,
            input_size=input_size,
            mean=tuple(mean),
            std=tuple(std),
            **kwargs,
        )

    model = build(activation_factory(activation))
    if _splash_needs_norm(activation, model):
        model = build(activation_factory(activation, norm=True))
    # Everything needed to rebuild this exact architecture from a checkpoint card.
    spec = activation if isinstance(activation, str) else getattr(activation, "spec", None)
    model.robustact_config = {  # type: ignore[assignment]
        "name": key,
        "num_classes": num_classes,
        "activation": spec,
        "in_channels": in_channels,
        "input_size": input_size,
        "mean": list(mean),
        "std": list(std),
        **kwargs,
    }
    return model
