"""The registry follower alone (a fake serving core and registry): it swaps when production
moves (promotion or rollback), sends heartbeats, does not retry a refused bundle on every
poll, and survives a registry that cannot be reached."""

from __future__ import annotations

import time
from typing import Any

import pytest

from recsys.errors import RecsysError
from recsys.lifecycle import ModelVersion
from recsys.serving import follow
from recsys.serving.follow import ProductionFollower


class FakeCore:
    def __init__(self, version: str) -> None:
        self.version, self.swaps, self.refuse = version, [], False

    def swap(self, path: str) -> bool:
        self.swaps.append(path)
        if self.refuse:
            return False
        self.version = path.rsplit("/", 1)[-1]
        return True

    def serving(self) -> list[tuple[str, str]]:
        return [("fam", self.version)]


class FakeRegistry:
    def __init__(self) -> None:
        self.current: str | None = "v1"
        self.down = False
        self.beats: list[list[tuple[str, str]]] = []
        self.forgotten: list[str] = []

    def production(self, family: str) -> ModelVersion | None:
        if self.down:
            raise RecsysError("cannot reach the model registry")
        if self.current is None:
            return None
        return ModelVersion(
            family, self.current, f"/b/{self.current}", "production", {}, "", None, 0.0, 0.0,
            "", (),
        )  # fmt: skip

    def heartbeat(self, server_id: str, serving: Any, poll_s: float) -> None:
        self.beats.append(list(serving))

    def forget(self, server_id: str) -> None:
        self.forgotten.append(server_id)

    def close(self) -> None:
        pass


def started(core: FakeCore, registry: FakeRegistry) -> ProductionFollower:
    """A follower polling once a minute, after its first poll (at start) is done."""
    follower = ProductionFollower(core, "fake://", "fam", 60, opener=lambda _: registry)  # type: ignore[arg-type]
    deadline = time.monotonic() + 5
    while not registry.beats and follower.error is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return follower


def test_follows_promotion_and_rollback_and_reports_what_it_serves() -> None:
    core, registry = FakeCore("v1"), FakeRegistry()
    follower = started(core, registry)
    assert core.swaps == []  # started on production: nothing to do
    assert registry.beats[-1] == [("fam", "v1")]
    registry.current = "v2"
    assert follower.check()
    assert (core.version, follower.applied) == ("v2", "v2")
    assert registry.beats[-1] == [("fam", "v2")]
    assert not follower.check()  # unchanged: no swap
    registry.current = "v1"  # a rollback moves the pointer back
    assert follower.check()
    assert core.swaps == ["/b/v2", "/b/v1"]
    follower.stop()
    assert registry.forgotten == [follower.server_id]


def test_a_refused_bundle_is_not_retried_on_every_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(follow, "RETRY_REFUSED_S", 0.3)
    core, registry = FakeCore("v1"), FakeRegistry()
    follower = started(core, registry)
    core.refuse, registry.current = True, "v2"
    assert not follower.check()
    assert not follower.check()
    assert core.swaps == ["/b/v2"]  # once, then left for RETRY_REFUSED_S
    assert core.version == "v1"  # the current bundle keeps serving
    time.sleep(0.35)
    core.refuse = False
    assert follower.check()
    assert core.version == "v2"
    follower.stop()


def test_an_unreachable_registry_keeps_the_server_serving() -> None:
    core, registry = FakeCore("v1"), FakeRegistry()
    registry.down = True
    follower = started(core, registry)
    assert follower.error is not None
    assert "cannot reach" in follower.error
    registry.down, registry.current = False, "v2"
    assert follower.check()
    assert follower.error is None
    follower.stop()
