"""`recsys serve workers=2`: two processes on one port share the store, the response cache
(a real Redis) and the Prometheus metrics; connections spread over both; a worker that dies
is replaced; without shared state the runner refuses to start."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict

from recsys.serving.local import spawn_server

ENDPOINT = 'endpoint="/recommendations/users/{user_id}"'


def _workers(parent: int) -> list[int]:
    """The uvicorn workers of ``parent``: its children that run the multiprocessing spawn
    entry point (not the resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def _established(pid: int, port: int) -> int:
    """Connections to ``port`` that process ``pid`` has accepted."""
    import psutil

    return sum(
        1
        for conn in psutil.Process(pid).net_connections(kind="tcp")
        if conn.status == psutil.CONN_ESTABLISHED and conn.laddr and conn.laddr.port == port
    )


def _answered_by(folder: Path, pid: int) -> float:
    """User recommendations counted in ``pid``'s own metrics file."""
    path = folder / f"counter_{pid}.db"
    if not path.exists():
        return 0.0
    total = 0.0
    for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
        if key.startswith('["recsys_requests"') and "/recommendations/users/{user_id}" in key:
            total += value
    return total


def _counted(base: str) -> float:
    """``recsys_requests_total`` of the user endpoint, as one scrape of ``/metrics`` says."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("recsys_requests_total{") and ENDPOINT in line
    )


def test_several_workers_without_shared_state_are_refused(
    trained_bundle: dict[str, Any], tmp_path: Path
) -> None:
    bundle = trained_bundle["bundle"]
    command = ["serve", f"bundle={bundle}", "workers=2", f"store.url=sqlite:///{tmp_path}/s.db"]
    result = subprocess.run(
        [sys.executable, "-m", "recsys", *command, "port=0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "workers=2 needs the response cache and the rate limits shared" in result.stderr
    assert "cache.redis_url=" in result.stderr
    assert "Traceback" not in result.stderr


def test_two_workers_share_the_cache_the_store_and_the_metrics(
    trained_bundle: dict[str, Any], tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsys.serving.workers import THREAD_ENVS

    for name in THREAD_ENVS:  # the server divides the cores itself (the suite sets one)
        monkeypatch.delenv(name, raising=False)
    overrides = [
        f"bundle={trained_bundle['bundle']}",
        f"store.url=sqlite:///{tmp_path}/events.db",
        f"cache.redis_url={redis_url}",
        "auth.enabled=false",
        "workers=2",
        "stage_timeout_ms=10000",  # a loaded machine slows answers; never a fallback here
    ]
    process, base = spawn_server(overrides, {"RECSYS_ROOT": str(tmp_path)}, timeout_s=120)
    try:
        workers = _workers(process.pid)
        assert len(workers) == 2, workers
        environ = Path(f"/proc/{workers[0]}/environ").read_bytes().split(b"\0")
        folder = Path(
            next(v for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC_DIR="))
            .split(b"=", 1)[1]
            .decode()
        )
        # each worker's native thread pools: the cores divided between the two
        threads = max(1, len(os.sched_getaffinity(0)) // 2)
        for name in THREAD_ENVS:
            assert f"{name}={threads}".encode() in environ
        users = trained_bundle["data"].train.get_column("user_id").unique().sort().to_list()

        def ask(user: str) -> httpx.Response:  # a fresh connection each time: any worker
            return httpx.post(
                f"{base}/recommendations/users/{user}", json={"limit": 10}, timeout=30
            )

        # both workers answer (the second may still be loading when /readyz first answers)
        sent, deadline = 0, time.monotonic() + 90
        while time.monotonic() < deadline:
            with ThreadPoolExecutor(8) as pool:
                statuses = list(pool.map(_attempt, [ask] * 16, users[:16]))
            assert statuses == [200] * 16
            sent += 16
            if all(_answered_by(folder, pid) > 0 for pid in workers):
                break
        assert all(_answered_by(folder, pid) > 0 for pid in workers)

        # a burst of keep-alive connections lands on both workers, not on whichever woke first
        port = int(base.rsplit(":", 1)[1])
        burst = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(32)]
        try:
            held: dict[int, int] = {}
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                held = {pid: _established(pid, port) for pid in workers}
                if sum(held.values()) >= 32:
                    break
                time.sleep(0.2)
            assert sum(held.values()) >= 32, held
            assert all(count >= 6 for count in held.values()), held  # a shared socket: ~0
        finally:
            for conn in burst:
                conn.close()

        # an event sent to one worker drops the list every worker cached for that reader
        reader = users[0]
        seen = ask(reader).json()["recommendations"][0]["book_id"]
        event = {"user_id": reader, "book_id": seen, "type": "read"}
        assert httpx.post(f"{base}/events", json=event, timeout=30).status_code == 202
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, [reader] * 24))
        assert [a.status_code for a in answers] == [200] * 24
        for answer in answers:
            assert answer.json()["metadata"]["source"] == "personalized", answer.json()["metadata"]
            assert seen not in [item["book_id"] for item in answer.json()["recommendations"]]
        sent += 1 + len(answers)

        # every scrape, whichever worker takes it, counts both workers' answers
        assert sum(_answered_by(folder, pid) for pid in workers) == sent
        for _ in range(6):
            assert _counted(base) == sent

        # a worker killed with SIGKILL is replaced, and no request fails after
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = _workers(process.pid)
            if len(now) == 2 and workers[0] not in now:
                break
            time.sleep(0.5)
        assert len(now) == 2, now
        assert workers[0] not in now
        with ThreadPoolExecutor(4) as pool:
            after = list(pool.map(_attempt, [ask] * 40, users[:40]))
        assert after == [200] * 40
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert not _workers(process.pid)


def _attempt(ask: Any, user: str) -> int | str:
    """The status, or the transport error's name (a failure like any other)."""
    try:
        return int(ask(user).status_code)
    except httpx.HTTPError as exc:
        return type(exc).__name__


@pytest.fixture(autouse=True)
def _linux_only() -> None:
    if not Path("/proc/self/stat").exists():
        pytest.skip("reads worker processes from /proc")


def test_worker_threads_divide_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Thread counts for the workers' native pools: the cores divided among the workers, at
    least one each, and never over a variable the environment sets."""
    from recsys.serving import workers

    for name in workers.THREAD_ENVS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)))
    assert workers.worker_threads(2) == dict.fromkeys(workers.THREAD_ENVS, "4")
    assert workers.worker_threads(3) == dict.fromkeys(workers.THREAD_ENVS, "2")
    assert workers.worker_threads(16) == dict.fromkeys(workers.THREAD_ENVS, "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    assert "OMP_NUM_THREADS" not in workers.worker_threads(2)


def _listening_worker(holder: socket.socket, accepting: bool, ready: Any, counts: Any) -> None:
    """A worker as the runner starts one: its own socket in place of the inherited holder,
    then listening; it accepts for as long as connections keep coming (or never)."""
    from recsys.serving.workers import listen_alone

    listen_alone()
    holder.listen(64)  # the holder's descriptor now is this worker's own socket
    ready.wait()
    if not accepting:
        time.sleep(10)
        return
    holder.settimeout(2.0)
    accepted = 0
    try:
        while True:
            conn, _ = holder.accept()
            conn.close()
            accepted += 1
    except TimeoutError:
        counts.put(accepted)


def test_each_worker_listens_on_a_socket_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Of two workers, one accepting and one never: with a shared listening socket the first
    would take every connection; with a socket each, the kernel queues about half at the
    other's, whoever is awake."""
    import multiprocessing

    from recsys.serving.workers import HOLDER_ENV, port_holder

    holder = port_holder("127.0.0.1", 0)
    port = holder.getsockname()[1]
    monkeypatch.setenv(HOLDER_ENV, f"127.0.0.1 {port}")
    context = multiprocessing.get_context("fork")
    ready, counts = context.Barrier(3), context.Queue()
    workers = [
        context.Process(target=_listening_worker, args=(holder, accepting, ready, counts))
        for accepting in (True, False)
    ]
    for worker in workers:
        worker.start()
    conns: list[socket.socket] = []
    try:
        ready.wait(timeout=30)
        conns = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(32)]
        accepted = counts.get(timeout=30)
        assert 0 < accepted < 32, accepted
    finally:
        for conn in conns:
            conn.close()
        for worker in workers:
            worker.terminate()
            worker.join(timeout=10)
        holder.close()


def test_a_taken_port_is_a_clear_error() -> None:
    from recsys.errors import RecsysError
    from recsys.serving.workers import port_holder

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(RecsysError, match="pick another port="):
            port_holder("127.0.0.1", taken.getsockname()[1])


def test_a_port_another_server_shares_is_refused_not_joined() -> None:
    """A server listening with SO_REUSEPORT would let a holder that set the option before
    binding join its group, and the two servers would split each other's traffic."""
    from recsys.errors import RecsysError
    from recsys.serving.workers import port_holder

    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        with pytest.raises(RecsysError, match="pick another port="):
            port_holder("127.0.0.1", other.getsockname()[1])


def test_an_address_not_of_this_machine_names_host() -> None:
    from recsys.errors import RecsysError
    from recsys.serving.workers import port_holder

    with pytest.raises(RecsysError, match="check host="):
        port_holder("192.0.2.1", 0)  # TEST-NET-1: no interface of this machine has it


def _worker_start(holder: socket.socket) -> None:
    from recsys.serving.workers import listen_alone

    listen_alone()


def test_a_worker_that_cannot_bind_stops_the_runner(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A server that took the port between the holder and the workers: the worker exits with
    uvicorn's start-up failure code (its supervisor then stops, instead of restarting it
    forever), and leaves the cause for the parent's error."""
    import multiprocessing

    from uvicorn.config import STARTUP_FAILURE

    from recsys.serving.workers import BIND_FAILED, HOLDER_ENV, METRICS_ENV, port_holder

    holder = port_holder("127.0.0.1", 0)
    port = holder.getsockname()[1]
    monkeypatch.setenv(HOLDER_ENV, f"127.0.0.1 {port}")
    monkeypatch.setenv(METRICS_ENV, str(tmp_path))
    with socket.socket() as intruder:  # no SO_REUSEPORT, listening before the workers
        intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        intruder.bind(("127.0.0.1", port))
        intruder.listen()
        worker = multiprocessing.get_context("fork").Process(target=_worker_start, args=(holder,))
        worker.start()
        worker.join(timeout=30)
    holder.close()
    assert worker.exitcode == STARTUP_FAILURE
    note = (tmp_path / BIND_FAILED).read_text()
    assert f"a worker cannot bind 127.0.0.1:{port}" in note
    assert "pick another port=" in note


def test_a_second_runner_on_the_port_is_refused_while_the_first_starts() -> None:
    """Bound sockets that do not listen yet do not keep each other out: the runner holds a
    lock on its port, so a second one cannot join the first one's group while its workers
    load."""
    from recsys.errors import RecsysError
    from recsys.serving.workers import port_lock

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with (
        port_lock(port),
        pytest.raises(RecsysError, match=r"another recsys server .* pick another port="),
        port_lock(port),
    ):
        pass
    with port_lock(port):  # released with the first runner
        pass


def test_bind_errors_name_the_setting_that_fixes_them() -> None:
    import errno

    from recsys.serving.workers import _bind_fix

    assert _bind_fix(OSError(errno.EACCES, "Permission denied")).endswith(
        "ports below 1024 need privileges: pick another port="
    )
    assert "check host=" in _bind_fix(OSError(errno.EADDRNOTAVAIL, "Cannot assign"))
    assert "check host=" in _bind_fix(socket.gaierror(-2, "Name or service not known"))
    assert _bind_fix(OSError(errno.EADDRINUSE, "Address in use")).endswith("pick another port=")


def test_a_missing_holder_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from recsys.serving.workers import HOLDER_ENV, listen_alone

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    monkeypatch.setenv(HOLDER_ENV, f"127.0.0.1 {port}")
    with caplog.at_level(logging.WARNING, logger="recsys.serving.workers"):
        listen_alone()
    assert f"no inherited socket bound to 127.0.0.1:{port}" in caplog.text
