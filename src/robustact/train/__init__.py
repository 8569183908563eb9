"""Training: config, the loop, recipes (differential, adversarial batches), schedules, augmentation.

- :mod:`~robustact.train.config`: :class:`TrainConfig` and the papers' presets;
- :mod:`~robustact.train.loop`: :class:`Trainer`, its extension points (loss, batch hook, model
  wrapper, callbacks) and the determinism contract;
- :mod:`~robustact.train.batches`: dataset tensors, seeds, batch orders;
- :mod:`~robustact.train.recipes`: differential training, FGSM batch hooks;
- :mod:`~robustact.train.adversarial`: adversarial training (mix, PGD-AT, fast AT, TRADES);
- :mod:`~robustact.train.averaging`: the weight average (EMA) the trainer can keep;
- :mod:`~robustact.train.distributed`: DDP under torchrun or srun (:class:`DistEnv`).

Checkpoints live in :mod:`robustact.checkpoint` (re-exported here for convenience).
"""

from robustact.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_training_state,
    load_weights,
    read_card,
    save_checkpoint,
)
from robustact.train.adversarial import (
    OverfittingGuard,
    TradesLoss,
    adversarial_spec,
    adversarial_train,
)
from robustact.train.augment import crop_flip, get_augmentation, random_crop_flip
from robustact.train.averaging import WeightAverage
from robustact.train.batches import as_tensors, balanced_batches, derive_seed, seeded
from robustact.train.config import (
    TrainConfig,
    TrainingDivergedError,
    jumprelu_alexlike_config,
    jumprelu_mnist_config,
    jumprelu_resnet_config,
)
from robustact.train.distributed import DistEnv, DistributedAbort, LocalBatch
from robustact.train.loop import Callback, Trainer, cross_entropy_loss
from robustact.train.recipes import fgsm_batch_hook, jumprelu_robust_hook
from robustact.train.schedules import LRSchedule, lr_at

__all__ = [
    "OverfittingGuard",
    "TradesLoss",
    "adversarial_spec",
    "adversarial_train",
    "as_tensors",
    "Callback",
    "CheckpointError",
    "DistEnv",
    "DistributedAbort",
    "LocalBatch",
    "LRSchedule",
    "TrainConfig",
    "Trainer",
    "TrainingDivergedError",
    "WeightAverage",
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
