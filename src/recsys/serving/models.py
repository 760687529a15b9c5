"""The model registry as a server sees it: versions, promotion and rollback from the console.

The server follows one family's production version (``registry.url``); promoting or rolling
back here moves the registry's pointer, as ``recsys models promote`` / ``rollback`` do, then
this server follows at once and every other server within its poll.
"""

from __future__ import annotations

from recsys.lifecycle.records import ModelVersion
from recsys.serving.core import ServingCore
from recsys.serving.follow import ProductionFollower, RegistryOff
from recsys.serving.schemas import ModelsOverview, ModelsReload, ModelVersionOut
from recsys.stores import StoreUnavailable


class Models:
    """Registry reads and changes for the routes of :mod:`recsys.serving.routers.models`."""

    def __init__(self, core: ServingCore) -> None:
        self.core = core

    def _follower(self) -> ProductionFollower:
        follower = self.core.follower
        if follower is None:
            raise RegistryOff("this server follows no model registry (registry.url is null)")
        return follower

    def overview(self) -> ModelsOverview:
        """Every version of the followed family, newest first, with its stage and metrics."""
        follower = self._follower()
        versions = follower.with_registry(lambda r: r.versions(follower.family))
        production = next((v.version for v in versions if v.stage == "production"), None)
        return ModelsOverview(
            family=follower.family,
            production=production,
            bundle_version=self.core.service.version,
            versions=[_out(v) for v in sorted(versions, key=lambda v: -v.created_at)],
        )

    def reload(self) -> ModelsReload:
        """Read production now and hot-swap to it if it moved (503 when the registry cannot
        be read: nothing changed, so the caller may simply retry)."""
        answer = self._followed(self._follower())
        if answer.follow_error is not None:
            raise StoreUnavailable(f"model registry: {answer.follow_error}", retry_after=2)
        return answer

    def promote(self, version: str, actor: str, reason: str) -> ModelsReload:
        """Make ``version`` production (refused with the registry's reason when it may not
        be), then follow it."""
        follower = self._follower()
        follower.with_registry(lambda r: r.promote(follower.family, version, actor, reason))
        return self._followed(follower)

    def rollback(self, actor: str, reason: str) -> ModelsReload:
        """Back to the previous production version, then follow it."""
        follower = self._follower()
        follower.with_registry(lambda r: r.rollback(follower.family, actor, reason))
        return self._followed(follower)

    def _followed(self, follower: ProductionFollower) -> ModelsReload:
        """After a change the registry made: follow it now. A failure to follow is reported
        in the answer, never as an error (the change happened; running it again would
        change more), and the poll keeps trying."""
        switched = follower.check()
        return ModelsReload(
            family=follower.family,
            production=follower.applied,
            bundle_version=self.core.service.version,
            switched=switched,
            follow_error=follower.error,
        )


def _out(version: ModelVersion) -> ModelVersionOut:
    return ModelVersionOut(
        version=version.version,
        stage=version.stage,
        metrics=version.metrics,
        parent=version.parent,
        created_at=version.created_at,
        promoted_at=version.promoted_at,
        actor=version.actor,
        reasons=list(version.reasons),
    )
