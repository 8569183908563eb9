"""Network-in-Network (Lin, Chen, Yan; ICLR 2014), the CIFAR-10 model, for the SPLASH comparison.

Three "mlpconv" blocks: a spatial convolution followed by two 1×1 convolutions (a small MLP
slid over the image), each with an activation::

    conv5×5 192, act, conv1×1 160, act, conv1×1 96, act, max-pool 3 /2, dropout,
    conv5×5 192, act, conv1×1 192, act, conv1×1 192, act, avg-pool 3 /2, dropout,
    conv3×3 192, act, conv1×1 192, act, | conv1×1 K, global average pool

Convolutions are padded to keep the size ("same"); the pools use ceil mode as in the authors'
Caffe model, so 32×32 inputs give 16×16 and then 8×8 maps.

As in :mod:`robustact.models.allcnn`, the class layer (1×1 convolution to K channels, then global
average pooling) is implemented as global average pooling followed by ``head = nn.Linear(192,
K)``: both are linear, so the order does not change the logits, and the pooled 192-d map becomes
the penultimate features. The activation the original puts on the class layer is dropped so the
model returns logits.

``batchnorm`` (default True) adds BatchNorm after every convolution, before its activation: the
2014 network predates BatchNorm, but SPLASH's fixed hinge offsets assume roughly N(0, 1)
pre-activations (papers.md §2). ``batchnorm=False`` gives the original layout with biases.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from robustact.models._utils import ZooClassifier, check_bool, check_rate, conv_bn, pool
from robustact.models.registry import register_model
from robustact.nn.factory import ActivationFactory

__all__ = ["NIN"]

# One mlpconv block: (spatial kernel, channels of the three convolutions).
_BLOCKS: tuple[tuple[int, tuple[int, int, int]], ...] = (
    (5, (192, 160, 96)),
    (5, (192, 192, 192)),
    (3, (192, 192)),  # the third 1×1 (to K classes) is the head, see the module docstring
)


@register_model("nin")
class NIN(ZooClassifier):
    """Network-in-Network with the factory's activation at its eight hidden sites."""

    arch = "nin"

    def __init__(
        self, *, activation: ActivationFactory, batchnorm: bool = True, dropout: float = 0.5,
        **data: Any,
    ) -> None:
        super().__init__(**data)  # num_classes, in_channels, input_size, mean, std
        batchnorm = check_bool(batchnorm, "batchnorm")
        p = check_rate(dropout)
        self.side_after(
            [pool(3, 2, ceil_mode=True, label="maxpool"),
             pool(3, 2, ceil_mode=True, label="avgpool")]
        )

        layers: list[nn.Module] = []
        c_in = self.in_channels
        for b, (k, widths) in enumerate(_BLOCKS):
            for i, c_out in enumerate(widths):
                kernel = k if i == 0 else 1
                layers += [*conv_bn(c_in, c_out, kernel, batchnorm=batchnorm), activation(c_out)]
                c_in = c_out
            if b == 0:
                layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
            elif b == 1:
                layers.append(nn.AvgPool2d(3, 2, ceil_mode=True))
            if b < 2 and p > 0:
                layers.append(nn.Dropout(p))
        self.pool_into_head(layers, c_in)
