"""``robustact demo``: :func:`robustact.runs.demo.run_demo`, printed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from robustact.cli.common import app, set_threads
from robustact.runs.demo import run_demo


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
    set_threads(threads)
    summary = run_demo(out, epochs=epochs, seed=seed, progress=progress, device=device,
                       n_attack=n)
    typer.echo(summary["table"])
    typer.echo(f"report: {summary['report']}")
    for path in summary["leaderboards"].values():
        typer.echo(f"leaderboard: {path}")
    typer.echo(f"wall time: {summary['seconds']:.1f} s")
