"""An S3-compatible store on loopback with injected latency and faults.

``serve()`` starts moto's S3 server (pure Python, state in memory) in a child
process on ``127.0.0.1`` and a free port, and yields its endpoint URL::

    from benchmarks.s3_server import CREDS, serve

    with serve(latency_s=0.02, fault_rate=0.1, seed=0) as endpoint_url:
        creds = {**CREDS, "endpoint_url": endpoint_url}
        ...  # deeplake.create("s3://bucket/prefix", creds=creds), then read it

Stable API (tests rely on it):

* ``serve(latency_s=0.02, fault_rate=0.0, seed=0) -> ContextManager[str]``
  yields ``"http://127.0.0.1:<port>"``. Every GET sleeps ``latency_s``
  before it is answered; other methods (PUT, HEAD, POST, ...) are not
  delayed, so building a dataset stays fast. With ``fault_rate > 0`` that
  share of GETs fails instead: half of the faults (drawn at random) answer
  HTTP 500 with an S3 ``InternalError`` body, the other half reset the TCP
  connection without answering. The draws come from ``random.Random(seed)``
  in arrival order, so the fault count over N GETs is reproducible, though
  which request gets which fault depends on arrival order.
* ``CREDS``: the deeplake ``creds`` keys except ``endpoint_url``. moto
  accepts any key pair; the region matters only for bucket creation.
* ``create_bucket(endpoint_url, name)``: make a bucket (idempotent).
* ``counts(endpoint_url) -> dict[str, int]``: what the server has answered
  since it started: ``gets`` (every GET, faulted ones included),
  ``ranged_gets`` (GETs with a ``Range`` header), ``get_bytes`` (body bytes
  moto sent for GETs), ``faults``, ``requests`` (all methods) and
  ``cpu_ms``, the server process's CPU time (it shares the machine with the
  loader being measured: moto reads a whole object to answer a range). Take it
  before and after a run; the difference is the run's traffic. The counts
  are served at ``COUNTS_PATH`` by the middleware itself, which neither
  delays nor counts that request (no bucket name can start with ``_``).

Guarantees: the server process is gone when the ``with`` block exits,
normally or by an exception (``KeyboardInterrupt`` included). It also exits
by itself if its parent dies, because it watches its stdin pipe, so even a
``kill -9`` of the parent leaves nothing running. State lives only as long
as the server: create buckets and datasets inside each ``serve()`` block.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

__all__ = ["COUNTS_PATH", "CREDS", "HOST", "counts", "create_bucket", "serve"]

HOST = "127.0.0.1"
CREDS = {
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
    "aws_region": "us-east-1",
}
#: Where the middleware answers with its counters (JSON); not an S3 path.
COUNTS_PATH = "/_anyloader/counts"
_READY = "READY "
_START_TIMEOUT_S = 60.0

_Environ = dict[str, Any]
_StartResponse = Any
_App = Any

_ERROR_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>injected fault</Message><RequestId>anyloader-bench</RequestId></Error>"
)


class LatencyFaultMiddleware:
    """WSGI middleware: delay every GET, fail a seeded share of them, count them.

    Thread-safe: the random draws and the counters change under a lock, the
    sleep does not, so concurrent GETs overlap their latency as they would
    against a real store.
    """

    def __init__(self, app: _App, latency_s: float, fault_rate: float, seed: int) -> None:
        self.app = app
        self.latency_s = latency_s
        self.fault_rate = fault_rate
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.gets = 0
        self.ranged_gets = 0
        self.get_bytes = 0
        self.faults = 0
        self.requests = 0

    def counts(self) -> dict[str, int]:
        """The counters now (see ``counts()`` in the module docstring)."""
        with self._lock:
            return {
                "gets": self.gets,
                "ranged_gets": self.ranged_gets,
                "get_bytes": self.get_bytes,
                "faults": self.faults,
                "requests": self.requests,
                "cpu_ms": int(time.process_time() * 1000),
            }

    def _draw(self, ranged: bool) -> str | None:
        with self._lock:
            self.gets += 1
            self.ranged_gets += ranged
            if self.fault_rate <= 0 or self._rng.random() >= self.fault_rate:
                return None
            self.faults += 1
            return "500" if self._rng.random() < 0.5 else "reset"

    def _add_bytes(self, n: int) -> None:
        with self._lock:
            self.get_bytes += n

    def __call__(self, environ: _Environ, start_response: _StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD")
        if method == "GET" and environ.get("PATH_INFO") == COUNTS_PATH:
            body = json.dumps(self.counts()).encode()
            start_response(
                "200 OK",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]
        with self._lock:
            self.requests += 1
        if method != "GET":
            return self.app(environ, start_response)  # type: ignore[no-any-return]
        if self.latency_s > 0:
            time.sleep(self.latency_s)  # sync-ok: the injected store latency itself
        fault = self._draw(ranged="HTTP_RANGE" in environ)
        if fault == "500":
            start_response(
                "500 Internal Server Error",
                [("Content-Type", "application/xml"), ("Content-Length", str(len(_ERROR_BODY)))],
            )
            return [_ERROR_BODY]
        if fault == "reset":
            _reset(environ)
        return _CountedBody(self.app(environ, start_response), self._add_bytes)


class _CountedBody:
    """A WSGI response body that reports each chunk's size as it is sent."""

    def __init__(self, body: Iterable[bytes], add: Callable[[int], None]) -> None:
        self._body = body
        self._add = add

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._body:
            self._add(len(chunk))
            yield chunk

    def close(self) -> None:  # WSGI: the server calls it; pass it on to moto's body
        close = getattr(self._body, "close", None)
        if close is not None:
            close()


def _reset(environ: _Environ) -> None:
    """Abort the connection with a TCP RST, then unwind the request quietly.

    werkzeug treats ``ConnectionError`` from the app as a dropped client and
    logs nothing. Detaching first leaves the handler's socket object on fd -1,
    so its later writes fail harmlessly instead of hitting a reused fd.
    """
    sock = environ.get("werkzeug.socket")
    if sock is not None:
        # Linger 0 makes close() send RST instead of FIN: the client sees a reset.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        os.close(sock.detach())
    raise ConnectionResetError("injected connection reset")


def _quiet_handler() -> type:
    """werkzeug's request handler, minus the traceback after an injected reset."""
    from werkzeug.serving import WSGIRequestHandler

    class Handler(WSGIRequestHandler):
        def handle(self) -> None:
            try:
                super().handle()
            except OSError as exc:
                # The keep-alive loop reads the next request from the socket
                # ``_reset`` detached: expected, the connection is gone.
                if exc.errno != errno.EBADF:
                    raise

    return Handler


def build_app(latency_s: float, fault_rate: float, seed: int) -> LatencyFaultMiddleware:
    """moto's S3 WSGI app wrapped in the latency/fault middleware."""
    from moto.server import DomainDispatcherApplication, create_backend_app

    return LatencyFaultMiddleware(
        DomainDispatcherApplication(create_backend_app), latency_s, fault_rate, seed
    )


def _exit_when_parent_dies() -> None:
    # The parent holds our stdin pipe; EOF means it is gone, however it died.
    sys.stdin.buffer.read()
    os._exit(0)


def _main(argv: list[str] | None = None) -> None:
    """Child process entry point: serve until stdin closes or a signal arrives."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-s", type=float, default=0.02)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    # Ctrl-C reaches the whole foreground process group; the parent's
    # ``serve()`` stops us in order, so a traceback here would only be noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    import logging

    from werkzeug.serving import make_server

    # One log line per request would cost more CPU than the store itself.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app = build_app(args.latency_s, args.fault_rate, args.seed)
    server = make_server(HOST, 0, app, threaded=True, request_handler=_quiet_handler())
    threading.Thread(target=_exit_when_parent_dies, daemon=True).start()
    print(f"{_READY}{server.server_port}", flush=True)
    server.serve_forever()


def _check_args(latency_s: float, fault_rate: float) -> None:
    if latency_s < 0:
        raise ValueError(f"latency_s must be >= 0, got {latency_s}")
    if not 0.0 <= fault_rate <= 1.0:
        raise ValueError(f"fault_rate must be in [0, 1], got {fault_rate}")


def _read_ready(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    """Wait for the child's ``READY <port>`` line; a watchdog kills it on timeout."""
    assert proc.stdout is not None
    watchdog = threading.Timer(timeout_s, proc.kill)
    watchdog.start()
    try:
        line = proc.stdout.readline().decode()
    finally:
        watchdog.cancel()
    if not line.startswith(_READY):
        raise RuntimeError(f"S3 server did not start (exit status {proc.poll()}): {line!r}")
    return int(line[len(_READY) :])


@contextlib.contextmanager
def serve(latency_s: float = 0.02, fault_rate: float = 0.0, seed: int = 0) -> Iterator[str]:
    """Run moto's S3 server on 127.0.0.1 in a child process; yield its endpoint URL.

    See the module docstring for the latency and fault semantics.

    Raises:
        ValueError: ``latency_s < 0`` or ``fault_rate`` outside ``[0, 1]``.
        RuntimeError: the server did not come up within 60 s.
    """
    _check_args(latency_s, fault_rate)
    cmd = [sys.executable, "-m", "benchmarks.s3_server", f"--latency-s={latency_s}"]
    cmd += [f"--fault-rate={fault_rate}", f"--seed={seed}"]
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        port = _read_ready(proc, _START_TIMEOUT_S)
        yield f"http://{HOST}:{port}"
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    for close in (proc.stdin, proc.stdout):
        if close is not None:
            close.close()
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _client(endpoint_url: str) -> Any:
    """A boto3 S3 client for the server at ``endpoint_url`` with the test credentials."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=CREDS["aws_access_key_id"],
        aws_secret_access_key=CREDS["aws_secret_access_key"],
        region_name=CREDS["aws_region"],
    )


def create_bucket(endpoint_url: str, name: str) -> None:
    """Create bucket ``name`` on the server at ``endpoint_url`` (no error if it exists)."""
    client = _client(endpoint_url)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=name)


def counts(endpoint_url: str) -> dict[str, int]:
    """The server's request counters now (see the module docstring).

    Raises:
        urllib.error.URLError: the server at ``endpoint_url`` did not answer.
    """
    import urllib.request

    with urllib.request.urlopen(endpoint_url + COUNTS_PATH, timeout=10) as answer:
        found: dict[str, int] = json.loads(answer.read())
    return found


def upload_tree(endpoint_url: str, bucket: str, prefix: str, root: str) -> int:
    """Copy every file under local directory ``root`` to ``s3://bucket/prefix/...``.

    Returns the number of files copied. Used to put a cached local deeplake
    dataset on the store without re-encoding it.
    """
    client = _client(endpoint_url)
    count = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            key = "/".join(filter(None, [prefix, os.path.relpath(path, root).replace(os.sep, "/")]))
            client.upload_file(path, bucket, key)
            count += 1
    return count


if __name__ == "__main__":
    _main()
