"""The command line's progress line: bytes done and total, percentage, rate and ETA.

The library reports progress as ``(done, total)`` calls and never prints; the CLI draws
them here, on stderr, only when stderr is a terminal. The line is redrawn at most ten
times a second (a redraw costs a write to the terminal; the callbacks come far more
often), always ends by erasing what a longer earlier line left, and is erased (``\\r`` and
erase-to-end-of-line) whenever a message is written while it is shown
(:meth:`ProgressLine.hidden`), so no message is ever glued onto it.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

__all__ = ["ProgressLine", "Rate", "render"]

_ERASE = "\x1b[K"  # erase from the cursor to the end of the line
_BAR = 30  # the widest bar drawn, in characters
_UNITS = (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3))


class Rate:
    """Bytes per second, smoothed: an exponential moving average over time.

    Each sample (the rate since the previous one) weighs ``1 - exp(-dt / tau)``, so the
    average forgets at the same pace whatever the interval between samples: a stall or a
    burst shows within seconds, but the frame-by-frame jitter of compression does not
    make the ETA jump. The weights are normalized (the average is of the samples alone,
    not of them and an initial zero), so the first value is the rate so far.
    """

    def __init__(self, tau: float = 2.0) -> None:
        self.tau = tau
        self.value: float | None = None
        self._last: tuple[float, int] | None = None
        self._sum = 0.0  # of the weighted samples
        self._weight = 0.0  # of their weights

    def update(self, now: float, done: int) -> float | None:
        """Take the sample *done* bytes at time *now*; return the smoothed rate (None: unknown)."""
        last = self._last
        if last is None:
            self._last = (now, done)
            return None
        dt = now - last[0]
        if dt <= 0:
            return self.value
        keep = math.exp(-dt / self.tau)
        self._sum = self._sum * keep + (1 - keep) * (done - last[1]) / dt
        self._weight = self._weight * keep + (1 - keep)
        self.value = self._sum / self._weight
        self._last = (now, done)
        return self.value


def _unit(n: float) -> tuple[str, float]:
    for name, size in _UNITS:
        if n >= size:
            return name, size
    return "B", 1.0


def _amounts(done: int, total: int) -> str:
    name, size = _unit(total)
    if size == 1:
        return f"{done}/{total} B"
    return f"{done / size:.1f}/{total / size:.1f} {name}"


def _speed(rate: float | None) -> str:
    if rate is None:
        return "-- B/s"
    name, size = _unit(rate)
    return f"{rate:.0f} B/s" if size == 1 else f"{rate / size:.1f} {name}/s"


def _eta(remaining: int, rate: float | None) -> str:
    if remaining <= 0:
        return "0:00"
    if rate is None or rate <= 0:
        return "--:--"
    seconds = math.ceil(remaining / rate)
    if seconds >= 100 * 3600:
        return ">99h"
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def render(label: str, done: int, total: int, rate: float | None, width: int = 80) -> str:
    """The progress line for *done* of *total* bytes at *rate* bytes/s (None: unknown).

    It is at most ``width - 1`` characters: a line as wide as the terminal would wrap on
    some terminals, and ``\\r`` only returns to the start of the last row. The bar is
    narrowed, then left out, to make room for the numbers.
    """
    done = max(done, 0)
    pct = min(100, done * 100 // total) if total > 0 else 100
    tail = (
        f"{pct:3d}%  {_amounts(done, total)}  {_speed(rate)}  "
        f"ETA {_eta(total - done, rate)}"
    )
    room = min(_BAR, width - 1 - len(label) - len(tail) - 4)  # " [", "] "
    if room >= 5:
        fill = room * pct // 100
        return f"{label} [{'#' * fill}{'.' * (room - fill)}] {tail}"
    return f"{label} {tail}"[: max(width - 1, 0)]


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (OSError, ValueError, AttributeError):
        return 80


class ProgressLine:
    """One progress line on *stream* (a terminal), fed by :meth:`update`.

    *clock* and *columns* are parameters so that tests can drive the line without time
    passing or a terminal.
    """

    def __init__(
        self,
        label: str,
        stream: TextIO,
        *,
        clock: Callable[[], float] = time.monotonic,
        columns: int | None = None,
        interval: float = 0.1,
    ) -> None:
        self.label = label
        self.stream = stream
        self.clock = clock
        self.columns = columns
        self.interval = interval
        self.shown = False  # whether the line is on the terminal now
        self._text = ""
        self._drawn_at = -math.inf
        self._rate = Rate()
        self._rate.update(clock(), 0)  # so the first rate drawn is the average since now
        # Messages may come from another thread than the progress calls (log records).
        self._lock = threading.RLock()

    def update(self, done: int, total: int) -> None:
        """The library's progress callback: draw the line if it is due (and at the end)."""
        now = self.clock()
        if now - self._drawn_at < self.interval and done < total:
            return
        with self._lock:
            self._drawn_at = now
            rate = self._rate.update(now, done)
            if not done:
                rate = None  # nothing done yet says nothing about the rate
            width = self.columns if self.columns is not None else _columns(self.stream)
            self._draw(render(self.label, done, total, rate, width))

    def _draw(self, text: str) -> None:
        self.stream.write(f"\r{text}{_ERASE}")
        self.stream.flush()
        self._text = text
        self.shown = True

    def erase(self) -> None:
        """Take the line off the terminal (the cursor stays at the start of its row)."""
        with self._lock:
            if self.shown:
                self.stream.write(f"\r{_ERASE}")
                self.stream.flush()
                self.shown = False

    @contextmanager
    def hidden(self) -> Iterator[None]:
        """Erase the line while a message is written, then draw it again below it."""
        with self._lock:
            was_shown = self.shown
            self.erase()
            try:
                yield
            finally:
                if was_shown:
                    self._draw(self._text)

    def close(self) -> None:
        """The work is over: erase the line for good."""
        self.erase()
