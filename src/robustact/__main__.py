"""``python -m robustact``: the same command line as the ``robustact`` script.

Why: it works where the console script is not on PATH (a venv not activated, a user install),
and it pins the interpreter that runs the command.
"""

from robustact.cli import main

if __name__ == "__main__":
    main()
