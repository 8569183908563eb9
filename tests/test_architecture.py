"""The package's layering and import hygiene, checked by tools rather than by review.

Why tests: import-linter's contracts in ``pyproject.toml`` keep lower layers from importing upper
ones; running them here puts the check in ``make test`` and CI. The function-local import rule
keeps cycles from being papered over with imports hidden inside functions.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "robustact"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

#: The marker a function-local import needs on its line: why it may not sit at the top.
LAZY_MARK = "# lazy:"


def _lint_imports(*args: str) -> subprocess.CompletedProcess[str]:
    assert LINT_IMPORTS.exists(), (
        f"{LINT_IMPORTS} is missing: install the test extra (pip install -e '.[test]'), "
        "which brings import-linter")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_import_contracts_hold() -> None:
    res = _lint_imports()
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


def test_import_contracts_can_fail(tmp_path: Path) -> None:
    # The same linter must flag a real upward import: data imports core, so declaring core
    # above data is a contract the package breaks.
    cfg = tmp_path / "upside_down.toml"
    cfg.write_text('[tool.importlinter]\nroot_package = "robustact"\n\n'
                   '[[tool.importlinter.contracts]]\nname = "upside down"\ntype = "layers"\n'
                   'layers = ["robustact.core", "robustact.data"]\n')
    res = _lint_imports("--config", str(cfg))
    assert res.returncode != 0 and "BROKEN" in res.stdout, res.stdout[-2000:]


def _local_imports(path: Path) -> list[tuple[int, str]]:
    """(line, source) of every import inside a function body that lacks the lazy marker."""
    text = path.read_text()
    lines = text.splitlines()
    found = []
    for fn in ast.walk(ast.parse(text)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                src = lines[node.lineno - 1]
                if LAZY_MARK not in src:
                    found.append((node.lineno, src.strip()))
    return found


def test_no_function_local_imports_without_reason() -> None:
    offenders = [f"{p.relative_to(ROOT)}:{line}: {src}"
                 for p in sorted(SRC.rglob("*.py")) for line, src in _local_imports(p)]
    assert not offenders, (
        "imports inside functions hide cycles; move them to the top of the module, or, to defer "
        f"a heavy optional dependency, mark the line '{LAZY_MARK} <why>':\n" + "\n".join(offenders))


def test_local_import_check_sees_a_hidden_import(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("def g():\n    import json\n    return json\n\n"
                 "def h():\n    import pyarrow  # lazy: optional dependency\n")
    assert _local_imports(f) == [(2, "import json")]
