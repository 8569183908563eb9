"""The size ratchet: no module under src/ over 600 lines, no function over 80 (issue 19, item 7).

Why a test: a module or a function past these sizes is where cohesion has already been lost (the
audit's checks grew to 830 lines, Square's search loop to 100), and nobody splits one during a
feature change. Checked on every run, the limits only ever ratchet down.

A function is measured from its ``def`` line to its last line (decorators excluded; methods and
nested functions each count on their own, inside their parent's count too). ``ALLOWED`` may
excuse an item, but only where splitting would hurt, each with the reason; an entry that no
longer exceeds its limit fails the test, so the list can only shrink.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80

#: ``"path"`` or ``"path::qualname"`` (path relative to the repository root) → why splitting it
#: would hurt. Empty: every item fits.
ALLOWED: dict[str, str] = {}


FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


def _functions(node: ast.AST, prefix: str = "") -> Iterator[tuple[str, FunctionNode]]:
    """Every function under ``node`` with its qualified name (``Class.method``,
    ``outer.<locals>.inner``, as ``__qualname__`` spells it)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = prefix + child.name
            yield name, child
            yield from _functions(child, name + ".<locals>.")
        elif isinstance(child, ast.ClassDef):
            yield from _functions(child, prefix + child.name + ".")
        else:  # functions defined under if/try/with blocks
            yield from _functions(child, prefix)


def oversized(root: Path, base: Path | None = None) -> dict[str, tuple[int, int]]:
    """Every module and function under ``root`` past its limit: key (as in ``ALLOWED``, relative
    to ``base``) → (lines, limit)."""
    base = base if base is not None else root
    found: dict[str, tuple[int, int]] = {}
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(base).as_posix()
        n = len(text.splitlines())
        if n > MAX_MODULE_LINES:
            found[rel] = (n, MAX_MODULE_LINES)
        if n <= MAX_FUNCTION_LINES:  # no function can be longer than its module
            continue
        for name, fn in _functions(ast.parse(text, filename=str(path))):
            size = (fn.end_lineno or fn.lineno) - fn.lineno + 1
            if size > MAX_FUNCTION_LINES:
                found[f"{rel}::{name}"] = (size, MAX_FUNCTION_LINES)
    return found


def _describe(items: dict[str, tuple[int, int]]) -> str:
    return "\n".join(f"  {k}: {n} lines (limit {lim})" for k, (n, lim) in sorted(items.items()))


def test_allowlist_entries_give_a_reason() -> None:
    bad = [k for k, why in ALLOWED.items() if not isinstance(why, str) or not why.strip()]
    assert not bad, f"allowlist entries without a reason: {bad}"


def test_no_module_or_function_over_the_limits() -> None:
    over = oversized(SRC, ROOT)
    offenders = {k: v for k, v in over.items() if k not in ALLOWED}
    stale = sorted(k for k in ALLOWED if k not in over)
    msg = []
    if offenders:
        msg.append(f"over the size limits (split them into cohesive pieces):\n"
                   f"{_describe(offenders)}")
    if stale:
        msg.append("allowlisted but no longer over a limit (delete the entries):\n  "
                   + "\n  ".join(stale))
    assert not msg, "\n".join(msg)


def test_the_ratchet_sees_long_modules_and_functions(tmp_path: Path) -> None:
    # A method, a nested and an async function just past 80 lines, decorators not counted, and
    # a module past 600 lines: each is named with its count; items at the limit are not.
    body = "    x = 1\n" * 79

    def fn(name: str, extra: int = 0, indent: str = "") -> str:
        return (f"{indent}def {name}():\n"
                + "".join(indent + ln + "\n" for ln in (body + "    x = 2\n" * extra).splitlines()))

    src = ("import functools\n\n@functools.cache\n@functools.cache\n" + fn("at_limit")
           + "\nclass C:\n" + fn("method", 1, "    ")
           + "\ndef outer():\n" + fn("inner", 1, "    ") + "    return inner\n"
           + "\nif True:\n    async " + fn("hidden", 1, "    ").lstrip())
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(src)
    (tmp_path / "pkg" / "long.py").write_text("x = 1\n" * 601)
    (tmp_path / "pkg" / "ok.py").write_text("x = 1\n" * 600)
    assert oversized(tmp_path) == {
        "pkg/m.py::C.method": (81, 80),
        "pkg/m.py::outer": (83, 80),
        "pkg/m.py::outer.<locals>.inner": (81, 80),
        "pkg/m.py::hidden": (81, 80),
        "pkg/long.py": (601, 600),
    }
