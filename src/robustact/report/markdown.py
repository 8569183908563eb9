"""A small Markdown report writer with matplotlib figures.

Why Markdown + PNG: it renders on GitHub, in editors and in notebooks, diffs well in git, and
needs nothing beyond matplotlib. Every figure is saved next to the report and linked relatively,
and the report is written atomically at the end, so a crash never leaves half a report.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustact.core.storage import atomic_write_bytes
from robustact.report.figures import save_png

__all__ = ["Report", "format_table"]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    head = "| " + " | ".join(headers) + " |"
    sep = "|" + "|".join("---" for _ in headers) + "|"
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join([head, sep, *body])


class Report:
    """Collects Markdown blocks and figures, then writes ``<out_dir>/report.md``."""

    def __init__(self, out_dir: str | os.PathLike[str], title: str) -> None:
        self.out_dir = Path(out_dir)
        self.title = title
        self.blocks: list[str] = [f"# {title}"]

    def heading(self, text: str, level: int = 2) -> Report:
        self.blocks.append("#" * level + " " + text)
        return self

    def text(self, text: str) -> Report:
        self.blocks.append(text.strip())
        return self

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> Report:
        self.blocks.append(format_table(headers, rows))
        return self

    def figure(self, fig: Any, name: str, caption: str = "") -> Path:
        """Save a matplotlib ``Figure`` as ``<name>.png`` beside the report and link it.

        Figures are drawn on :class:`matplotlib.figure.Figure` objects, never through pyplot,
        so nothing here touches matplotlib's global backend or figure registry.
        """
        path = save_png(fig, self.out_dir / f"{name}.png")
        link = f"![{caption or name}]({path.name})"
        self.blocks.append(link + (f"\n\n*{caption}*" if caption else ""))
        return path

    def render(self) -> str:
        return "\n\n".join(self.blocks) + "\n"

    def write(self, name: str = "report.md") -> Path:
        return atomic_write_bytes(self.out_dir / name, self.render().encode())
