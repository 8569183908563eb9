"""``robustact train``: options → :class:`~robustact.train.TrainConfig` →
:func:`robustact.runs.train.train_classifier`.

Started by ``torchrun`` (or ``srun``) as several processes, the same command trains with DDP:
:func:`_distributed` finds the process's place from the environment and joins the group.
"""

from __future__ import annotations

import logging
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from robustact.cli.common import (
    EXIT_USER_ERROR,
    NO_RUNTIME,
    Runtime,
    app,
    command_line,
    numbers,
    runtime_options,
)
from robustact.core.budget import parse_budget
from robustact.core.spec import parse_params
from robustact.runs.train import train_classifier
from robustact.train import DistEnv, DistributedAbort, TrainConfig
from robustact.train.adversarial import adversarial_spec
from robustact.train.certified import certified_spec


class Loss(str, Enum):
    ce = "ce"
    differential = "differential"


class Adv(str, Enum):
    pgd = "pgd"
    fast = "fast"
    mix = "mix"
    trades = "trades"
    ibp = "ibp"
    crown_ibp = "crown-ibp"


def _adv_spec(adv: Adv | None, eps: str | None, steps: int | None, fraction: float | None,
              alpha: str | None, beta: float | None, schedule: str | None = None
              ) -> dict[str, Any] | None:
    """The adversarial or certified training spec of ``train``'s ``--adv*`` options (None
    without --adv)."""
    if adv is None:
        if any(v is not None for v in (eps, steps, fraction, alpha, beta, schedule)):
            raise ValueError("--adv-eps/--adv-steps/--adv-fraction/--adv-alpha/--trades-beta/"
                             "--cert-schedule need --adv")
        return None
    if adv in (Adv.ibp, Adv.crown_ibp):
        if eps is None:
            raise ValueError(f"--adv {adv.value} needs --adv-eps (the budget to certify)")
        if any(v is not None for v in (steps, fraction, alpha, beta)):
            raise ValueError(f"--adv {adv.value} takes --adv-eps and --cert-schedule only")
        sched = parse_params([p for p in (schedule or "").split(",") if p], "--cert-schedule")
        if "eps_train" in sched:
            sched["eps_train"] = parse_budget(sched["eps_train"], "linf", name="eps_train")
        try:
            return certified_spec(adv.value, parse_budget(eps, "linf", name="--adv-eps"),
                                  **sched)
        except TypeError as e:  # a key certified_spec does not take
            raise ValueError(f"--cert-schedule: {e}; keys: eps_train, warmup, ramp, "
                             "kappa_end") from None
    if schedule is not None:
        raise ValueError("--cert-schedule goes with --adv ibp or crown-ibp")
    if eps is None:
        raise ValueError(f"--adv {adv.value} needs --adv-eps (e.g. 0.3 for MNIST, 8/255 for "
                         "CIFAR)")
    return adversarial_spec(
        adv.value, parse_budget(eps, "linf", name="--adv-eps"), steps=steps, fraction=fraction,
        alpha=None if alpha is None else parse_budget(alpha, name="--adv-alpha"), beta=beta)


def _distributed(ctx: typer.Context, device: str) -> DistEnv | None:
    """This process's place in a DDP run when torchrun or srun started several (else None),
    with the process group joined.

    Threads: ``--threads``, else ``OMP_NUM_THREADS`` (torchrun sets 1 unless it is set), else
    the node's cores shared among its processes; this replaces the one-process default the
    runtime options set, which would give every process of the node the same cores. Ranks
    other than 0 log errors only (rank 0 speaks for the run).
    """
    dist = DistEnv.from_env(device)
    if dist is None:
        return None
    torch.set_num_threads(dist.threads(ctx.params.get("threads")))
    if not dist.is_main:
        logging.getLogger("robustact").setLevel(logging.ERROR)
    dist.init()
    return dist


# Long by design: typer declares every option as a parameter; the body builds the config and calls
# train_classifier.
@app.command()
@runtime_options
def train(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="Architecture name (robustact.models).")] = "lenet5",
    dataset: Annotated[str, typer.Option(help="mnist | cifar10 | cifar100 | digits")] = "mnist",
    out: Annotated[Path, typer.Option(help="Run folder (checkpoints, results.json).")] = Path(
        "runs/train"),
    activation: Annotated[str, typer.Option(
        help="Activation spec, e.g. relu, splash:S=7, jumprelu:kappa=0.5, prelu.")] = "relu",
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 0.05,
    optimizer: Annotated[str, typer.Option(help="sgd | adam")] = "sgd",
    schedule: Annotated[str, typer.Option(help="step | cosine | constant")] = "cosine",
    milestones: Annotated[str, typer.Option(help="Step-schedule epochs, e.g. 30,60,80")] = "",
    gamma: float = 0.1,
    weight_decay: float = 5e-4,
    augment: Annotated[str, typer.Option(help="none | cifar (crop+flip)")] = "none",
    seed: int = 1,
    val_fraction: float = 0.1,
    loss: Annotated[Loss, typer.Option(help="ce | differential (binary, pairwise)")] = Loss.ce,
    classes: Annotated[str | None, typer.Option(
        help="Two classes for a binary task, e.g. cat,dog (default cat,dog with "
             "--loss differential).")] = None,
    output_activation: Annotated[str | None, typer.Option(
        help="Bounded activation on the logits: sigmoid | tanh | softsign | arctan.")] = None,
    temperature: Annotated[float, typer.Option(help="T in softmax(f(T*z)).")] = 1.0,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/train/last.")] = False,
    force: Annotated[bool, typer.Option(
        help="Replace a model already in OUT, and train even at a temperature known not to "
             "learn.")] = False,
    progress: bool = True,
    adv: Annotated[Adv | None, typer.Option(
        help="Adversarial training: pgd (Madry) | fast (FGSM, random start) | mix (FGSM on a "
             "fraction of each batch) | trades; certified: ibp | crown-ibp.")] = None,
    adv_eps: Annotated[str | None, typer.Option(help="L-inf budget, e.g. 0.3 or 8/255.")] = None,
    adv_steps: Annotated[int | None, typer.Option(help="PGD steps (pgd, trades; 10).")] = None,
    adv_fraction: Annotated[float | None, typer.Option(
        help="Adversarial share of each batch, in (0, 1] (mix; 0.3).")] = None,
    adv_alpha: Annotated[str | None, typer.Option(
        help="Step size (pgd, trades: 2.5*eps/steps; fast: 1.25*eps).")] = None,
    trades_beta: Annotated[float | None, typer.Option(help="TRADES beta (6).")] = None,
    cert_schedule: Annotated[str | None, typer.Option(help=(
        "ibp/crown-ibp: eps_train=E,warmup=EPOCHS,ramp=EPOCHS,kappa_end=K (defaults: the "
        "eps, 1, 20, 0.5)"))] = None,
    ema: Annotated[float | None, typer.Option(
        help="Average the weights over steps (EMA decay in (0, 1), e.g. 0.999); the average "
             "is validated, saved and tested.")] = None,
    rt: Runtime = NO_RUNTIME,
) -> None:
    """Train a model and save OUT/final (safetensors + JSON card) with its test accuracy.

    Output activation: train at T = 1, raise T with `defend`. --adv (adversarial or certified:
    ibp, crown-ibp) is recorded in the card; --resume takes it from the run. Under torchrun
    the processes train one model (DDP; --batch-size is global; docs/training.md)."""
    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, schedule=schedule,
        milestones=tuple(numbers(milestones, int, "--milestones")), gamma=gamma,
        weight_decay=weight_decay, augment=augment, seed=seed, device=rt.device,
        adv=_adv_spec(adv, adv_eps, adv_steps, adv_fraction, adv_alpha, trades_beta,
                      cert_schedule), ema=ema)
    cls = tuple(c.strip() for c in classes.split(",")) if classes else None
    if cls is not None and len(cls) != 2:
        raise ValueError(f"--classes needs exactly two classes, got {classes!r}")
    dist = _distributed(ctx, rt.device)
    try:
        outcome = train_classifier(
            model, dataset, out_dir=out, config=config, activation=activation,
            data_root=rt.data_root, val_fraction=val_fraction, classes=cls,  # type: ignore[arg-type]
            loss=loss.value, output_activation=output_activation, temperature=temperature,
            resume=resume, progress=progress, download=rt.download, force=force,
            command=command_line(ctx), dist=dist)
    except DistributedAbort:  # rank 0 has printed why
        raise typer.Exit(code=EXIT_USER_ERROR) from None
    finally:
        if dist is not None:
            dist.close()
    if dist is not None and not dist.is_main:
        return
    typer.echo(f"test accuracy {outcome.test_accuracy:.2%} after {len(outcome.history)} epochs "
               f"({outcome.seconds:.0f}s); model saved to {outcome.checkpoint}")
