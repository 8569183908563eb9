"""A fully connected network: the smallest model, for the offline demo (8×8 digits) and tests.

Why an MLP in an image zoo: on sklearn's 8×8 digits it trains in seconds on a CPU, which makes
the whole pipeline (train, retrofit, attack, audit) runnable offline in a demo and in tests.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from robustact.models._utils import ZooClassifier, check_common, check_positive_int
from robustact.models.registry import register_model
from robustact.nn.factory import ActivationFactory
from robustact.nn.normalize import Normalize

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
        self,
        *,
        num_classes: int,
        activation: ActivationFactory,
        in_channels: int,
        input_size: int | None,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        hidden: Sequence[int] = (256, 128),
    ) -> None:
        super().__init__()
        check_common(
            self.arch, num_classes=num_classes, in_channels=in_channels, input_size=input_size,
            mean=mean, std=std, need_size=True,
        )
        assert input_size is not None
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise ValueError(f"hidden must be a sequence of layer widths, got {hidden!r}")
        widths = [check_positive_int(h, "each hidden width") for h in hidden]
        self._remember(num_classes, in_channels, input_size)
        self.normalize = Normalize(mean, std)
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_channels * input_size * input_size
        for h in widths:
            layers += [nn.Linear(d, h), activation(h)]
            d = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(d, num_classes)
