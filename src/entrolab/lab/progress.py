"""Progress for long runs: a tqdm bar on a terminal; off a terminal (a log file, CI, a cluster job) plain lines at a
bounded rate, each with the count, the elapsed time, the ETA and what the caller adds (entropy, accuracy, loss)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["INTERVAL_S", "LineProgress", "progress_bar"]

INTERVAL_S = 30.0
"""At most one progress line per this many seconds off a terminal (the last step always prints)."""


def _clock(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class LineProgress:
    """``update(n, detail)`` counts ``n`` units and, at most every ``interval`` seconds (and at the end), says
    ``"{label}: {done}/{total} ({pct}%), {elapsed} elapsed, ETA {eta}, {detail}"``."""

    def __init__(
        self,
        total: int,
        *,
        say: Callable[[str], None],
        label: str,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.say, self.label, self.clock = max(int(total), 0), say, label, clock
        self.interval = INTERVAL_S if interval is None else interval
        self.done = 0
        self.t0 = self.last = clock()
        self._start_done = 0
        self._detail = ""

    def update(self, n: int = 1, detail: str = "") -> None:
        self.done += n
        self._detail = detail or self._detail
        now = self.clock()
        if now - self.last >= self.interval or (self.total and self.done >= self.total):
            self.last = now
            self.say(self.line(now))

    def line(self, now: float) -> str:
        elapsed = now - self.t0
        rate = (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0
        eta = _clock((self.total - self.done) / rate) if rate > 0 else "?"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        tail = f", {self._detail}" if self._detail else ""
        return f"{self.label}: {self.done}/{self.total} ({pct:.0f}%), {_clock(elapsed)} elapsed, ETA {eta}{tail}"

    def skip(self, n: int) -> None:
        """Count ``n`` units done before this process started (a resume): they do not enter the rate."""
        self.done += n
        self._start_done += n

    def close(self) -> None:
        pass


class _Tqdm:
    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="step", dynamic_ncols=True)

    def update(self, n: int = 1, detail: str = "") -> None:
        self.bar.update(n)
        if detail:
            self.bar.set_postfix_str(detail)

    def skip(self, n: int) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


class _Silent:
    def update(self, n: int = 1, detail: str = "") -> None:
        pass

    def skip(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, *, mode: bool | None, tty: bool, say: Callable[[str], None], label: str) -> Any:
    """``mode`` None (auto): a tqdm bar on a terminal, bounded-rate lines otherwise; True: the bar (lines when tqdm is
    missing); False: nothing."""
    if mode is False:
        return _Silent()
    if mode is True or tty:
        try:
            return _Tqdm(total)
        except ImportError:
            pass
    return LineProgress(total, say=say, label=label)
