"""Where the request path's blocking calls run: one pool of threads per process.

A personalised request waits for its micro-batch in a thread (``RecommendationService`` is
synchronous), and store and Redis round trips must not hold the event loop. Starlette's
``run_in_threadpool`` hands such calls to AnyIO's worker threads, which AnyIO ties to the
event loop's "root task". Under Ray Serve the replica's loop runs forever with no such task,
so AnyIO took each request's own task for the root and stopped the worker when the request
ended: every request started an OS thread (measured: about 1,700 in 12 s at 8 clients).
This pool keeps its threads whatever runs the loop (uvicorn or a Ray replica). It is not
``asyncio.to_thread`` (which the Ray stage deployments use for their model calls): that
default pool has ``min(32, cores + 4)`` threads, 6 on 2 cores, and each waiting personalised
request holds one, so fewer requests than 8 clients could wait for a batch at once.

The call runs in a copy of the caller's context (as ``run_in_threadpool`` does), so the
request's :data:`recsys.serving.batching.CURRENT_CALLER` and log context reach the thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

# Personalised requests block here until their batch is answered; past 4 x 16 waiting
# (RecommendationService.max_pending) they are answered "overloaded" without waiting, so 80
# threads keep a full queue and the store and Redis calls beside it from queueing here.
THREADS = 80

_pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="recsys-request")


async def run(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` in the pool, in a copy of the caller's context."""
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_pool, call)
