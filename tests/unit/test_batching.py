"""MicroBatcher: results in order, batches grow under load, errors reach every caller;
requests past their deadline are never computed, and under overload the newest are answered
in time while the rest are told at once."""

from __future__ import annotations

import threading
import time

import pytest

from recsys.serving.batching import MicroBatcher, Overloaded


def test_batches_form_under_load_and_keep_order() -> None:
    sizes: list[int] = []
    release = threading.Event()

    order: list[int] = []

    def square(batch: list[int]) -> list[int]:
        sizes.append(len(batch))
        order.extend(batch)
        release.wait(5)  # the first batch blocks while the others queue up
        return [x * x for x in batch]

    batcher = MicroBatcher(square, max_batch=4)
    futures = [batcher.submit(i) for i in range(9)]
    release.set()
    assert [f.result(timeout=5) for f in futures] == [i * i for i in range(9)]
    assert max(sizes) == 4  # the queued requests were answered in full batches
    assert sum(sizes) == 9
    assert order == list(range(9))  # without deadlines: first come, first served
    batcher.close()


def test_an_error_reaches_every_request_of_the_batch() -> None:
    gate = threading.Event()

    def boom(batch: list[int]) -> list[int]:
        gate.wait(5)
        raise RuntimeError("model down")

    batcher = MicroBatcher(boom, max_batch=8)
    futures = [batcher.submit(i) for i in range(3)]
    gate.set()
    for future in futures:
        with pytest.raises(RuntimeError, match="model down"):
            future.result(timeout=5)
    ok = MicroBatcher(lambda b: [x + 1 for x in b])
    assert ok.submit(1).result(timeout=5) == 2  # a fresh batcher is unaffected
    ok.close()
    batcher.close()


def test_close_finishes_queued_requests() -> None:
    gate = threading.Event()

    def slow(batch: list[int]) -> list[int]:
        gate.wait(5)
        return batch

    batcher = MicroBatcher(slow, max_batch=2)
    futures = [batcher.submit(i) for i in range(5)]
    batcher.close()
    gate.set()
    assert [f.result(timeout=5) for f in futures] == list(range(5))


def test_requests_past_their_deadline_are_never_computed() -> None:
    seen: list[int] = []
    gate = threading.Event()

    def run(batch: list[int]) -> list[int]:
        gate.wait(5)
        seen.extend(batch)
        return batch

    batcher = MicroBatcher(run, max_batch=4)
    first = batcher.submit(0)  # occupies the worker
    time.sleep(0.05)
    late = [batcher.submit(i, deadline=time.monotonic() + 0.05) for i in (1, 2)]
    cancelled = batcher.submit(3, deadline=time.monotonic() + 10)
    cancelled.cancel()  # its caller gave up
    fine = batcher.submit(4, deadline=time.monotonic() + 10)
    time.sleep(0.1)  # the two late ones expire while the worker is busy
    gate.set()
    assert first.result(timeout=5) == 0
    assert fine.result(timeout=5) == 4
    assert seen == [0, 4]  # nothing computed for callers that left
    assert not any(f.done() for f in late)  # their callers time out on their own
    assert batcher.dropped == 3  # two late, one cancelled
    batcher.close()


def test_under_overload_the_newest_are_answered_in_time_and_the_rest_told_at_once() -> None:
    gate = threading.Event()
    gate.set()

    def slow(batch: list[int]) -> list[int]:
        gate.wait(5)
        time.sleep(0.02 * len(batch))  # 20 ms a request
        return batch

    batcher = MicroBatcher(slow, max_batch=16)
    for i in range(3):  # measure the cost
        batcher.submit(-i).result(timeout=5)
    assert batcher.cost() == pytest.approx(0.02, abs=0.01)
    gate.clear()
    blocker = batcher.submit(-9)  # the worker is busy while ten requests arrive
    time.sleep(0.02)
    futures = [batcher.submit(i, deadline=time.monotonic() + 0.1) for i in range(10)]
    started = time.monotonic()
    gate.set()
    blocker.result(timeout=5)
    answered, told = [], []
    for i, future in enumerate(futures):
        try:
            assert future.result(timeout=5) == i
            answered.append(i)
        except Overloaded:
            told.append(i)
    assert answered
    assert told
    assert answered == list(range(10 - len(answered), 10))  # the newest ones
    assert 2 <= len(answered) <= 5  # as many as 20 ms each allows in 100 ms
    assert time.monotonic() - started < 0.2  # nobody waited past the budget for nothing
    batcher.close()


def _a_caller_comes_back(linger_s: float) -> list[int]:
    """Batch sizes when a request arrives while the first batch runs, and the first one's
    caller sends its next request 0.2 s after its answer (two closed-loop callers)."""
    sizes: list[int] = []
    entered, gate = threading.Event(), threading.Event()

    def double(batch: list[int]) -> list[int]:
        sizes.append(len(batch))
        entered.set()
        gate.wait(5)  # the first batch holds the worker while the second caller's request queues
        return [x * 2 for x in batch]

    batcher = MicroBatcher(double, linger_s=linger_s)
    first = batcher.submit(0)
    assert entered.wait(5)
    second = batcher.submit(1)  # just after the batch started
    gate.set()
    assert first.result(timeout=5) == 0
    time.sleep(0.2)
    again = batcher.submit(2)
    assert [second.result(timeout=5), again.result(timeout=5)] == [2, 4]
    batcher.close()
    return sizes


@pytest.mark.parametrize(("linger_s", "sizes"), [(1.0, [1, 2]), (0.0, [1, 1, 1])])
def test_a_batch_lingers_for_the_requests_outstanding_when_the_last_one_ended(
    linger_s: float, sizes: list[int]
) -> None:
    """Two requests were outstanding as the first batch ended (its own and one that came
    while it ran): the next batch waits for the second caller's company. Counting the last
    batch's size alone (one) ran each on its own: 7, 1, 7, 1 under 8 clients over HTTP."""
    assert _a_caller_comes_back(linger_s) == sizes


def _after_a_batch_of_two(linger_s: float) -> MicroBatcher[int, int]:
    """A batcher (identity model) whose last batch was two requests and ended with no other
    outstanding: one held the worker while a second queued, and a third joined the second's
    lingering batch."""
    entered, gate = threading.Event(), threading.Event()
    sizes: list[int] = []

    def held(batch: list[int]) -> list[int]:
        sizes.append(len(batch))
        entered.set()
        gate.wait(5)
        return batch

    batcher: MicroBatcher[int, int] = MicroBatcher(held, linger_s=linger_s)
    futures = [batcher.submit(0)]
    assert entered.wait(5)
    futures.append(batcher.submit(1))
    gate.set()
    assert futures[0].result(timeout=5) == 0  # set once the batch's outstanding are counted
    futures.append(batcher.submit(2))  # within the linger for two
    assert [f.result(timeout=5) for f in futures] == [0, 1, 2]
    assert sizes == [1, 2]
    return batcher


def test_a_lone_caller_never_lingers_and_lingering_gives_up() -> None:
    alone = MicroBatcher(lambda batch: [x + 1 for x in batch], linger_s=1.0)
    started = time.monotonic()
    assert [alone.submit(i).result(timeout=5) for i in range(3)] == [1, 2, 3]
    assert time.monotonic() - started < 0.9  # one at a time: never waited for company
    alone.close()

    batcher = _after_a_batch_of_two(linger_s=1.0)  # the next batch waits for a second request
    started = time.monotonic()
    assert batcher.submit(3).result(timeout=5) == 3
    assert time.monotonic() - started >= 0.9  # nobody came: it waited out the linger
    started = time.monotonic()
    assert batcher.submit(4).result(timeout=5) == 4
    assert time.monotonic() - started < 0.9  # the last batch was one: no waiting now
    batcher.close()


def test_after_forget_costs_a_warm_up_batch_is_not_lingered_for() -> None:
    batcher = _after_a_batch_of_two(linger_s=1.0)  # a warm-up's batch of two
    batcher.forget_costs()
    started = time.monotonic()
    assert batcher.submit(3).result(timeout=5) == 3
    assert time.monotonic() - started < 0.9  # not lingered for the warm-up's size
    batcher.close()


def test_a_batch_never_lingers_into_a_deadline() -> None:
    batcher = _after_a_batch_of_two(linger_s=3.0)
    started = time.monotonic()
    due = batcher.submit(3, deadline=time.monotonic() + 0.5)
    assert due.result(timeout=2) == 3  # answered in time, not lingered past its deadline
    assert time.monotonic() - started < 0.5
    batcher.close()
