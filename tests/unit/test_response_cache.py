"""Level 1 of the response cache: per-user invalidation across bundle versions, eviction."""

from __future__ import annotations

from recsys.serving.cache import ResponseCache

PARAMS = {"limit": 5}


def test_an_event_drops_every_version_of_that_user_only() -> None:
    cache = ResponseCache()
    for version in ("v1", "v2"):
        for user in ("bob", "alice:user:bob", "bobby"):
            cache.put(version, user, PARAMS, f"{version}/{user}")
    cache.invalidate_user("bob")
    assert cache.get("v1", "bob", PARAMS) == (None, "miss")
    assert cache.get("v2", "bob", PARAMS) == (None, "miss")
    # a user id that ends like another's group, or starts like it, keeps its answers
    assert cache.get("v1", "alice:user:bob", PARAMS) == ("v1/alice:user:bob", "l1")
    assert cache.get("v2", "bobby", PARAMS) == ("v2/bobby", "l1")
    cache.invalidate_user("alice:user:bob")
    assert cache.get("v1", "alice:user:bob", PARAMS) == (None, "miss")
    assert sorted(cache.l1_users()) == ["recsys:v1:user:bobby", "recsys:v2:user:bobby"]


def test_eviction_and_clear_keep_the_per_user_index_whole() -> None:
    cache = ResponseCache(max_users=2)
    cache.put("v1", "a", PARAMS, "a1")
    cache.put("v1", "b", PARAMS, "b1")
    cache.put("v1", "c", PARAMS, "c1")  # evicts a, the least recently used
    assert cache.get("v1", "a", PARAMS) == (None, "miss")
    cache.put("v1", "a", PARAMS, "a2")  # back, evicting b
    cache.invalidate_user("a")
    assert cache.l1_users() == ["recsys:v1:user:c"]
    # the per-user index holds exactly what level 1 holds: evicted groups left it too
    assert cache._groups == {"c": {"recsys:v1:user:c"}}
    cache.clear()
    assert cache.l1_users() == []
    assert cache._groups == {}
    cache.put("v2", "c", PARAMS, "c2")
    cache.invalidate_user("c")
    assert cache.get("v2", "c", PARAMS) == (None, "miss")
    assert cache.l1_users() == []
