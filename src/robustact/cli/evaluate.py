"""``eval``, ``attack``, ``evaluate``, ``protocols`` and ``leaderboard``: one engine, one record
(:mod:`robustact.runs.evaluate`), any model."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from robustact.attacks.registry import available_attacks
from robustact.cli.common import (
    NO_MODEL,
    NO_RUNTIME,
    Chosen,
    Runtime,
    adds_options,
    app,
    command_line,
    echo_json,
    model_options,
    runtime_options,
)
from robustact.core.budget import parse_budget
from robustact.core.spec import parse_params
from robustact.evaluate.protocols import available_protocols, format_protocols
from robustact.report.intervals import pct_ci
from robustact.report.leaderboard import write_leaderboard
from robustact.runs.evaluate import attack_model, clean_accuracy, evaluate_source
from robustact.runs.shards import evaluate_sharded, merge_shards


@app.command("eval")
@model_options
@runtime_options
def eval_(
    split: Annotated[str, typer.Option(help="train | val | test")] = "test",
    limit: Annotated[int | None, typer.Option(help="First N examples only.")] = None,
    chosen: Chosen = NO_MODEL,
    rt: Runtime = NO_RUNTIME,
) -> None:
    """Clean accuracy of a model (a tied top output counts as wrong, as in every command)."""
    echo_json(clean_accuracy(chosen.source, dataset=chosen.dataset, split=split, limit=limit,
                             **rt._asdict()))


def _print_run(summary: dict[str, Any], dataset: str | None) -> None:
    """The lines `evaluate` and `attack` print: accuracies, verdict, time, where the files are."""
    data = f" {dataset}" if dataset else ""
    clean = pct_ci(summary["clean_accuracy"], summary.get("clean_accuracy_ci"))
    typer.echo(f"clean accuracy {clean} on {summary['n']}{data} images (95 % interval)")
    robust = pct_ci(summary["robust_accuracy"], summary.get("robust_accuracy_ci"))
    typer.echo(f"robust accuracy {robust} at eps={summary['eps']:.4g} ({summary['norm']}, "
               f"{summary['protocol']}, per-sample worst case over "
               f"{len(summary['attacks_at_eps'])} attacks)")
    cert = summary.get("certified") or {}
    if summary.get("certified_accuracy") is not None:
        sure = pct_ci(summary["certified_accuracy"], summary.get("certified_accuracy_ci"))
        typer.echo(f"certified accuracy {sure} (CROWN-IBP lower bound: the true robust "
                   "accuracy lies between the two)")
    elif cert.get("reason"):
        typer.echo(f"certified accuracy: none ({cert['reason']})")
    sandwich = summary["verdict"].get("sandwich")
    typer.echo(f"verdict: {summary['verdict']['label']}"
               + (f" ({sandwich['text']})" if sandwich else ""))
    for line in summary["verdict"]["evidence"]:
        typer.echo(f"  - {line}")
    comp = summary["verdict"].get("completeness") or {}
    if comp.get("text"):
        typer.echo(f"complete? {comp['text']}")
    secs = summary["seconds"]
    audit_s = "skipped" if secs.get("audit") is None else f"{secs['audit']:.1f} s"
    cert_s = "" if secs.get("certify") is None else f", certify {secs['certify']:.1f} s"
    typer.echo(f"time: attacks {secs['attacks']:.1f} s, audit {audit_s}{cert_s}")
    typer.echo(f"results: {summary['out']} (report: {summary['reports']['html']})")


Out = Annotated[Path | None, typer.Option(
    help="Results folder (default: a new runs/<command>/<model>-<protocol>-<time>). Rerunning "
         "with the same --out resumes where it stopped.")]
Force = Annotated[bool, typer.Option(
    help="Start over: remove the evaluation already in OUT (even one made with another "
         "protocol or ε).")]
EotDraws = Annotated[int | None, typer.Option(
    "--eot", min=0, help="Draws per forward for a randomized model (noise, dropout on): attacks "
                         "see the mean logits over N draws, a point counts as correct only if "
                         "right in a majority of N fresh draws. Default: 10 when two forwards "
                         "of the same images differ, none otherwise; 0 disables.")]
AllowChance = Annotated[bool, typer.Option(
    "--allow-chance", help="Evaluate even when the clean accuracy is at chance (by default "
                           "the run stops before any attack: no --weights? wrong "
                           "--normalize?).")]
Eps = Annotated[str | None, typer.Option(
    help="Budget in [0, 1] pixel units, e.g. 0.3 or 8/255 (default: the dataset's, MNIST 0.3, "
         "CIFAR 8/255, digits 0.1 for linf).")]




def _run_options(out: Path | None, force: bool, progress: bool, eot: int | None,
                 allow_chance: bool) -> dict[str, Any]:
    return {"run": {"out": out, "force": force, "progress": progress, "eot": eot,
                    "allow_chance": allow_chance}}


#: Adds --out / --force / --progress / --eot / --allow-chance to `evaluate` and `attack` (the
#: run-folder and engine options they share); the command takes ``run: dict``, passed on.
run_options = adds_options([
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=ann)
    for name, ann, default in (("out", Out, None), ("force", Force, False),
                               ("progress", Annotated[bool, typer.Option()], True),
                               ("eot", EotDraws, None), ("allow_chance", AllowChance, False))],
    ("run",), _run_options)


# Long by design: typer declares every option as a parameter; the body only calls
# evaluate_source and prints.
@app.command("evaluate")
@model_options
@runtime_options
@run_options
def evaluate_cmd(
    ctx: typer.Context,
    protocol: Annotated[str, typer.Option(
        help="A protocol name, optionally @version (see `robustact protocols`: quick, "
             "standard, thorough; default: the latest standard), or a protocol JSON file of "
             "your own (copy a shipped one and edit it).")] = "standard",
    eps: Eps = None,
    norm: Annotated[str, typer.Option(help="linf | l2")] = "linf",
    n: Annotated[int, typer.Option(
        "--n", "-n", min=1, help="Evaluate the first N test images (-n under torchrun, whose "
                                 "own options make --n ambiguous).")] = 1000,
    batch_size: Annotated[int, typer.Option(min=1)] = 256,
    seed: int = 0,
    audit: Annotated[bool, typer.Option(
        "--audit/--no-audit", help="Run the gradient-masking audit and give its verdict.")
                     ] = True,
    audit_samples: Annotated[int, typer.Option(
        "--audit-samples", min=1, help="Samples the audit's model-level checks and its random "
                                       "search use (binarization: at most 20 of them).")
                             ] = 100,
    adversarial: Annotated[bool, typer.Option(
        "--adversarial/--no-adversarial",
        help="Keep the adversarial example of every point broken at the main eps "
             "(adversarial.safetensors, for verify and export). --no-adversarial for very large "
             "runs: the examples take about the size of the broken test images, twice.")
                             ] = True,
    certify: Annotated[bool, typer.Option(
        "--certify/--no-certify", help="Certified accuracy (IBP, CROWN-IBP bounds) at every eps "
                                       "of the grid, under the attack figure, when the model's "
                                       "layers allow it.")] = True,
    shard: Annotated[str | None, typer.Option(
        help="Evaluate only shard i/N of the images (e.g. 0/4) into OUT/shards/i-of-N; "
             "`robustact merge OUT` joins the shards into the evaluation one process would "
             "make. auto: the rank and world size of torchrun or srun, and rank 0 merges when "
             "every shard is done. Needs --out.")] = None,
    run: dict[str, Any] | None = None,
    chosen: Chosen = NO_MODEL,
    rt: Runtime = NO_RUNTIME,
) -> None:
    """Evaluate a model's robustness with a protocol of attacks, audit it for gradient masking,
    and write the per-sample results table, summary.json and the reports to OUT.

    OUT also keeps the adversarial example of every point broken at the main eps
    (adversarial.safetensors, in the model's input dtype, with its provenance): about the size
    of the broken test images, for `robustact verify OUT` and `robustact export OUT`
    (--no-adversarial: none kept, for very large runs)."""
    options: dict[str, Any] = dict(
        dataset=chosen.dataset, n=n, **rt._asdict(), protocol=_protocol(protocol),
        eps=None if eps is None else parse_budget(eps, norm, name="--eps"), norm=norm,
        batch_size=batch_size, seed=seed, audit=audit, keep_adversarial=adversarial,
        certify=certify, **(run or {}), audit_options=_audit_options(audit_samples),
        command=command_line(ctx))
    if shard is None:
        summary = evaluate_source(chosen.source, **options)
    else:
        if options.pop("out") is None or options.pop("force"):
            raise ValueError("--shard needs --out (the folder every shard and the merge share) "
                             "and takes no --force (delete OUT/shards/i-of-N to redo a shard)")
        summary = evaluate_sharded(chosen.source, out=(run or {})["out"], shard=shard,
                                   **options)
        if "shard" in summary:  # not rank 0: the shard's own record
            typer.echo(f"shard {summary['shard']}: {summary['samples']} images, "
                       f"{summary['cells']} cells in {summary['seconds']:.1f} s -> "
                       f"{summary['out']}")
            return
    _print_run(summary, summary["model"].get("dataset"))


@app.command()
@runtime_options
def merge(
    ctx: typer.Context,
    shards: Annotated[list[Path], typer.Argument(
        help="Shard folders (OUT/shards/i-of-N), or the OUT that holds them.")],
    out: Annotated[Path | None, typer.Option(
        help="The merged evaluation's folder (default: the OUT holding the shards).")] = None,
    model: Annotated[Path | None, typer.Option(
        help="The checkpoint, if it moved since the shards ran.")] = None,
    model_file: Annotated[str | None, typer.Option(
        help="The model file (path.py:Factory), if it moved.")] = None,
    weights: Annotated[Path | None, typer.Option(help="Its weights, if they moved.")] = None,
    audit: Annotated[bool, typer.Option("--audit/--no-audit")] = True,
    audit_samples: Annotated[int, typer.Option("--audit-samples", min=1)] = 100,
    force: Force = False,
    progress: Annotated[bool, typer.Option()] = True,
    rt: Runtime = NO_RUNTIME,
) -> None:
    """Join the shards of an evaluation (`evaluate --shard i/N`) into the evaluation one process
    makes: the same table, worst case, audit and reports. The model and images are reloaded
    from what the shards record; shards of another model, protocol, eps or version, or a
    missing shard, are refused."""
    summary = merge_shards(
        shards, out=out, model=model, model_file=model_file, weights=weights,
        progress=progress, audit=audit, force=force, command=command_line(ctx),
        audit_options=_audit_options(audit_samples), **rt._asdict())
    _print_run(summary, summary["model"].get("dataset"))


def _audit_options(samples: int) -> dict[str, int]:
    """--audit-samples as the audit's counts: model-level checks and random search on that
    many samples, binarization on at most 20 of them."""
    return {"max_samples": samples, "random_samples": samples,
            "binarization_samples": min(20, samples)}


def _protocol(text: str) -> str | Path:
    """A protocol file when the value names one (a path ending in .json), else a name."""
    return Path(text) if text.endswith(".json") else text


class _AttackListHelp(TyperCommand):
    """Fills ``{attacks}`` in option help from the attack registry, only when help is shown.

    Why lazily: the registry's import is slow for a ``--help`` that may not need it.
    """

    def format_help(self, ctx: Any, formatter: Any) -> None:
        names = " | ".join(available_attacks())
        for p in self.params:
            if getattr(p, "help", None) and "{attacks}" in p.help:  # type: ignore[attr-defined]
                p.help = p.help.replace("{attacks}", names)  # type: ignore[attr-defined]
        super().format_help(ctx, formatter)


# Long by design: the attack's own options (steps, alpha, loss, ...) are typer parameters.
@app.command(cls=_AttackListHelp)
@model_options
@runtime_options
@run_options
def attack(
    ctx: typer.Context,
    attack: Annotated[str, typer.Option(
        "--attack", help="{attacks}, or a spec such as pgd:steps=40")] = "pgd",
    eps: Eps = None,
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
    split: Annotated[str, typer.Option(help="train | val | test")] = "test",
    batch_size: int = 250,
    seed: int = 0,
    audit: Annotated[bool, typer.Option(
        "--audit/--no-audit", help="Audit the attack for gradient masking (off by default: "
                                   "most checks compare several attacks).")] = False,
    run: dict[str, Any] | None = None,
    chosen: Chosen = NO_MODEL,
    rt: Runtime = NO_RUNTIME,
) -> None:
    """Run one attack as a one-attack protocol on the evaluation engine: the same results
    table, summary.json and reports as `evaluate`."""
    spec = _attack_spec(attack, eps=eps, norm=norm, steps=steps, alpha=alpha, restarts=restarts,
                        loss=loss, logits_from=logits_from, param=param)
    summary = attack_model(chosen.source, spec, bpda=bpda, audit=audit, dataset=chosen.dataset,
                           n=n, split=split, batch_size=batch_size, seed=seed,
                           command=command_line(ctx), **(run or {}), **rt._asdict())
    if "eps" not in spec:
        typer.echo(f"no --eps given: using eps={summary['eps']:.6g}, the default for this "
                   "dataset", err=True)
    _print_run(summary, summary["model"].get("dataset"))


def _attack_spec(attack: str, *, param: list[str] | None, **options: Any) -> dict[str, Any]:
    """The attack's spec from its name (or ``name:key=value`` spec), its options and --param."""
    name, _, inline = attack.partition(":")
    spec = parse_params([p for p in inline.split(",") if p], "--attack")
    for key in ("eps", "alpha"):
        if options.get(key) is not None:
            options[key] = parse_budget(options[key], name=f"--{key}")
    given = {k: v for k, v in options.items() if v is not None}
    extra = parse_params(param or [])
    twice = sorted((set(given) | set(spec)) & set(extra) | set(given) & set(spec))
    if twice:
        raise ValueError(f"{', '.join(twice)} given twice (as an option, in --attack or as "
                         "--param); give each once")
    return {"name": name, **spec, **given, **extra}


@app.command()
def protocols() -> None:
    """List the shipped evaluation protocols (every version stays runnable): attacks, budgets
    and what changed between versions. Copy one, edit it, pass the file to --protocol."""
    typer.echo(format_protocols(available_protocols()))


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
