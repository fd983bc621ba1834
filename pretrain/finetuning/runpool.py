"""Fine-tuning runs spread over worker processes: one per GPU, or N on a CPU when asked.

The evaluate stage's (model, learning rate, seed) runs are independent: each is an `f-` artifact of
its own (`pretrain/finetuning/finetune.py`). With `evaluate.parallel_runs` above 1 (by default: one per visible
CUDA device), the runs not yet in the store are built here, in spawned worker processes:

- each GPU worker sees one device (`CUDA_VISIBLE_DEVICES` is set before torch initialises CUDA), in
  turn over the parent's visible devices; each worker uses `cores // workers` CPU threads;
- every worker gets the task as the parent read it and tokenises it for each model with the same
  code, then calls `finetune.build` as the sequential path does: same seeds, same data order, same
  weights (on a CPU, for the same thread count: the order of parallel float reductions depends on it,
  so 1 and 2 threads give weights that differ in the last bits); it publishes the run through the
  store (content-addressed and atomic), and the parent then reads every run back and aggregates in
  the usual order, so the evaluation is the same either way;
- a failed run is raised in the parent naming the run and carrying the worker's error; the runs in
  flight are finished first and every published run stays cached, so a re-run builds only the rest;
  Ctrl-C (or any error in the parent) interrupts the workers, whose half-built runs are discarded;
- worker log lines carry the worker and the run (`[worker 2 · evaluate adapted seed 1 lr 5e-4]`), its
  progress is shown as log lines (bars of several processes would overwrite each other), and the
  parent logs which worker built which run.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from pretrain.core import progress
from pretrain.core.artifacts import ArtifactStore
from pretrain.core.config import EvaluateConfig
from pretrain.core.errors import InputError, UserError
from pretrain.core.logs import DATE_FORMAT, FORMAT, get_logger, setup_logging
from pretrain.data.tasks import TaskData
from pretrain.finetuning import finetune
from pretrain.finetuning.finetune import encode, format_rate
from pretrain.models.fast_tokenizers import load_fast_tokenizer

log = get_logger(__name__)

# How long the parent waits for interrupted workers to discard their half-built runs before it kills them.
STOP_GRACE_S = 15.0


@dataclass(frozen=True)
class Job:
    """One fine-tuning run to build: the model (its name in the comparison, artifact id and folder), rate and seed."""

    name: str
    model: str
    model_dir: Path
    segments: bool  # whether the model has token type embeddings (`encode`'s `segments`)
    learning_rate: float
    seed: int
    fid: str
    train_subset: dict | None = None  # the label budget's subset of the train split (`budgets.Budget.run_key`), if any

    @property
    def desc(self) -> str:
        budget = f" labels/class {self.train_subset['labels_per_class']}" if self.train_subset is not None else ""
        return f"evaluate {self.name} seed {self.seed} lr {format_rate(self.learning_rate)}{budget}"


class RunFailed(RuntimeError):
    """A fine-tuning run failed in a worker process (not the user's doing: the worker's traceback follows)."""


class WorkerDied(UserError):
    """A worker process ended without a Python error (killed: for memory, or by a signal). There is no traceback to
    show, and none from the parent would say more: the message names the worker, the run and how it ended."""


def worker_count(setting: int | None) -> int:
    """How many runs are built at once: `setting` (`evaluate.parallel_runs`), else one per visible CUDA device, 1 without."""
    if setting is not None:
        return setting
    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def worker_devices(workers: int) -> list[str | None]:
    """The CUDA device each worker sees (the parent's visible devices in turn), or None for each on a CPU."""
    if not torch.cuda.is_available():
        return [None] * workers
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    devices = (visible or [str(i) for i in range(torch.cuda.device_count())])[: torch.cuda.device_count()]
    return [devices[i % len(devices)] for i in range(workers)]


def worker_threads(workers: int) -> int:
    """The CPU threads each of `workers` workers uses: this machine's cores shared out."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // workers)


def _where(index: int, device: str | None) -> str:
    return f"worker {index + 1} ({f'GPU {device}' if device is not None else 'CPU'})"


def build_runs(cfg: EvaluateConfig, store: ArtifactStore, jobs: list[Job], data: TaskData, sources: list[dict], workers: int) -> dict[str, str]:
    """Build the `f-` artifacts of `jobs` in `workers` spawned processes; returns f- id -> the worker that built it.

    `data` is the task as `tasks.read_task` returned it (cut to the jobs' label budget, if any), `sources` the task files' digests. Jobs with
    the same `f-` id (two names for one model) are built once. Raises InputError (the worker's error
    was the user's to fix) or RunFailed naming the run; every run published before that stays.
    """
    unique: dict[str, Job] = {}
    for job in jobs:
        unique.setdefault(job.fid, job)  # one job per run, under the first name it has
    jobs = list(unique.values())
    workers = max(1, min(workers, len(jobs)))
    devices = worker_devices(workers)
    threads = worker_threads(workers)
    shown = "off" if progress.mode() == "off" else "log"
    level = logging.getLogger().getEffectiveLevel()
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    inboxes = [context.Queue() for _ in range(workers)]
    processes = [
        context.Process(
            target=_work, name=f"dapt-finetune-{i + 1}", daemon=True,
            args=(i, devices[i], threads, shown, level, cfg, store.url, data, sources, inboxes[i], results),
        )
        for i in range(workers)
    ]  # fmt: skip
    log.info(
        "evaluate: building %d fine-tuning runs in %d worker processes (%s; %d CPU threads each)",
        len(jobs), workers, ", ".join(_where(i, d) for i, d in enumerate(devices)), threads,
    )  # fmt: skip
    pending = list(jobs)
    busy: dict[int, tuple[Job, float]] = {}
    built: dict[str, str] = {}
    failures: list[tuple[str, str]] = []  # (what failed, the worker's traceback or "")
    user_error = False

    def hand_out(i: int) -> None:
        if pending and not failures:
            job = pending.pop(0)
            busy[i] = (job, time.monotonic())
            inboxes[i].put(job)

    try:
        for p in processes:
            p.start()
        for i in range(workers):
            hand_out(i)
        while busy:
            try:
                i, fid, error = results.get(timeout=1.0)
            except queue.Empty:
                for i, (job, _) in list(busy.items()):
                    if not processes[i].is_alive():
                        del busy[i]
                        failures.append((
                            f"{_where(i, devices[i])} died (exit code {processes[i].exitcode}) while fine-tuning {_run(job)}: "
                            "killed for memory? its log lines above say how far it got; with memory short, lower "
                            "evaluate.parallel_runs or evaluate.batch_size", "",
                        ))  # fmt: skip
                continue
            job, started = busy.pop(i)
            if error is None:
                built[fid] = _where(i, devices[i])
                log.info("evaluate: %s built %s as %s (%.0f s)", built[fid], _run(job), fid, time.monotonic() - started)
            else:
                kind, message, is_user_error, worker_traceback = error
                user_error = user_error or is_user_error
                what = message if is_user_error else f"{kind}: {message}"
                failures.append((f"fine-tuning {_run(job)} failed in {_where(i, devices[i])}: {what}", "" if is_user_error else worker_traceback))
                if pending:
                    log.error("evaluate: %s; not starting the %d runs left, finishing those in flight", failures[-1][0], len(pending))
            hand_out(i)
    except BaseException:
        _stop(processes, interrupt=True)
        raise
    _stop(processes, inboxes=inboxes)
    if failures:
        what, worker_traceback = failures[0]
        kept = f"\nThe {len(built)} runs that finished are kept in the store: a re-run builds only the rest." if built else ""
        more = "".join(f"\nAlso: {other}" for other, _ in failures[1:])
        trace = f"\nThe worker's traceback:\n{worker_traceback}" if worker_traceback else ""
        message = f"evaluate: {what}{kept}{more}{trace}"
        if not user_error and not any(worker_traceback for _, worker_traceback in failures):
            raise WorkerDied(message)  # killed, not a bug: the message says it all
        raise (InputError if user_error and len(failures) == 1 else RunFailed)(message)
    return built


def _run(job: Job) -> str:
    budget = f" labels/class {job.train_subset['labels_per_class']}" if job.train_subset is not None else ""
    return f"{job.name} lr {format_rate(job.learning_rate)} seed {job.seed}{budget} (model {job.model})"


def _stop(processes: list, *, inboxes: list | None = None, interrupt: bool = False) -> None:
    """End the workers: ask them to leave (done), or interrupt them (their half-built runs are discarded), then kill stragglers."""
    if interrupt:
        # Ctrl-C on a terminal reached the workers too: give them a moment to clean up before asking again.
        for p in processes:
            if p.pid is not None:
                p.join(2.0)
    for i, p in enumerate(processes):
        if p.is_alive():
            if interrupt:
                os.kill(p.pid, signal.SIGINT)
            elif inboxes is not None:
                inboxes[i].put(None)
    deadline = time.monotonic() + STOP_GRACE_S
    for p in processes:
        if p.pid is not None:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()


class _RunPrefix(logging.Filter):
    """Puts the worker and its current run in front of every log line of a worker process."""

    def __init__(self, worker: str):
        super().__init__()
        self.worker, self.run = worker, ""

    def filter(self, record: logging.LogRecord) -> bool:
        record.run = f"{self.worker} · {self.run}" if self.run else self.worker
        return True


def _work(index: int, device: str | None, threads: int, shown: str, level: int, cfg: EvaluateConfig, store_url: str,
          data: TaskData, sources: list[dict], inbox, results) -> None:  # fmt: skip
    """A worker process: build the runs it is handed (None: done) and report each."""
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device  # before anything touches CUDA in this process
    setup_logging(level)
    prefix = _RunPrefix(f"worker {index + 1}")
    for handler in logging.getLogger().handlers:
        handler.addFilter(prefix)
        handler.setFormatter(logging.Formatter(FORMAT.replace("%(name)s", "[%(run)s] %(name)s"), DATE_FORMAT))
    progress.set_mode(shown)
    torch.set_num_threads(threads)
    target = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    store = ArtifactStore(store_url)
    prepared: dict[tuple[Path, bool], tuple] = {}  # a model's tokenizer and encoded splits, for its next runs here
    try:
        while (job := inbox.get()) is not None:
            prefix.run = job.desc
            try:
                key = (job.model_dir, job.segments)
                if key not in prepared:
                    tokenizer = load_fast_tokenizer(job.model_dir)
                    prepared = {key: (tokenizer, {s: encode(tokenizer, data, s, cfg.max_seq_length, job.segments) for s in ("train", "validation", "test")})}
                tokenizer, encoded = prepared[key]
                fid, _ = finetune.build(cfg, store, model=job.model, model_dir=job.model_dir, learning_rate=job.learning_rate, seed=job.seed,
                                        data=data, encoded=encoded, tokenizer=tokenizer, sources=sources, device=target, name=job.name,
                                        train_subset=job.train_subset)  # fmt: skip
                if fid != job.fid:
                    raise RuntimeError(f"built {fid}, but the evaluation planned {job.fid}: the worker's settings differ from the parent's")
                results.put((index, fid, None))
            except Exception as e:  # the parent names the run, and hands out no more
                results.put((index, job.fid, (type(e).__name__, str(e), isinstance(e, UserError), traceback.format_exc())))
            prefix.run = ""
    except KeyboardInterrupt:
        pass  # the parent interrupted us: the run in progress was discarded by store.build
