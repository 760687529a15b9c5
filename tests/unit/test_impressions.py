"""The impression log: a flush returns only once what was queued before it is stored, even
while the background writer holds a batch (a click right after its list finds the list)."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

from recsys.serving.experiments import ImpressionLog
from recsys.stores import open_store


@dataclasses.dataclass
class SlowWrites:
    """The real experiment store, whose batch writes take ``delay_s``."""

    inner: Any
    delay_s: float
    started: threading.Event = dataclasses.field(default_factory=threading.Event)

    def log_impressions(self, rows: list[dict[str, Any]]) -> None:
        self.started.set()
        time.sleep(self.delay_s)
        self.inner.log_impressions(rows)


def test_flush_waits_for_a_batch_the_background_writer_holds(tmp_path: Path) -> None:
    stores = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    slow = SlowWrites(stores.experiments, delay_s=0.5)
    log = ImpressionLog(slow, flush_s=3600)  # the background writer only when told below
    row = {"request_id": "imp-1", "at": time.time(), "user_id": "u1", "experiment": "e",
           "variant": "a", "books": "[]", "bundle": "v1"}  # fmt: skip
    log.add(row)
    background = threading.Thread(target=log.flush)  # as the writer's own tick would
    background.start()
    assert slow.started.wait(5)  # it holds the batch now
    log.flush()  # a feedback request's flush: nothing left in the queue
    assert stores.experiments.impression("imp-1") is not None
    background.join()
    log.close()
    stores.close()
