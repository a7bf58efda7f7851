"""Run one benchmark task in a fresh subprocess and classify how it ended.

Each run gets its own interpreter because deeplake caches chunks in memory:
a second epoch in the same process would read from RAM. The worker runs in a
new session (process group) so that a timeout, a hang at exit or Ctrl-C in
the harness kills it together with its DataLoader workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "DEFAULT_CACHE",
    "DONE_MARKER",
    "child_env",
    "exit_with",
    "run_in_subprocess",
    "worker_task",
]

DONE_MARKER = "anyloader-bench: result written"
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
#: Where generated benchmark datasets are kept between runs.
DEFAULT_CACHE = PACKAGE_ROOT / "benchmarks" / "results" / "cache"


def exit_with(main: Callable[[], int]) -> NoReturn:
    """Exit with ``main()``'s status; Ctrl-C exits with 130 and says everything was stopped.

    Every ``finally`` on the way out has already stopped the S3 server and
    killed the running worker's process group.
    """
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: S3 server and workers stopped", file=sys.stderr)
        sys.exit(130)


def child_env() -> dict[str, str]:
    # The worker imports ``benchmarks`` from this checkout whatever the cwd.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
    return env


def _pump(stream: IO[bytes], log: IO[bytes], done: threading.Event, news: threading.Event) -> None:
    """Copy the worker's stdout to its log; flag the result line, and the end of output."""
    for line in stream:
        log.write(line)
        if line.decode(errors="replace").strip() == DONE_MARKER:
            done.set()
            news.set()
    log.flush()
    news.set()


class _HeldInterrupts:
    """Hold Ctrl-C from construction to :meth:`release`, which raises it if it came.

    A ``KeyboardInterrupt`` raised inside ``subprocess.Popen`` after the fork
    leaves a child that nobody has a handle on: an orphan that outlives the
    harness. Only the main thread can hold it (and only it receives SIGINT).
    """

    def __init__(self) -> None:
        self._caught = False
        self._previous: Any = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._catch)

    def _catch(self, signum: int, frame: object) -> None:
        self._caught = True

    def release(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        if self._caught:
            raise KeyboardInterrupt


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _exit_kind(returncode: int, hung: bool, timed_out: bool) -> str:
    if timed_out:
        return "timed out (killed)"
    if hung:
        return "hung at exit (killed)"
    if returncode == 0:
        return "clean"
    if returncode < 0:
        return f"crashed at exit ({signal.Signals(-returncode).name})"
    return f"exit status {returncode}"


def worker_task(spec: Any, store: Any, batch_size: int, out: Path, stem: str) -> dict[str, Any]:
    """The task ``benchmarks.worker`` runs: ``spec`` on ``store``, its result in ``out/runs``."""
    return {
        "spec": spec.to_json(),
        "store": {"name": store.name, "url": store.url, "creds": store.creds},
        "batch_size": batch_size,
        "out": str((out / "runs" / f"{stem}.json").resolve()),
    }


def run_in_subprocess(
    task: dict[str, Any], log_path: Path, timeout_s: float, exit_grace_s: float
) -> dict[str, Any]:
    """Run ``task`` with ``python -m benchmarks.worker``; return its result plus exit facts.

    Adds ``exit`` (``"clean"``, ``"crashed at exit (SIGSEGV)"``, ``"hung at
    exit (killed)"``, ...), ``clean_exit`` and ``returncode``. If the worker
    produced no result (error or timeout) the dict has ``ok=False`` and the
    tail of the log under ``error``.

    Guarantee: the worker and all its descendants are gone when this returns,
    including when it raises (``KeyboardInterrupt`` too).
    """
    out = Path(task["out"])
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.worker", json.dumps(task)]
    done, news = threading.Event(), threading.Event()
    with log_path.open("wb") as log:
        proc: subprocess.Popen[bytes] | None = None
        hold = _HeldInterrupts()
        try:
            try:
                proc = subprocess.Popen(
                    cmd,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    env=child_env(),
                    cwd=PACKAGE_ROOT,
                    start_new_session=True,
                )
            finally:
                # A Ctrl-C that came while the child started is raised now, inside
                # the try whose finally kills the child's group.
                hold.release()
            assert proc.stdout is not None
            pump = threading.Thread(target=_pump, args=(proc.stdout, log, done, news), daemon=True)
            pump.start()
            hung = timed_out = False
            # Wake on the result line or on the end of output (the worker died first).
            if not news.wait(timeout_s):
                timed_out = True
                _kill_group(proc)
            try:
                proc.wait(timeout=exit_grace_s)
            except subprocess.TimeoutExpired:
                hung = True
        finally:
            # Kill the whole group: a hung worker, or DataLoader workers left behind.
            if proc is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        pump.join(5)
    result: dict[str, Any] = {"returncode": proc.returncode}
    if done.is_set() and out.exists():
        result.update(json.loads(out.read_text()), ok=True)
    else:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        result.update(ok=False, error="\n".join(tail) or "no output")
    result["exit"] = _exit_kind(proc.returncode, hung, timed_out)
    result["clean_exit"] = proc.returncode == 0 and not (hung or timed_out)
    return result
