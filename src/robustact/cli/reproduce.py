"""``robustact reproduce``: :func:`robustact.runs.reproduce.reproduce`, printed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from robustact.cli.common import NO_RUNTIME, Runtime, app, command_line, runtime_options
from robustact.report.reproduction import headline_rows
from robustact.runs.reproduce import paper_names
from robustact.runs.reproduce_all import reproduce_all, reproduce_many


@app.command("reproduce")
@runtime_options
def reproduce_cmd(
    ctx: typer.Context,
    paper: Annotated[str, typer.Argument(
        help="A shipped paper (jumprelu, splash, output-activation, differential; name@version "
             "for an older one), 'all' (each into OUT/<paper>, and OUT/summary.md), or the "
             "path of a paper file (a shipped one copied and edited).")],
    quick: Annotated[bool, typer.Option(
        help="The paper file's short settings (few images, epochs and training images): a "
             "smoke run in minutes; every figure is labelled quick.")] = False,
    out: Annotated[Path | None, typer.Option(
        help="Results folder (default runs/reproduce/<paper>[-quick]). Rerunning with the "
             "same --out resumes: trained models, finished cells and attack cells are read "
             "back; a finished reproduction only re-renders its report.")] = None,
    only: Annotated[list[str] | None, typer.Option(
        "--only", help="Only the model with this key, or else the models whose key contains "
                       "it (repeatable), with the models they transfer from; e.g. --only lenet "
                       "for jumprelu's MNIST part, --only lenetlike for its plain model alone.")
    ] = None,
    dataset: Annotated[str | None, typer.Option(
        help="Only the models on this dataset, in full settings (e.g. mnist: a paper's MNIST "
             "part; with 'all', every paper's, the papers without one skipped).")] = None,
    jobs: Annotated[int, typer.Option(
        min=1, help="Worker processes sharing the work (each model with the models it "
                    "transfers from is one unit; --threads is shared among them). Small models "
                    "finish sooner as 2 processes of 1 thread than as 1 of 2.")] = 1,
    epochs: Annotated[int | None, typer.Option(
        min=1, help="Reduced settings: train at most this many epochs (milestones scaled). "
                    "Labelled reduced in the report.")] = None,
    n: Annotated[int | None, typer.Option(
        min=1, help="Reduced settings: evaluate this many images. Labelled reduced.")] = None,
    progress: bool = True,
    rt: Runtime = NO_RUNTIME,
) -> None:
    """Reproduce a paper's experiment: train or load its models, apply its defenses, run its
    own attacks and robustact's evaluation with the audit, and report claimed vs measured vs
    what survives (results.json, report.md, report.html, accuracy.png)."""
    if out is None:
        stem = Path(paper).stem if paper.endswith(".json") else paper.partition("@")[0]
        out = Path("runs/reproduce") / (stem + ("-quick" if quick else ""))
    kwargs = {"quick": quick, "progress": progress, "only": only, "epochs": epochs, "n": n,
              "jobs": jobs, "command": command_line(ctx), **rt._asdict()}
    if paper == "all":
        done = reproduce_all(out=out, dataset=dataset, **kwargs)
        for name, rec in done["records"].items():
            _echo(name, rec)
        if done["skipped"]:
            typer.echo(f"skipped (no {dataset} model): {', '.join(done['skipped'])}")
        typer.echo(f"summary: {done['summary']}")
        typer.echo(f"wall time: {done['seconds']:.0f} s")
        return
    (rec,) = reproduce_many({out: paper}, dataset=dataset, **kwargs).values()
    _echo(rec["paper"]["name"], rec)
    typer.echo(f"wall time: {rec['seconds']:.0f} s (shipped papers: {', '.join(paper_names())})")


def _echo(name: str, rec: dict[str, Any]) -> None:
    for r in headline_rows(rec):
        paper_fig = "–" if r["paper"] is None else f"{100 * r['paper']:.1f} %"
        typer.echo(f"{name}: {r['model']} / {r['setting']} / {r['split']}: clean "
                   f"{100 * r['clean']:.1f} %, {r['attack'] or 'paper'} {paper_fig}, robustact "
                   f"{100 * r['strongest']:.1f} % at eps {r['eps']:.4g} ({r['verdict']})")
    typer.echo(f"report: {rec['views']['html']}")
