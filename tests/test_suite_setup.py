"""The test suite's own set-up: a missing test-only dependency fails loudly, in one line.

torchattacks is installed by scripts/setup.sh (``--no-deps``), not by the ``test`` extra, so
``pip install -e ".[test]"; pytest`` runs without it. Both cross-check files must then stop the
run (never skip) with one line naming what to install. The check runs pytest in a subprocess
whose ``import torchattacks`` fails: a shim package on PYTHONPATH raises the same error as a
missing install.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pytest_without_torchattacks(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    shim = tmp_path / "shim" / "torchattacks"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'torchattacks'\", name='torchattacks')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(tmp_path / "shim"), env.get("PYTHONPATH", "")) if p)
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_missing_torchattacks_stops_both_crosscheck_files_with_one_line(tmp_path: Path) -> None:
    proc = _pytest_without_torchattacks(tmp_path, "tests/test_crosscheck_minnorm.py",
                                        "tests/test_crosscheck_torchattacks.py")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output  # not a skip: the run fails
    lines = [line for line in output.splitlines() if "torchattacks" in line]
    assert len(lines) == 1, output
    assert "pip install --no-deps torchattacks" in lines[0]
    assert "scripts/setup.sh" in lines[0]
    assert "Traceback" not in output and "passed" not in output and "skipped" not in output


@pytest.mark.parametrize("name", ["test_crosscheck_minnorm.py", "test_crosscheck_torchattacks.py"])
def test_each_crosscheck_test_takes_torchattacks_from_the_fixture(name: str) -> None:
    """Both files get the module the same way, so each alone fails as above: every test asks for
    the ``torchattacks`` fixture, and nothing imports or skips on torchattacks itself."""
    tree = ast.parse((ROOT / "tests" / name).read_text())
    tests = [f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name.startswith("test_")]
    assert tests
    for f in tests:
        assert "torchattacks" in [a.arg for a in f.args.args], f"{name}::{f.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert all(a.name != "torchattacks" for a in node.names), name
        if isinstance(node, ast.ImportFrom):
            assert node.module != "torchattacks", name
        if isinstance(node, ast.Attribute):
            assert node.attr != "importorskip", name
