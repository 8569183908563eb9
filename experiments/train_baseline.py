"""Benchmark: train a baseline model with the robustact trainer; report test accuracy.

One script, a table of presets (one row per baseline), so the two baselines cannot drift apart:

``mnist-lenet5``
    LeNet-5 on real MNIST. Target: >= 99.0 % test accuracy with a short schedule that fits in
    minutes on a 2-core CPU (SGD, momentum 0.9, lr 0.05, cosine, 10 epochs, batch 128, random
    shifts of up to 2 pixels).
``cifar-resnet20``
    ResNet-20 on CIFAR-10. On a GPU the default is the JumpReLU paper's schedule (papers.md §1):
    120 epochs, SGD momentum 0.9, weight decay 5e-4, batch 128, lr 0.1 ×0.1 at epochs 30/60/90,
    random crop 32 (pad 4) + flip. On a CPU that takes days, so the default there is a short
    cosine schedule (2 epochs, optionally on a stratified ``--subset`` of the training images),
    labelled ``"schedule": "short-cpu"`` so nobody mistakes it for the paper's number.

No model selection on the test set: a run trains for a fixed number of epochs and the test set
is evaluated once, at the end.

``--adv fast|pgd|mix|trades --adv-eps 8/255`` trains the same baseline with an adversarial
recipe (:mod:`robustact.train.adversarial`) instead; the schedule label gains the recipe (e.g.
``short-cpu+fast-AT``), the results and checkpoint go to ``<stem>_<recipe>_at`` names unless
``--out``/``--ckpt-dir`` say otherwise, and the test images are also attacked with PGD-20
(step ε/4, random start) at the training ε.

    python experiments/train_baseline.py mnist-lenet5 [--data-root DIR] [--epochs 10]
    python experiments/train_baseline.py cifar-resnet20 [--epochs N] [--subset N] [--resume]
    python experiments/train_baseline.py cifar-resnet20 --adv fast --adv-eps 8/255 --subset 10000

Writes the preset's results file (atomically; ``results/mnist_lenet5.json``,
``results/cifar_resnet20.json``) with the config, environment, command line, per-epoch history,
wall time and test accuracy; the checkpoint goes to ``--ckpt-dir`` (default: ``runs/`` and the
results file's stem, e.g. ``runs/mnist_lenet5``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import harness as H

from robustact.attacks import PGD
from robustact.core.spec import parse_number
from robustact.core.storage import atomic_write_json, environment_info
from robustact.data import train_val_split
from robustact.models import create_model
from robustact.train import TrainConfig, Trainer, jumprelu_resnet_config
from robustact.train.adversarial import ADV_RECIPES, adversarial_spec, adversarial_train

SCRIPT = "train_baseline"


def lenet5_schedule(a: argparse.Namespace, epochs: int, cuda: bool) -> tuple[str, TrainConfig]:
    """SGD with momentum, cosine, random shifts: >= 99 % in minutes on a CPU."""
    return "short", TrainConfig(
        epochs=epochs, batch_size=128, optimizer="sgd", lr=a.lr, schedule="cosine",
        seed=a.seed, device=a.device, momentum=0.9, weight_decay=5e-4, augment="shift")


def resnet20_schedule(a: argparse.Namespace, epochs: int, cuda: bool
                      ) -> tuple[str, TrainConfig]:
    """The paper's schedule when the full run is asked for, else a labelled short cosine one."""
    if epochs == PRESETS["cifar-resnet20"].epochs_gpu and a.subset is None:
        return "paper", jumprelu_resnet_config(seed=a.seed, device=a.device)
    return ("short" if cuda else "short-cpu"), TrainConfig(
        epochs=epochs, lr=0.1, schedule="cosine", augment="cifar", seed=a.seed, device=a.device)


@dataclass(frozen=True)
class Preset:
    """One baseline: what it trains on, and the schedule it trains with by default."""

    title: str
    arch: str
    dataset: str
    out: str
    epochs_cpu: int
    epochs_gpu: int
    #: (args, epochs, on CUDA) -> (the schedule's label for the results, the training config)
    schedule: Callable[[argparse.Namespace, int, bool], tuple[str, TrainConfig]]
    target: float | None = None  # test accuracy the run is expected to reach, if any


PRESETS = {
    "mnist-lenet5": Preset("LeNet-5 / MNIST", "lenet5", "mnist", "results/mnist_lenet5.json",
                           epochs_cpu=10, epochs_gpu=10, schedule=lenet5_schedule, target=0.99),
    "cifar-resnet20": Preset("ResNet-20 / CIFAR-10", "resnet20", "cifar10",
                             "results/cifar_resnet20.json", epochs_cpu=2, epochs_gpu=120,
                             schedule=resnet20_schedule),
}


def parse_args(argv: list[str] | None) -> tuple[Preset, argparse.Namespace]:
    """The preset named first on the command line, then the options every training script has
    (its results file and checkpoint folder default to the preset's)."""
    args = sys.argv[1:] if argv is None else argv
    name = next((t for t in args if t in PRESETS), "mnist-lenet5")  # its defaults come first
    preset = PRESETS[name]
    p = H.training_parser(__doc__.splitlines()[0], ckpt_dir=f"runs/{Path(preset.out).stem}",
                          out=preset.out)
    p.add_argument("preset", nargs="?", default=name, choices=sorted(PRESETS),
                   help="which baseline to train (default: mnist-lenet5)")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"default: {preset.epochs_gpu} on CUDA, {preset.epochs_cpu} on CPU")
    p.add_argument("--lr", type=float, default=0.05, help="learning rate (mnist-lenet5)")
    p.add_argument("--subset", type=int, default=None,
                   help="train on a stratified subset of this many images (quick CPU checks)")
    p.add_argument("--test-subset", type=int, default=None,
                   help="evaluate on the first N test images only (quick CPU checks)")
    p.add_argument("--resume", action="store_true", help="continue from --ckpt-dir/last")
    p.add_argument("--adv", choices=list(ADV_RECIPES), default=None,
                   help="adversarial training recipe (default: plain training)")
    p.add_argument("--adv-eps", default=None, help="its L-inf budget, e.g. 0.3 or 8/255")
    p.add_argument("--adv-steps", type=int, default=None, help="PGD/TRADES steps")
    a = H.parse_training_args(p, argv, f"{SCRIPT}_{name}")
    if a.adv is None and (a.adv_eps is not None or a.adv_steps is not None):
        p.error("--adv-eps and --adv-steps need --adv")
    if a.adv is not None:
        if a.adv_eps is None:
            p.error("--adv needs --adv-eps, e.g. 0.3 or 8/255")
        try:
            a.adv_spec = adversarial_spec(a.adv, parse_number(a.adv_eps, "--adv-eps"),
                                          steps=a.adv_steps)
        except ValueError as e:
            p.error(str(e))
        stem = f"{Path(preset.out).stem}_{a.adv}_at"
        if a.out == Path(preset.out):  # never overwrite the plain baseline's figures
            a.out = Path(preset.out).with_name(f"{stem}.json")
        if a.ckpt_dir == p.get_default("ckpt_dir"):
            a.ckpt_dir = Path("runs") / stem
    if a.quick:  # one epoch on 256 stand-in images; the checkpoint stays out of the real one's way
        a.epochs, a.subset = 1, min(a.subset or 256, 256)
        a.test_subset = min(a.test_subset or 128, 128)
        if a.ckpt_dir == p.get_default("ckpt_dir"):
            a.ckpt_dir = Path("runs/quick") / f"{SCRIPT}_{name}"
    return preset, a


def main(argv: list[str] | None = None) -> dict:
    preset, a = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cuda = a.device.startswith("cuda") or (a.device == "auto" and torch.cuda.is_available())
    epochs = a.epochs if a.epochs is not None else (preset.epochs_gpu if cuda
                                                    else preset.epochs_cpu)
    schedule, config = preset.schedule(a, epochs, cuda)
    if a.adv is not None:
        schedule, config = f"{schedule}+{a.adv}-AT", replace(config, adv=a.adv_spec)

    train = H.load_data(preset.dataset, "train", a.data_root, quick=a.quick)
    test = H.load_data(preset.dataset, "test", a.data_root, quick=a.quick)
    val = None
    if a.val_size > 0:
        train, val = train_val_split(train, val_size=a.val_size, seed=a.seed)
    if a.subset is not None:  # the "validation" part of a split is a seeded stratified sample
        _, train = train_val_split(train, val_size=a.subset, seed=a.seed)
    if a.test_subset is not None:
        test = test.subset(torch.arange(min(a.test_subset, len(test))))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(a.seed)  # the initial weights are part of the experiment
        model = create_model(preset.arch, dataset=preset.dataset, activation="relu")
    t0 = time.perf_counter()
    if a.adv is None:
        trainer = Trainer(model, train, val, config, out_dir=a.ckpt_dir,
                          progress=not a.no_progress)
        history = trainer.fit(resume=a.resume)
    else:
        history, trainer = adversarial_train(model, train, val, config, out_dir=a.ckpt_dir,
                                             resume=a.resume, progress=not a.no_progress)
    train_seconds = time.perf_counter() - t0
    test_metrics = trainer.evaluate(test)
    result = {
        "benchmark": f"{SCRIPT} {a.preset}",
        "schedule": schedule,
        "command": " ".join(H.command_line()),
        "quick": a.quick,
        "model": model.robustact_config,
        "train_config": config.to_dict(),
        "data": {"root": H.data_source(a.data_root, quick=a.quick), "n_train": len(train),
                 "n_val": len(val) if val else 0, "n_test": len(test), "subset": a.subset,
                 "test_subset": a.test_subset},
        "epochs": epochs,
        "device": str(trainer.device),
        "train_wall_seconds": round(train_seconds, 1),
        "resumed": a.resume,
        "test_accuracy": test_metrics["acc"],
        "test_loss": test_metrics["loss"],
        "checkpoint": str(a.ckpt_dir / "last"),
        "history": history,
        "environment": environment_info(),
    }
    if a.adv is not None:
        eps = config.adv["eps"]
        model.eval()
        pgd = H.attack_metrics(PGD(eps, eps / 4, 20, random_start=True), model, test.x(),
                               test.y())
        result["adv"] = config.adv
        result["pgd20"] = {"eps": eps, "alpha": eps / 4, "robust_accuracy": pgd["accuracy"]}
        print(f"PGD-20 at eps {eps:.4g}: robust accuracy {100 * pgd['accuracy']:.2f} %")
    if preset.target is not None and a.adv is None:
        result.update(target_accuracy=preset.target,
                      target_met=test_metrics["acc"] >= preset.target)
    atomic_write_json(a.out, result)
    print(f"{preset.title} ({schedule}): test accuracy {100 * test_metrics['acc']:.2f} % "
          f"after {epochs} epochs, {train_seconds:.0f} s training wall time -> {a.out}")
    return result


if __name__ == "__main__":
    H.run_script(main)
