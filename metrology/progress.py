"""A tiny progress bar on stderr.

It draws only when the stream is a terminal, or when the environment variable
``METROLOGY_PROGRESS=1`` forces it (for logs and tests); otherwise every call is a no-op, so
library code can report progress unconditionally.
"""

from __future__ import annotations

import os
import sys
import time


class ProgressBar:
    """Text progress bar ``label [#####.....]  12/225``.

    Parameters
    ----------
    total : int
        Number of steps.
    label : str
        Text in front of the bar.
    stream : file-like, optional
        Where to draw (default ``sys.stderr``).
    width : int
        Bar width in characters.

    Use ``update(n)`` / ``close()``, as a context manager, or as a callback ``bar(i, total)``
    (``i`` steps done out of ``total``).
    """

    def __init__(self, total: int, label: str = "", stream=None, width: int = 30):
        self.total = max(int(total), 0)
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self.width = width
        self.done = 0
        self._last_draw = 0.0
        self._closed = False
        forced = os.environ.get("METROLOGY_PROGRESS", "") == "1"
        isatty = getattr(self.stream, "isatty", lambda: False)
        try:
            tty = bool(isatty())
        except (ValueError, OSError):  # closed stream
            tty = False
        self.enabled = forced or tty

    def update(self, n: int = 1) -> None:
        """Advance by ``n`` steps and redraw (at most ~10 times per second, always at the end)."""
        self.done = min(self.done + int(n), self.total) if self.total else self.done + int(n)
        self._draw()

    def __call__(self, i: int, total: int | None = None) -> None:
        """Callback form: ``i`` steps done out of ``total``."""
        if total is not None:
            self.total = int(total)
        self.done = int(i)
        self._draw()

    def _draw(self, force: bool = False) -> None:
        if not self.enabled or self._closed:
            return
        now = time.monotonic()
        if not force and self.done < self.total and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        frac = self.done / self.total if self.total else 1.0
        filled = int(round(frac * self.width))
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total}")
        self.stream.flush()

    def close(self) -> None:
        """Finish the line (idempotent)."""
        if self._closed:
            return
        if self.enabled:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
        self._closed = True

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
