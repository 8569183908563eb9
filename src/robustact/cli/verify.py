"""``verify``: recompute a finished evaluation's robust accuracy from its stored examples
(:mod:`robustact.runs.verify`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from robustact.cli.common import NO_RUNTIME, Runtime, app, echo_json, runtime_options
from robustact.runs.verify import verify_run


@app.command("verify")
@runtime_options
def verify_cmd(
    run: Annotated[Path, typer.Argument(
        help="A finished `evaluate` or `attack` folder (with adversarial.safetensors).")],
    model: Annotated[Path | None, typer.Option(
        "--model", help="The checkpoint folder to reload instead of the recorded one (e.g. "
                        "moved); its digest must still equal the recorded one.")] = None,
    model_file: Annotated[str | None, typer.Option(
        "--model-file", help="path.py:Factory instead of the recorded model file (the "
                             "recorded --normalize and --factory-arg are kept).")] = None,
    weights: Annotated[Path | None, typer.Option(
        help="Weights for the model file instead of the recorded ones.")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 256,
    rt: Runtime = NO_RUNTIME,
) -> None:
    """Re-check a finished evaluation without rerunning any attack: reload the model it
    recorded (its sha256 weight digest must equal the run's) and the same first N images,
    check every stored adversarial example is within the run's eps (its norm) of its image and
    inside [0, 1], run the model on them (a tied top output counts as wrong), and recount: clean
    correct minus verified breaks must equal the reported robust count exactly. Prints the
    recount as JSON; exits with code 2 and one line saying why when anything differs.

    Deterministic models only: a randomized model (EOT, majority vote) is refused in one line,
    since its seeded vote is not guaranteed to draw the same noise elsewhere. Runs written
    before provenance was recorded are refused too: rerun their command into the same --out.
    """
    result = verify_run(run, model=model, model_file=model_file, weights=weights,
                        batch_size=batch_size, **rt._asdict())
    echo_json(result)
    if not result["ok"]:
        raise ValueError(result["reason"])
