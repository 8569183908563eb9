"""``export``: a finished evaluation in another tool's format (:mod:`robustact.runs.export`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from robustact.cli.common import app, echo_json
from robustact.runs.export import export_run


@app.command("export")
def export_cmd(
    run: Annotated[Path, typer.Argument(
        help="A finished `evaluate` or `attack` folder (with adversarial.safetensors).")],
    fmt: Annotated[str, typer.Option(
        "--format", help="robustbench (the only format so far).")] = "robustbench",
    out: Annotated[Path | None, typer.Option(
        help="The entry JSON to write (default RUN/robustbench.json); the examples go beside "
             "it with the suffix .pt.")] = None,
    data_root: Annotated[Path | None, typer.Option(
        "--data-root", envvar="ROBUSTACT_DATA",
        help="Where the run's dataset is (default: $ROBUSTACT_DATA, else "
             "~/.cache/robustact/data).")] = None,
    download: Annotated[bool, typer.Option(
        "--download", help="Fetch missing dataset files into the data root.")] = False,
) -> None:
    """Write a RobustBench model-info entry (model_info/<dataset>/<threat>/<name>.json fields;
    robustact's robust accuracy as "external", never as "autoattack_acc", which only an
    AutoAttack run may fill) and the examples as AutoAttack's tools read them: a torch.save'd
    {"adv_complete": (n, C, H, W)} with x_adv at every broken point and the clean image
    elsewhere. Link, authors, venue and the paper's figure are left for you to fill in."""
    echo_json(export_run(run, fmt=fmt, out=out, data_root=data_root, download=download))
