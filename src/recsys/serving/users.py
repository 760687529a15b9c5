"""What is known about a user (profile, history) and GDPR erasure."""

from __future__ import annotations

import logging
from typing import Any

from recsys.errors import RecsysError
from recsys.serving.core import ServingCore
from recsys.serving.schemas import (
    Followed,
    Followee,
    Follows,
    HistoryItem,
    Preference,
    Preferences,
    PreferencesWithdrawn,
    Unfollowed,
    UserHistory,
    UserProfile,
)

log = logging.getLogger(__name__)


class UnknownUser(RecsysError):
    """A user id nothing is known about (HTTP 404)."""


class SelfFollow(RecsysError):
    """A reader asked to follow themselves (HTTP 422)."""


class TooManyFollows(RecsysError):
    """A reader who follows :data:`MAX_FOLLOWS` readers asked to follow one more (HTTP 422)."""


MAX_FOLLOWS = 500  # each list reads every followee's latest books: bounded


class Users:
    """Users of one serving process: the bundle's histories and the stores' events."""

    def __init__(self, core: ServingCore) -> None:
        self.core = core

    def _events(self, user_id: str) -> list[tuple[str, float, str]]:
        """The user's history events (book, time, type): one erasure check and one read.
        UnknownUser (404) when nothing is known or the user was erased."""
        stores, svc = self.core.live.stores, self.core.service
        if stores.users.is_deleted(user_id):
            raise UnknownUser(f"unknown user '{user_id}'")
        events = stores.events.history(user_id)
        if user_id not in svc.histories and not events and stores.users.user(user_id) is None:
            raise UnknownUser(f"unknown user '{user_id}'")
        return events

    def profile(self, user_id: str) -> UserProfile:
        """Counts of what is known (404 when nothing is, or after erasure)."""
        events = self._events(user_id)
        known = self.core.service.histories.get(user_id, [])
        merged = dict.fromkeys([*known, *(b for b, _, _ in events)])  # as served
        return UserProfile(
            user_id=user_id,
            in_model=user_id in self.core.service.histories,
            history_length=len(merged),
            events=len(events),
        )

    def history(self, user_id: str, limit: int) -> UserHistory:
        """The reading history, most recent last: the bundle's, then the events."""
        events = self._events(user_id)
        svc = self.core.service
        items = [
            HistoryItem(book_id=b, title=self._title(b), source="bundle")
            for b in svc.histories.get(user_id, [])
        ]
        items += [
            HistoryItem(book_id=b, title=self._title(b), source="event", type=k, timestamp=t)
            for b, t, k in events
        ]
        return UserHistory(user_id=user_id, history=items[-limit:])

    def preferences(self, user_id: str) -> Preferences:
        """The reader's standing "not for me" marks (404 for an erased or unknown reader)."""
        self._events(user_id)
        marks = self.core.live.stores.events.preferences(user_id)
        return Preferences(
            user_id=user_id,
            preferences=[
                Preference(book_id=b, title=self._title(b), type=k, at=t)  # type: ignore[arg-type]
                for b, k, t in marks
            ],
        )

    def withdraw(self, user_id: str, book_id: str | None) -> PreferencesWithdrawn:
        """Withdraw the marks on ``book_id`` (all of them when None): the books may be
        recommended again from the next answer on."""
        removed = self.core.live.stores.events.forget_preferences(user_id, book_id)
        if removed and self.core.live.cache is not None:
            self.core.live.cache.invalidate_user(user_id, self.core.service.version)
        return PreferencesWithdrawn(user_id=user_id, removed=removed)

    def follow(self, user_id: str, followee_id: str) -> Followed:
        """``user_id`` follows ``followee_id``: the followee's books join the reader's
        candidates from the next answer on. 404 for an erased reader or an unknown or erased
        followee; 422 to follow oneself."""
        if followee_id == user_id:
            raise SelfFollow("a reader cannot follow themselves; name another reader's user_id")
        if self.core.live.stores.users.is_deleted(user_id):
            raise UnknownUser(f"unknown user '{user_id}'")
        self._events(followee_id)  # 404 when nothing is known of them or they were erased
        following = {f for f, _ in self.core.live.stores.users.following(user_id)}
        if len(following) >= MAX_FOLLOWS and followee_id not in following:
            raise TooManyFollows(
                f"a reader follows at most {MAX_FOLLOWS} readers; unfollow one first "
                f"(DELETE /users/{user_id}/follows/{{followee_id}})"
            )
        created = self.core.live.stores.users.follow(user_id, followee_id)
        self._changed(user_id)
        return Followed(user_id=user_id, followee_id=followee_id, created=created)

    def unfollow(self, user_id: str, followee_id: str) -> Unfollowed:
        """``user_id`` stops following ``followee_id`` (their books leave at once)."""
        removed = self.core.live.stores.users.unfollow(user_id, followee_id)
        if removed:
            self._changed(user_id)
        return Unfollowed(user_id=user_id, followee_id=followee_id, removed=removed)

    def follows(self, user_id: str) -> Follows:
        """Everyone the reader follows (404 for an erased or unknown reader)."""
        stores = self.core.live.stores
        following = stores.users.following(user_id)
        if not following:
            self._events(user_id)
        return Follows(
            user_id=user_id, follows=[Followee(user_id=f, since=t) for f, t in following]
        )

    def _changed(self, user_id: str) -> None:
        """The reader's cached answers are stale."""
        if self.core.live.cache is not None:
            self.core.live.cache.invalidate_user(user_id, self.core.service.version)

    def _title(self, book_id: str) -> str | None:
        catalogue = self.core.service.catalogue
        index = catalogue.index.get(book_id)
        if index is not None:
            return catalogue.titles[index]
        book = self.core.live.stores.catalogue.book(book_id)
        return book["title"] if book else None

    def erase(self, user_id: str, actor: str) -> dict[str, Any]:
        """GDPR erasure: events and profile deleted, cached answers purged, the id suppressed
        from later exports and batch outputs, an audit entry written. Returns the counts."""
        live = self.core.live
        for queued in (live.impressions, live.explorations):  # nothing of theirs written after
            if queued is not None:
                queued.flush()
        followers = live.stores.users.followers(user_id)  # their lists name this reader
        removed = live.stores.users.delete_user(user_id, actor)
        cache = self.core.live.cache
        if cache is not None:
            cache.invalidate_user(user_id)  # every version
            for follower in followers:  # the lists they are served now
                cache.invalidate_user(follower, self.core.service.version)
        removed["model_history"] = len(self.core.service.histories.get(user_id, []))
        return removed
