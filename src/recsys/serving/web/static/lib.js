// Shared by the reader pages (app.js) and the operator console (console.js): the session,
// the API client, an element builder and the page frame. Text from the server is always set
// as text, never as HTML.

const TOKEN = "recsys.token";
const READER = "recsys.reader";
const SCOPES = "recsys.scopes";
const statusBox = document.getElementById("status");

export const session = {
  get token() { return sessionStorage.getItem(TOKEN); },
  get reader() { return sessionStorage.getItem(READER); },
  get scopes() { return (sessionStorage.getItem(SCOPES) || "").split(" ").filter(Boolean); },
  start(reader, token, scopes = []) {
    sessionStorage.setItem(READER, reader);
    sessionStorage.setItem(SCOPES, scopes.join(" "));
    if (token) sessionStorage.setItem(TOKEN, token); else sessionStorage.removeItem(TOKEN);
  },
  end() { for (const key of [TOKEN, READER, SCOPES]) sessionStorage.removeItem(key); },
};

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function describe(status, body) {
  const detail = body && body.detail;
  if (Array.isArray(detail)) return detail.map((d) => d.msg).join("; ");
  if (typeof detail === "string") return detail;
  return `The server answered ${status}.`;
}

export async function api(method, path, body, token = session.token) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, "The server cannot be reached; try again in a moment.");
  }
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (response.status === 401 && token && token === session.token) {
    session.end(); // expired or revoked: forget it, the pages offer to sign in again
    window.dispatchEvent(new Event("recsys:signed-out"));
  }
  if (!response.ok) throw new ApiError(response.status, describe(response.status, data));
  return data;
}

// h("a", {href: "#/"}, "text", child): an element with attributes and children (text nodes).
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "style") el.style.cssText = value; // CSSOM: allowed by the pages' CSP
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export const enc = encodeURIComponent;
export const bookHref = (id) => `#/book/${enc(id)}`;

let quiet;
export function say(message) {
  statusBox.textContent = message;
  clearTimeout(quiet);
  quiet = setTimeout(() => { statusBox.textContent = ""; }, 5000);
}

export function page(title, ...children) {
  document.title = `${title} · recsys books`;
  return h("section", { "aria-labelledby": "page-title" }, h("h1", { id: "page-title", tabindex: "-1" }, title), ...children);
}

export function failure(error) {
  const box = h("p", { class: "error", role: "alert" }, error.message);
  if (error.status === 401) {
    return [box, h("p", {}, h("a", { href: "#/signin" }, "Sign in again"))];
  }
  return [box];
}
