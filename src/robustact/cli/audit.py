"""``robustact audit calibrate``: :func:`robustact.runs.calibrate.calibrate_audit`, printed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from robustact.cli.common import NO_RUNTIME, Runtime, app, command_line, runtime_options
from robustact.runs.calibrate import calibrate_audit, format_rates

audit_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                        help="Measure the gradient-masking audit itself.")
app.add_typer(audit_app, name="audit")


def _print_row(row: dict[str, Any]) -> None:
    """One line per finished cell, so a long run shows its progress."""
    if row.get("error"):
        outcome = f"ERROR {row['error']}"
    else:
        robust = "—" if row.get("robust") is None else f"{row['robust']:.1%}"
        outcome = (f"clean {row['clean']:.1%} robust {robust}: {row['verdict']} "
                   f"[{', '.join(row['fired']) or '-'}] {row['seconds']['wall']:.0f} s")
    typer.echo(f"{row['cell']} ({row['kind']}, {row['split']}"
               f"{', reused' if row.get('reused') else ''}) {outcome}")


@audit_app.command("calibrate")
@runtime_options
def calibrate_cmd(
    ctx: typer.Context,
    quick: Annotated[bool, typer.Option(
        help="The small digits-only zoo with reduced attack budgets (under a minute; for "
             "tests and CI), not the calibration.")] = False,
    out: Annotated[Path | None, typer.Option(
        help="Results folder (default results/calibration, or runs/calibration-quick with "
             "--quick). Rerunning with the same --out resumes cell by cell.")] = None,
    n: Annotated[int | None, typer.Option(
        min=1, help="Test images per cell for every dataset (default: the zoo's, digits 360, "
                    "MNIST 200, CIFAR-10 100; quick 40).")] = None,
    only: Annotated[list[str] | None, typer.Option(
        "--only", help="Evaluate only the models whose name contains this (repeatable); the "
        "other models' stored cells are still tabulated.")] = None,
    stored_only: Annotated[bool, typer.Option(
        "--stored-only", help="Evaluate nothing: tabulate and re-judge (by the current rules) "
                              "the cells already evaluated in OUT.")] = False,
    rt: Runtime = NO_RUNTIME,
) -> None:
    """Evaluate and audit a zoo of healthy and deliberately broken models at several ε, and
    write calibration.json / calibration.md: the verdicts, every check's numbers, and the
    false-positive and detection rates per split."""
    if out is None:
        out = Path("runs/calibration-quick" if quick else "results/calibration")
    result = calibrate_audit(out, quick=quick, n=n, only=only, command=command_line(ctx),
                             on_row=_print_row, stored_only=stored_only, **rt._asdict())
    for line in format_rates(result):
        typer.echo(line)
    typer.echo(f"results: {out / 'calibration.md'} and {out / 'calibration.json'}")
