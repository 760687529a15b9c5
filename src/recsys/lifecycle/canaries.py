"""A canary's state in the registry: which version of a family takes what share of traffic
(servers that follow the registry apply it as an experiment), and the answer statistics each
server reports with its heartbeat (what the guardrails compare)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import sqlalchemy as sa

from recsys.lifecycle.guardrails import ArmStats, from_json, to_json
from recsys.lifecycle.retention import stale_after
from recsys.lifecycle.schema import RegistryDb, canaries, server_stats, servers


@dataclass(frozen=True)
class Canary:
    family: str
    version: str
    path: str
    percent: float
    started_at: float
    actor: str


class Canaries:
    """The registry's canary methods (mixed into :class:`recsys.lifecycle.Registry`)."""

    db: RegistryDb

    def set_canary(self, family: str, version: str, path: str, percent: float, actor: str) -> None:
        """Route ``percent`` of ``family``'s traffic to ``version`` (at ``path``)."""
        if not 0 < percent <= 100:
            raise ValueError(f"canary percent {percent} outside (0, 100]")
        row = {
            "family": family,
            "version": version,
            "path": path,
            "percent": float(percent),
            "started_at": time.time(),
            "actor": actor,
        }
        insert = self.db.insert(canaries).values(row)
        changed = {k: insert.excluded[k] for k in ("version", "path", "percent", "actor")}
        with self.db.write() as conn:
            conn.execute(insert.on_conflict_do_update(index_elements=["family"], set_=changed))

    def canary(self, family: str) -> Canary | None:
        with self.db.read() as conn:
            row = conn.execute(sa.select(canaries).where(canaries.c.family == family)).first()
        return None if row is None else Canary(**row._asdict())

    def end_canary(self, family: str) -> None:
        """All traffic back to production (the canary promoted or rolled back)."""
        with self.db.write() as conn:
            conn.execute(canaries.delete().where(canaries.c.family == family))

    def report_stats(self, server_id: str, stats: dict[str, ArmStats]) -> None:
        """A server's answer statistics by bundle version, cumulative since it started."""
        row = {
            "server_id": server_id,
            "stats": json.dumps({v: to_json(s) for v, s in stats.items()}),
            "at": time.time(),
        }
        insert = self.db.insert(server_stats).values(row)
        changed = {k: insert.excluded[k] for k in ("stats", "at")}
        with self.db.write() as conn:
            conn.execute(insert.on_conflict_do_update(index_elements=["server_id"], set_=changed))

    def server_stats(self) -> dict[str, dict[str, ArmStats]]:
        """Per live server (fresh heartbeat): its statistics by bundle version."""
        now = time.time()
        query = sa.select(server_stats.c.server_id, server_stats.c.stats, servers.c.poll_s).join(
            servers, servers.c.server_id == server_stats.c.server_id
        )
        with self.db.read() as conn:
            rows = conn.execute(query.add_columns(servers.c.last_seen)).all()
        return {
            r.server_id: {v: from_json(s) for v, s in json.loads(r.stats).items()}
            for r in rows
            if now - r.last_seen <= stale_after(r.poll_s)
        }


def window(
    start: dict[str, dict[str, ArmStats]], end: dict[str, dict[str, ArmStats]], version: str
) -> ArmStats:
    """``version``'s answers between two :meth:`Canaries.server_stats` reads, summed over
    servers (a server that appeared in between counts from zero: a new server id per start)."""
    total = ArmStats()
    for server, stats in end.items():
        if version in stats:
            before = start.get(server, {}).get(version, ArmStats())
            total = total + (stats[version] - before)
    return total
