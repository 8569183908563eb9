"""The ``robustact`` command group: error handling, and the options every command shares.

Errors take one path for every command (:class:`_App`): a user error (bad argument, bad or missing
file) prints ``error: <message>`` to stderr and exits with code 2; Ctrl-C prints one line saying
what was kept and exits with 130; anything else is a bug and prints one line with the exception
type and exits with code 1. ``--debug`` (before the command: ``robustact --debug train ...``)
prints the full traceback first.

The shared options (the model, as a checkpoint or a model file; the data root, device and
threads) are declared once here and added to a command by :func:`model_options` and
:func:`runtime_options`, so every command that runs a model takes any model the same way.
"""

from __future__ import annotations

import errno
import functools
import inspect
import json
import os
import shlex
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NamedTuple, NoReturn

import torch
import typer
from typer.core import TyperGroup

from robustact import __version__
from robustact.core.runfolder import RunInterrupted
from robustact.core.spec import parse_params
from robustact.runs.sources import MODEL_CHOICE, ModelSource

__all__ = ["app", "adds_options", "model_options", "runtime_options", "echo_json", "command_line",
           "numbers"]

#: Exceptions that mean "the input was wrong" rather than "robustact has a bug". ValueError covers
#: CheckpointError, DataFormatError, TrainingDivergedError; OSError covers missing or unreadable
#: files (DatasetNotFoundError, DownloadError).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)
EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_INTERRUPTED = 130
_DEBUG_KEY = "robustact.debug"
_ARGV_KEY = "robustact.argv"
# Typer has vendored click since 0.20 and used the click package before; its BadParameter
# derives from click's ClickException in both, so take that base class from it.
_ClickException: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _report(e: BaseException, command_path: str) -> NoReturn:
    """Print ``e`` as one ``error:`` line (plus any hint lines a user error carries) and exit."""
    if isinstance(e, _ClickException):  # usage: unknown option, bad value, missing option
        where = getattr(getattr(e, "ctx", None), "command_path", None) or command_path
        typer.secho(f"error: {e.format_message()} (see '{where} --help')",  # type: ignore[attr-defined]
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(code=getattr(e, "exit_code", EXIT_USER_ERROR))
    if isinstance(e, (RunInterrupted, KeyboardInterrupt)):
        text = str(e) if isinstance(e, RunInterrupted) else "interrupted (Ctrl-C)"
        typer.secho(text, fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(code=EXIT_INTERRUPTED)
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
    alone, typer turns an ``EOFError`` from deep inside a loader into a bare "Aborted.", and a
    Ctrl-C into "Aborted!" with no word on what was kept.
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
        except (Exception, KeyboardInterrupt) as e:
            if isinstance(e, OSError) and e.errno == errno.EPIPE:
                raise  # output piped into `head`: typer exits quietly
            if ctx.meta.get(_DEBUG_KEY) and not isinstance(e, _ClickException):
                # Printed here rather than re-raised: typer would turn an EOFError into a bare
                # "Aborted!", and the exit code stays the same with and without --debug.
                traceback.print_exception(e, file=sys.stderr)
            _report(e, ctx.command_path)


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


def command_line(ctx: typer.Context) -> str | None:
    """The command as typed (results files record it), or None when called without one."""
    argv = ctx.meta.get(_ARGV_KEY)
    return shlex.join(["robustact", *argv]) if argv else None


def echo_json(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def numbers(text: str, kind: type, option: str) -> list[Any]:
    """``"30,60"`` → ``[30, 60]``; a malformed list is a user error naming the option."""
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{option} expects comma-separated {kind.__name__} values, "
                         f"got {text!r}") from None


def default_threads() -> int:
    """Threads for a command when ``--threads`` is not given: min(4, free cores), at least 1.

    Why: torch's default, one thread per core, oversubscribes the machine as soon as anything
    else runs, and its workers then wait on each other (benchmarks/bench_threads.py: LeNet-5 on
    2 busy cores, 2 threads per batch took 7x the time of 1; see results/README.md). Free cores
    are the cores this process may use minus the 1-minute load average; 4 caps the pool where
    small models stop gaining. Pass --threads to choose.

    Under torchrun (LOCAL_WORLD_SIZE set) the node's processes share its cores: OMP_NUM_THREADS
    when set (torchrun sets 1 for several processes unless the user chose), else the free
    cores divided among them, so a sharded evaluation never oversubscribes the node.
    """
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if local.isdigit() and int(local) > 1 and omp.isdigit() and int(omp) >= 1:
        return int(omp)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    if local.isdigit() and int(local) > 1:
        cores = max(1, cores // int(local))
    try:
        busy = round(os.getloadavg()[0])
    except (AttributeError, OSError):  # no load average (Windows)
        busy = 0
    return max(1, min(4, cores - busy))


def set_threads(threads: int | None) -> None:
    """Set torch's CPU threads for this CLI process (the CLI's job, never the library's)."""
    torch.set_num_threads(threads if threads is not None else default_threads())


# -- options added to commands ------------------------------------------------------------------

def _option(name: str, annotation: Any, default: Any = None) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=annotation)


def adds_options(inputs: list[inspect.Parameter], supplies: tuple[str, ...],
          combine: Callable[..., dict[str, Any]]) -> Callable[[Callable[..., Any]],
                                                              Callable[..., Any]]:
    """A decorator adding the options ``inputs`` to a command; ``combine(**inputs)`` returns
    the arguments ``supplies`` the command itself takes (e.g. one ModelSource from six options).

    Why not the same six parameters in every command: one declaration keeps their names, help
    and checks identical everywhere, and typer reads the rewritten signature like any other.
    """
    def deco(func: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(func, eval_str=True)
        kept = [p for p in sig.parameters.values() if p.name not in supplies]

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> Any:
            given = {p.name: kwargs.pop(p.name) for p in inputs}
            return func(**kwargs, **combine(**given))

        wrapper.__signature__ = sig.replace(parameters=[*kept, *inputs])  # type: ignore[attr-defined]
        wrapper.__annotations__ = {}  # the signature above holds the evaluated types
        return wrapper
    return deco


_MODEL_INPUTS = [
    _option("model", Annotated[Path | None, typer.Option(
        "--model", help="A robustact checkpoint folder (…/final).")]),
    _option("model_file", Annotated[str | None, typer.Option(
        "--model-file", help="Any PyTorch model instead: path.py:Factory, where Factory(...) "
                             "returns an nn.Module taking [0, 1] images and returning logits.")]),
    _option("weights", Annotated[Path | None, typer.Option(
        help="Weights for --model-file: .safetensors, or .pt/.pth/.bin holding "
             "model.state_dict() (read with torch.load(weights_only=True), never unpickled).")]),
    _option("normalize", Annotated[str | None, typer.Option(
        help="For --model-file when the model expects normalized inputs: MEANS/STDS per "
             "channel, e.g. 0.4914,0.4822,0.4465/0.2470,0.2435,0.2616.")]),
    _option("factory_arg", Annotated[list[str] | None, typer.Option(
        "--factory-arg", help="Keyword argument for Factory as KEY=VALUE (repeatable).")]),
    _option("num_classes", Annotated[int | None, typer.Option(
        "--num-classes", min=2, help="Logits the --model-file model must return (default: the "
                                     "dataset's classes).")]),
    _option("dataset", Annotated[str | None, typer.Option(
        help="mnist | cifar10 | cifar100 | digits (needed with --model-file; a checkpoint's "
             "card names its own).")]),
]


class Chosen(NamedTuple):
    """The model a command was given, and the dataset named for it (None: the card's)."""

    source: ModelSource
    dataset: str | None


def _model_source(model: Path | None, model_file: str | None, weights: Path | None,
                  normalize: str | None, factory_arg: list[str] | None,
                  num_classes: int | None, dataset: str | None) -> dict[str, Any]:
    if model is None and model_file is None:
        raise ValueError(f"no model given: {MODEL_CHOICE}")
    kwargs = parse_params(factory_arg or [], "--factory-arg") or None
    return {"chosen": Chosen(ModelSource(model, model_file, weights, normalize, kwargs,
                                         num_classes), dataset)}


#: Adds --model / --model-file / --weights / --normalize / --factory-arg / --num-classes /
#: --dataset; the command takes ``chosen: Chosen``.
model_options = adds_options(_MODEL_INPUTS, ("chosen",), _model_source)

_RUNTIME_INPUTS = [
    _option("data_root", Annotated[Path | None, typer.Option(
        "--data-root", envvar="ROBUSTACT_DATA",
        help="Folder with MNIST/raw, cifar-10-batches-py, cifar-100-python (default: "
             "$ROBUSTACT_DATA, else ~/.cache/robustact/data).")]),
    _option("download", Annotated[bool, typer.Option(
        "--download", help="Fetch missing dataset files into the data root (checksummed; "
                           "MNIST and CIFAR).")], False),
    _option("device", Annotated[str, typer.Option(
        help="auto | cpu | cuda | cuda:i (auto: CUDA when available).")], "auto"),
    _option("threads", Annotated[int | None, typer.Option(
        min=1, help="torch CPU threads (default: the free cores, i.e. min(4, cores - 1-minute "
                    "load average), at least 1).")]),
]


class Runtime(NamedTuple):
    """Where data and computation live: the library functions' keyword arguments."""

    data_root: Path | None
    download: bool
    device: str


def _runtime(data_root: Path | None, download: bool, device: str,
             threads: int | None) -> dict[str, Any]:
    set_threads(threads)
    return {"rt": Runtime(data_root, download, device)}


#: Adds --data-root / --download / --device / --threads (threads are set here); the command
#: takes ``rt: Runtime`` (``**rt._asdict()`` passes it on).
runtime_options = adds_options(_RUNTIME_INPUTS, ("rt",), _runtime)

#: Placeholders in command signatures for the arguments the decorators supply (never used:
#: the decorators replace these parameters with the options they stand for).
NO_MODEL = Chosen(ModelSource(checkpoint="-"), None)
NO_RUNTIME = Runtime(None, False, "auto")
