"""MicroBatcher: results in order, batches grow under load, errors reach every caller."""

from __future__ import annotations

import threading

import pytest

from recsys.serving.batching import MicroBatcher


def test_batches_form_under_load_and_keep_order() -> None:
    sizes: list[int] = []
    release = threading.Event()

    def square(batch: list[int]) -> list[int]:
        sizes.append(len(batch))
        release.wait(5)  # the first batch blocks while the others queue up
        return [x * x for x in batch]

    batcher = MicroBatcher(square, max_batch=4)
    futures = [batcher.submit(i) for i in range(9)]
    release.set()
    assert [f.result(timeout=5) for f in futures] == [i * i for i in range(9)]
    assert max(sizes) == 4  # the queued requests were answered in full batches
    assert sum(sizes) == 9
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
