"""Progress a person can read, for every long job: done / total, rate, ETA, elapsed, on one line.

    bootstrap: rows 4200/10000 (42.0%), 35.2 rows/s, ETA 2m45s, elapsed 1m59s, shards committed 4/10
    train caption: steps 120/500 (24.0%), 1.9 s/step, ETA 12m02s, elapsed 3m48s

Written to a terminal, the line is rewritten in place (at most twice a second). Anywhere else (a
file, `ray job logs`, a Ray worker's stdout) it is a plain line every `every` seconds: no bars, no
carriage returns, so that a log stays readable. One class for the bootstrap, training, rounds and
the vision warm-up, so the lines read alike.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

TERMINAL_SECONDS = 0.5


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
    """Counts `done` of `total` `unit`s; `update()` reports when `every` seconds have passed.

    `log` receives whole lines (e.g. print, a logger); without one, the lines go to `stream`
    (default stderr), rewritten in place when it is a terminal. `suffix()` adds the caller's own
    counters to each line."""

    def __init__(self, label: str, total: int, unit: str = "rows", *, log: Callable[[str], None] | None = None,
                 every: float = 10.0, suffix: Callable[[], str] | None = None, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, done: int = 0):
        self.label, self.total, self.unit = label, total, unit
        self.log, self.suffix, self.clock = log, suffix, clock
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = log is None and _is_terminal(self.stream)
        self.every = TERMINAL_SECONDS if self.terminal else every
        self.start = self.last = clock()
        self.done = self.first = done  # a resumed job starts at what it had done: the rate counts from there
        self._in_place = False
        self._shown: int | None = None  # `done` of the last line emitted

    # -- numbers ---------------------------------------------------------------------------
    def rate(self) -> float:
        """Units per second since the start."""
        elapsed = self.clock() - self.start
        return (self.done - self.first) / elapsed if elapsed > 0 else 0.0

    def eta_seconds(self) -> float | None:
        left = max(self.total - self.done, 0)
        if not left:
            return 0.0
        rate = self.rate()
        return left / rate if rate > 0 else None

    def line(self) -> str:
        rate, eta = self.rate(), self.eta_seconds()
        share = 100.0 * self.done / self.total if self.total else 100.0
        unit = self.unit.rstrip("s") or self.unit
        # a slow unit (a training step, a rounds stage) reads better as seconds per unit
        speed = f"{rate:.2f} {self.unit}/s" if rate >= 0.1 or rate == 0 else f"{1 / rate:.1f} s/{unit}"
        text = (f"{self.label}: {self.unit} {self.done}/{self.total} ({share:.1f}%), {speed}, "
                f"ETA {duration(eta) if eta is not None else '?'}, elapsed {duration(self.clock() - self.start)}")
        return f"{text}, {self.suffix()}" if self.suffix else text

    # -- reporting -------------------------------------------------------------------------
    def update(self, n: int = 0, force: bool = False) -> None:
        self.done += n
        now = self.clock()
        if force or now - self.last >= self.every:
            self.last = now
            self._shown = self.done
            self.emit(self.line())

    def emit(self, line: str) -> None:
        if self.log is not None:
            self.log(line)
        elif self.terminal:
            self.stream.write("\r" + line + "\x1b[K")
            self.stream.flush()
            self._in_place = True
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        """The final line (unless the last one said the same); on a terminal, ends the line
        rewritten in place."""
        if self._shown != self.done:
            self.update(force=True)
        if self._in_place:
            self.stream.write("\n")
            self.stream.flush()
            self._in_place = False


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream without a descriptor
        return False
