"""``robustact`` command line: each command parses arguments, calls one library function, prints.

The work lives in :mod:`robustact.workflows`, :mod:`robustact.demo` and the packages they call;
nothing here is needed to use robustact from Python.
"""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="robustact: activation- and loss-based adversarial defenses, evaluated honestly.",
)

DataRoot = Annotated[
    Path | None,
    typer.Option("--data-root", envvar="ROBUSTACT_DATA",
                 help="Folder with MNIST/raw, cifar-10-batches-py, cifar-100-python "
                      "(default: $ROBUSTACT_DATA, else ~/.cache/robustact/data)."),
]
Threads = Annotated[
    int | None,
    typer.Option(min=1, help="torch CPU threads (default: the free cores, i.e. min(4, cores "
                             "- 1-minute load average), at least 1)."),
]
Device = Annotated[
    str, typer.Option(help="auto | cpu | cuda | cuda:i (auto: CUDA when available).")]


def _default_threads() -> int:
    """Threads for a command when ``--threads`` is not given: min(4, free cores), at least 1.

    Why: torch's default, one thread per core, oversubscribes the machine as soon as anything
    else runs, and its workers then wait on each other (benchmarks/bench_threads.py: LeNet-5 on
    2 busy cores, 2 threads per batch took 7x the time of 1; see results/README.md). Free cores
    are the cores this process may use minus the 1-minute load average; 4 caps the pool where
    small models stop gaining. Pass --threads to choose.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    try:
        busy = round(os.getloadavg()[0])
    except (AttributeError, OSError):  # no load average (Windows)
        busy = 0
    return max(1, min(4, cores - busy))


def _set_threads(threads: int | None) -> None:
    """Set torch's CPU threads for this CLI process (the CLI's job, never the library's)."""
    import torch

    torch.set_num_threads(threads if threads is not None else _default_threads())


def _version(value: bool) -> None:
    if value:
        from robustact import __version__

        typer.echo(f"robustact {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="Print the robustact version and exit.")] = False) -> None:
    """robustact: activation- and loss-based adversarial defenses, evaluated honestly."""


class Loss(str, Enum):
    ce = "ce"
    differential = "differential"


def _echo_json(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.command()
def train(
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
    device: Device = "auto",
    threads: Threads = None,
    val_fraction: float = 0.1,
    loss: Annotated[Loss, typer.Option(help="ce | differential (binary, pairwise)")] = Loss.ce,
    classes: Annotated[str | None, typer.Option(
        help="Two classes for a binary task, e.g. cat,dog (default cat,dog with "
             "--loss differential).")] = None,
    output_activation: Annotated[str | None, typer.Option(
        help="Bounded activation on the logits: sigmoid | tanh | softsign | arctan.")] = None,
    temperature: Annotated[float, typer.Option(help="T in softmax(f(T*z)).")] = 1.0,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/train/last.")] = False,
    data_root: DataRoot = None,
    progress: bool = True,
) -> None:
    """Train a model and save OUT/final (safetensors + JSON card) with its test accuracy."""
    from robustact.train import TrainConfig
    from robustact.workflows import train_classifier

    _set_threads(threads)
    try:
        config = TrainConfig(
            epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, schedule=schedule,
            milestones=tuple(int(m) for m in milestones.split(",") if m.strip()), gamma=gamma,
            weight_decay=weight_decay, augment=augment, seed=seed, device=device)
        cls = tuple(c.strip() for c in classes.split(",")) if classes else None
        if cls is not None and len(cls) != 2:
            raise ValueError(f"--classes needs exactly two classes, got {classes!r}")
        outcome = train_classifier(
            model, dataset, out_dir=out, config=config, activation=activation,
            data_root=data_root, val_fraction=val_fraction, classes=cls,  # type: ignore[arg-type]
            loss=loss.value, output_activation=output_activation, temperature=temperature,
            resume=resume, progress=progress)
    except (ValueError, FileNotFoundError, TypeError) as e:
        _fail(e)
        return
    typer.echo(f"test accuracy {outcome.test_accuracy:.2%} after {len(outcome.history)} epochs "
               f"({outcome.seconds:.0f}s); model saved to {outcome.checkpoint}")


@app.command("eval")
def eval_(
    model: Annotated[Path, typer.Option("--model", help="Checkpoint folder (…/final).")],
    dataset: Annotated[str | None, typer.Option(help="Defaults to the card's.")] = None,
    split: str = "test",
    limit: Annotated[int | None, typer.Option(help="First N examples only.")] = None,
    data_root: DataRoot = None,
    device: Device = "auto",
    threads: Threads = None,
) -> None:
    """Clean accuracy of a saved model."""
    from robustact.workflows import evaluate_checkpoint

    _set_threads(threads)
    try:
        _echo_json(evaluate_checkpoint(model, dataset=dataset, split=split, data_root=data_root,
                                       limit=limit, device=device))
    except (ValueError, FileNotFoundError) as e:
        _fail(e)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where the report and checkpoint go.")] = Path(
        "runs/demo"),
    epochs: int = 30,
    seed: int = 0,
    progress: bool = True,
    device: Annotated[str, typer.Option(
        help="auto | cpu | cuda | cuda:i (default cpu: the demo's models are tiny, and only "
             "the CPU reruns bit for bit).")] = "cpu",
    threads: Annotated[int, typer.Option(
        min=1, help="torch CPU threads (default 1: fastest for these tiny models).")] = 1,
) -> None:
    """Offline end-to-end demo on scikit-learn's digits: train, defend, attack, report."""
    from robustact.demo import run_demo

    try:
        summary = run_demo(out, epochs=epochs, seed=seed, progress=progress, threads=threads,
                           device=device)
    except ValueError as e:
        _fail(e)
        return
    typer.echo(f"report: {summary['report']}")
    typer.echo(f"clean test accuracy: {summary['clean_accuracy']:.2%}")


@app.command()
def retrofit(
    model: Annotated[Path, typer.Option("--model", help="Checkpoint of a trained ReLU model.")],
    jump: Annotated[float, typer.Option("--jump", help="JumpReLU threshold κ.")],
    out: Annotated[Path, typer.Option(help="Where to save the retrofitted checkpoint.")],
    data_root: DataRoot = None,
    device: Device = "auto",
    threads: Threads = None,
) -> None:
    """Swap every ReLU of a saved model for JumpReLU(κ), without retraining."""
    from robustact.workflows import retrofit_checkpoint

    _set_threads(threads)
    try:
        _echo_json(retrofit_checkpoint(model, jump, out, data_root=data_root, device=device))
    except (ValueError, FileNotFoundError) as e:
        _fail(e)


@app.command("tune-jump")
def tune_jump(
    model: Annotated[Path, typer.Option("--model", help="Checkpoint of a trained ReLU model.")],
    max_drop: Annotated[float, typer.Option(
        "--max-drop", help="Largest clean validation-accuracy drop allowed, in points.")] = 0.5,
    grid: Annotated[str | None, typer.Option(
        help="κ values, e.g. 0,0.5,1,1.5 (default: the paper's grid for the model).")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Also save the model retrofitted with the chosen κ here.")] = None,
    data_root: DataRoot = None,
    progress: bool = True,
    device: Device = "auto",
    threads: Threads = None,
) -> None:
    """Choose κ on the validation split: the largest κ within --max-drop of the ReLU accuracy."""
    from robustact.workflows import tune_jump_checkpoint

    _set_threads(threads)
    try:
        values = [float(v) for v in grid.split(",")] if grid else None
        _echo_json(tune_jump_checkpoint(model, max_drop, grid=values, out=out,
                                        data_root=data_root, progress=progress, device=device))
    except (ValueError, FileNotFoundError) as e:
        _fail(e)


@app.command()
def attack(
    model: Annotated[Path, typer.Option("--model", help="Checkpoint to attack.")],
    attack: Annotated[str, typer.Option(
        "--attack", help="fgsm | bim | ifgsm | pgd | mim | apgd | deepfool | cw | "
                         "trust_region | square")] = "pgd",
    eps: Annotated[float | None, typer.Option(help="Budget (fixed-budget attacks).")] = None,
    norm: Annotated[str | None, typer.Option(help="linf | l2")] = None,
    steps: int | None = None,
    alpha: Annotated[float | None, typer.Option(help="Step size.")] = None,
    restarts: int | None = None,
    loss: Annotated[str | None, typer.Option(help="ce | margin | dlr")] = None,
    logits_from: Annotated[str | None, typer.Option(
        help="Compute the loss on this submodule's output (e.g. base).")] = None,
    bpda: Annotated[bool, typer.Option(
        help="Backward through substitutes: JumpReLU→ReLU, output activation→identity.")] = False,
    param: Annotated[list[str] | None, typer.Option(
        "--param", help="Any other attack parameter as KEY=VALUE (repeatable), e.g. "
                        "early_stop=false, refine=0, n_queries=1000.")] = None,
    n: Annotated[int, typer.Option(help="Attack the first N examples.")] = 500,
    split: str = "test",
    batch_size: int = 250,
    out: Annotated[Path, typer.Option(help="Folder for adversarial.safetensors + summary.json")] = (
        Path("runs/attack")),
    data_root: DataRoot = None,
    progress: bool = True,
    device: Device = "auto",
    threads: Threads = None,
) -> None:
    """Attack a saved model; writes the adversarial examples and a JSON summary."""
    from robustact.workflows import attack_checkpoint

    _set_threads(threads)
    params = {"eps": eps, "norm": norm, "steps": steps, "alpha": alpha, "restarts": restarts,
              "loss": loss, "logits_from": logits_from}
    params = {k: v for k, v in params.items() if v is not None}
    try:
        params.update(_parse_params(param or []))
        summary = attack_checkpoint(model, attack, params, out=out, split=split, n=n,
                                    batch_size=batch_size, bpda=bpda, data_root=data_root,
                                    progress=progress, device=device)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
        return
    summary.pop("environment", None)
    _echo_json(summary)


def _parse_params(items: list[str]) -> dict[str, Any]:
    """``["steps=40", "early_stop=false"]`` → ``{"steps": 40, "early_stop": False}``.

    Values are read as bool (true/false), int, float, then string; the attack itself checks
    names and types, so a typo fails with the list of parameters it accepts.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"--param expects KEY=VALUE, got {item!r}")
        value: Any = raw.strip()
        if value.lower() in ("true", "false"):
            value = value.lower() == "true"
        else:
            for kind in (int, float):
                try:
                    value = kind(value)
                    break
                except ValueError:
                    continue
        out[key] = value
    return out


def main() -> None:
    app()


if __name__ == "__main__":
    main()
