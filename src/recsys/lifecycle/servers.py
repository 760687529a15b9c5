"""Heartbeats: each running server that follows the registry reports, every poll, which bundle
versions it serves (the default and every experiment variant's), so retention never deletes a
version in use. A heartbeat older than :func:`recsys.lifecycle.retention.stale_after` of its
poll interval (a server that died without saying goodbye) no longer counts."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa

import recsys.lifecycle.records as records
import recsys.lifecycle.retention as retention
from recsys.lifecycle.schema import RegistryDb, servers


@dataclass(frozen=True)
class ServerBeat:
    """A server's last heartbeat: the (family, version) pairs it serves."""

    server_id: str
    serving: tuple[tuple[str, str], ...]
    poll_s: float
    last_seen: float

    @property
    def fresh(self) -> bool:
        return time.time() - self.last_seen <= retention.stale_after(self.poll_s)


class Heartbeats:
    """The registry's heartbeat methods (mixed into :class:`recsys.lifecycle.Registry`)."""

    db: RegistryDb

    def heartbeat(self, server_id: str, serving: Iterable[tuple[str, str]], poll_s: float) -> None:
        """Record that ``server_id`` serves these (family, version) pairs now."""
        row = {
            "server_id": server_id,
            "serving": json.dumps(sorted({(f, v) for f, v in serving})),
            "poll_s": poll_s,
            "last_seen": time.time(),
        }
        insert = self.db.insert(servers).values(row)
        changed = {k: insert.excluded[k] for k in ("serving", "poll_s", "last_seen")}
        with self.db.write() as conn:
            conn.execute(insert.on_conflict_do_update(index_elements=["server_id"], set_=changed))

    def forget(self, server_id: str) -> None:
        """Drop a server's heartbeat (it stopped)."""
        with self.db.write() as conn:
            conn.execute(servers.delete().where(servers.c.server_id == server_id))

    def servers(self) -> list[ServerBeat]:
        """Every server's last heartbeat, stale ones included (see ``fresh``)."""
        with self.db.read() as conn:
            rows = conn.execute(sa.select(servers).order_by(servers.c.server_id)).all()
        return [
            ServerBeat(
                r.server_id,
                tuple((str(f), str(v)) for f, v in json.loads(r.serving)),
                r.poll_s,
                r.last_seen,
            )
            for r in rows
        ]

    def in_use(self, family: str) -> set[str]:
        """Versions of ``family`` that running servers serve (fresh heartbeats)."""
        with self.db.read() as conn:
            return records.in_use(conn, family, time.time())
