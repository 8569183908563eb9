"""``robustact`` command line: each command parses arguments, calls one library function, prints.

The work lives in :mod:`robustact.workflows`, :mod:`robustact.demo` and the packages they call;
nothing here is needed to use robustact from Python.

Errors take one path for every command (:class:`_App`): a user error (bad argument, bad or missing
file) prints ``error: <message>`` to stderr and exits with code 2; anything else is a bug and
prints one line with the exception type and exits with code 1. ``--debug`` (before the command:
``robustact --debug train ...``) prints the full traceback first.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import sys
import traceback
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import torch
import typer
from typer.core import TyperCommand, TyperGroup

from robustact import __version__
from robustact.attacks.registry import available_attacks
from robustact.core.spec import parse_number, parse_params
from robustact.demo import run_demo
from robustact.report.leaderboard import write_leaderboard
from robustact.train import TrainConfig
from robustact.train.adversarial import adversarial_spec
from robustact.workflows import (
    attack_checkpoint,
    defend_checkpoint,
    evaluate_checkpoint,
    evaluate_model,
    load_evaluation_target,
    retrofit_checkpoint,
    train_classifier,
    tune_jump_checkpoint,
)

#: Exceptions that mean "the input was wrong" rather than "robustact has a bug". ValueError covers
#: CheckpointError, DataFormatError, TrainingDivergedError; OSError covers missing or unreadable
#: files (DatasetNotFoundError, DownloadError).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)
EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
_DEBUG_KEY = "robustact.debug"
_ARGV_KEY = "robustact.argv"
# Typer has vendored click since 0.20 and used the click package before; its BadParameter
# derives from click's ClickException in both, so take that base class from it.
_ClickException: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _report(e: Exception, command_path: str) -> NoReturn:
    """Print ``e`` as one ``error:`` line (plus any hint lines a user error carries) and exit."""
    if isinstance(e, _ClickException):  # usage: unknown option, bad value, missing option
        where = getattr(getattr(e, "ctx", None), "command_path", None) or command_path
        typer.secho(f"error: {e.format_message()} (see '{where} --help')",  # type: ignore[attr-defined]
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(code=getattr(e, "exit_code", EXIT_USER_ERROR))
    if isinstance(e, USER_ERRORS):
        # Library messages are written for users; the few multi-line ones (a missing dataset)
        # are one error line followed by indented "fix:" lines.
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=EXIT_USER_ERROR)
    first = (str(e).strip().splitlines() or [""])[0]
    typer.secho(f"error: internal error {type(e).__name__}: {first} (run 'robustact --debug ...' "
                "for the traceback, and please report it)", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=EXIT_INTERNAL_ERROR)


class _App(TyperGroup):
    """The command group; every command's errors pass through :meth:`invoke`.

    Why here and not in ``main()``: tests (and anyone embedding the app) call the app object
    directly, so the error path must be part of it. Why catch ``EOFError`` and friends: left
    alone, typer turns an ``EOFError`` from deep inside a loader into a bare "Aborted.".
    """

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None,
                     **extra: Any) -> Any:
        if not args:  # no arguments shows the help (no_args_is_help), as usual
            return super().make_context(info_name, args, parent=parent, **extra)
        argv = list(args)  # parsing consumes the list; results files record the command line
        try:
            ctx = super().make_context(info_name, args, parent=parent, **extra)
        except _ClickException as e:  # e.g. an unknown command or global option
            _report(e, info_name or "robustact")
        ctx.meta[_ARGV_KEY] = argv
        return ctx

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort):
            raise
        except Exception as e:
            if isinstance(e, OSError) and e.errno == errno.EPIPE:
                raise  # output piped into `head`: typer exits quietly
            if ctx.meta.get(_DEBUG_KEY) and not isinstance(e, _ClickException):
                # Printed here rather than re-raised: typer would turn an EOFError into a bare
                # "Aborted!", and the exit code stays the same with and without --debug.
                traceback.print_exception(e, file=sys.stderr)
            _report(e, ctx.command_path)


class _AttackListHelp(TyperCommand):
    """Fills ``{attacks}`` in option help from the attack registry, only when help is shown.

    Why lazily: the registry imports torch (seconds), which ``--help`` should not wait for.
    """

    def format_help(self, ctx: Any, formatter: Any) -> None:
        names = " | ".join(available_attacks())
        for p in self.params:
            if getattr(p, "help", None) and "{attacks}" in p.help:  # type: ignore[attr-defined]
                p.help = p.help.replace("{attacks}", names)  # type: ignore[attr-defined]
        super().format_help(ctx, formatter)


app = typer.Typer(
    cls=_App,
    add_completion=False,
    no_args_is_help=True,
    # Plain click help: rich's table cuts option names (``--output-activati…``) at 80 columns,
    # which is what a pipe or a CI log gets; the plain layout wraps help text instead.
    rich_markup_mode=None,
    pretty_exceptions_enable=False,  # a traceback, if any, is Python's own
    help="robustact: activation- and loss-based adversarial defenses, evaluated honestly.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"robustact {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option(
        "--debug", help="On an error, print the full traceback too.")] = False,
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="Print the robustact version and exit.")] = False,
) -> None:
    """robustact: activation- and loss-based adversarial defenses, evaluated honestly."""
    ctx.meta[_DEBUG_KEY] = debug


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
    torch.set_num_threads(threads if threads is not None else _default_threads())


#: ``--force`` of the commands that write a checkpoint: the one way to replace one in OUT.
ForceCheckpoint = Annotated[bool, typer.Option(help="Replace a checkpoint already in OUT.")]
Download = Annotated[
    bool,
    typer.Option("--download", help="Fetch missing dataset files into the data root "
                                    "(checksummed; MNIST and CIFAR)."),
]


class Loss(str, Enum):
    ce = "ce"
    differential = "differential"


class Adv(str, Enum):
    pgd = "pgd"
    fast = "fast"
    mix = "mix"
    trades = "trades"


def _adv_spec(adv: Adv | None, eps: str | None, steps: int | None, fraction: float | None,
              alpha: str | None, beta: float | None) -> dict[str, Any] | None:
    """The adversarial-training spec of ``train``'s ``--adv*`` options (None without --adv)."""
    if adv is None:
        if any(v is not None for v in (eps, steps, fraction, alpha, beta)):
            raise ValueError("--adv-eps/--adv-steps/--adv-fraction/--adv-alpha/--trades-beta "
                             "need --adv pgd|fast|mix|trades")
        return None
    if eps is None:
        raise ValueError(f"--adv {adv.value} needs --adv-eps (e.g. 0.3 for MNIST, 8/255 for "
                         "CIFAR)")
    return adversarial_spec(
        adv.value, parse_number(eps, "--adv-eps"), steps=steps, fraction=fraction,
        alpha=None if alpha is None else parse_number(alpha, "--adv-alpha"), beta=beta)


def _echo_json(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _numbers(text: str, kind: type, option: str) -> list[Any]:
    """``"30,60"`` → ``[30, 60]``; a malformed list is a user error naming the option."""
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{option} expects comma-separated {kind.__name__} values, "
                         f"got {text!r}") from None


# Long by design: typer declares every option as a parameter; the body builds the config and calls
# train_classifier.
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
    force: Annotated[bool, typer.Option(
        help="Replace a model already in OUT, and train even at a temperature known not to "
             "learn.")] = False,
    data_root: DataRoot = None,
    download: Download = False,
    progress: bool = True,
    adv: Annotated[Adv | None, typer.Option(
        help="Adversarial training: pgd (Madry) | fast (FGSM, random start) | mix (FGSM on a "
             "fraction of each batch) | trades.")] = None,
    adv_eps: Annotated[str | None, typer.Option(help="L-inf budget, e.g. 0.3 or 8/255.")] = None,
    adv_steps: Annotated[int | None, typer.Option(help="PGD steps (pgd, trades; 10).")] = None,
    adv_fraction: Annotated[float | None, typer.Option(
        help="Adversarial share of each batch, in (0, 1] (mix; 0.3).")] = None,
    adv_alpha: Annotated[str | None, typer.Option(
        help="Step size (pgd, trades: 2.5*eps/steps; fast: 1.25*eps).")] = None,
    trades_beta: Annotated[float | None, typer.Option(help="TRADES beta (6).")] = None,
    ema: Annotated[float | None, typer.Option(
        help="Average the weights over steps (EMA decay in (0, 1), e.g. 0.999); the average "
             "is validated, saved and tested.")] = None,
) -> None:
    """Train a model and save OUT/final (safetensors + JSON card) with its test accuracy.

    For the output-activation defense train at T = 1 and raise T afterwards with `defend`.
    With --adv the card records the recipe and its parameters; --resume without --adv (or
    --ema) takes them from the interrupted run.
    """
    _set_threads(threads)
    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, schedule=schedule,
        milestones=tuple(_numbers(milestones, int, "--milestones")), gamma=gamma,
        weight_decay=weight_decay, augment=augment, seed=seed, device=device,
        adv=_adv_spec(adv, adv_eps, adv_steps, adv_fraction, adv_alpha, trades_beta), ema=ema)
    cls = tuple(c.strip() for c in classes.split(",")) if classes else None
    if cls is not None and len(cls) != 2:
        raise ValueError(f"--classes needs exactly two classes, got {classes!r}")
    outcome = train_classifier(
        model, dataset, out_dir=out, config=config, activation=activation,
        data_root=data_root, val_fraction=val_fraction, classes=cls,  # type: ignore[arg-type]
        loss=loss.value, output_activation=output_activation, temperature=temperature,
        resume=resume, progress=progress, download=download, force=force)
    typer.echo(f"test accuracy {outcome.test_accuracy:.2%} after {len(outcome.history)} epochs "
               f"({outcome.seconds:.0f}s); model saved to {outcome.checkpoint}")


@app.command("eval")
def eval_(
    model: Annotated[Path, typer.Option("--model", help="Checkpoint folder (…/final).")],
    dataset: Annotated[str | None, typer.Option(help="Defaults to the card's.")] = None,
    split: str = "test",
    limit: Annotated[int | None, typer.Option(help="First N examples only.")] = None,
    data_root: DataRoot = None,
    download: Download = False,
    device: Device = "auto",
    threads: Threads = None,
) -> None:
    """Clean accuracy of a saved model."""
    _set_threads(threads)
    _echo_json(evaluate_checkpoint(model, dataset=dataset, split=split, data_root=data_root,
                                   limit=limit, download=download, device=device))


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where the report and checkpoint go.")] = Path(
        "runs/demo"),
    epochs: int = 10,
    seed: int = 0,
    progress: bool = True,
    n: Annotated[int, typer.Option(
        min=1, help="Evaluate the first N test images of each task.")] = 150,
    device: Annotated[str, typer.Option(
        help="auto | cpu | cuda | cuda:i (default cpu: the demo's models are tiny, and only "
             "the CPU reruns bit for bit).")] = "cpu",
    threads: Annotated[int, typer.Option(
        min=1, help="torch CPU threads (default 1: fastest for these tiny models).")] = 1,
) -> None:
    """Offline demo on scikit-learn's digits: four defenses, standard vs adaptive evaluation,
    audit verdicts, reports and leaderboards."""
    _set_threads(threads)
    summary = run_demo(out, epochs=epochs, seed=seed, progress=progress, device=device,
                       n_attack=n)
    typer.echo(summary["table"])
    typer.echo(f"report: {summary['report']}")
    for path in summary["leaderboards"].values():
        typer.echo(f"leaderboard: {path}")
    typer.echo(f"wall time: {summary['seconds']:.1f} s")


@app.command()
def retrofit(
    model: Annotated[Path, typer.Option("--model", help="Checkpoint of a trained ReLU model.")],
    jump: Annotated[float, typer.Option("--jump", help="JumpReLU threshold κ.")],
    out: Annotated[Path, typer.Option(help="Where to save the retrofitted checkpoint.")],
    force: ForceCheckpoint = False,
    data_root: DataRoot = None,
    download: Download = False,
    device: Device = "auto",
    threads: Threads = None,
) -> None:
    """Swap every ReLU of a saved model for JumpReLU(κ), without retraining."""
    _set_threads(threads)
    _echo_json(retrofit_checkpoint(model, jump, out, data_root=data_root, download=download,
                                   force=force, device=device))


@app.command()
def defend(
    model: Annotated[Path, typer.Option("--model", help="Checkpoint of a trained model.")],
    output_activation: Annotated[str, typer.Option(
        help="Bounded activation on the logits: sigmoid | tanh | softsign | arctan.")],
    temperature: Annotated[float, typer.Option(help="T in softmax(f(T*z)), e.g. 100.")],
    out: Annotated[Path, typer.Option(help="Where to save the defended checkpoint.")],
    force: ForceCheckpoint = False,
    data_root: DataRoot = None,
    download: Download = False,
    device: Device = "auto",
    threads: Threads = None,
) -> None:
    """Give a trained model the output activation f(T·z) for inference (e.g. trained at T = 1
    with `train --output-activation sigmoid`, evaluated at T = 100), without retraining."""
    _set_threads(threads)
    _echo_json(defend_checkpoint(model, output_activation, temperature, out,
                                 data_root=data_root, force=force, download=download,
                                 device=device))


@app.command("tune-jump")
def tune_jump(
    model: Annotated[Path, typer.Option("--model", help="Checkpoint of a trained ReLU model.")],
    max_drop: Annotated[float, typer.Option(
        "--max-drop", help="Largest clean validation-accuracy drop allowed, in points.")] = 0.5,
    grid: Annotated[str | None, typer.Option(
        help="κ values, e.g. 0,0.5,1,1.5 (default: the paper's grid for the model).")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Also save the model retrofitted with the chosen κ here.")] = None,
    force: ForceCheckpoint = False,
    data_root: DataRoot = None,
    download: Download = False,
    progress: bool = True,
    device: Device = "auto",
    threads: Threads = None,
) -> None:
    """Choose κ on the validation split: the largest κ within --max-drop of the ReLU accuracy."""
    _set_threads(threads)
    values = _numbers(grid, float, "--grid") if grid else None
    _echo_json(tune_jump_checkpoint(model, max_drop, grid=values, out=out,
                                    data_root=data_root, progress=progress, download=download,
                                    force=force, device=device))


@app.command(cls=_AttackListHelp)
def attack(
    model: Annotated[Path, typer.Option("--model", help="Checkpoint to attack.")],
    attack: Annotated[str, typer.Option(
        "--attack", help="{attacks}, or a spec such as pgd:eps=8/255,steps=40")] = "pgd",
    eps: Annotated[str | None, typer.Option(
        help="Budget in [0, 1] pixel units, e.g. 0.3 or 8/255 (fixed-budget attacks; default: "
             "the dataset's, MNIST 0.3, CIFAR 8/255, digits 0.1 for linf).")] = None,
    norm: Annotated[str | None, typer.Option(help="linf | l2")] = None,
    steps: int | None = None,
    alpha: Annotated[str | None, typer.Option(help="Step size, e.g. 0.01 or 2/255.")] = None,
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
    out: Annotated[Path | None, typer.Option(
        help="Folder for adversarial.safetensors + summary.json (default: a new "
             "runs/attack/<model>-<attack>-<time>).")] = None,
    force: Annotated[bool, typer.Option(help="Replace an attack's results in OUT.")] = False,
    data_root: DataRoot = None,
    download: Download = False,
    progress: bool = True,
    device: Device = "auto",
    threads: Threads = None,
) -> None:
    """Attack a saved model; writes the adversarial examples and a JSON summary."""
    _set_threads(threads)
    params = {"eps": None if eps is None else parse_number(eps, "--eps"),
              "norm": norm, "steps": steps,
              "alpha": None if alpha is None else parse_number(alpha, "--alpha"),
              "restarts": restarts, "loss": loss, "logits_from": logits_from}
    params = {k: v for k, v in params.items() if v is not None}
    extra = parse_params(param or [])
    twice = sorted(set(params) & set(extra))
    if twice:
        raise ValueError(f"{', '.join(twice)} given twice: as --{twice[0].replace('_', '-')} "
                         f"and as --param {twice[0]}=...; give it once")
    params.update(extra)
    summary = attack_checkpoint(model, attack, params, out=out, split=split, n=n,
                                batch_size=batch_size, bpda=bpda, data_root=data_root,
                                progress=progress, force=force,
                                download=download, device=device)
    summary.pop("environment", None)
    for key, value in summary.get("defaults", {}).items():
        typer.echo(f"no --{key} given: using {key}={value:.6g}, the default for this dataset",
                   err=True)
    _echo_json(summary)
    typer.echo(f"results written to {summary['out']}", err=True)


class Protocol(str, Enum):
    quick = "quick"
    standard = "standard"
    thorough = "thorough"


class Norm(str, Enum):
    linf = "linf"
    l2 = "l2"


# Long by design: typer declares every option as a parameter; the body only loads the target,
# calls evaluate_model and prints.
@app.command("evaluate")
def evaluate_cmd(
    ctx: typer.Context,
    model: Annotated[Path | None, typer.Option(
        "--model", help="A robustact checkpoint folder (…/final).")] = None,
    model_file: Annotated[str | None, typer.Option(
        "--model-file", help="Any PyTorch model instead: path.py:Factory, where Factory(...) "
                             "returns an nn.Module taking [0, 1] images and returning logits.")
                          ] = None,
    weights: Annotated[Path | None, typer.Option(
        help="Weights for --model-file: .safetensors, or .pt/.pth/.bin holding "
             "model.state_dict() (read with torch.load(weights_only=True), never unpickled).")
                       ] = None,
    normalize: Annotated[str | None, typer.Option(
        help="For --model-file when the model expects normalized inputs: MEANS/STDS per "
             "channel, e.g. 0.4914,0.4822,0.4465/0.2470,0.2435,0.2616.")] = None,
    factory_arg: Annotated[list[str] | None, typer.Option(
        "--factory-arg", help="Keyword argument for Factory as KEY=VALUE (repeatable).")] = None,
    dataset: Annotated[str | None, typer.Option(
        help="mnist | cifar10 | cifar100 | digits (needed with --model-file; a checkpoint's "
             "card names its own).")] = None,
    num_classes: Annotated[int | None, typer.Option(
        "--num-classes", min=2, help="Logits the --model-file model must return (default: "
                                     "the dataset's classes).")] = None,
    protocol: Annotated[Protocol, typer.Option(
        help="quick (FGSM, PGD-20, Square 500) | standard (FGSM, APGD-CE/DLR, Square 5000) "
             "| thorough (standard + more restarts, random search, label-only, DeepFool, "
             "unbounded, C&W).")] = Protocol.standard,
    eps: Annotated[str | None, typer.Option(
        help="Budget in [0, 1] pixel units, e.g. 0.3 or 8/255 (default: the dataset's, MNIST "
             "0.3, CIFAR 8/255, digits 0.1 for linf).")] = None,
    norm: Annotated[Norm, typer.Option(help="linf | l2")] = Norm.linf,
    n: Annotated[int, typer.Option(min=1, help="Evaluate the first N test images.")] = 1000,
    batch_size: Annotated[int, typer.Option(min=1)] = 256,
    seed: int = 0,
    out: Annotated[Path | None, typer.Option(
        help="Results folder (default: a new runs/evaluate/<model>-<protocol>-<time>). "
             "Rerunning with the same --out resumes where it stopped.")] = None,
    force: Annotated[bool, typer.Option(
        help="Start over: remove the evaluation already in OUT (even one made with another "
             "protocol or ε).")] = False,
    audit: Annotated[bool, typer.Option(
        "--audit/--no-audit", help="Run the gradient-masking audit and give its verdict.")
                     ] = True,
    audit_samples: Annotated[int, typer.Option(
        "--audit-samples", min=1, help="Samples the audit's model-level checks and its random "
                                       "search use (binarization: at most 20 of them).")
                             ] = 100,
    data_root: DataRoot = None,
    download: Download = False,
    progress: bool = True,
    device: Device = "auto",
    threads: Threads = None,
) -> None:
    """Evaluate a model's robustness with a protocol of attacks, audit it for gradient masking,
    and write the per-sample results table and summary.json to OUT."""
    _set_threads(threads)
    budget = None if eps is None else parse_number(eps, "--eps")
    target = load_evaluation_target(
        checkpoint=model, model_file=model_file, weights=weights, normalize=normalize,
        factory_kwargs=parse_params(factory_arg or [], "--factory-arg") or None,
        dataset=dataset, num_classes=num_classes, n=n, data_root=data_root,
        download=download, device=device)
    argv = ctx.meta.get(_ARGV_KEY)
    summary = evaluate_model(
        target.model, target.data, dataset=target.dataset, name=target.name,
        protocol=protocol.value, eps=budget, norm=norm.value, batch_size=batch_size,
        out=out, seed=seed, progress=progress, audit=audit, force=force, info=target.info,
        audit_options={"max_samples": audit_samples, "random_samples": audit_samples,
                       "binarization_samples": min(20, audit_samples)},
        command=shlex.join(["robustact", *argv]) if argv else None)
    typer.echo(f"clean accuracy {summary['clean_accuracy']:.1%} on {summary['n']} "
               f"{target.dataset} test images")
    typer.echo(f"robust accuracy {summary['robust_accuracy']:.1%} at eps={summary['eps']:.4g} "
               f"({summary['norm']}, {summary['protocol']}, per-sample worst case over "
               f"{len(summary['attacks_at_eps'])} attacks)")
    typer.echo(f"verdict: {summary['verdict']['label']}")
    for line in summary["verdict"]["evidence"]:
        typer.echo(f"  - {line}")
    secs = summary["seconds"]
    audit_s = "skipped" if secs["audit"] is None else f"{secs['audit']:.1f} s"
    typer.echo(f"time: attacks {secs['attacks']:.1f} s, audit {audit_s}")
    typer.echo(f"results: {summary['out']} (report: {summary['reports']['html']})")


@app.command()
def leaderboard(
    runs: Annotated[list[Path], typer.Argument(
        help="Evaluated run folders (each with its report.json).")],
    out: Annotated[Path, typer.Option(help="The page to write.")] = Path("leaderboard.html"),
    allow_mixed: Annotated[bool, typer.Option(
        help="Compare runs with different protocol, ε, norm or data (marked on the page).")
    ] = False,
) -> None:
    """A sortable comparison page, one row per evaluated model (clean, robust, verdict)."""
    typer.echo(f"leaderboard written to {write_leaderboard(out, runs, allow_mixed=allow_mixed)}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
