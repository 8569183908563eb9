"""Readable reports: per-evaluation JSON, Markdown and self-contained HTML; the leaderboard."""

from robustact.report.evaluation import (
    evaluation_record,
    keep_earlier_audit,
    summary_view,
    write_reports,
    write_views,
)
from robustact.report.figures import Curve
from robustact.report.leaderboard import write_leaderboard
from robustact.report.markdown import Report, format_table

__all__ = ["Curve", "Report", "evaluation_record", "format_table", "keep_earlier_audit",
           "summary_view", "write_leaderboard", "write_reports", "write_views"]
