// recsys reader pages: ES modules, no build step. Every page calls the JSON API with the
// reader's bearer token (kept in sessionStorage for this tab), so it can do what the token
// allows and nothing more.
import { api, bookHref, enc, failure, h, page, say, session } from "./lib.js";
import { CONSOLE_ROUTES, consoleLink, leaveConsole } from "./console.js";

const main = document.getElementById("main");
const account = document.getElementById("account");

// Reading actions: each is one event; the reader's next list already counts it.
const ACTIONS = [
  ["read", "Mark read", "marked read"],
  ["want_to_read", "Want to read", "added to your want-to-read list"],
  ["not_interested", "Not interested", "left out of your lists (undo under Not for me)"],
];
// On a book's own page: fewer books by its author from now on (not none).
const LESS = ["less_of_author", "Less of this author", "marked: fewer books by its author (undo under Not for me)"];

// How the "not for me" page names each kind of mark.
const MARKS = { not_interested: "not interested", dislike: "disliked", less_of_author: "less of this author" };

async function record(book, type, value, title) {
  const event = { user_id: session.reader, book_id: book, type };
  if (value !== undefined) event.value = value;
  await api("POST", "/events", event);
  const verb = [...ACTIONS, LESS].find(([t]) => t === type)?.[2] ?? `rated ${value / 2} of 5`;
  say(`“${title || book}” ${verb}.`);
}

function actionButtons(book, title, after, actions = ACTIONS) {
  if (!session.reader) return null;
  return h(
    "div",
    { class: "actions", role: "group", "aria-label": `Actions for ${title || book}` },
    actions.map(([type, label]) =>
      h("button", {
        type: "button",
        "data-action": type,
        "aria-label": `${label}: ${title || book}`,
        onclick: async (event) => {
          event.currentTarget.disabled = true;
          try {
            await record(book, type, undefined, title);
            if (after) await after();
          } catch (error) {
            say(error.message);
            event.currentTarget.disabled = false;
          }
        },
      }, label),
    ),
  );
}

// A list of recommended books, each with the reason it is there.
function bookList(label, items, after) {
  if (!items.length) return h("p", {}, "No books to show.");
  return h(
    "ol",
    { class: "books", "aria-label": label },
    items.map((item) =>
      h(
        "li",
        { class: "book", "data-book-id": item.book_id },
        h("a", { href: bookHref(item.book_id), class: "title" }, item.title || item.book_id),
        item.author || item.authors ? h("span", { class: "author" }, item.author || item.authors) : null,
        item.reasoning ? h("p", { class: "reason" }, item.reasoning) : null,
        after === undefined ? null : actionButtons(item.book_id, item.title, after),
      ),
    ),
  );
}

const SOURCES = {
  personalized: "Chosen for you from your reading.",
  popularity: "Popular books: there is not enough of your reading to go on yet.",
  trending: "What readers are reading now.",
};

async function forYou() {
  if (!session.reader) {
    return page("For you", h("p", {}, h("a", { href: "#/signin" }, "Sign in"), " to see books chosen for you."));
  }
  const list = h("div", {});
  const refresh = async () => {
    const answer = await api("POST", `/recommendations/users/${enc(session.reader)}`, { limit: 20 });
    const refocus = list.contains(document.activeElement); // an action here: keep focus here
    list.replaceChildren(
      h("p", { class: "source" }, SOURCES[answer.metadata.source] || ""),
      bookList("Books for you", answer.recommendations, refresh),
    );
    if (refocus) list.querySelector("li.book a.title")?.focus();
  };
  await refresh();
  return page("For you", list, h("p", {}, h("a", { href: "#/not-for-me" }, "Books you said are not for you"),
    " · ", h("a", { href: "#/following" }, "Readers you follow")));
}

// The reader's "not for me" marks, each can be withdrawn (the book may come back at once).
async function notForMe() {
  if (!session.reader) return page("Not for me", h("p", {}, h("a", { href: "#/signin" }, "Sign in"), " first."));
  const body = h("div", {});
  const refresh = async () => {
    const marks = await api("GET", `/users/${enc(session.reader)}/preferences`);
    body.replaceChildren(marks.preferences.length ? h("ul", { class: "marks", "aria-label": "Books not for you" },
      marks.preferences.map((m) => h("li", { "data-book-id": m.book_id },
        h("a", { href: bookHref(m.book_id) }, m.title || m.book_id),
        ` — ${MARKS[m.type] || m.type} `,
        h("button", {
          type: "button",
          onclick: async () => {
            await api("DELETE", `/users/${enc(session.reader)}/preferences?book_id=${enc(m.book_id)}`);
            say(`“${m.title || m.book_id}” may be recommended again.`);
            await refresh();
          },
        }, `Undo for ${m.title || m.book_id}`)))) : h("p", {}, "You have not marked any book."));
  };
  await refresh();
  return page("Not for me", h("p", {}, "These books are left out of your lists until you undo the mark."), body);
}

async function trending() {
  const answer = await api("GET", "/recommendations/trending?limit=20");
  return page("Trending", bookList("Trending books", answer.recommendations));
}

async function search(query) {
  document.getElementById("search-q").value = query;
  const found = await api("GET", `/books?q=${enc(query)}&limit=20`);
  const rows = found.books.map((b) => ({ book_id: b.book_id, title: b.title, authors: b.authors }));
  return page(`Search: ${query}`, h("p", {}, `${rows.length} book${rows.length === 1 ? "" : "s"} found.`),
    bookList(`Books matching ${query}`, rows));
}

// The reader's review of a book (one per reader and book; posting again replaces it). The
// API stores its stars as a rating event too, so it counts in the reader's next list.
function reviewForm(book, mine, after) {
  const select = h("select", { id: "rating", name: "rating" },
    [5, 4, 3, 2, 1].map((n) => h("option", { value: n, selected: mine?.rating === n }, `${n} of 5`)));
  const text = h("textarea", { id: "review-text", name: "text", rows: 3, maxlength: 5000 });
  text.value = mine?.text || "";
  return h("form", {
    class: "rating",
    onsubmit: async (event) => {
      event.preventDefault();
      try {
        const body = { user_id: session.reader, rating: Number(select.value), text: text.value };
        await api("POST", `/books/${enc(book.book_id)}/reviews`, body);
        say(`Your review of “${book.title || book.book_id}” is saved: rated ${select.value} of 5.`);
        await after();
      } catch (error) {
        say(error.message);
      }
    },
  },
  h("label", { for: "rating" }, "Your rating"), select,
  h("label", { for: "review-text" }, "Your review (optional)"), text,
  h("button", { type: "submit" }, mine ? "Update review" : "Post review"));
}

// Whom the reader follows (ids), or none when they cannot be read (a new reader: 404).
async function followed() {
  if (!session.reader) return new Set();
  return api("GET", `/users/${enc(session.reader)}/follows`)
    .then((f) => new Set(f.follows.map((x) => x.user_id)))
    .catch(() => new Set());
}

function followButton(user, following, after) {
  const act = following ? "Unfollow" : "Follow";
  return h("button", {
    type: "button",
    "data-follow": user,
    onclick: async (event) => {
      event.currentTarget.disabled = true;
      try {
        if (following) await api("DELETE", `/users/${enc(session.reader)}/follows/${enc(user)}`);
        else await api("POST", `/users/${enc(session.reader)}/follows`, { followee_id: user });
        say(following ? `You no longer follow ${user}.` : `You follow ${user}: books they read can appear in your list.`);
        await after();
      } catch (error) {
        say(error.message);
        event.currentTarget.disabled = false;
      }
    },
  }, `${act} ${user}`);
}

// Reviews of a book, the latest first; the reader's own can be edited or deleted, and other
// reviewers followed (their books then join the reader's candidates: "friends are reading").
function reviews(book) {
  const box = h("div", { class: "reviews" });
  const title = book.title || book.book_id;
  const refresh = async () => {
    const found = await api("GET", `/books/${enc(book.book_id)}/reviews?limit=20`);
    const mine = found.reviews.find((r) => r.user_id === session.reader);
    const follows = await followed();
    const summary = found.count
      ? `${found.count} review${found.count === 1 ? "" : "s"}, average ${found.average_rating.toFixed(1)} of 5.`
      : "No reviews yet.";
    box.replaceChildren(...[  // replaceChildren would write a null as the text "null"
      session.reader ? reviewForm(book, mine, refresh) : h("p", {}, h("a", { href: "#/signin" }, "Sign in"), " to mark, rate or review this book."),
      h("p", { class: "summary" }, summary),
      found.reviews.length ? h("ul", { class: "review-list", "aria-label": `Reviews of ${title}` },
        found.reviews.map((r) => h("li", { "data-user-id": r.user_id },
          h("strong", {}, r.user_id), ` — ${r.rating} of 5`,
          r.text ? h("p", {}, r.text) : null,
          r.user_id === session.reader
            ? h("button", {
              type: "button",
              onclick: async () => {
                await api("DELETE", `/books/${enc(book.book_id)}/reviews/${enc(session.reader)}`);
                say(`Your review of “${title}” is deleted.`);
                await refresh();
              },
            }, "Delete your review")
            : session.reader ? followButton(r.user_id, follows.has(r.user_id), refresh) : null))) : null,
    ].filter(Boolean));
  };
  return { box, refresh };
}

// Everyone the reader follows, each can be unfollowed.
async function following() {
  if (!session.reader) return page("Following", h("p", {}, h("a", { href: "#/signin" }, "Sign in"), " first."));
  const body = h("div", {});
  const refresh = async () => {
    const follows = await followed();
    body.replaceChildren(follows.size
      ? h("ul", { class: "marks", "aria-label": "Readers you follow" },
        [...follows].map((user) => h("li", { "data-user-id": user }, `${user} `, followButton(user, true, refresh))))
      : h("p", {}, "You follow nobody yet: follow a reviewer from a book's page."));
  };
  await refresh();
  return page("Following", h("p", {}, "Books these readers read can appear in your list, with their name as the reason."), body);
}

async function bookPage(id) {
  const book = await api("GET", `/books/${enc(id)}`);
  const details = [
    ["Author", book.authors],
    ["Series", book.series ? `#${book.series_position} of ${book.series}` : null],
    ["Year", book.year], ["Publisher", book.publisher],
    ["Language", book.language], ["Tags", (book.tags || []).join(", ")],
  ].filter(([, v]) => v !== null && v !== undefined && v !== "");
  const similar = await api("POST", `/recommendations/books/${enc(id)}`, { limit: 10 })
    .then((a) => bookList(`Books similar to ${book.title || id}`, a.recommendations))
    .catch((error) => failure(error));
  const { box, refresh } = reviews(book);
  await refresh().catch((error) => box.replaceChildren(...failure(error)));
  return page(
    book.title || book.book_id,
    h("div", { class: "book-page" },
      /^https?:\/\//i.test(book.cover_url || "")  // only web addresses, no referrer sent
        ? h("img", { src: book.cover_url, alt: `Cover of ${book.title || id}`, class: "cover", referrerpolicy: "no-referrer" })
        : null,
      h("dl", {}, details.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    ),
    actionButtons(book.book_id, book.title, undefined, [...ACTIONS, LESS]),
    h("h2", {}, "Reviews"),
    box,
    h("h2", {}, "Similar books"),
    similar,
  );
}

async function signIn() {
  // With auth off the server names no subject: the reader says who they are.
  const probe = await api("GET", "/auth/me", undefined, null).catch(() => ({ auth_enabled: true }));
  const tokenMode = probe.auth_enabled;
  const field = tokenMode
    ? h("textarea", { id: "credential", name: "credential", rows: 4, required: true, autocomplete: "off" })
    : h("input", { id: "credential", name: "credential", required: true, maxlength: 200 });
  const problem = h("p", { class: "error", role: "alert", hidden: true });
  const form = h("form", {
    class: "signin",
    onsubmit: async (event) => {
      event.preventDefault();
      const value = field.value.trim();
      try {
        if (tokenMode) {
          const me = await api("GET", "/auth/me", undefined, value);
          session.start(me.subject, value, me.scopes);
        } else {
          session.start(value, null, ["*"]); // no auth: every view is open
        }
        showAccount();
        say(`Signed in as ${session.reader}.`);
        location.hash = "#/for-you";
      } catch (error) {
        problem.textContent = error.status === 401 ? `That token was refused: ${error.message}` : error.message;
        problem.hidden = false;
      }
    },
  },
  h("label", { for: "credential" }, tokenMode ? "Access token" : "Reader id"),
  field,
  h("p", { class: "hint" }, tokenMode
    ? "Paste the token you were given (for development: recsys token sub=<your reader id>)."
    : "This server runs without sign-in tokens: give the reader id to act as."),
  problem,
  h("button", { type: "submit" }, "Sign in"));
  return page("Sign in", form);
}

function showAccount() {
  if (!session.reader) {
    account.replaceChildren(h("a", { href: "#/signin" }, "Sign in"));
    return;
  }
  account.replaceChildren(
    consoleLink() || "",
    h("span", { class: "who" }, `Signed in as ${session.reader}`),
    h("button", { type: "button", onclick: () => { session.end(); showAccount(); say("Signed out."); location.hash = "#/"; } }, "Sign out"),
  );
}

function notFound() {
  return page("Page not found", h("p", {}, h("a", { href: "#/" }, "Back to the start")));
}

const ROUTES = [
  [/^#?\/?$/, () => (session.reader ? forYou() : trending())],
  [/^#\/signin$/, signIn],
  [/^#\/for-you$/, forYou],
  [/^#\/trending$/, trending],
  [/^#\/not-for-me$/, notForMe],
  [/^#\/following$/, following],
  [/^#\/search\?q=(.*)$/, (m) => search(decodeURIComponent(m[1]))],
  [/^#\/book\/(.+)$/, (m) => bookPage(decodeURIComponent(m[1]))],
  ...CONSOLE_ROUTES,
];

// A route change moves focus to the new page's heading (screen readers announce it); the
// first load leaves focus at the top, where the skip link is.
let shown = 0; // the latest navigation: a slower, earlier one never overwrites it
async function render(event) {
  const mine = ++shown;
  const hash = location.hash || "#/";
  const route = ROUTES.find(([pattern]) => pattern.test(hash));
  leaveConsole(); // a view that refreshes itself stops when another is shown
  main.setAttribute("aria-busy", "true");
  let view;
  try {
    view = route ? await route[1](hash.match(route[0])) : notFound();
  } catch (error) {
    view = page("Something went wrong", ...failure(error));
  }
  if (mine !== shown) return;
  main.replaceChildren(view);
  main.removeAttribute("aria-busy");
  if (event) main.querySelector("h1")?.focus();
}

document.getElementById("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const query = document.getElementById("search-q").value.trim();
  if (query) location.hash = `#/search?q=${enc(query)}`;
});
window.addEventListener("hashchange", render);
window.addEventListener("recsys:signed-out", showAccount);
showAccount();
render();
