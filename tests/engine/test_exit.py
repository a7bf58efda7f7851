"""Crash-free exit: a process that leaves an epoch midway and exits ends with status 0.

deeplake runs native threads and the engine runs an event loop thread per
epoch; a process that exits while they still run can abort ("terminate called
without an active exception"), segfault or hang. Each run is a separate
process that opens a real deeplake dataset, reads part of an epoch, leaves it
in one of five ways (``break``, a DataLoader ``break``, an exception, or an
iterator still open at exit, with or without a DataLoader) and exits through
normal interpreter finalisation. Two runs go at a time (2 cores).

Importing torch costs about 1.2 s of CPU, most of a run. So the 50 runs per
backend are forked from a "zygote" that has imported torch, numpy and the
AnyIO backends (but not deeplake or anyloader: deeplake starts native threads
at import, which a fork must not copy); each child imports deeplake and
anyloader itself, runs the script and exits like any interpreter. Three runs per
backend also go through a completely fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

RUNS_PER_BACKEND = 50
RUN_TIMEOUT_S = 30
MODES = ["break", "dataloader", "raise", "live", "live-dataloader"]

SCRIPT = textwrap.dedent(
    """
    import faulthandler, sys
    faulthandler.enable()
    # A watchdog for the whole run, exit included: a hang dumps stacks and exits 1.
    faulthandler.dump_traceback_later(RUN_TIMEOUT_S, exit=True)
    from torch.utils.data import DataLoader
    from anyloader import AsyncDataset, DeeplakeSource, FaultySource

    url, backend, mode, stop = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    source = FaultySource(DeeplakeSource(url), seed=stop, transient_rate=0.1)
    dataset = AsyncDataset(source, backend=backend, concurrency=8, shuffle=True, retries=20)

    if mode == "break":  # leave the loop, keep running, then exit
        for i, sample in enumerate(dataset):
            if i == stop:
                break
    elif mode == "dataloader":
        for i, batch in enumerate(DataLoader(dataset, batch_size=4)):
            if i == stop // 4:
                break
    elif mode == "raise":  # an exception leaves the loop and is handled
        try:
            for i, sample in enumerate(dataset):
                if i == stop:
                    raise KeyError(i)
        except KeyError:
            pass
    elif mode == "live":  # the iterator is still open when the interpreter exits
        iterator = iter(dataset)
        for _ in range(stop):
            next(iterator)
    elif mode == "live-dataloader":
        iterator = iter(DataLoader(dataset, batch_size=4))
        for _ in range(stop // 4 + 1):
            next(iterator)
    else:
        sys.exit(f"unknown mode {mode}")
    print("done", mode, stop, flush=True)
    """
).replace("RUN_TIMEOUT_S", str(RUN_TIMEOUT_S))

# Forks one child per run, at most two alive at once; each child runs SCRIPT
# as __main__ with its own argv, stdout and stderr, and exits through normal
# finalisation (SystemExit propagates to the top; nothing calls os._exit).
ZYGOTE = textwrap.dedent(
    """
    import gc, json, os, runpy, sys
    import numpy, anyio, trio, torch
    from torch.utils.data import DataLoader

    # Pre-fork server practice: keep the collector off the preloaded objects,
    # so children do not copy every page of torch on write.
    gc.freeze()

    script, runs_file, out_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    runs = json.loads(open(runs_file).read())
    KEEP = None  # the child's script globals live until finalisation, like a real __main__
    alive, status = {}, {}

    def reap():
        pid, code = os.wait()
        status[alive.pop(pid)] = os.waitstatus_to_exitcode(code)

    for n, args in enumerate(runs):
        while len(alive) >= 2:
            reap()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            for fd, name in ((1, "out"), (2, "err")):
                target = os.open(f"{out_dir}/{n}.{name}", os.O_WRONLY | os.O_CREAT, 0o644)
                os.dup2(target, fd)
            sys.argv = [script, *map(str, args)]
            KEEP = runpy.run_path(script, run_name="__main__")
            raise SystemExit(0)
        alive[pid] = n
    while alive:
        reap()
    print(json.dumps([status[n] for n in range(len(runs))]))
    """
)


def _runs(count: int) -> list[tuple[str, int]]:
    return [(MODES[i % len(MODES)], (i * 37) % 97) for i in range(count)]


@pytest.mark.slow
def test_leaving_an_epoch_and_exiting_never_crashes(
    pairs_url: str, backend: str, tmp_path: Path
) -> None:
    script, zygote, runs_file = tmp_path / "run.py", tmp_path / "zygote.py", tmp_path / "runs"
    script.write_text(SCRIPT)
    zygote.write_text(ZYGOTE)
    runs = [(pairs_url, backend, mode, stop) for mode, stop in _runs(RUNS_PER_BACKEND)]
    runs_file.write_text(json.dumps(runs))
    done = subprocess.run(
        [sys.executable, str(zygote), str(script), str(runs_file), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S * 10,
        check=True,
    )
    codes = json.loads(done.stdout)
    assert len(codes) == RUNS_PER_BACKEND
    report = []
    for n, (code, (_, _, mode, stop)) in enumerate(zip(codes, runs, strict=True)):
        out = (tmp_path / f"{n}.out").read_text()
        err = (tmp_path / f"{n}.err").read_text()
        # Status 0, the script got to its end, and nothing on stderr: no
        # warning, no "Exception ignored in", no abort message.
        if code != 0 or out.strip() != f"done {mode} {stop}" or err.strip():
            report.append((mode, stop, code, err[-1500:]))
    assert report == [], f"{len(report)} of {len(runs)} runs did not exit cleanly"


def _fresh(script: Path, url: str, backend: str, mode: str, stop: int) -> tuple[str, int, str]:
    done = subprocess.run(
        [sys.executable, str(script), url, backend, mode, str(stop)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S * 2,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        check=False,
    )
    code = done.returncode if done.stdout.strip() == f"done {mode} {stop}" else -1
    return f"{mode}:{stop}", code, done.stderr


@pytest.mark.slow
def test_each_way_out_exits_cleanly_from_a_fresh_interpreter(
    pairs_url: str, backend: str, tmp_path: Path
) -> None:
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    # The zygote runs cover every mode ten times; here, the plain exit and the two
    # ways of exiting with an epoch still open.
    runs = [("break", 11), ("live", 28), ("live-dataloader", 45)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda r: _fresh(script, pairs_url, backend, *r), runs))
    assert [(name, code, err[-1500:]) for name, code, err in results if code or err.strip()] == []
