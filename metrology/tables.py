"""Plain-text tables for the terminal (``audit list``, the batch summary)."""

from __future__ import annotations


def format_table(rows: list) -> str:
    """Aligned plain-text table; ``rows[0]`` is the header."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
