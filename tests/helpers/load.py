"""Client load for fault tests: threads sending requests until stopped, every outcome counted
(a transport error is a failure too)."""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx


class Load:
    """Client threads sending a mix of requests until stopped; every outcome counted."""

    def __init__(
        self,
        base: str,
        calls: list[Callable[[httpx.Client, int], httpx.Response]],
        clients: int = 4,
        inspect: Callable[[httpx.Response], str | None] | None = None,
        replay_closed: bool = False,
    ) -> None:
        """``inspect``: called with every 200; a string it returns is counted as a violation
        (``violations``), e.g. a response that mixes two bundle versions.

        ``replay_closed``: a request whose kept-alive connection the server closed before any
        response (``RemoteProtocolError``: a proxy reloading closes idle connections) is
        sent once more, as browsers and HTTP libraries do for requests safe to replay;
        counted under ``replayed``, and a second failure is a failure."""
        self.base, self.calls, self.inspect = base, calls, inspect
        self.replay_closed = replay_closed
        self.violations: collections.Counter[str] = collections.Counter()
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.answers: collections.Counter[str] = collections.Counter()  # source/fallback
        self.finished: list[float] = []  # time.perf_counter() of every answer, failures too
        self.failures: list[str] = []  # status, server and body of each failed answer (diagnosis)
        # (user_id, event_id) of every event a 202 acknowledged (events sent with an event_id)
        self.acknowledged: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def _run(self, worker: int) -> None:
        with httpx.Client(base_url=self.base, timeout=10) as client:
            i = worker
            while not self._stop.is_set():
                call = self.calls[i % len(self.calls)]
                i += 1
                try:
                    try:
                        response = call(client, i)
                    except httpx.RemoteProtocolError:
                        if not self.replay_closed:
                            raise
                        self.outcomes["replayed"] += 1
                        response = call(client, i)
                except httpx.HTTPError as exc:
                    self.outcomes[f"transport:{type(exc).__name__}"] += 1
                    self.finished.append(time.perf_counter())
                    continue
                self.finished.append(time.perf_counter())
                status = str(response.status_code)
                if status == "503" and "retry-after" not in response.headers:
                    status = "503 without Retry-After"
                self.outcomes[status] += 1
                if response.status_code == 202 and response.request.url.path == "/events":
                    self._acknowledge(response.request)
                if response.status_code >= 400:
                    server = response.headers.get("server", "?")
                    self.failures.append(f"{status} from {server}: {response.text[:200]!r}")
                if response.status_code == 200 and self.inspect is not None:
                    violation = self.inspect(response)
                    if violation:
                        self.violations[violation] += 1
                if response.status_code == 200 and "metadata" in response.text:
                    meta = response.json()["metadata"]
                    self.answers[meta["fallback_reason"] or meta["source"]] += 1

    def _acknowledge(self, request: httpx.Request) -> None:
        body = json.loads(request.content)
        events = body.get("events", [body])
        with self._lock:
            self.acknowledged.update(
                (e["user_id"], e["event_id"]) for e in events if e.get("event_id")
            )

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def report(self, name: str, stored: set[tuple[str, str]] | None = None) -> dict[str, int]:
        """Print and return sent / failed / violations, and with ``stored`` (the (user_id,
        event_id) pairs the store holds afterwards) acknowledged events and lost ones."""
        sent = sum(n for s, n in self.outcomes.items() if s != "replayed")
        failed = sum(
            n for s, n in self.outcomes.items() if not s.startswith("2") and s != "replayed"
        )
        violated = sum(self.violations.values())
        figures = {"sent": sent, "failed": failed, "violations": violated}
        acks = ""
        if stored is not None:
            figures["acknowledged"] = len(self.acknowledged)
            figures["lost"] = len(self.acknowledged - stored)
            acks = f"acknowledged events {figures['acknowledged']}, lost {figures['lost']}, "
        print(
            f"\n{name}: sent {sent}, failed {failed}, violations {violated}, {acks}"
            f"outcomes {dict(self.outcomes)}, answers {dict(self.answers)}"
            + (f", {dict(self.violations)}" if violated else "")
            + (f", failures {self.failures[:5]}" if self.failures else "")
        )
        return figures
