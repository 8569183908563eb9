"""Worker for tests/test_distributed_train.py: started by ``torchrun`` as 2 CPU processes (gloo).

    python -m torch.distributed.run --standalone --nproc-per-node 2 _ddp_worker.py OUT

Each rank trains every scenario of :data:`SCENARIOS` with DDP (plain training with
augmentation and a validation set; the adversarial recipes), then a run stopped after epoch 1
and resumed from the checkpoint (``OUT/stopped`` keeps the epoch-1 checkpoint). The last batch
is uneven on purpose: 3 samples (plain, trades: the ranks get 2 and 1, so their losses must be
weighted) or 1 (pgd, mix, fast: rank 1 gets the weight-0 stand-in row). It saves, per rank and
scenario, the final weights and the history to ``OUT/<scenario>-rank<r>.pt``, and the paths
every ``save_checkpoint`` call of the trainer and the fast-AT guard wrote on this rank to
``OUT/saves-rank<r>.json``. The test runs the same scenarios in one process (:func:`run` with
``dist=None``) and compares.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

import robustact.train.adversarial as adversarial_module
import robustact.train.loop as loop_module
from robustact.models.base import Classifier
from robustact.train import DistEnv, TrainConfig, Trainer
from robustact.train.adversarial import adversarial_spec, adversarial_train

SCENARIOS = ("plain", "pgd", "trades", "mix", "fast")
N_VAL, BATCH, EPOCHS = 21, 16, 2
EPS = 0.1


class TinyMLP(Classifier):
    """flatten → linear → ReLU → 3-class head; no batch norm, no dropout (per-rank by nature)."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(11)
            self.num_classes = 3
            self.normalize = nn.Identity()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU())
            self.head = nn.Linear(24, 3)


Pair = tuple[torch.Tensor, torch.Tensor]


def build(scenario: str) -> tuple[nn.Module, Pair, Pair, TrainConfig]:
    """Model, train and validation data, config of a scenario: the same in every process."""
    g = torch.Generator().manual_seed(2024)
    n_train = 6 * BATCH + (3 if scenario in ("plain", "trades") else 1)
    n = n_train + N_VAL
    y = torch.randint(0, 3, (n,), generator=g)
    x = (0.25 + 0.25 * y[:, None, None, None] + 0.2 * torch.randn(n, 1, 8, 8, generator=g))
    x = x.clamp(0, 1)
    adv = {"plain": None, "pgd": adversarial_spec("pgd", EPS, steps=2),
           "trades": adversarial_spec("trades", EPS, steps=2),
           "mix": adversarial_spec("mix", EPS, fraction=0.5),
           "fast": adversarial_spec("fast", EPS, guard_n=16, guard_steps=2)}[scenario]
    config = TrainConfig(epochs=EPOCHS, batch_size=BATCH, lr=0.3, momentum=0.9,
                         schedule="cosine", augment="shift", seed=5, device="cpu", adv=adv,
                         ema=0.9 if scenario == "pgd" else None, log_every=3)
    return TinyMLP(), (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:]), config


def run(scenario: str, model: nn.Module, train: Pair, val: Pair, config: TrainConfig,
        out: Path | None, dist: DistEnv | None, resume: bool = False,
        callbacks: Any = ()) -> list[dict[str, Any]]:
    """Train one scenario (one process with ``dist=None``); returns the history."""
    if scenario == "plain":
        return Trainer(model, train, val, config, out_dir=out, progress=False,
                       callbacks=callbacks, dist=dist).fit(resume=resume)
    history, _ = adversarial_train(model, train, val, config, out_dir=out, resume=resume,
                                   callbacks=callbacks, dist=dist)
    return history


class Stop(Exception):
    pass


class StopAfterEpoch1:
    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        if epoch == 1:
            raise Stop


def _count_saves(log: list[str]) -> None:
    """Record every checkpoint the trainer or the guard writes in this process."""
    for module in (loop_module, adversarial_module):
        original = module.save_checkpoint

        def counted(path: Any, *a: Any, _original: Any = original, **k: Any) -> Any:
            log.append(str(path))
            return _original(path, *a, **k)

        module.save_checkpoint = counted  # type: ignore[attr-defined]


def _save(out: Path, name: str, rank: int, model: nn.Module, history: list[dict]) -> None:
    torch.save({"state": model.state_dict(), "history": history}, out / f"{name}-rank{rank}.pt")


def main() -> None:
    out = Path(sys.argv[1])
    dist = DistEnv.from_env("cpu")
    assert dist is not None and dist.world_size == 2, "start me with torchrun, 2 processes"
    torch.set_num_threads(dist.threads())
    dist.init()
    saves: list[str] = []
    _count_saves(saves)
    try:
        for name in SCENARIOS:
            model, train, val, config = build(name)
            history = run(name, model, train, val, config, out / name, dist)
            _save(out, name, dist.rank, model, history)
        model, train, val, config = build("plain")
        try:
            run("plain", model, train, val, config, out / "stopped", dist,
                callbacks=[StopAfterEpoch1()])
        except Stop:
            pass
        if dist.is_main:  # kept as it stopped, for the test to resume in one process
            shutil.copytree(out / "stopped", out / "resume")
        dist.barrier()
        model, train, val, config = build("plain")  # a fresh process would start like this
        history = run("plain", model, train, val, config, out / "resume", dist, resume=True)
        _save(out, "resume", dist.rank, model, history)
        (out / f"saves-rank{dist.rank}.json").write_text(json.dumps(saves))
        (out / f"threads-rank{dist.rank}.json").write_text(json.dumps(torch.get_num_threads()))
    finally:
        dist.close()


if __name__ == "__main__":
    main()
