"""``create_model(name, ...)``: the registry of architectures (timm-style).

Why a registry: the CLI, checkpoint cards and reproductions name models by string, and a card
must rebuild exactly the architecture it was saved from (``create_model(**card["model"])``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from robustact.core.registry import Registry
from robustact.core.spec import format_spec, parse_spec
from robustact.data.catalog import dataset_info
from robustact.nn.factory import ActivationSpec, activation_factory

__all__ = ["register_model", "create_model", "available_models"]

_MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Class decorator: make the architecture buildable as ``create_model(name)``."""
    return _MODELS.register(name)


def _splash_needs_norm(activation: ActivationSpec, model: nn.Module) -> bool:
    """Whether a SPLASH spec should get its own input standardization in this model.

    SPLASH assumes BatchNorm in front of it (papers.md §2). A model with no BatchNorm at all
    (LeNet-5, LeNetLike, AlexLike, MLP, SmallCNN, NIN/All-CNN with ``batchnorm=False``) feeds
    it raw pre-activations, and its per-layer slopes then make SGD diverge at the learning
    rates ReLU trains with; ``norm=True`` standardizes each SPLASH input instead. A spec that
    sets ``norm`` itself, and factories passed as callables, are left as they are. Deciding
    from the built model (not a list of names) keeps the rule right for every architecture and
    option; the resolved spec (``norm=true`` written out) is what the card records, so a card
    rebuilds the same model even if this default ever changes.
    """
    if not isinstance(activation, str):
        return False
    name, kwargs = parse_spec(activation)
    if name != "splash" or "norm" in kwargs:
        return False
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


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
    arch = _MODELS.get(name)  # an unknown name fails here, before any work
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

    def build(act: Callable[[int], nn.Module]) -> nn.Module:
        return arch(
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
        act_name, params = parse_spec(activation)  # type: ignore[arg-type]
        activation = format_spec(act_name, {**params, "norm": True})  # the card records the rule
        model = build(activation_factory(activation))
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
