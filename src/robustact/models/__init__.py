"""The model zoo: every architecture takes its activation from a factory and returns logits.

``create_model(name, dataset=..., activation=...)`` builds any registered architecture;
importing this package registers them all. See :mod:`robustact.models.base` for the contract
(normalization inside, ``features`` + ``head``) that attacks and defenses rely on.

=============  =========================================================  ====================
name           architecture                                               used by
=============  =========================================================  ====================
lenet5         LeNet-5                                                    SPLASH (MNIST)
lenetlike      JumpReLU paper's MNIST network                             JumpReLU
madry_mnist    Madry et al.'s MNIST CNN (conv 32/64 5×5, fc 1024)         adversarial training
alexlike       JumpReLU paper's CIFAR-10 network                          JumpReLU
allcnn         All-CNN-C                                                  SPLASH
nin            Network-in-Network                                         SPLASH
resnet20/32/56 CIFAR ResNet, option-A shortcuts by default                SPLASH, JumpReLU
wrn34_4        Wide ResNet 34-4 (``wideresnet`` for other depths/widths)  JumpReLU
mobilenetv2    MobileNetV2, CIFAR strides                                 JumpReLU
ibp_small      Gowal et al.'s small CNN (strided convs, no pooling)       certified training
ibp_medium     Gowal et al.'s medium CNN                                  certified training
mlp, smallcnn  small networks for the offline demo and tests
=============  =========================================================  ====================
"""

from robustact.models import (  # noqa: F401  (importing registers the architectures)
    allcnn,
    ibp_cnn,
    jumprelu_nets,
    lenet,
    madry_mnist,
    mlp,
    mobilenetv2,
    nin,
    resnet,
    smallcnn,
    wrn,
)
from robustact.models._utils import count_parameters
from robustact.models.base import Classifier
from robustact.models.registry import available_models, create_model, register_model

__all__ = [
    "Classifier",
    "available_models",
    "count_parameters",
    "create_model",
    "register_model",
]
