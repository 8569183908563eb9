"""A fully connected network: the smallest model, for the offline demo (8×8 digits) and tests.

Why an MLP in an image zoo: on sklearn's 8×8 digits it trains in seconds on a CPU, which makes
the whole pipeline (train, retrofit, attack, audit) runnable offline in a demo and in tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from robustact.models._utils import ZooClassifier, check_positive_int
from robustact.models.registry import register_model
from robustact.nn.factory import ActivationFactory

__all__ = ["MLP"]


@register_model("mlp")
class MLP(ZooClassifier):
    """flatten → [Linear(h) → act] for each h in ``hidden`` → head.

    ``hidden`` may be empty (then the model is multinomial logistic regression on the pixels and
    the features are the normalized pixels themselves).
    """

    arch = "mlp"
    fixed_size = True

    def __init__(
        self, *, activation: ActivationFactory, hidden: Sequence[int] = (256, 128), **data: Any
    ) -> None:
        super().__init__(**data)  # num_classes, in_channels, input_size, mean, std
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise ValueError(f"hidden must be a sequence of layer widths, got {hidden!r}")
        widths = [check_positive_int(h, "each hidden width") for h in hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        d = self.in_channels * self.input_size * self.input_size  # fixed_size: input_size is set
        for h in widths:
            layers += [nn.Linear(d, h), activation(h)]
            d = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(d, self.num_classes)
