"""``robustact grid``: :func:`robustact.runs.grid.run_grid`, printed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from robustact.cli.common import NO_RUNTIME, Runtime, app, echo_json, runtime_options
from robustact.runs.grid import run_grid


@app.command("grid")
@runtime_options
def grid_cmd(
    file: Annotated[Path, typer.Argument(
        help="A grid file (JSON): models × evaluations, each pair a cell (docs/distributed.md).")],
    out: Annotated[Path, typer.Option(
        help="The grid's folder: OUT/cells/<model>--<evaluation>, grid.json and "
             "leaderboard.html. Rerunning with the same --out skips finished cells and resumes "
             "the others.")],
    shard: Annotated[str | None, typer.Option(
        help="Run only the cells of shard i/N (cell index modulo N), or auto: the rank and "
             "world size of torchrun or srun, rank 0 then waits for every cell and writes the "
             "summary.")] = None,
    progress: bool = True,
    rt: Runtime = NO_RUNTIME,
) -> None:
    """Evaluate many models under many evaluations, spread over processes or nodes; every cell
    is a resumable evaluation, so a grid killed on one node continues on another."""
    res = run_grid(file, out=out, shard=shard, progress=progress, **rt._asdict())
    typer.echo(f"shard {res['shard']}: ran {len(res['ran'])} cells, skipped "
               f"{len(res['skipped'])} finished ones")
    if res["summary"] is None:
        typer.echo("other cells are still running or to run: the summary is written by the "
                   "run that finishes the last cell")
        return
    echo_json(res["summary"])
    typer.echo(f"summary: {out / 'grid.json'}, {out / 'leaderboard.html'}")
