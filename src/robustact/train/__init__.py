"""Training: the trainer, LR schedules, tensor augmentation, safetensors checkpoints, resume.

See :mod:`robustact.train.trainer` for the extension points (loss, batch hook, model wrapper,
callbacks) and the determinism contract, and :mod:`robustact.checkpoint` for the on-disk
format and its crash safety.
"""

from robustact.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_training_state,
    load_weights,
    read_card,
    save_checkpoint,
)
from robustact.train.augment import crop_flip, get_augmentation, random_crop_flip
from robustact.train.schedules import LRSchedule, lr_at
from robustact.train.trainer import (
    Callback,
    TrainConfig,
    Trainer,
    TrainingDivergedError,
    balanced_batches,
    cross_entropy_loss,
    derive_seed,
    fgsm_batch_hook,
    jumprelu_alexlike_config,
    jumprelu_mnist_config,
    jumprelu_resnet_config,
    jumprelu_robust_hook,
    seeded,
)

__all__ = [
    "Callback",
    "CheckpointError",
    "LRSchedule",
    "TrainConfig",
    "Trainer",
    "TrainingDivergedError",
    "balanced_batches",
    "crop_flip",
    "cross_entropy_loss",
    "derive_seed",
    "fgsm_batch_hook",
    "get_augmentation",
    "jumprelu_alexlike_config",
    "jumprelu_mnist_config",
    "jumprelu_resnet_config",
    "jumprelu_robust_hook",
    "load_checkpoint",
    "load_training_state",
    "load_weights",
    "lr_at",
    "random_crop_flip",
    "read_card",
    "save_checkpoint",
    "seeded",
]
