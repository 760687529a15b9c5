"""Schemathesis over real HTTP: every operation of a served OpenAPI document with generated
valid and invalid inputs, every answer checked against the document and counted.

Nothing is swallowed: a check that fails, and an error of the call itself (connection refused
or reset, a timeout, a server that died), is a failure naming the request. Valid inputs use
ids the server knows half of the time (:class:`Known`), so handlers get past their 404s.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# Explicit, so no schemathesis.toml on the machine changes what is checked. Invalid input may
# also be refused for its size (413) before its shape is looked at.
CONFIG = {
    "checks": {
        "negative_data_rejection": {
            "expected-statuses": [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
        }
    }
}


@dataclass(frozen=True)
class Known:
    """Ids the server knows: generated valid inputs use them instead of random ids half of
    the time (every ``book_id``, ``user_id``, ``followee_id`` and model ``version`` in the path or
    the body)."""

    books: list[str]
    users: list[str]
    versions: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Target:
    """The server under test and how to call it."""

    base: str
    headers: dict[str, str]
    known: Known | None = None
    timeout_s: float = 20.0


@dataclass
class Report:
    """What one fuzz run sent and found."""

    spec: list[str]  # "METHOD /path" of every operation in the document
    sent: Counter[str] = field(default_factory=Counter)  # requests per operation
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    modes: dict[str, Counter[str]] = field(default_factory=dict)  # requests per generation mode
    failures: list[str] = field(default_factory=list)

    def table(self) -> str:
        """Per operation: valid and invalid inputs sent, and the statuses answered."""
        rows = [f"{'operation':45} {'valid':>6} {'invalid':>7}  statuses"]
        total = Counter[int]()
        for label in self.spec:
            modes, statuses = self.modes.get(label, Counter()), self.statuses.get(label, Counter())
            total.update(statuses)
            rows.append(f"{label:45} {modes['positive']:6} {modes['negative']:7}  {_mix(statuses)}")
        rows.append(f"{'all':45} {sum(self.sent.values()):14}  {_mix(total)}")
        return "\n".join(rows)


def _mix(statuses: Counter[int]) -> str:
    return " ".join(f"{code}:{n}" for code, n in sorted(statuses.items()))


class CallFailed(AssertionError):
    """The request got no answer."""


def fuzz(target: Target, valid: int, invalid: int) -> Report:
    """Every operation of the target's OpenAPI document: ``valid`` generated inputs that match
    the document and ``invalid`` ones that do not (where it has inputs), each answer run
    through :data:`CHECKS`. Erasing and delisting (DELETE) go last, so the other operations
    still find the known ids; deleting a review goes before them."""
    document = httpx.get(f"{target.base}/openapi.json", timeout=target.timeout_s).json()
    schema = schemathesis.openapi.from_dict(document, config=SchemathesisConfig.from_dict(CONFIG))
    report = Report(
        spec=[f"{m.upper()} {path}" for path, ops in document["paths"].items() for m in ops]
    )
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in sorted(operations, key=_last_the_deletes):
        _run(target, operation, GenerationMode.POSITIVE, valid, report)
        if list(operation.iter_parameters()) or operation.body:
            _run(target, operation, GenerationMode.NEGATIVE, invalid, report)
    return report


def _last_the_deletes(operation: Any) -> tuple[bool, int]:
    """Deletes last, and the deeper first: a review's before its reader's erasure and its
    book's delisting (which would leave nothing to delete)."""
    delete = operation.method.upper() == "DELETE"
    return delete, -operation.path.count("/") if delete else 0


def _run(
    target: Target, operation: Any, mode: GenerationMode, examples: int, report: Report
) -> None:
    label = operation.label
    statuses = report.statuses.setdefault(label, Counter())
    modes = report.modes.setdefault(label, Counter())
    broken: list[str] = []  # the first call without an answer: the server may be gone
    strategy = operation.as_strategy(generation_mode=mode)
    known = target.known
    if known and mode is GenerationMode.POSITIVE and (operation.path_parameters or operation.body):
        books, users = st.sampled_from(known.books), st.sampled_from(known.users)
        versions = st.sampled_from(known.versions or [""])
        strategy = st.tuples(strategy, books, users, users, versions, st.booleans()).map(_aim)

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        phases=[Phase.generate, Phase.shrink],
    )
    @given(case=strategy)
    def check(case: Any) -> None:
        if broken:  # shrinking against a dead server would wait on every attempt
            raise CallFailed(broken[0])
        report.sent[label] += 1
        modes[mode.value] += 1
        try:
            response = case.call(target.base, headers=target.headers, timeout=target.timeout_s)
        except Exception as exc:
            broken.append(f"{_describe(case)}\n -> no answer: {type(exc).__name__}: {exc}")
            raise CallFailed(broken[0]) from exc
        statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=target.headers)
        except (Exception, BaseExceptionGroup) as exc:
            found = "\n".join(_messages(exc))
            answer = f"{response.status_code} {response.text[:300]}"
            raise AssertionError(f"{_describe(case)}\n -> {answer}\n{found}") from None

    try:
        check()
    except (Exception, BaseExceptionGroup) as exc:
        report.failures.extend(f"{label} ({mode.value}): {m}" for m in _messages(exc))


def _aim(drawn: tuple[Any, str, str, str, str, bool]) -> Any:
    """The generated case with a known book, user (and another as the followee) and version
    in its ids, when ``use`` says so."""
    case, book, user, followee, version, use = drawn
    if use:
        replace = _replacer(book, user, followee, version)
        if case.path_parameters:
            case.path_parameters = replace(case.path_parameters)
        if isinstance(case.body, dict | list):
            case.body = replace(case.body)
    return case


def _replacer(book: str, user: str, followee: str, version: str) -> Callable[[Any], Any]:
    ids = {"book_id": book, "user_id": user, "followee_id": followee}
    ids |= {"version": version} if version else {}

    def replace(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                key: ids[key]
                if key in ids and (item is None or isinstance(item, str))
                else replace(item)
                for key, item in value.items()
            }
        if isinstance(value, list):
            return [replace(item) for item in value]
        return value

    return replace


def _describe(case: Any) -> str:
    body = "" if type(case.body).__name__ == "NotSet" else f" body={case.body!r:.300}"
    query = f" query={case.query}" if case.query else ""
    return f"{case.method} {case.formatted_path}{query}{body}"


def _messages(exc: BaseException) -> list[str]:
    """The message of an exception, or of each one in a group."""
    if isinstance(exc, BaseExceptionGroup):
        return [m for sub in exc.exceptions for m in _messages(sub)]
    return [f"{type(exc).__name__}: {exc}"[:2000]]
