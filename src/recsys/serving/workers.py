"""The local runner (`recsys serve engine=local`): the app under uvicorn, in one process or in
``workers=N`` processes sharing the port.

One process runs the model path and the HTTP side under one interpreter lock; on a machine
with more cores, several workers carry more (docs/results/serving.md). uvicorn's process
manager starts the workers (spawned: each imports this module and calls :func:`worker_app`),
replaces one that dies and stops them all on SIGTERM or Ctrl-C. The parent hands the
validated settings to the workers in an environment variable; each worker loads the bundle
and builds the same app as the one-process runner.

What several workers must share, they share the way Ray replicas do: the store (SQLite in WAL
mode, or PostgreSQL), the response cache and the rate limits (Redis; without it the runner
refuses, since an event sent to one worker would leave another's cached list stale and each
worker would count a caller's budget alone; the cache's in-process level is off, for the same
reason), and the Prometheus metrics (prometheus_client's
multiprocess files, in a folder the parent creates and removes).

Each worker's native thread pools (OpenMP for torch and FAISS, the BLAS) get the machine's
cores divided by the workers, unless the environment already sets them: left at one thread
per core each, two workers on 2 cores carried 249 user requests/s at 8 clients against 307
with one thread each (docs/results/serving.md).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uvicorn.config import STARTUP_FAILURE  # a worker's exit code that stops the supervisor

from recsys.errors import RecsysError
from recsys.serving.settings import ServeSettings

log = logging.getLogger(__name__)

SETTINGS_ENV = "RECSYS_SERVE_SETTINGS"
BIND_FAILED = "bind-failed"  # a worker's note, in the metrics folder, of why it could not bind
HOLDER_ENV = "RECSYS_PORT_HOLDER"  # "<host> <port>" of the parent's port holder
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# the native thread pools a worker's libraries read at import (torch and FAISS: OpenMP)
THREAD_ENVS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

if TYPE_CHECKING:
    from fastapi import FastAPI


def unshared(cfg: ServeSettings) -> str | None:
    """Why ``cfg`` cannot run on several workers (None: it can)."""
    if cfg.workers == 1:
        return None
    missing = []
    if cfg.cache.enabled and not cfg.cache.redis_url:
        missing.append("the response cache")
    limits = cfg.rate_limits
    if limits is not None and limits.enabled and not limits.redis_url:
        missing.append("the rate limits")
    if not missing:
        return None
    return (
        f"workers={cfg.workers} needs {' and '.join(missing)} shared between the workers: "
        "set cache.redis_url=redis://<host>:6379/0 (the rate limits follow it), or turn "
        "them off (cache.enabled=false, rate_limits.enabled=false), or serve with workers=1."
    )


def worker_threads(workers: int) -> dict[str, str]:
    """The thread-count variables to set for ``workers`` processes: this process's cores
    divided among them (at least one), for those the environment does not set already."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = str(max(1, (cores or 1) // workers))
    return {name: threads for name in THREAD_ENVS if name not in os.environ}


def local_app(cfg: ServeSettings, bundle: Any = None) -> FastAPI:
    """The app one local process serves: ``cfg``'s live sections around its bundle (loaded
    here unless given)."""
    from recsys.bundle.reader import load_bundle
    from recsys.serving.app import configure_logging, create_app
    from recsys.serving.heap import freeze_imports
    from recsys.serving.live import Live
    from recsys.serving.service import RecommendationService

    configure_logging()
    freeze_imports()  # the bundle loads after this: its objects stay collectable
    loaded = bundle if bundle is not None else load_bundle(cfg.bundle)
    live = Live.from_config(cfg)
    return create_app(
        lambda: RecommendationService(loaded, float(cfg.stage_timeout_ms) / 1000, live=live)
    )


def worker_app() -> FastAPI:
    """uvicorn's factory in each worker: the settings the parent validated. Runs before the
    worker listens, so the port's socket becomes this worker's own first
    (:func:`listen_alone`)."""
    listen_alone()
    return local_app(ServeSettings.model_validate_json(os.environ[SETTINGS_ENV]))


def port_holder(host: str, port: int) -> socket.socket:
    """The parent's socket for the port (Linux): bound, never listening, so it holds the
    port (``port=0`` picks one) while each worker listens on a socket of its own in one
    ``SO_REUSEPORT`` group. The kernel then spreads new connections over the workers by their
    addresses; one listening socket shared by all let whichever worker woke first accept
    every connection of a burst (8 keep-alive clients all on one of two workers in 4 runs
    of 6).

    It binds before it sets ``SO_REUSEPORT``: a port another server holds (with or without
    that option) is refused here, rather than joined, which would split that server's
    traffic with this one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise RecsysError(f"cannot serve on {host}:{port}: {_bind_fix(exc)}") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # the workers join it
    return sock


def _bind_fix(exc: OSError) -> str:
    """What a failed bind means, and the setting that fixes it."""
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        return f"{exc.strerror}; check host= (an address of this machine, or 0.0.0.0)"
    if exc.errno == errno.EADDRINUSE:
        return f"{exc.strerror}; pick another port="
    if exc.errno == errno.EACCES:
        return f"{exc.strerror}; ports below 1024 need privileges: pick another port="
    return str(exc.strerror or exc)


@contextlib.contextmanager
def port_lock(port: int) -> Iterator[None]:
    """Hold an advisory lock on ``port`` for as long as this runner serves (not for
    ``port=0``, which the kernel picks afresh). Bound sockets that do not listen yet do not
    keep each other out, so without it a second ``recsys serve`` on the port, started while
    the first one's workers load their bundle, would join the first one's ``SO_REUSEPORT``
    group and the two would split each other's traffic."""
    if port == 0:
        yield
        return
    path = Path(tempfile.gettempdir()) / f"recsys-serve-port-{port}.lock"
    try:
        handle = open(path, "a")  # noqa: SIM115 (closed below, with the lock)
    except OSError as exc:  # e.g. another user's file: the sockets still refuse a listener
        log.warning("no lock on port %d (%s); serving without it", port, exc)
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RecsysError(
                f"another recsys server is starting or serving on port {port} (it holds "
                f"{path}); pick another port="
            ) from None
        yield  # the lock goes with the file's closing


def listen_alone() -> None:
    """In a worker: replace the port holder it inherited (:func:`port_holder`; the parent
    names its address in ``RECSYS_PORT_HOLDER``) by a socket of its own bound to the same
    address, under the same descriptor, so that the socket uvicorn is about to listen on is
    this worker's alone. Without the variable (one process, or not Linux) it does nothing;
    a holder not found is logged (the worker then shares the port's one socket). A bind that
    fails ends the worker with uvicorn's start-up failure code, which stops the parent rather
    than restarting the worker forever."""
    named = os.environ.get(HOLDER_ENV)
    if not named:
        return
    host, _, port = named.rpartition(" ")
    for fd in _sockets():
        with socket.socket(fileno=os.dup(fd)) as inherited:
            if not _is_holder(inherited, host, int(port)):
                continue
            with socket.socket(inherited.family, socket.SOCK_STREAM) as own:
                own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                try:
                    own.bind(inherited.getsockname())
                except OSError as exc:
                    message = f"a worker cannot bind {host}:{port}: {_bind_fix(exc)}"
                    log.error(message)
                    folder = os.environ.get(METRICS_ENV)
                    if folder:  # for the parent's error (serve): the cause, not a guess
                        (Path(folder) / BIND_FAILED).write_text(message)
                    sys.exit(STARTUP_FAILURE)
                os.dup2(own.fileno(), fd)
            return
    log.warning(
        "worker %d: no inherited socket bound to %s:%s; it shares one listening socket with "
        "the other workers (connections may not spread)",
        os.getpid(),
        host,
        port,
    )


def _sockets() -> list[int]:
    """This process's open descriptors that are sockets (Linux: the holder is used there
    only)."""
    fds = [int(name) for name in os.listdir("/dev/fd") if name.isdigit()]
    found = []
    for fd in sorted(fds):
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                found.append(fd)
        except OSError:
            continue  # closed, or the listing's own descriptor
    return found


def _is_holder(sock: socket.socket, host: str, port: int) -> bool:
    """A TCP socket bound to (``host``, ``port``) that does not listen: the parent's holder
    (the descriptor numbers differ between the parent and a spawned worker; the address
    does not)."""
    try:
        return (
            sock.type == socket.SOCK_STREAM
            and sock.family in (socket.AF_INET, socket.AF_INET6)
            and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0
            and tuple(sock.getsockname()[:2]) == (host, port)
        )
    except OSError:
        return False


def serve(cfg: ServeSettings, bundle: Any) -> None:
    """Serve until stopped: one process with ``bundle``, or ``cfg.workers`` workers."""
    import uvicorn

    problem = unshared(cfg)
    if problem:
        raise RecsysError(problem)
    # X-Forwarded-For is believed only from `forwarded_allow_ips` (default none): otherwise
    # any local client could pick the address its rate limit is counted under.
    options: dict[str, Any] = {
        "host": str(cfg.host),
        "port": int(cfg.port),
        "log_level": "warning",
        "proxy_headers": bool(cfg.forwarded_allow_ips),
        "forwarded_allow_ips": cfg.forwarded_allow_ips or None,
    }
    if cfg.workers == 1:
        uvicorn.run(local_app(cfg, bundle), **options)
        return
    # level 1 of the response cache off: through Redis alone, an event sent to one worker
    # changes the reader's next list whichever worker answers it (a level-1 entry of another
    # worker could serve the old list for cache.l1_ttl_s)
    cfg = cfg.model_copy(update={"cache": cfg.cache.model_copy(update={"l1_ttl_s": 0.0})})
    config = uvicorn.Config(
        "recsys.serving.workers:worker_app",
        factory=True,
        workers=cfg.workers,
        timeout_worker_healthcheck=30,  # a worker loading a bundle under load answers late
        **options,
    )
    # Linux spreads connections over SO_REUSEPORT listeners; elsewhere (macOS does not
    # spread them, Windows has no SO_REUSEPORT) the workers share uvicorn's one socket
    linux = sys.platform.startswith("linux")
    with port_lock(config.port if linux else 0):
        holder = port_holder(config.host, config.port) if linux else config.bind_socket()
        _supervise(config, cfg, holder, linux)


def _supervise(config: Any, cfg: ServeSettings, holder: socket.socket, linux: bool) -> None:
    """uvicorn's supervisor over the workers, with ``holder`` for their socket, until
    stopped; the workers' environment and metrics folder are removed after. A worker that
    fails to start stops it: raised as a :class:`RecsysError`."""
    from uvicorn.supervisors import Multiprocess

    folder = tempfile.mkdtemp(prefix="recsys-metrics-")
    os.environ[METRICS_ENV] = folder  # before the workers start: they import after this
    os.environ[SETTINGS_ENV] = cfg.model_dump_json()
    if linux:
        os.environ[HOLDER_ENV] = "{} {}".format(*holder.getsockname()[:2])
    threads = worker_threads(cfg.workers)
    os.environ.update(threads)
    failed, bind_failure = False, None
    try:  # what uvicorn.run does for workers > 1, with the port holder for its socket
        supervisor = Multiprocess(config, sockets=[holder])
        with contextlib.suppress(KeyboardInterrupt):
            supervisor.run()
        failed = any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes)
        marker = Path(folder) / BIND_FAILED
        bind_failure = marker.read_text() if marker.is_file() else None
    finally:  # this process may go on (tests, embedded use): no pointer to a removed folder
        holder.close()
        for name in (METRICS_ENV, SETTINGS_ENV, HOLDER_ENV, *threads):
            os.environ.pop(name, None)
        shutil.rmtree(folder, ignore_errors=True)
    if bind_failure:
        raise RecsysError(bind_failure)
    if failed:
        raise RecsysError(
            "a worker failed to start, so the server stopped (the worker's log above says "
            "why: the bundle, the store or the app)"
        )
