"""The library calls behind each command, one module per command family.

- :mod:`.sources`: a model as the user names it (checkpoint or model file) and its data;
- :mod:`.train`: ``train``; :mod:`.defend`: ``retrofit``, ``defend``, ``tune-jump``;
- :mod:`.evaluate`: ``eval``, ``evaluate``, ``attack`` (one engine, one record per run);
- :mod:`.demo`: ``demo``;
- :mod:`.calibrate`: ``audit calibrate`` (the audit's calibration zoo, :mod:`.zoo`).

Every one of them writes through :func:`robustact.core.runfolder.open_run` (create, lock,
record, resume, clean up), so notebooks and scripts get exactly what the CLI does; the CLI
(:mod:`robustact.cli`) only parses arguments and prints.
"""

from robustact.runs.calibrate import calibrate_audit
from robustact.runs.defend import defend_checkpoint, retrofit_checkpoint, tune_jump_checkpoint
from robustact.runs.evaluate import (
    EVALUATE_AUDIT_DEFAULTS,
    attack_model,
    clean_accuracy,
    evaluate_model,
    evaluate_source,
)
from robustact.runs.sources import ModelSource, Target, load_model, load_split, load_target
from robustact.runs.train import MAX_TRAIN_TEMPERATURE, TrainOutcome, load_splits, train_classifier

__all__ = [
    "EVALUATE_AUDIT_DEFAULTS", "MAX_TRAIN_TEMPERATURE", "ModelSource", "Target", "TrainOutcome",
    "attack_model", "calibrate_audit", "clean_accuracy", "defend_checkpoint", "evaluate_model",
    "evaluate_source", "load_model", "load_split", "load_splits", "load_target",
    "retrofit_checkpoint", "train_classifier", "tune_jump_checkpoint",
]
