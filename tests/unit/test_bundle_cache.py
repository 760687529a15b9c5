"""The Ray stages' bundle cache: a swap's load never holds up requests for the loaded bundle."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from recsys.serving import ray_app


class FakeBundle:
    """A bundle as the cache sees it (no readers: priming its stages fails, and is logged)."""

    def __init__(self, key: str, gate: threading.Event | None) -> None:
        self.key, self.gate, self.version = key, gate, key

    def two_stage(self) -> str:
        if self.gate is not None:  # a slow load: until the test opens the gate
            assert self.gate.wait(10)
        if self.key.endswith("broken"):
            raise ValueError("corrupt bundle")
        return f"model of {self.key}"


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], threading.Event]:
    calls: list[str] = []
    gate = threading.Event()

    def load_bundle(key: str) -> FakeBundle:
        calls.append(key)
        return FakeBundle(key, gate if key != "current" else None)

    monkeypatch.setattr(ray_app, "resolve", Path)
    monkeypatch.setattr(ray_app, "load_bundle", load_bundle)
    return calls, gate


def in_thread(call: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(call())
        except Exception as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_a_loading_bundle_never_blocks_the_loaded_one(
    loads: tuple[list[str], threading.Event],
) -> None:
    calls, gate = loads
    cache = ray_app.BundleCache()
    assert cache.get("current")[1] == "model of current"
    first, first_out = in_thread(lambda: cache.get("new"))
    second, second_out = in_thread(lambda: cache.get("new"))  # the same load, not another
    request, request_out = in_thread(lambda: cache.get("current"))
    request.join(timeout=2)
    time.sleep(0.2)  # the second caller is waiting for the load too
    assert request_out == [cache.get("current")], "a request waited on the swap's load"
    assert not first_out
    gate.set()
    first.join(timeout=5)
    second.join(timeout=5)
    assert first_out[0][1] == second_out[0][1] == "model of new"
    assert calls == ["current", "new"]


def test_a_failed_load_reaches_every_caller_and_is_retried(
    loads: tuple[list[str], threading.Event],
) -> None:
    calls, gate = loads
    cache = ray_app.BundleCache()
    first, first_out = in_thread(lambda: cache.get("broken"))
    second, second_out = in_thread(lambda: cache.get("broken"))
    time.sleep(0.2)  # both callers are in: the load and the one waiting for it
    gate.set()
    first.join(timeout=5)
    second.join(timeout=5)
    assert all(isinstance(out[0], ValueError) for out in (first_out, second_out))
    with pytest.raises(ValueError, match="corrupt"):
        cache.get("broken")  # not cached: tried again
    assert calls == ["broken", "broken"]
