"""Model lifecycle: the registry of bundle versions (stages, metrics, lineage, decisions) and
the production pointer that running servers follow."""

from recsys.lifecycle.records import DELETED, STAGES, ModelVersion
from recsys.lifecycle.registry import Registry, open_registry

__all__ = ["DELETED", "STAGES", "ModelVersion", "Registry", "open_registry"]
