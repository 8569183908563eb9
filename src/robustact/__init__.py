"""robustact: activation- and loss-based adversarial defenses, evaluated honestly.

The public API is organised by what a user does:

- :mod:`robustact.data`     datasets in [0,1] tensors (MNIST, CIFAR-10/100, sklearn digits)
- :mod:`robustact.nn`       activations (JumpReLU, SPLASH, APL, Maxout, ...) and the factory
- :mod:`robustact.models`   architectures that take an activation factory; ``create_model``
- :mod:`robustact.train`    the trainer, schedules, safetensors checkpoints, resume
- :mod:`robustact.defenses` retrofit JumpReLU, output-activation temperature, differential loss
- :mod:`robustact.attacks`  white-box, minimum-norm, black-box and adaptive attacks
"""

__version__ = "0.1.0"
