"""Progress of long jobs, the one helper: a tqdm bar on a terminal, a plain line every
``interval`` seconds when stderr is not a terminal (CI logs, ``| tee``), nothing under
``--quiet`` (``platform/core/cli.py`` calls ``set_quiet``).

Progress goes to stderr: stdout carries each job's results (JSON, tables, the last-line path).
``console`` is the one way a job prints a short status line (pretraining's per-step line,
checkpoint saves): inside a Ray Train worker it tags the line so the driver prints it without
Ray's ``(RayTrainWorker pid=...)`` prefix while every other worker line goes to the log file.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

T = TypeVar("T")
_QUIET = False
# Set in Ray Train workers' environment (``ankh_platform.train.job.worker_env``): ``console``
# prints to stdout with this tag, which the driver's Ray log handler recognises.
WORKER_CONSOLE_ENV = "ANKH_WORKER_CONSOLE"
CONSOLE_TAG = "[ankh-console] "


def set_quiet(quiet: bool) -> None:
    """``--quiet``: no bars, no progress lines (warnings and errors still print)."""
    global _QUIET
    _QUIET = bool(quiet)


def is_quiet() -> bool:
    return _QUIET


def format_duration(seconds: float) -> str:
    """``72`` -> ``1m12s``; ``7380`` -> ``2h03m``; ``9`` -> ``9s``."""
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def console(line: str, stream: TextIO | None = None) -> None:
    """Print one short status line for people (stderr; tagged stdout inside a Ray worker)."""
    if _QUIET:
        return
    if os.environ.get(WORKER_CONSOLE_ENV) == "1" and stream is None:
        print(CONSOLE_TAG + line, flush=True)
        return
    print(line, file=stream or sys.stderr, flush=True)


class Progress:
    """``with Progress("embed", total=n, unit="rows") as p: ... p.update(k)``.

    ``stream`` defaults to stderr; a stream whose ``isatty()`` is true gets a tqdm bar, any other
    a plain ``desc: 120/300 rows (40%) | 12.3 rows/s | ETA 15s`` line at most every
    ``interval`` seconds and a last ``done`` line on close.
    """

    def __init__(
        self,
        desc: str,
        total: int | None = None,
        unit: str = "it",
        stream: TextIO | None = None,
        interval: float = 30.0,
    ):
        self.desc, self.total, self.unit, self.interval = desc, total, unit, interval
        self.stream = stream or sys.stderr
        self.n = 0
        self.enabled = not _QUIET
        self.bar = None
        self._t0 = self._last = time.monotonic()
        if self.enabled and _isatty(self.stream):
            from tqdm import tqdm

            # A pty that reports a 0 x 0 size (script, some CI runners) would hide the bar.
            size = shutil.get_terminal_size((100, 24))
            self.bar = tqdm(
                total=total,
                desc=desc,
                unit=f" {unit}",
                file=self.stream,
                ncols=size.columns or 100,
                nrows=size.lines or 24,
                mininterval=0.5,
                leave=True,
            )

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._line(now)

    def _line(self, now: float) -> None:
        elapsed = max(now - self._t0, 1e-9)
        rate = self.n / elapsed
        parts = [
            f"{self.desc}: {self.n:,}"
            + (f"/{self.total:,}" if self.total else "")
            + f" {self.unit}"
            + (f" ({100 * self.n / self.total:.0f}%)" if self.total else ""),
            # slow work (trials of a sweep): time per item reads better than 0.0/s
            f"{rate:,.1f} {self.unit}/s"
            if rate >= 1 or not self.n
            else f"{format_duration(1 / rate)}/{self.unit.rstrip('s')}",
        ]
        if self.total and rate > 0:
            parts.append(f"ETA {format_duration((self.total - self.n) / rate)}")
        print(" | ".join(parts), file=self.stream, flush=True)

    def close(self, stopped: bool = False) -> None:
        """The last line: ``done`` (or ``stopped`` when the work ended by an error)."""
        if not self.enabled:
            return
        self.enabled = False
        if self.bar is not None:
            self.bar.close()
            return
        elapsed = time.monotonic() - self._t0
        print(
            f"{self.desc}: {'stopped' if stopped else 'done'}, {self.n:,} {self.unit} in "
            f"{format_duration(elapsed)}",
            file=self.stream,
            flush=True,
        )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(stopped=exc_type is not None)


def track(
    items: Iterable[T], desc: str, total: int | None = None, unit: str = "it", **kwargs: Any
) -> Iterator[T]:
    """``for x in track(xs, "parents", total=len(xs)): ...`` -- one update per item."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(desc, total, unit, **kwargs) as p:
        for item in items:
            yield item
            p.update()


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or exotic stream: plain lines
        return False
