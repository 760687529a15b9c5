"""Micro-batching for the model stages of the in-process service.

One worker thread takes whatever requests are waiting and runs them as one batch: under load
the queue fills while a batch runs, so batches grow with concurrency and a lone request waits
for nothing. One model thread also keeps Python threads from fighting over the GIL (measured
on 2 cores: 4 stage threads served 227 user requests/s at 8 clients, 1 thread 295/s).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar, cast

Req = TypeVar("Req")
Res = TypeVar("Res")

_STOP = object()


class MicroBatcher(Generic[Req, Res]):
    """Runs ``fn(batch) -> results`` (same length, same order) on one worker thread.

    Args:
        fn: the batched function. If it raises, every request of that batch gets the error.
        max_batch: most requests per call.
        name: the worker thread's name.
    """

    def __init__(
        self, fn: Callable[[list[Req]], list[Res]], max_batch: int = 16, name: str = "batcher"
    ) -> None:
        self.fn, self.max_batch = fn, max_batch
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, request: Req) -> Future[Res]:
        future: Future[Res] = Future()
        self._queue.put((request, future))
        return future

    def close(self) -> None:
        """Finish what is queued, then stop the worker."""
        self._queue.put(_STOP)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is _STOP:
                return
            batch: list[tuple[Req, Future[Res]]] = [cast(tuple[Req, "Future[Res]"], item)]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                batch.append(cast(tuple[Req, "Future[Res]"], nxt))
            live = [(r, f) for r, f in batch if f.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                results = self.fn([r for r, _ in live])
            except BaseException as exc:  # the callers decide what an error means
                for _, future in live:
                    future.set_exception(exc)
                continue
            for (_, future), result in zip(live, results, strict=True):
                future.set_result(result)
