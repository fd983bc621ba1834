"""What `dapt run` starts, it stops: the temporary Prefect server, worker processes, and itself on a signal.

    python -m flows.lifecycle watch PID   # the watchdog `dapt run` starts on itself (not for direct use)

A `dapt run` with no PREFECT_API_URL starts Prefect's temporary API server (`uvicorn ...
prefect.server.api.server`), and its stages start workers (shard tasks, fine-tuning runs, an
`accelerate launch` job). Three ways the run can end, and what stops them:

- it finishes or fails: Prefect stops its server at exit (atexit), the stages their workers;
- SIGTERM (what a scheduler or Kubernetes sends) or SIGINT: `stop_on_signals` turns the first one into
  `Stopped`, an exception that unwinds the run like Ctrl-C: a half-built artifact is discarded (its
  staging folder removed, never published), checkpoints stay for the re-run, workers are interrupted,
  and the server is stopped at exit. A second signal ends the process at once (the watchdog cleans up);
- kill -9, or a crash of the interpreter: no code runs in the dying process, so a second, small process
  started at the beginning (`start_watchdog`) notes the run's descendants every half second and, when
  the run is gone, terminates those still alive 3 s later (SIGTERM, then SIGKILL after 5 s). psutil checks each
  process's start time, so a pid reused meanwhile is never hit.

On a loaded machine the temporary server can be slow to answer its first health check (Prefect waits
for a connection, but a read timeout on that check aborts the start). `start_api_server` starts it
before the flow, retrying with back-off, and ends in one line naming the cause and what to do. It
starts it in a session of its own, so that a terminal's Ctrl-C reaches the run and its workers but not
the server, which the run still needs to record how it ended (it is stopped at exit).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

from pretrain.core.errors import UserError
from pretrain.core.logs import get_logger

log = get_logger(__name__)

POLL_SECONDS = 0.5
GRACE_SECONDS = 5.0
SETTLE_SECONDS = 3.0
SERVER_TRIES = 3


class Stopped(KeyboardInterrupt):
    """The run was asked to stop (SIGTERM or SIGINT); unwinds like Ctrl-C, so every library cleans up as for one."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def stop_on_signals() -> None:
    """SIGTERM and SIGINT raise `Stopped` in the main thread (once); a second one ends the process at once."""

    def handler(signum, frame):
        if getattr(handler, "stopping", False):
            signal.signal(signum, signal.SIG_DFL)  # asked twice: stop now; the watchdog stops what is left
            os.kill(os.getpid(), signum)
            return
        handler.stopping = True
        log.warning("%s: stopping the run, its workers and the temporary Prefect server (send it again to stop at once)",
                    signal.Signals(signum).name)  # fmt: skip
        raise Stopped(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handler)


def start_watchdog() -> subprocess.Popen | None:
    """A process that stops this one's descendants when this one dies, however it dies (kill -9 included)."""
    try:
        import psutil  # noqa: F401  (accelerate's dependency; checked here so a missing one fails now, not in the watchdog)
    except ImportError:
        log.warning("no psutil: the processes of this run are not watched, kill -9 may leave the temporary Prefect server running")
        return None
    return subprocess.Popen([sys.executable, "-m", "flows.lifecycle", "watch", str(os.getpid())], stdin=subprocess.DEVNULL)


def watch(pid: int) -> None:
    """The watchdog's loop: follow `pid`'s descendants until it is gone, then stop the ones still alive."""
    import psutil

    # Ctrl-C on a terminal and a SIGTERM to the process group reach this process too: it must outlive the run.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    me = os.getpid()
    seen: dict[int, psutil.Process] = {}
    while True:
        try:
            if not parent.is_running() or parent.status() == psutil.STATUS_ZOMBIE:
                break
            for child in parent.children(recursive=True):
                if child.pid != me:
                    seen.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            break
        time.sleep(POLL_SECONDS)
    left = []
    for process in seen.values():
        try:
            if process.is_running():
                left += [process, *process.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    left = [p for p in dict.fromkeys(left) if p.pid != me]
    # A run that ends normally is still stopping some of them (its server at exit, a worker's last
    # breath): only what is alive after a moment, and not a zombie waiting for its parent, is left over.
    _, left = psutil.wait_procs(left, timeout=SETTLE_SECONDS)
    left = [p for p in left if _running(p)]
    if not left:
        return
    names = ", ".join(f"{_name(p)} (pid {p.pid})" for p in left[:5])
    print(f"dapt: the run (pid {pid}) ended without stopping {len(left)} of its processes: stopping {names}", file=sys.stderr, flush=True)
    for process in left:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(left, timeout=GRACE_SECONDS)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def _running(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _name(process) -> str:
    try:
        command = process.cmdline()
    except Exception:  # gone, or not ours to read
        return "?"
    return "temporary Prefect server" if any("prefect.server.api.server" in part for part in command) else os.path.basename(command[0] if command else "?")


def start_api_server(tries: int = SERVER_TRIES) -> str | None:
    """Start Prefect's temporary API server now (none when PREFECT_API_URL names a server), retrying a slow start.

    Prefect would start it on the flow's first API call, and a loaded machine there gives a 100-line
    traceback. Returns the API URL, or None when a server is configured. The server is Prefect's own
    (`SubprocessASGIServer`, one per process): the flow finds it running and uses it.
    """
    import httpx
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None
    problem = ""
    for attempt in range(1, tries + 1):
        server = SubprocessASGIServer()
        try:
            with _own_session():
                server.start()
            return server.api_url
        except (httpx.HTTPError, RuntimeError, OSError) as e:  # a health check that timed out; no answer in time; no port
            server.stop()
            problem = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else 'no answer'}"
            if attempt < tries:
                wait = 5 * 2 ** (attempt - 1)
                log.warning("the temporary Prefect server did not start (%s); trying again in %d s (%d of %d)", problem, wait, attempt + 1, tries)
                time.sleep(wait)
    raise UserError(
        f"the temporary Prefect server did not start in {tries} tries ({problem}): the machine is probably overloaded. "
        f"Retry when it is less busy, give it longer (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, now "
        f"{PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()}), or run a server once and point runs at it "
        "(`make server`, then PREFECT_API_URL=http://127.0.0.1:4200/api)"
    )


@contextlib.contextmanager
def without_heartbeats(temporary_server: str | None):
    """Inside the block, flow runs send no heartbeats when they report to the temporary server (`temporary_server`
    is its URL, as `start_api_server` returns it; None: a real server, whose heartbeats stay on).

    A heartbeat lets a server mark a flow run whose process died; the temporary server dies with this
    process, so nothing would read them. And each flow's end waits for its heartbeat thread's one-second
    sleep: about half a second for each of a run's eight flows, most of a cached re-run's flow time.
    """
    if temporary_server is None:
        yield
        return
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


class _NewSessionSubprocess:
    """The `subprocess` module, except that Popen starts the process in a session of its own."""

    def __getattr__(self, name: str):
        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args, **kwargs):  # noqa: N802  (the name it stands in for)
        return subprocess.Popen(*args, **{**kwargs, "start_new_session": True})


@contextlib.contextmanager
def _own_session():
    """Prefect's server module starts the temporary server in this process's session: Ctrl-C on a terminal would
    then stop the server at once, and the run, unwinding, would retry its last API calls for a minute before
    exiting with tracebacks. Started in a session of its own, the server outlives the signal until this process
    stops it at exit (Prefect's atexit). If Prefect stops importing `subprocess` there, this changes nothing."""
    import prefect.server.api.server as module

    if getattr(module, "subprocess", None) is not subprocess:
        yield
        return
    module.subprocess = _NewSessionSubprocess()
    try:
        yield
    finally:
        module.subprocess = subprocess


def api_failure(error: BaseException) -> str | None:
    """One line for an error of the Prefect API itself (a timeout or refused connection after Prefect's retries), else None."""
    import httpx

    if not isinstance(error, httpx.TransportError):
        return None
    from prefect.settings import PREFECT_API_URL

    where = PREFECT_API_URL.value() or "the temporary Prefect server"
    return (
        f"the Prefect API ({where}) did not answer ({type(error).__name__}: {str(error)[:200] or 'no answer'}) after Prefect's retries: "
        "the machine is overloaded or the server stopped. Re-run the same command (finished stages are cache hits, pretraining "
        "resumes from its checkpoint), or run a server once and point runs at it (`make server`, then PREFECT_API_URL=http://127.0.0.1:4200/api)"
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "watch":
        watch(int(sys.argv[2]))
    else:
        sys.exit("usage: python -m flows.lifecycle watch PID  (started by `dapt run`)")
