"""The operator console in a real headless Chromium against the real app (uvicorn on loopback,
auth on, a SQLite store, a model registry with two versions, a running A/B experiment):
health, promote, the per-user preview, experiments, and a reader's token refused."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.helpers.browser import shoot
from tests.helpers.bundles import two_versions

from recsys.bundle.reader import load_bundle
from recsys.lifecycle import Registry, open_registry
from recsys.serving.app import create_app
from recsys.serving.auth import ALL_SCOPES, Authenticator
from recsys.serving.live import Live
from recsys.serving.local import serve_in_thread
from recsys.serving.service import RecommendationService

pytestmark = pytest.mark.integration
SECRET = "console-browser-tests-secret-0123456789abcdef"

expect = pytest.importorskip("playwright.sync_api", reason="playwright is not installed").expect


def token(sub: str, scopes: list[str] | None = None) -> str:
    return Authenticator(secret=SECRET).issue(sub, scopes)


@pytest.fixture(scope="module")
def setup(
    trained_bundle: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("console-web")
    family = two_versions(Path(trained_bundle["bundle"]), folder)
    registry: Registry = open_registry(f"sqlite:///{folder / 'registry.db'}")
    registry.register(family["old"], stage="production")
    registry.register(family["new"])
    experiments = folder / "experiments.yaml"
    plan = {"experiments": [{"name": "shelf", "variants": {"control": 50, "treatment": 50}}]}
    experiments.write_text(yaml.safe_dump(plan))
    live = Live.from_config(
        {
            "store": {"url": f"sqlite:///{folder / 'store.db'}"},
            "auth": {"enabled": True, "secret": SECRET},
            "registry": {"url": registry.url, "poll_s": 0.2},
            "experiments": {"file": str(experiments), "poll_s": 0.1},
        }
    )
    app = create_app(lambda: RecommendationService(load_bundle(family["old"]), 10.0, live=live))
    with serve_in_thread(app) as base:
        readers = load_bundle(family["old"]).known_histories.get_column("user_id").to_list()
        with httpx.Client(base_url=base, timeout=30) as client:  # traffic, impressions, clicks
            for n, user in enumerate(readers[:48]):
                if n % 12 == 11:  # four health intervals of traffic (sampled by hand)
                    app.state.core.vitals.take()
                auth = {"Authorization": f"Bearer {token(str(user))}"}
                body = client.post(f"/recommendations/users/{user}", headers=auth).json()
                if n % 3 == 0:
                    click = {
                        "impression_id": body["metadata"]["impression_id"],
                        "user_id": str(user),
                        "book_id": body["recommendations"][0]["book_id"],
                    }
                    assert client.post("/feedback", json=click, headers=auth).status_code == 202
        live.impressions.flush()
        yield {"base": base, "family": family, "registry": registry, "readers": readers}
    registry.close()


def sign_in(page: Any, base: str, credential: str) -> None:
    page.goto(f"{base}/app/#/signin")
    page.get_by_label("Access token").fill(credential)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("For you")


def test_a_reader_token_gets_no_console(setup: dict[str, Any], page: Any) -> None:
    reader = str(setup["readers"][0])
    sign_in(page, setup["base"], token(reader))
    expect(page.get_by_role("link", name="Console")).to_have_count(0)
    page.goto(f"{setup['base']}/app/#/console/models")
    expect(page.get_by_role("alert")).to_contain_text("lacks scope ops:read")
    page.goto(f"{setup['base']}/app/#/console/preview?user={reader}&limit=5")
    expect(page.get_by_role("alert")).to_contain_text("lacks scope users:read:any")


def test_an_operator_who_may_only_look_cannot_promote(setup: dict[str, Any], page: Any) -> None:
    sign_in(page, setup["base"], token("viewer", ["ops:read"]))
    page.get_by_role("link", name="Console").click()
    page.get_by_role("link", name="Models").click()
    new = setup["family"]["new"].name
    production = setup["registry"].production(setup["family"]["name"]).version
    page.on("dialog", lambda dialog: dialog.accept())  # "Make … production?" — yes
    page.get_by_role("button", name=f"Promote {new}").click()
    expect(page.get_by_role("alert")).to_contain_text("lacks scope models:write")
    assert setup["registry"].production(setup["family"]["name"]).version == production


def test_console_health_promote_experiments_and_preview(setup: dict[str, Any], page: Any) -> None:
    base, family = setup["base"], setup["family"]
    sign_in(page, base, token("ops", list(ALL_SCOPES)))

    page.get_by_role("link", name="Console").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Service health")
    expect(page.locator("figure.chart")).to_have_count(5)
    latency = page.locator("figure.chart svg").nth(1).get_attribute("aria-label")
    assert latency.startswith("Latency: latest p50 "), latency  # what a screen reader hears
    assert "ms" in latency
    shoot(page, "console-health")

    # Promote the candidate: the registry and this server switch.
    page.get_by_role("link", name="Models").click()
    new, old = family["new"].name, family["old"].name
    expect(page.locator(f'tr[data-version="{old}"] td').first).to_contain_text("production")
    page.get_by_label("Reason (recorded with the change)").fill("browser test")
    asked: list[str] = []
    page.on("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    page.get_by_role("button", name=f"Promote {new}").click()
    expect(page.get_by_role("status")).to_contain_text(f"now serving {new}")
    assert asked == [f"Make {new} production on every server?"]
    expect(page.locator(f'tr[data-version="{new}"] td').first).to_contain_text("production")
    assert setup["registry"].production(family["name"]).version == new
    assert httpx.get(f"{base}/readyz").json()["bundle_version"] == new
    assert setup["registry"].history(family["name"])[-1]["actor"] == "ops"
    shoot(page, "console-models")

    page.get_by_role("link", name="Experiments").click()
    expect(page.get_by_role("heading", level=2)).to_have_text("shelf (running)")
    rows = page.locator("table tbody tr")
    expect(rows).to_have_count(2)
    expect(page.locator("figure.chart")).to_have_count(2)  # click-through, impressions
    volume = page.locator("figure.chart svg").nth(1).get_attribute("aria-label")
    assert volume.startswith("shelf: impressions per hour: latest control ")
    shoot(page, "console-experiments")

    # What would a reader see, and why is a read book not there?
    reader = str(setup["readers"][1])
    read = str(load_bundle(family["new"]).known_histories.row(1)[1][0])
    page.get_by_role("link", name="Preview a reader").click()
    page.get_by_label("Reader id").fill(reader)
    page.get_by_label("Why (not) this book id (optional)").fill(read)
    page.get_by_label("List length").fill("8")
    page.get_by_role("button", name="Preview").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Preview: {reader}")
    expect(page.locator(".why .verdict")).to_have_text("already read")
    served = page.get_by_role("list", name="Served list").locator("li")
    expect(served).to_have_count(8)
    # every served book is a listed candidate, but for a series volume standing in for a later
    # one (reading order), which may not be a candidate
    listed = page.locator("table.candidates tr.listed")
    expect(listed.first).to_be_visible()
    in_list = listed.count()
    assert 1 <= in_list <= 8
    shown = served.evaluate_all("els => els.map(e => e.dataset.bookId)")
    assert set(listed.evaluate_all("els => els.map(e => e.dataset.bookId)")) <= set(shown)
    scores = page.locator("figure.chart svg").get_attribute("aria-label")
    assert scores.startswith("Ranker scores of the candidates: "), scores
    # the histogram counts every candidate; the table shows the first 50
    counted = int(re.search(r"in the list (\d+)", scores)[1])  # type: ignore[index]
    assert in_list <= counted <= 8
    caption = page.locator("table.candidates caption")
    expect(caption).to_contain_text("The first 50 of")
    page.get_by_role("button", name="Show all").click()
    expect(caption).to_contain_text("All ")
    rows = page.locator("table.candidates tbody tr").count()
    assert rows > 50
    assert f"All {rows} candidates" in caption.inner_text()
    page.locator("table.candidates tbody tr").first.get_by_text("show").click()
    expect(page.locator("table.candidates dl.features").first).to_contain_text("retrieval_score")
    shoot(page, "console-preview", full_page=False)
