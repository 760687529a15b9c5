"""A serving process leaves what its imports made out of later garbage collections."""

from __future__ import annotations

import gc

from recsys.serving.heap import freeze_imports


def test_freeze_imports_leaves_what_is_alive_out_of_collections() -> None:
    alive = object.__new__(type("Alive", (), {}))  # tracked: an instance with a __dict__
    try:
        freeze_imports()
        assert gc.get_freeze_count() > 0
        assert not any(o is alive for o in gc.get_objects())  # never walked again
        later = object.__new__(type("Later", (), {}))
        assert any(o is later for o in gc.get_objects())  # what comes after still is
    finally:
        gc.unfreeze()  # the test process as it was
