"""Readable reports: Markdown with matplotlib figures."""

from robustact.report.markdown import Report, format_table

__all__ = ["Report", "format_table"]
