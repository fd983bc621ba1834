"""Running shard tasks on this machine's cores, with progress in MB/s (pretrain.core.progress: a bar on a
terminal, a log line every 30 s elsewhere).

The ingest and tokens stages cut their work into shards; run alone (`python -m pretrain.ingest`) they
run them here: in a pool of worker processes (spawned: each imports only what its shards need), or in
this process when there is too little input to pay for starting them. Under Prefect, flows/ runs the
same shard functions as tasks instead. Workers report bytes done through `report_progress`.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import multiprocessing
import os
from typing import Any, Callable, Iterator

from pretrain.core.logs import setup_logging
from pretrain.core.progress import Progress, progress

# Less input than this is processed in this process: starting worker processes (each importing the
# libraries) would cost more than it saves.
IN_PROCESS_BYTES = 16 << 20

_progress: Callable[[int], None] | None = None


def report_progress(nbytes: int) -> None:
    """Called by shard code as it goes: `nbytes` more input done."""
    if _progress is not None and nbytes:
        _progress(nbytes)


@contextlib.contextmanager
def progress_to(callback: Callable[[int], None]) -> Iterator[None]:
    """Send this process's progress reports to `callback` (e.g. a tqdm bar's update) for a while."""
    global _progress
    previous, _progress = _progress, callback
    try:
        yield
    finally:
        _progress = previous


def progress_bar(total: int, desc: str) -> Progress:
    """Progress of `total` bytes of input."""
    return progress(total, desc, unit="B", unit_scale=True)


def in_process(workers: int | None, total_bytes: int, shards: int) -> bool:
    """Whether to run the shards here: one worker asked for, a single shard, or little input unless
    the user asked for workers."""
    return workers == 1 or shards <= 1 or (workers is None and total_bytes < IN_PROCESS_BYTES)


def run_local(fn: Callable[..., Any], calls: list[tuple], sizes: list[int], workers: int | None, desc: str,
              force_in_process: bool = False, env: dict[str, str] | None = None) -> list[Any]:  # fmt: skip
    """fn(*call) for every call, on every core (or here), with a progress bar; results in order.

    The first failure cancels what has not started and is raised.
    """
    total = sum(sizes)
    with progress_bar(total, desc) as bar:
        if force_in_process or in_process(workers, total, len(calls)):
            with progress_to(bar.update):
                return [fn(*call) for call in calls]
        context = multiprocessing.get_context("spawn")
        counter = context.Value("q", 0)
        count = min(workers or os.cpu_count() or 1, len(calls))
        with futures.ProcessPoolExecutor(count, mp_context=context, initializer=_init_worker, initargs=(counter, env or {})) as pool:
            running = [pool.submit(fn, *call) for call in calls]
            while True:
                done, waiting = futures.wait(running, timeout=0.5, return_when=futures.FIRST_EXCEPTION)
                bar.update(min(counter.value, total) - bar.n)
                failed = [f for f in done if f.exception() is not None]
                if failed:
                    for f in waiting:
                        f.cancel()
                    raise failed[0].exception()
                if not waiting:
                    return [f.result() for f in running]


def _init_worker(counter, env: dict[str, str]) -> None:
    os.environ.update(env)
    setup_logging(quiet_transformers=False)  # a shard worker loads no model: no transformers import

    def add(nbytes: int) -> None:
        with counter.get_lock():
            counter.value += nbytes

    global _progress
    _progress = add
