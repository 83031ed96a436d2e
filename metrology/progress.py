"""Progress of a long command on stderr: the stage, the iteration and an ETA.

One :class:`Progress` per command. The application layer names each **stage** (``load inputs``,
``fit: start``, ``fit: iterations``, ``uncertainty``, ``report`` ...) and the solver reports each
**iteration** through the callback form ``progress(i, total, loss)``.

* stderr is a terminal: a ``tqdm`` bar per stage (iterations ``i/total``, loss, elapsed and ETA),
  redrawn at least once a second even while a stage makes no callback (a ``tqdm`` bar only redraws
  on an update; the heartbeat thread refreshes it).
* stderr is not a terminal (a pipe, a log file, a CI job): plain lines
  ``inspect 14:05:12 +0:01:23 fit: iterations: 12/40, loss 0.9577, ETA <= 0:02:10``,
  one when a stage has run for :data:`QUIET_S` (1 s: stages that end sooner, such as loading
  inputs that turn out to be bad, print nothing, so an input error stays the one line on stderr),
  then at most one every ``interval_s`` (default 5 s) while iterations arrive, and a heartbeat line
  ``... (still running)`` whenever ``interval_s`` passed without one, so a log never goes silent
  for longer than that.

``METROLOGY_PROGRESS=0`` silences it; ``METROLOGY_PROGRESS=1`` forces the terminal bars.
``METROLOGY_PROGRESS_INTERVAL`` (seconds) changes ``interval_s``.

tqdm (a small, maintained library) draws the terminal bars: it measures the rate, formats the ETA
and handles terminal widths, which the hand-written bar this module replaces did not.
"""

from __future__ import annotations

import os
import sys
import threading
import time

DEFAULT_INTERVAL_S = 5.0
"""Longest silence (seconds) between two plain progress lines when stderr is not a terminal."""
QUIET_S = 1.0
"""A stage's first plain line is written once it has run this long (seconds)."""


def _hms(seconds: float) -> str:
    s = int(max(seconds, 0.0) + 0.5)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _is_tty(stream) -> bool:
    try:
        return bool(getattr(stream, "isatty", lambda: False)())
    except (ValueError, OSError):  # closed stream
        return False


class Progress:
    """Stage and iteration reporter (see the module docstring).

    Parameters
    ----------
    label : str
        Prefix of every line (the command).
    stream : file-like, optional
        Where to write (default ``sys.stderr``).
    interval_s : float, optional
        Longest silence between plain lines (default ``$METROLOGY_PROGRESS_INTERVAL`` or 5 s).
    mode : {"auto", "bar", "lines", "off"}
        ``auto``: bars on a terminal, lines otherwise, ``off`` with ``METROLOGY_PROGRESS=0``.

    Use as a context manager; ``stage(name, total)`` starts a stage; ``progress(i, total, loss)``
    (or :meth:`update`) reports iteration ``i``.
    """

    def __init__(self, label: str = "metrology", stream=None, interval_s: float | None = None, mode: str = "auto"):
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        env = os.environ.get("METROLOGY_PROGRESS", "")
        if interval_s is None:
            interval_s = float(os.environ.get("METROLOGY_PROGRESS_INTERVAL", DEFAULT_INTERVAL_S))
        self.interval_s = max(float(interval_s), 0.05)
        if mode == "auto":
            mode = "off" if env == "0" else "bar" if (env == "1" or _is_tty(self.stream)) else "lines"
        if mode not in ("bar", "lines", "off"):
            raise ValueError(f"mode must be auto, bar, lines or off, got {mode!r}")
        self.mode = mode
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._stage = ""
        self._stage_t0 = self._t0
        self._total = None
        self._i = None
        self._loss = None
        self._last_line = -1e9
        self._pending = False
        self._printed = False
        self._early_stop = False
        self._updated = False
        self._bar = None
        self._stop = threading.Event()
        self._thread = None
        if self.mode != "off":
            self._thread = threading.Thread(target=self._heartbeat, name="metrology-progress", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ reporting
    def stage(self, name: str, total: int | None = None, early_stop: bool = False) -> None:
        """Start stage ``name`` (``total`` iterations when known; ``early_stop``: the stage may end
        before ``total``, as a converging solver does, so the ETA is an upper bound)."""
        with self._lock:
            self._close_bar()
            self._stage, self._total, self._i, self._loss = str(name), total, None, None
            self._early_stop = bool(early_stop)
            self._stage_t0 = time.monotonic()
            self._pending = True
            if self.mode == "bar":
                self._open_bar()

    def update(self, i: int, total: int | None = None, loss: float | None = None) -> None:
        """Iteration ``i`` (of ``total``) is done; ``loss`` its objective value."""
        with self._lock:
            if total is not None and total != self._total:
                self._total = int(total)
                if self._bar is not None:
                    self._bar.total = self._total
            self._i, self._loss = int(i), (None if loss is None else float(loss))
            self._updated = True
            if self._bar is not None:
                self._bar.n = self._i
                if self._loss is not None:
                    self._bar.set_postfix_str(f"loss {self._loss:.6g}", refresh=False)
                self._bar.refresh()
            elif self.mode == "lines":
                self._maybe_line()

    def __call__(self, i: int, total: int | None = None, loss: float | None = None) -> None:
        """Callback form for the solver and the simulator: ``progress(i, total, loss)``."""
        self.update(i, total, loss)

    def close(self) -> None:
        """Stop the heartbeat and finish the last bar (idempotent)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        with self._lock:
            self._close_bar()
            if self.mode == "lines" and self._printed:
                self._write(f"{self._prefix()} done")
            self._stage = ""

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _prefix(self) -> str:
        now = time.monotonic()
        return f"{self.label} {time.strftime('%H:%M:%S')} +{_hms(now - self._t0)}"

    def _status(self) -> str:
        text = self._stage
        if self._i is not None:
            text += f": {self._i}/{self._total}" if self._total else f": {self._i}"
            if self._loss is not None:
                text += f", loss {self._loss:.6g}"
            if self._total and self._i > 0 and self._i < self._total:
                per = (time.monotonic() - self._stage_t0) / self._i
                eta = _hms(per * (self._total - self._i))
                text += f", ETA <= {eta} (stops early when converged)" if self._early_stop else f", ETA {eta}"
        return text

    def _line(self, suffix: str = "") -> None:
        self._write(f"{self._prefix()} {self._status()}{suffix}")
        self._pending = False
        self._printed = True
        self._updated = False

    def _maybe_line(self, heartbeat: bool = False) -> None:
        """Plain mode: the stage's first line after :data:`QUIET_S`, then one per ``interval_s``."""
        now = time.monotonic()
        if self._pending:
            if now - self._stage_t0 >= QUIET_S:
                self._line()
        elif now - self._last_line >= self.interval_s:
            # "still running": nothing new since the last line (a stage that reports no iterations)
            self._line(" (still running)" if heartbeat and not self._updated else "")

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except (ValueError, OSError):  # closed or broken stream: progress must never fail a run
            pass
        self._last_line = time.monotonic()

    def _open_bar(self) -> None:
        # lazy: tqdm loads only when a terminal bar is drawn (start-up time of the CLI)
        from tqdm import tqdm

        self._bar = tqdm(total=self._total, desc=f"{self.label}: {self._stage}", file=self.stream, leave=True,
                         dynamic_ncols=True, mininterval=0.2, unit="it")

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _heartbeat(self) -> None:
        tick = min(QUIET_S / 2, self.interval_s / 2)
        while not self._stop.wait(tick):
            with self._lock:
                if not self._stage:
                    continue
                if self._bar is not None:
                    self._bar.refresh()  # keeps the elapsed time moving through silent stages
                elif self.mode == "lines":
                    self._maybe_line(heartbeat=True)


class _Silent:
    """A reporter that reports nothing."""

    def stage(self, name: str, total: int | None = None, early_stop: bool = False) -> None:
        pass

    def __call__(self, i: int, total: int | None = None, loss: float | None = None) -> None:
        pass


class _CallbackOnly(_Silent):
    """Wraps a plain ``callback(i, total, loss)``: iterations go to it, stages are dropped."""

    def __init__(self, callback):
        self._callback = callback

    def __call__(self, i: int, total: int | None = None, loss: float | None = None) -> None:
        self._callback(i, total, loss)


def reporter(progress):
    """Any ``progress`` argument as an object with ``stage(name, total)`` and ``(i, total, loss)``.

    ``None`` reports nothing; a :class:`Progress` (or anything with a ``stage`` method) is used as
    is; a plain callable receives the iterations only.
    """
    if progress is None:
        return _Silent()
    if hasattr(progress, "stage"):
        return progress
    return _CallbackOnly(progress)
