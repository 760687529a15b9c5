"""The reader pages in a real headless Chromium (Debian's package, driven by Playwright) against
the real app under uvicorn on loopback: sign in with a token, search, open a book, mark a book
read and see the list change."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.helpers.browser import shoot

from recsys.bundle.reader import load_bundle
from recsys.serving.app import create_app
from recsys.serving.auth import Authenticator
from recsys.serving.live import Live
from recsys.serving.local import serve_in_thread
from recsys.serving.service import RecommendationService

pytestmark = pytest.mark.integration
SECRET = "browser-tests-only-secret-0123456789abcdef"

expect = pytest.importorskip("playwright.sync_api", reason="playwright is not installed").expect


@pytest.fixture(scope="module")
def base(trained_bundle: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("web")
    store = {"url": f"sqlite:///{folder / 'store.db'}"}
    live = Live.from_config({"store": store, "auth": {"enabled": True, "secret": SECRET}})
    bundle = load_bundle(trained_bundle["bundle"])
    app = create_app(lambda: RecommendationService(bundle, 10.0, live=live))
    with serve_in_thread(app) as url:
        yield url


def reader(trained_bundle: dict[str, Any]) -> str:
    return str(load_bundle(trained_bundle["bundle"]).known_histories.row(0)[0])


def sign_in(page: Any, base: str, token: str) -> None:
    page.goto(f"{base}/app/#/signin")
    page.get_by_label("Access token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def listed(page: Any, label: str) -> list[str]:
    books = page.get_by_role("list", name=label).locator("li.book")
    return [str(b.get_attribute("data-book-id")) for b in books.all()]


def test_root_leads_to_the_app_and_anonymous_readers_see_trending(base: str, page: Any) -> None:
    page.goto(base)
    assert page.url.startswith(f"{base}/app/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Trending")
    assert len(listed(page, "Trending books")) > 0
    expect(page.get_by_role("link", name="Sign in")).to_be_visible()


def test_a_refused_token_is_explained(base: str, page: Any) -> None:
    sign_in(page, base, "not-a-token")
    expect(page.get_by_role("alert")).to_contain_text("That token was refused")
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")


def test_sign_in_search_open_a_book_and_mark_it_read(
    base: str, page: Any, trained_bundle: dict[str, Any]
) -> None:
    me = reader(trained_bundle)
    token = Authenticator(secret=SECRET).issue(me)
    sign_in(page, base, token)
    expect(page.get_by_role("heading", level=1)).to_have_text("For you")
    expect(page.locator("#account .who")).to_have_text(f"Signed in as {me}")
    mine = listed(page, "Books for you")
    assert len(mine) == 20
    reasons = page.locator("li.book .reason").all_inner_texts()
    assert len(reasons) == 20
    assert all(r.strip() for r in reasons), reasons
    shoot(page, "for-you")

    # Search by a word of a recommended book's title, open it from the results.
    first = page.locator("li.book").first
    title = first.locator("a.title").inner_text()
    writer = first.locator(".author").inner_text()
    word = max(re.findall(r"[A-Za-z]{3,}", title), key=len)
    page.get_by_label("Search the catalogue").fill(word)
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Search: {word}")
    results = page.get_by_role("list", name=f"Books matching {word}")
    results.get_by_role("link", name=title).first.click()
    expect(page.get_by_role("heading", level=1)).to_have_text(title)
    author = page.locator("dl dt", has_text="Author").locator("xpath=following-sibling::dd[1]")
    expect(author).to_have_text(writer)
    series = page.locator("dl dt", has_text="Series")
    if not re.fullmatch(r"Saga of .+ #\d+", title):  # a synthetic series title
        expect(series).to_have_count(0)
    similar = page.get_by_role("list", name=f"Books similar to {title}").locator("li.book")
    expect(similar.first).to_be_visible()
    assert similar.locator(".reason").first.inner_text().strip()
    shoot(page, "book")
    books = load_bundle(trained_bundle["bundle"]).books
    volume = books.filter(books["series_position"] == 2).row(0, named=True)
    page.goto(f"{base}/app/#/book/{volume['book_id']}")  # a volume shows its place
    expect(page.get_by_role("heading", level=1)).to_have_text(volume["title"])
    place = series.locator("xpath=following-sibling::dd[1]")
    expect(place).to_have_text(f"#2 of {volume['series']}")

    # Mark the top "for you" book read: the list changes at once, without it.
    page.get_by_role("link", name="For you").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("For you")
    top = listed(page, "Books for you")[0]
    page.locator(f'li.book[data-book-id="{top}"]').get_by_role("button", name="Mark read").click()
    expect(page.get_by_role("status")).to_contain_text("marked read")
    expect(page.locator(f'li.book[data-book-id="{top}"]')).to_have_count(0)
    assert len(listed(page, "Books for you")) == 20
    history = httpx.get(
        f"{base}/users/{me}/history", headers={"Authorization": f"Bearer {token}"}
    ).json()
    assert [h for h in history["history"] if h["book_id"] == top and h["source"] == "event"]


def test_review_from_the_book_page_is_stored_edited_and_deleted(
    base: str, page: Any, trained_bundle: dict[str, Any]
) -> None:
    me = str(load_bundle(trained_bundle["bundle"]).known_histories.row(1)[0])
    token = Authenticator(secret=SECRET).issue(me)
    sign_in(page, base, token)
    expect(page.get_by_role("heading", level=1)).to_have_text("For you")
    book = listed(page, "Books for you")[0]
    page.goto(f"{base}/app/#/book/{book}")
    page.get_by_label("Your rating").select_option("4")
    page.get_by_label("Your review (optional)").fill("Slow start, then wonderful.")
    page.get_by_role("button", name="Post review").click()
    expect(page.get_by_role("status")).to_contain_text("rated 4 of 5")
    mine = page.get_by_role("list", name=re.compile("^Reviews of ")).locator(
        f'li[data-user-id="{me}"]'
    )
    expect(mine).to_contain_text("Slow start, then wonderful.")
    expect(page.get_by_text("1 review, average 4.0 of 5.")).to_be_visible()
    history = httpx.get(
        f"{base}/users/{me}/history", headers={"Authorization": f"Bearer {token}"}
    ).json()
    assert [h for h in history["history"] if h["book_id"] == book and h["type"] == "rate"]
    reviews = httpx.get(f"{base}/books/{book}/reviews").json()["reviews"]
    assert [(r["user_id"], r["rating"]) for r in reviews] == [(me, 4)]
    # edited in place, then deleted
    page.get_by_label("Your rating").select_option("5")
    page.get_by_role("button", name="Update review").click()
    expect(page.get_by_text("1 review, average 5.0 of 5.")).to_be_visible()
    page.get_by_role("button", name="Delete your review").click()
    expect(page.get_by_text("No reviews yet.")).to_be_visible()
    expect(page.locator("div.reviews")).not_to_contain_text("null")  # no stray DOM text
    assert httpx.get(f"{base}/books/{book}/reviews").json()["count"] == 0


def test_follow_a_reviewer_and_unfollow_them(
    base: str, page: Any, trained_bundle: dict[str, Any]
) -> None:
    bundle = load_bundle(trained_bundle["bundle"])
    me, fred = (str(bundle.known_histories.row(i)[0]) for i in (2, 3))
    book = str(bundle.books["book_id"][7])
    fred_token = Authenticator(secret=SECRET).issue(fred)
    posted = httpx.post(
        f"{base}/books/{book}/reviews",
        json={"user_id": fred, "rating": 5, "text": "Read it twice."},
        headers={"Authorization": f"Bearer {fred_token}"},
    )
    assert posted.status_code in (200, 201), posted.text
    token = Authenticator(secret=SECRET).issue(me)
    sign_in(page, base, token)
    expect(page.get_by_role("heading", level=1)).to_have_text("For you")
    page.goto(f"{base}/app/#/book/{book}")
    page.get_by_role("button", name=f"Follow {fred}").click()
    expect(page.get_by_role("status")).to_contain_text(f"You follow {fred}")
    expect(page.get_by_role("button", name=f"Unfollow {fred}")).to_be_visible()
    follows = httpx.get(
        f"{base}/users/{me}/follows", headers={"Authorization": f"Bearer {token}"}
    ).json()
    assert [f["user_id"] for f in follows["follows"]] == [fred]
    page.get_by_role("link", name="For you").first.click()
    page.get_by_role("link", name="Readers you follow").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Following")
    followed = page.get_by_role("list", name="Readers you follow")
    expect(followed.locator(f'li[data-user-id="{fred}"]')).to_be_visible()
    page.get_by_role("button", name=f"Unfollow {fred}").click()
    expect(page.get_by_text("You follow nobody yet")).to_be_visible()
    follows = httpx.get(
        f"{base}/users/{me}/follows", headers={"Authorization": f"Bearer {token}"}
    ).json()
    assert follows["follows"] == []


def test_keyboard_only_reader_searches_and_opens_a_book(base: str, page: Any) -> None:
    hot = page.request.get(f"{base}/recommendations/trending").json()
    title = hot["recommendations"][0]["title"]
    word = max(re.findall(r"[A-Za-z]{3,}", title), key=len)
    page.goto(f"{base}/app/#/trending")
    expect(page.get_by_role("heading", level=1)).to_have_text("Trending")
    page.keyboard.press("Tab")  # the skip link comes first
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    for _ in range(5):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "search-q":
            break
    expect(page.get_by_label("Search the catalogue")).to_be_focused()
    page.keyboard.type(word)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Search: {word}")
    expect(page.get_by_role("heading", level=1)).to_be_focused()  # announced on arrival
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")  # the first result
    expect(page.get_by_role("heading", level=2, name="Similar books")).to_be_visible()


def test_phone_width_has_no_sideways_scroll(base: str, browser: Any) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    page = context.new_page()
    page.goto(f"{base}/app/#/trending")
    expect(page.get_by_role("heading", level=1)).to_have_text("Trending")
    widths = {"trending": page.evaluate("document.documentElement.scrollWidth")}
    page.locator("li.book a.title").first.click()
    expect(page.get_by_role("heading", level=2, name="Similar books")).to_be_visible()
    widths["book"] = page.evaluate("document.documentElement.scrollWidth")
    context.close()
    assert max(widths.values()) <= 375, widths


def test_not_interested_leaves_the_list_and_can_be_undone(
    base: str, page: Any, trained_bundle: dict[str, Any]
) -> None:
    me = str(load_bundle(trained_bundle["bundle"]).known_histories.row(2)[0])
    sign_in(page, base, Authenticator(secret=SECRET).issue(me))
    expect(page.get_by_role("heading", level=1)).to_have_text("For you")
    top = listed(page, "Books for you")[0]
    title = page.locator(f'li.book[data-book-id="{top}"] a.title').inner_text()
    page.locator(f'li.book[data-book-id="{top}"]').get_by_role(
        "button", name="Not interested"
    ).click()
    expect(page.get_by_role("status")).to_contain_text("left out of your lists")
    expect(page.locator(f'li.book[data-book-id="{top}"]')).to_have_count(0)

    page.get_by_role("link", name="Books you said are not for you").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Not for me")
    marks = page.get_by_role("list", name="Books not for you")
    expect(marks.locator("li")).to_have_count(1)
    expect(marks).to_contain_text(f"{title} — not interested")
    page.get_by_role("button", name=f"Undo for {title}").click()
    expect(page.get_by_role("status")).to_contain_text("may be recommended again")
    expect(page.get_by_text("You have not marked any book.")).to_be_visible()
    page.get_by_role("link", name="For you").click()
    expect(page.locator("li.book").first).to_have_attribute("data-book-id", top)  # back on top


def test_less_of_this_author_from_a_book_page(
    base: str, page: Any, trained_bundle: dict[str, Any]
) -> None:
    me = str(load_bundle(trained_bundle["bundle"]).known_histories.row(3)[0])
    sign_in(page, base, Authenticator(secret=SECRET).issue(me))
    expect(page.get_by_role("heading", level=1)).to_have_text("For you")
    first = page.locator("li.book").first
    title = first.locator("a.title").inner_text()
    first.locator("a.title").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(title)
    page.get_by_role("button", name=f"Less of this author: {title}").click()
    expect(page.get_by_role("status")).to_contain_text("fewer books by its author")
    page.goto(f"{base}/app/#/not-for-me")
    marks = page.get_by_role("list", name="Books not for you")
    expect(marks).to_contain_text(f"{title} — less of this author")
    page.get_by_role("button", name=f"Undo for {title}").click()
    expect(page.get_by_text("You have not marked any book.")).to_be_visible()
