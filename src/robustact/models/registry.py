"""``create_model(name, ...)``: the registry of architectures (timm-style).

Why a registry: the CLI, checkpoint cards and reproductions name models by string, and a card
must rebuild exactly the architecture it was saved from (``create_model(**card["model"])``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from robustact.core.registry import Registry
from robustact.data.catalog import dataset_info
from robustact.nn.factory import ActivationSpec, activation_factory

__all__ = ["register_model", "create_model", "available_models"]

_MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Class decorator: make the architecture buildable as ``create_model(name)``."""
    return _MODELS.register(name)


def available_models() -> list[str]:
    return _MODELS.names()


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
    build = _MODELS.get(name)
    key = name.lower()
    if dataset is not None:
        info = dataset_info(dataset)
        in_channels = info.shape[0] if in_channels is None else in_channels
        input_size = info.shape[1] if input_size is None else input_size
        num_classes = info.num_classes if num_classes is None else num_classes
        mean = info.mean if mean is None else mean
        std = info.std if std is None else std
    num_classes = 10 if num_classes is None else num_classes
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    in_channels = in_channels or 1
    if mean is None:
        mean, std = (0.5,) * in_channels, (0.5,) * in_channels
    act = activation_factory(activation)
    model = build(
        num_classes=num_classes,
        activation=act,
        in_channels=in_channels,
        input_size=input_size,
        mean=tuple(mean),
        std=tuple(std),
        **kwargs,
    )
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
