"""The page skeleton shared by the project's HTML reports: one stylesheet, escaped cells and tables.

Pages are self-contained (inline CSS and SVG, no scripts or external assets), so they open from S3, an MLflow
artifact view or a mail attachment alike.
"""

from __future__ import annotations

import html
from typing import Any

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1f2328; }
table { border-collapse: collapse; font-size: 0.9rem; margin: 1rem 0; }
th, td { border: 1px solid #d0d7de; padding: 0.35rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td { background: #ffebe9; }
tr.warning td { background: #fff8c5; }
.passed { color: #1a7f37; }
.failed, .warning { color: #cf222e; }
code { font-family: ui-monospace, monospace; }
"""


def cell(value: Any) -> str:
    """One table cell: numbers right-aligned with 4 significant digits, None as a dash, text escaped."""
    if value is None:
        return "<td>&ndash;</td>"
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, int | float):
        return f'<td class="number">{value:.4g}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def table(header: list[str], rows: list[list[Any]], row_classes: list[str] | None = None) -> str:
    """A table with a header row; ``row_classes`` (e.g. ``failed``) colour whole rows."""
    classes = row_classes or [""] * len(rows)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        f'<tr class="{css}">' + "".join(cell(v) for v in row) + "</tr>" for row, css in zip(rows, classes, strict=True)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, body: str) -> str:
    """A whole HTML document around ``body`` (already HTML); the title is escaped."""
    escaped = html.escape(title)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escaped}</title>\n'
        f"<style>{STYLE}</style>\n</head>\n<body>\n<h1>{escaped}</h1>\n{body}\n</body>\n</html>\n"
    )
