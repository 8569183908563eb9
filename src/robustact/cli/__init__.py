"""``robustact`` command line: each command parses its arguments, calls one library function
(:mod:`robustact.runs`) and prints. Nothing here is needed to use robustact from Python.

One module per command group: :mod:`.train`, :mod:`.defend` (retrofit, defend, tune-jump),
:mod:`.evaluate` (eval, attack, evaluate, merge, protocols, leaderboard), :mod:`.audit` (audit
calibrate), :mod:`.reproduce`, :mod:`.grid` and :mod:`.demo`; the group itself, its error
handling and the shared options live in :mod:`.app`.
"""

from robustact.cli import (  # noqa: F401  (registers the commands)
    audit,
    certify,
    defend,
    demo,
    evaluate,
    export,
    grid,
    reproduce,
    train,
    verify,
)
from robustact.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    app()
