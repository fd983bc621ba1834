"""Progress of long loops: a live bar on a terminal, a log line every so often everywhere else.

    with progress(total=len(batches), desc="evaluate base seed 0", unit="step") as bar:
        for batch in batches:
            ...
            bar.update(1)

Shown by the main process only. The mode comes from `set_mode` (flows/ sets `log` while Prefect
captures the logs: a bar's carriage returns would garble the run log) or `$DAPT_PROGRESS`:

- `auto` (default): a tqdm bar when stderr is a terminal, else log lines;
- `bar`, `log`: always that; `off`: nothing.

Log lines (`desc: 120/500 step (24%), 3.1 step/s, about 2 min left`) come every `log_every_s` seconds
(default 30, `$DAPT_PROGRESS_EVERY_S`) and once at the end, so a job in a log file is never silent for
minutes and never floods it.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

from pretrain.core.logs import get_logger, is_main_process

log = get_logger(__name__)

MODES = ("auto", "bar", "log", "off")
_mode: str | None = None


def set_mode(mode: str | None) -> None:
    """Force a mode for this process (None: back to `$DAPT_PROGRESS`, else `auto`)."""
    if mode is not None and mode not in MODES:
        raise ValueError(f"progress mode {mode!r} is not one of {MODES}")
    global _mode
    _mode = mode


def mode() -> str:
    chosen = _mode or os.environ.get("DAPT_PROGRESS", "auto")
    if chosen not in MODES:
        chosen = "auto"
    if chosen == "auto":
        return "bar" if sys.stderr.isatty() else "log"
    return chosen


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _scaled(value: float, unit: str) -> str:
    """`value` with an SI prefix: 950 B, 12.3 MB, 1.02 GB."""
    for prefix, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


class Progress:
    """`update(n)`, `set_postfix(**figures)`, `close()`; also a context manager."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", initial: int = 0,
                 log_every_s: float | None = None, unit_scale: bool = False):  # fmt: skip
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.unit_scale = unit_scale
        self.postfix: dict[str, Any] = {}
        shown = mode() if is_main_process() else "off"
        self._bar = None
        self._log = shown == "log"
        if shown == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit_scale, dynamic_ncols=True, mininterval=0.5)
        every = log_every_s if log_every_s is not None else float(os.environ.get("DAPT_PROGRESS_EVERY_S", "30"))
        self._every = max(every, 0.0)
        self._started = self._last = time.monotonic()
        self._initial = initial
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._log and time.monotonic() - self._last >= self._every:
            self._log_line()

    def set_postfix(self, **figures: Any) -> None:
        self.postfix = figures
        if self._bar is not None:
            self._bar.set_postfix(**figures)

    def line(self) -> str:
        """`desc: n/total unit (pct), rate, time left, figures`: what a log line says."""
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rate = (self.n - self._initial) / elapsed
        if self.unit_scale:  # bytes and the like: 12.3 MB/1.02 GB, 7.5 MB/s
            parts = [f"{self.desc}: {_scaled(self.n, self.unit)}" + (f"/{_scaled(self.total, self.unit)}" if self.total else "")]
            speed = f"{_scaled(rate, self.unit)}/s"
        else:
            parts = [f"{self.desc}: {self.n:,}" + (f"/{self.total:,}" if self.total else "") + f" {self.unit}"]
            speed = f"{rate:.3g} {self.unit}/s"
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(speed)
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"about {_duration((self.total - self.n) / rate)} left")
        elif self.n >= (self.total or math.inf):
            parts.append(f"{_duration(elapsed)}")
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        return ", ".join(parts)

    def _log_line(self) -> None:
        self._last = time.monotonic()
        log.info("%s", self.line())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self._log and self.n > self._initial:
            self._log_line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(total: int | None, desc: str, unit: str = "it", initial: int = 0, log_every_s: float | None = None,
             unit_scale: bool = False) -> Progress:  # fmt: skip
    """A progress display for a loop of `total` units (see the module docstring for where it shows)."""
    return Progress(total, desc, unit, initial, log_every_s, unit_scale)
