"""Activations, the activation factory, the normalization layer and model surgery."""

from robustact.nn.factory import (
    ActivationFactory,
    ActivationSpec,
    activation_factory,
    available_activations,
    create_activation,
    register_activation,
)
from robustact.nn.normalize import Normalize

__all__ = [
    "ActivationFactory",
    "ActivationSpec",
    "activation_factory",
    "available_activations",
    "create_activation",
    "register_activation",
    "Normalize",
]

# Custom activations register themselves with the factory on import; then surgery and the
# output-layer activation (which use them).
from robustact.nn.apl import APL  # noqa: E402
from robustact.nn.bounded import OutputActivation  # noqa: E402
from robustact.nn.jumprelu import JumpReLU, jump_relu  # noqa: E402
from robustact.nn.maxout import Maxout  # noqa: E402
from robustact.nn.splash import SPLASH, calibrate_splash, splash_reference  # noqa: E402
from robustact.nn.surgery import (  # noqa: E402
    JumpReLUMode,
    find_activations,
    replace_modules,
    set_module,
)

__all__ += [
    "APL",
    "JumpReLU",
    "jump_relu",
    "Maxout",
    "OutputActivation",
    "SPLASH",
    "calibrate_splash",
    "splash_reference",
    "JumpReLUMode",
    "find_activations",
    "replace_modules",
    "set_module",
]
