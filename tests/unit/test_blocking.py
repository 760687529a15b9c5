"""The request path's blocking calls reuse their threads on a loop that runs forever (as a Ray
Serve replica's does, where AnyIO's thread pool started a thread per request), and see the
caller's context."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from concurrent.futures import Future

from starlette.concurrency import run_in_threadpool

from recsys.serving import blocking

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


def _threads_of_requests(call: object, requests: int) -> tuple[set[int], list[str]]:
    """Thread ids and context values seen by ``requests`` calls, each from a task of its own
    on a loop run with ``run_forever`` in another thread (no root task, as in a replica)."""
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    idents: set[int] = set()
    seen: list[str] = []

    def work() -> None:
        idents.add(threading.get_native_id())  # not reused at once, unlike get_ident
        seen.append(WHO.get())

    async def request(i: int) -> None:
        WHO.set(f"request {i}")
        await call(work)  # type: ignore[operator]

    try:
        for i in range(requests):
            done: Future[None] = asyncio.run_coroutine_threadsafe(request(i), loop)
            done.result(timeout=10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(timeout=10)
        loop.close()
    return idents, seen


def _alive() -> set[int]:
    return {t.native_id for t in threading.enumerate() if t.native_id is not None}


def test_a_loop_without_a_root_task_reuses_the_pools_threads() -> None:
    idents, seen = _threads_of_requests(blocking.run, 30)
    assert idents <= _alive()  # every thread that served a request is still there
    assert len(idents) <= blocking.THREADS
    assert seen == [f"request {i}" for i in range(30)]  # each in its caller's context


def test_anyio_started_a_thread_per_request_there() -> None:
    """Why the pool exists: on such a loop, ``run_in_threadpool`` ends its worker with the
    request. If AnyIO stops doing so, this fails and the pool can go."""
    idents, _ = _threads_of_requests(run_in_threadpool, 30)
    assert len(idents - _alive()) >= 25  # ended with their requests
