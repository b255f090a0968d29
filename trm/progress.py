"""Progress of long work (evaluation, the vote, dataset builds): one log line every few seconds with
the count, rate and ETA. Logging only, so it is quiet under tests and visible in a run's log."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("trm.progress")


def fmt_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """`with Progress("eval", total, unit="rows") as p: ... p.update(k)` logs at most every `every` s."""

    def __init__(
        self, label: str, total: int, unit: str = "items", every: float = 10.0, logger: logging.Logger | None = None
    ):
        self.label, self.total, self.unit, self.every = label, total, unit, every
        self.log = logger or log
        self.done = 0
        self.t0 = self.last = time.monotonic()

    def update(self, k: int = 1) -> None:
        self.done += k
        now = time.monotonic()
        if now - self.last >= self.every and self.done < self.total:
            self.last = now
            self.log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.t0, 1e-9)
        rate = self.done / elapsed
        pct = 100.0 * self.done / max(self.total, 1)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta_s = fmt_time(eta) if eta != float("inf") else "?"
        return (
            f"{self.label}: {self.done:,}/{self.total:,} {self.unit} ({pct:.0f}%) | "
            f"{rate:,.1f} {self.unit}/s | ETA {eta_s}"
        )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None and time.monotonic() - self.t0 >= self.every:
            self.log.info(
                "%s: %s %s in %s", self.label, f"{self.done:,}", self.unit, fmt_time(time.monotonic() - self.t0)
            )
