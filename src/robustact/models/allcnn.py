"""All-CNN-C (Springenberg, Dosovitskiy, Brox, Riedmiller; "Striving for Simplicity", ICLR-W 2015).

A network of convolutions only: pooling is replaced by stride-2 convolutions, and the classifier
is a 1×1 convolution to the class count followed by global average pooling. SPLASH compares
activations on it (papers.md §2).

Layout (padding 1 everywhere except the valid 3×3 near the end, as in the paper)::

    [input dropout] conv3×3 96, act, conv3×3 96, act, conv3×3 96 /2, act, dropout,
    conv3×3 192, act, conv3×3 192, act, conv3×3 192 /2, act, dropout,
    conv3×3 192 (valid), act, conv1×1 192, act, | conv1×1 K, global average pool

On 32×32 inputs the maps are 32, 16, 8 and 6 pixels wide.

The classifier, ``conv1×1 K`` then global average pooling, is implemented as global average
pooling then ``head = nn.Linear(192, K)``. Both maps are linear, so they commute and give the same
logits for the same weights (``GAP(W * h + b) = W · GAP(h) + b``); the reordering makes the
192-d pooled map the penultimate features φ(x) of the model contract. The paper also puts a ReLU
on the class layer; it is dropped so the model returns logits (an activation on the logits would
be an output-activation defense, which lives in ``robustact.defenses``).

``batchnorm`` (default True) adds BatchNorm after every convolution, before its activation. The
original All-CNN-C has none, but SPLASH's hinges sit at fixed offsets that assume roughly
N(0, 1) pre-activations, which BatchNorm provides; the SPLASH paper trains with it. With
``batchnorm=False`` the convolutions get biases and the network is the paper's.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from robustact.models._utils import ZooClassifier, check_bool, check_rate, conv, conv_bn
from robustact.models.registry import register_model
from robustact.nn.factory import ActivationFactory

__all__ = ["AllCNN"]

# (out channels, kernel, stride, padding, dropout after this layer's activation)
_LAYERS: tuple[tuple[int, int, int, int, bool], ...] = (
    (96, 3, 1, 1, False),
    (96, 3, 1, 1, False),
    (96, 3, 2, 1, True),
    (192, 3, 1, 1, False),
    (192, 3, 1, 1, False),
    (192, 3, 2, 1, True),
    (192, 3, 1, 0, False),
    (192, 1, 1, 0, False),
)


@register_model("allcnn")
class AllCNN(ZooClassifier):
    """All-CNN-C with the factory's activation at its eight hidden sites (see module docstring).

    ``dropout`` is applied after each stride-2 layer (the paper's 50 %); ``input_dropout`` on the
    image (the paper uses 20 %; default 0 here because dropping pixels interacts with
    adversarial training and attacks).
    """

    arch = "allcnn"

    def __init__(
        self, *, activation: ActivationFactory, batchnorm: bool = True, dropout: float = 0.5,
        input_dropout: float = 0.0, **data: Any,
    ) -> None:
        super().__init__(**data)  # num_classes, in_channels, input_size, mean, std
        batchnorm = check_bool(batchnorm, "batchnorm")
        p, p_in = check_rate(dropout), check_rate(input_dropout, "input_dropout")
        self.side_after(
            [conv(k, s, pad, f"conv{i + 1}") for i, (_, k, s, pad, _) in enumerate(_LAYERS)]
        )
        layers: list[nn.Module] = [nn.Dropout(p_in)] if p_in > 0 else []
        c_in = self.in_channels
        for c_out, k, s, pad, drop in _LAYERS:
            layers += [*conv_bn(c_in, c_out, k, s, pad, batchnorm=batchnorm), activation(c_out)]
            if drop and p > 0:
                layers.append(nn.Dropout(p))
            c_in = c_out
        self.pool_into_head(layers, c_in)
