"""High-temperature output activations as a defense: p = softmax(f(T·z)) (Tuna et al. 2022).

:class:`OutputActivationModel` wraps a classifier: ``forward`` returns f(T·base(x)) (what the
softmax / cross-entropy sees), ``logits(x)`` the raw z. Use it during training (wrap before
training) or bolt it onto a trained model (:func:`add_output_activation`); it has no weights of
its own, so the wrapped model's state dict is unchanged apart from the ``base.`` prefix.

Evaluate it honestly: f is strictly increasing, so decisions equal the base model's and the
defense is pure gradient masking (papers.md §3). The wrapped model is the attribute ``base`` so
adaptive attacks can compute their loss on z with ``logits_from="base"``; the activation is the
submodule ``activation`` (class ``OutputActivation``), which BPDA replaces by the identity.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from robustact.core.attributes import Forwarded
from robustact.core.validate import check_eval_mode, check_images, match_model_dtype, top_ties
from robustact.defenses.base import DefenseWrapper
from robustact.nn.bounded import OutputActivation

__all__ = ["OutputActivationModel", "add_output_activation", "remove_output_activation",
           "tie_rate"]


class OutputActivationModel(DefenseWrapper):
    """``f(temperature · base(x))``; ``f`` in {"sigmoid", "tanh", "softsign", "arctan"}.

    ``features``/``head`` delegate to ``base`` (note ``forward`` is then f(T·head(features))).
    ``f`` and ``temperature`` can be changed after construction.
    """

    # Settable on the wrapper; stored (and checked) once, on the ``activation`` submodule.
    f = Forwarded("activation")
    temperature = Forwarded("activation")

    def __init__(self, base: nn.Module, f: str = "sigmoid", temperature: float = 1.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Module):
            raise TypeError(f"base must be an nn.Module, got {type(base).__name__}")
        self.base = base
        self.activation = OutputActivation(f, temperature)
        self.train(base.training)  # a wrapper starts in the wrapped model's mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.base(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The raw logits z = base(x), before the bounded activation."""
        return self.base(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        feats = getattr(self.base, "features", None)
        if not callable(feats):
            raise AttributeError(f"{type(self.base).__name__} has no features(x) method")
        return feats(x)

    @property
    def head(self) -> nn.Module:
        return self.base.head


def tie_rate(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> float:
    """Fraction of the inputs ``x`` whose top output is tied (exactly equal, in the outputs' dtype).

    Why it matters: at high T, f(T·z) saturates to exactly 1.0 for several classes; ``argmax``
    then returns the lowest tied index, so clean accuracy drops although the logits' ranking is
    intact (measured: a cross-entropy LeNet5 with sigmoid at T = 100 falls from 98.4 % to 33.4 %
    on MNIST). robustact's evaluation counts a tied prediction as not correct.
    """
    check_images(x, ndim=None)
    check_eval_mode(model, "measuring the tie rate")
    if x.shape[0] == 0:
        return 0.0
    tied = 0
    with torch.no_grad():
        for chunk in x.split(batch_size):
            tied += int(top_ties(model(match_model_dtype(model, chunk))).sum())
    return tied / x.shape[0]


def add_output_activation(model: nn.Module, f: str = "sigmoid", temperature: float = 1.0, *,
                          x: torch.Tensor | None = None) -> OutputActivationModel:
    """Wrap ``model`` (shared, not copied) so it outputs f(T·z).

    Refuses a model that already has an output activation: stacking two bounded functions is
    almost certainly a mistake (change ``.f``/``.temperature`` instead). Given inputs ``x``
    (and a model in eval mode), measures :func:`tie_rate` on them and warns when some top
    outputs are tied: nothing else would tell a user why clean accuracy dropped.
    """
    if isinstance(model, OutputActivationModel):
        raise ValueError(
            "the model already has an output activation "
            f"(f={model.f}, T={model.temperature:g}); set .f/.temperature or remove it first"
        )
    wrapped = OutputActivationModel(model, f, temperature)
    if x is not None:
        rate = tie_rate(wrapped, x)
        if rate > 0:
            warnings.warn(
                f"at T={wrapped.temperature:g} ({wrapped.f}), {100 * rate:.1f} % of these "
                f"{x.shape[0]} inputs have tied top outputs (float saturation); argmax breaks "
                "ties by index, so clean accuracy drops (robustact counts a tie as not correct)",
                UserWarning, stacklevel=2)
    return wrapped


def remove_output_activation(model: nn.Module) -> nn.Module:
    """The wrapped model (raw logits again)."""
    if not isinstance(model, OutputActivationModel):
        raise ValueError(
            f"{type(model).__name__} has no output activation (not an OutputActivationModel)"
        )
    return model.base
