"""``robustact certify``: :func:`robustact.runs.certify.certify_source`, printed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from robustact.cli.common import (
    NO_MODEL,
    NO_RUNTIME,
    Chosen,
    Runtime,
    app,
    model_options,
    runtime_options,
)
from robustact.core.budget import parse_budget
from robustact.report.intervals import interval_of, pct_ci
from robustact.runs.certify import certify_source


@app.command("certify")
@model_options
@runtime_options
def certify_cmd(
    eps: Annotated[str | None, typer.Option(
        help="Budget in [0, 1] pixel units, e.g. 0.3 or 8/255 (default: the dataset's).")] = None,
    norm: Annotated[str, typer.Option(help="linf | l2")] = "linf",
    method: Annotated[str, typer.Option(help="ibp | crown-ibp (both bounds; the tighter "
                                             "counts)")] = "crown-ibp",
    n: Annotated[int, typer.Option("--n", "-n", min=1, help="The first N images.")] = 1000,
    split: Annotated[str, typer.Option(help="train | val | test")] = "test",
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    out: Annotated[Path | None, typer.Option(help="Write the result to this JSON file.")
                   ] = None,
    chosen: Chosen = NO_MODEL,
    rt: Runtime = NO_RUNTIME,
) -> None:
    """Certified accuracy: the share of images no perturbation within eps can misclassify,
    proven by IBP / CROWN-IBP bounds (a lower bound on robust accuracy; no attack runs)."""
    res = certify_source(chosen.source, dataset=chosen.dataset, n=n,
                         eps=None if eps is None else parse_budget(eps, norm, name="--eps"),
                         norm=norm, method=method, split=split, batch_size=batch_size, out=out,
                         **rt._asdict())
    k = res["n"]

    def show(v: float) -> str:
        return pct_ci(v, interval_of(v, k))

    typer.echo(f"clean accuracy {show(res['clean_accuracy'])} on {k} {res['dataset']} images")
    for key, name in (("certified_ibp", "IBP"), ("certified_crown_ibp", "CROWN-IBP")):
        if res[key] is not None:
            typer.echo(f"certified accuracy ({name}) {show(res[key])} at eps={res['eps']:.4g} "
                       f"({res['norm']})")
    typer.echo(f"time: {res['seconds']:.1f} s" + (f"; written to {out}" if out else ""))
