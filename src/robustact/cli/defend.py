"""``retrofit``, ``defend`` and ``tune-jump``: a defense applied to any model, saved as a
checkpoint (:mod:`robustact.runs.defend`)."""

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
    echo_json,
    model_options,
    numbers,
    runtime_options,
)
from robustact.runs.defend import defend_checkpoint, retrofit_checkpoint, tune_jump_checkpoint

#: ``--force`` of the commands that write a checkpoint: the one way to replace one in OUT.
ForceCheckpoint = Annotated[bool, typer.Option(help="Replace a checkpoint already in OUT.")]


@app.command()
@model_options
@runtime_options
def retrofit(
    jump: Annotated[float, typer.Option("--jump", help="JumpReLU threshold κ.")],
    out: Annotated[Path, typer.Option(help="Where to save the retrofitted checkpoint.")],
    force: ForceCheckpoint = False,
    chosen: Chosen = NO_MODEL,
    rt: Runtime = NO_RUNTIME,
) -> None:
    """Swap every ReLU of a trained model (checkpoint or model file) for JumpReLU(κ), without
    retraining; saves a checkpoint that `evaluate --model OUT` reads."""
    echo_json(retrofit_checkpoint(chosen.source, jump, out, dataset=chosen.dataset, force=force,
                                  **rt._asdict()))


@app.command()
@model_options
@runtime_options
def defend(
    output_activation: Annotated[str, typer.Option(
        help="Bounded activation on the logits: sigmoid | tanh | softsign | arctan.")],
    temperature: Annotated[float, typer.Option(help="T in softmax(f(T*z)), e.g. 100.")],
    out: Annotated[Path, typer.Option(help="Where to save the defended checkpoint.")],
    force: ForceCheckpoint = False,
    chosen: Chosen = NO_MODEL,
    rt: Runtime = NO_RUNTIME,
) -> None:
    """Give a trained model (checkpoint or model file) the output activation f(T·z) for
    inference (e.g. trained at T = 1 with `train --output-activation sigmoid`, evaluated at
    T = 100), without retraining."""
    echo_json(defend_checkpoint(chosen.source, output_activation, temperature, out,
                                dataset=chosen.dataset, force=force, **rt._asdict()))


@app.command("tune-jump")
@model_options
@runtime_options
def tune_jump(
    max_drop: Annotated[float, typer.Option(
        "--max-drop", help="Largest clean validation-accuracy drop allowed, in points.")] = 0.5,
    grid: Annotated[str | None, typer.Option(
        help="κ values, e.g. 0,0.5,1,1.5 (default: the paper's grid for the model).")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Also save the model retrofitted with the chosen κ here.")] = None,
    force: ForceCheckpoint = False,
    progress: bool = True,
    chosen: Chosen = NO_MODEL,
    rt: Runtime = NO_RUNTIME,
) -> None:
    """Choose κ on the validation split: the largest κ within --max-drop of the ReLU accuracy."""
    values = numbers(grid, float, "--grid") if grid else None
    echo_json(tune_jump_checkpoint(chosen.source, max_drop, grid=values, out=out,
                                   dataset=chosen.dataset, progress=progress, force=force,
                                   **rt._asdict()))
