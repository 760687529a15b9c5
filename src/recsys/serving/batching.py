"""Micro-batching for the model stages of the in-process service.

One worker thread takes whatever requests are waiting and runs them as one batch: under load
the queue fills while a batch runs, so batches grow with concurrency and a lone request waits
for nothing. Under concurrency (more than one request was outstanding as the last batch
ended: its own and those that came while it ran) the worker lingers up to ``linger_s`` for
the batch to gather that many: a model call costs about 4 ms whatever its size plus 2 ms per
request (Amazon-Book, ``benchmarks/model_path.py``), and while the worker waits, the event
loop and the request threads (which need the GIL) bring back the callers just answered.
Under 8 clients over HTTP this keeps batches at 8 (one process) or 4 (two) where they went
7, 1, 7, 1 and 3, 1 (docs/results/serving.md).

One model thread also keeps Python threads from fighting over the GIL (measured on 2 cores: 4
stage threads served 227 user requests/s at 8 clients, 1 thread 295/s).

Requests may carry a deadline (their caller's time budget). Past it the caller has given up,
so the worker drops the request instead of computing an answer nobody reads; batches are
filled newest first and sized to end before the deadlines of the requests in them, and a
request that cannot be answered in time is told so at once (:class:`Overloaded`). Under
overload the model therefore keeps answering, in budget, as many requests as it can carry,
instead of working through a backlog of abandoned ones.

A caller that leaves before its deadline (its HTTP client disconnected) withdraws its requests
through :class:`Caller`: the request path sets :data:`CURRENT_CALLER`, and the service
registers each submitted future with it.
"""

from __future__ import annotations

import contextvars
import queue
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

Req = TypeVar("Req")
Res = TypeVar("Res")

_STOP = object()


class Overloaded(Exception):
    """The request could not be answered before its deadline (its caller falls back)."""


class Caller:
    """Whoever waits for the requests submitted in its context; :meth:`leave` cancels those
    not yet running (the worker drops them) and any submitted afterwards."""

    def __init__(self) -> None:
        self._futures: list[Future[Any]] = []
        self._lock = threading.Lock()
        self.gone = False

    def waits_on(self, future: Future[Any]) -> None:
        with self._lock:
            if not self.gone:
                self._futures.append(future)
                return
        future.cancel()

    def leave(self) -> None:
        with self._lock:
            self.gone, futures, self._futures = True, self._futures, []
        for future in futures:
            future.cancel()


CURRENT_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "recsys_caller", default=None
)


class _Item(Generic[Req, Res]):
    __slots__ = ("deadline", "future", "request")

    def __init__(self, request: Req, future: Future[Res], deadline: float | None) -> None:
        self.request, self.future, self.deadline = request, future, deadline


class MicroBatcher(Generic[Req, Res]):
    """Runs ``fn(batch) -> results`` (same length, same order) on one worker thread.

    Args:
        fn: the batched function. If it raises, every request of that batch gets the error.
        max_batch: most requests per call.
        name: the worker thread's name.
        linger_s: how long a batch may wait for more requests, up to the number outstanding
            when the last batch ended (0: take what is queued). After a lone request with
            nobody queued behind it, nothing waits; otherwise a request alone waits out
            ``linger_s`` once, and the next batch takes what came. Requests whose callers
            left do not count, and no batch lingers into a request's deadline
            (:meth:`_linger`).
    """

    def __init__(
        self,
        fn: Callable[[list[Req]], list[Res]],
        max_batch: int = 16,
        name: str = "batcher",
        linger_s: float = 0.0,
    ) -> None:
        self.fn, self.max_batch, self.linger_s = fn, max_batch, linger_s
        self._last = 0  # outstanding as the last batch ended: what a lingering batch gathers
        self._costs: deque[float] = deque(maxlen=9)  # batch time / batch size, last batches
        self.dropped = 0  # requests past their deadline, never computed
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._carry: deque[_Item[Req, Res]] = deque()  # taken, not yet run (oldest first)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, request: Req, deadline: float | None = None) -> Future[Res]:
        """Queue ``request``; ``deadline`` (``time.monotonic()``) is when its caller gives up."""
        future: Future[Res] = Future()
        self._queue.put(_Item(request, future, deadline))
        return future

    @property
    def pending(self) -> int:
        """Requests waiting for the worker (cancelled ones included until it drops them)."""
        return self._queue.qsize() + len(self._carry)

    def close(self) -> None:
        """Finish what is queued, then stop the worker."""
        self._queue.put(_STOP)

    def _run(self) -> None:
        stopping = False
        while not (stopping and not self._carry):
            if not self._carry:
                item = self._queue.get()
                if item is _STOP:
                    return
                self._carry.append(item)  # type: ignore[arg-type]
            until = time.monotonic() + self.linger_s
            while len(self._carry) < self.max_batch and not stopping:
                wait = self._linger(until) - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                else:
                    self._carry.append(nxt)  # type: ignore[arg-type]
            batch = self._take()
            if batch:
                self._call(batch)

    def _linger(self, until: float) -> float:
        """Until when the next batch may wait for more requests: never past ``until``, never
        once the live requests taken reach those outstanding when the last batch ended
        (:meth:`_outstanding`), and never into the last
        ``linger_s`` before the earliest of their deadlines less a batch one bigger (the wait
        keeps a linger's slack for the batch to start)."""
        if self.linger_s <= 0 or self._last <= 1:
            return 0.0
        live = [i for i in self._carry if not i.future.cancelled()]  # left: not waited for
        if not live or len(live) >= self._last:
            return 0.0
        deadlines = [i.deadline for i in live if i.deadline is not None]
        if deadlines:
            slack = (len(live) + 1) * self.cost() + self.linger_s
            until = min(until, min(deadlines) - slack)
        return until

    def _take(self) -> list[_Item[Req, Res]]:
        """The next batch from ``_carry``.

        Requests whose caller gave up (cancelled, or past the deadline) are dropped. The batch
        is filled newest first, with as many as can finish before the deadline of each one
        taken (the measured time per request). Older requests that cannot wait for the next
        batch either are answered :class:`Overloaded` at once, so their callers fall back
        without waiting out their budget: under overload the model keeps answering in time
        as many requests as it can carry (adaptive LIFO), and nobody waits for nothing.
        """
        now, cost = time.monotonic(), self.cost()
        fresh = [
            i for i in self._carry
            if not i.future.cancelled() and (i.deadline is None or i.deadline > now)
        ]  # fmt: skip
        self.dropped += len(self._carry) - len(fresh)
        timed = any(i.deadline is not None for i in fresh)  # else first come, first served
        batch: list[_Item[Req, Res]] = []
        for item in reversed(fresh) if timed else fresh:
            fits = item.deadline is None or (len(batch) + 1) * cost <= item.deadline - now
            if len(batch) < self.max_batch and (fits or not batch):
                batch.append(item)
            elif len(batch) == self.max_batch or not fits:
                break
        if timed:
            batch.reverse()
        taken = {id(item) for item in batch}
        rest = deque(i for i in fresh if id(i) not in taken)
        busy_until = now + len(batch) * cost
        while rest and rest[0].deadline is not None and rest[0].deadline < busy_until + cost:
            shed = rest.popleft()  # cannot be answered after this batch: tell its caller now
            if shed.future.set_running_or_notify_cancel():
                shed.future.set_exception(Overloaded("the model is busy; answered at once"))
        self._carry = rest
        return [item for item in batch if item.future.set_running_or_notify_cancel()]

    def _outstanding(self, batch: list[_Item[Req, Res]]) -> int:
        """The requests waiting for an answer as ``batch`` ends: its own and those that came
        while it ran, the concurrency the next batch lingers to gather. Its size alone would
        miss a request arriving just after the batch started: under 8 closed-loop clients
        batches then went 7, 1, 7, 1 (the lone one's batch lingering for nobody), where they
        now stay at 8."""
        return len(batch) + self._queue.qsize() + len(self._carry)

    def forget_costs(self) -> None:
        """Drop the measured cost (after a warm-up: its batches paid one-off set-up, and a
        cost measured from them would shed the first real requests as overloaded; their size
        is no traffic's to linger for)."""
        self._costs.clear()
        self._last = 0

    def cost(self) -> float:
        """Measured seconds per request: the median of the last batches (0 before any)."""
        return statistics.median(self._costs) if self._costs else 0.0

    def _call(self, batch: list[_Item[Req, Res]]) -> None:
        started = time.monotonic()
        try:
            results = self.fn([item.request for item in batch])
        except BaseException as exc:  # the callers decide what an error means
            self._last = self._outstanding(batch)
            for item in batch:
                item.future.set_exception(exc)
            return
        self._costs.append((time.monotonic() - started) / len(batch))
        self._last = self._outstanding(batch)
        for item, result in zip(batch, results, strict=True):
            item.future.set_result(result)
