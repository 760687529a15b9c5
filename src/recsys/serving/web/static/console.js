// The operator console: service health, model versions (promote, roll back), experiments over
// time and the per-user preview. Each view calls the API with the signed-in token; what the
// token may not do is refused by the API (403), and the view says so.
import { api, bookHref, enc, failure, h, page, say, session } from "./lib.js";

const OPS = "ops:read";
const SVG = "http://www.w3.org/2000/svg";
const COLOURS = ["#0b5cad", "#c2410c", "#15803d", "#7e22ce"];
const DASHES = ["", "6 3", "2 3", "8 3 2 3"]; // told apart without colour too

export function consoleLink() {
  const scopes = session.scopes;
  return scopes.includes(OPS) || scopes.includes("*") ? h("a", { href: "#/console" }, "Console") : null;
}

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  el.append(...children);
  return el;
}

const fmt = (v, digits = 1) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const pct = (v) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(1)} %`);
const clock = (t) => new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });

// A line chart: series = [{name, points: [[x, y], ...]}]; null y values break the line.
function lineChart(title, series, { unit = "", percent = false, xLabel = clock } = {}) {
  const width = 560, height = 180, left = 48, right = 12, top = 10, bottom = 26;
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = series.flatMap((s) => [...s.points.map((p) => p[1]), ...(s.band || []).map((b) => b[2])])
    .filter((y) => y !== null);
  const x0 = Math.min(...xs), x1 = Math.max(...xs);
  const y1 = Math.max(percent ? 0.01 : 1e-9, ...ys) * 1.1;
  const sx = (x) => left + ((x - x0) / Math.max(x1 - x0, 1e-9)) * (width - left - right);
  const sy = (y) => top + (1 - y / y1) * (height - top - bottom);
  const shown = (y) => (percent ? `${(100 * y).toFixed(y1 < 0.1 ? 1 : 0)} %` : `${fmt(y, y1 < 10 ? 1 : 0)}${unit}`);
  const latest = series.map((s) => {
    const last = [...s.points].reverse().find((p) => p[1] !== null);
    return `${s.name} ${last ? shown(last[1]) : "no data"}`;
  });
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `${title}: latest ${latest.join(", ")}` },
    svg("line", { x1: left, y1: sy(0), x2: width - right, y2: sy(0), class: "axis" }),
    svg("text", { x: left - 6, y: sy(y1 / 1.1) + 4, "text-anchor": "end", class: "tick" }, shown(y1 / 1.1)),
    svg("text", { x: left - 6, y: sy(0) + 4, "text-anchor": "end", class: "tick" }, shown(0)),
    xs.length ? svg("text", { x: left, y: height - 6, class: "tick" }, xLabel(x0)) : "",
    xs.length ? svg("text", { x: width - right, y: height - 6, "text-anchor": "end", class: "tick" }, xLabel(x1)) : "",
  );
  series.forEach((s, i) => {
    if (s.band && s.band.length) {
      const edge = [...s.band.map((b) => [b[0], b[2]]), ...[...s.band].reverse().map((b) => [b[0], b[1]])];
      const outline = edge.map(([x, y], j) => `${j ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ");
      chart.append(svg("path", { d: `${outline} Z`, fill: COLOURS[i % 4], "fill-opacity": 0.15, stroke: "none" }));
    }
    let d = "";
    let pen = "M";
    for (const [x, y] of s.points) {
      if (y === null) { pen = "M"; continue; }
      d += `${pen}${sx(x).toFixed(1)},${sy(y).toFixed(1)} `;
      pen = "L";
    }
    chart.append(svg("path", { d, fill: "none", stroke: COLOURS[i % 4], "stroke-width": 2, "stroke-dasharray": DASHES[i % 4] }));
    for (const [x, y] of s.points) {  // a dot per point: a lone point between gaps shows too
      if (y !== null) chart.append(svg("circle", { cx: sx(x).toFixed(1), cy: sy(y).toFixed(1), r: 2.5, fill: COLOURS[i % 4] }));
    }
  });
  const legend = h("ul", { class: "legend" }, series.map((s, i) =>
    h("li", {}, h("span", { class: "swatch", style: `border-top: 3px ${DASHES[i % 4] ? "dashed" : "solid"} ${COLOURS[i % 4]}` }), s.name)));
  return h("figure", { class: "chart" }, h("figcaption", {}, title), chart, legend);
}

// A histogram of values, two groups stacked (e.g. listed / not listed candidates).
function histogram(title, groups, bins = 20) {
  const all = groups.flatMap((g) => g.values);
  if (!all.length) return h("p", {}, "No scores to show.");
  const lo = Math.min(...all), hi = Math.max(...all);
  const step = (hi - lo) / bins || 1;
  const counts = groups.map((g) => {
    const c = new Array(bins).fill(0);
    for (const v of g.values) c[Math.min(bins - 1, Math.floor((v - lo) / step))] += 1;
    return c;
  });
  const peak = Math.max(...counts[0].map((_, i) => counts.reduce((n, c) => n + c[i], 0)));
  const width = 560, height = 160, left = 30, bottom = 24, barW = (width - left) / bins;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `${title}: ${all.length} scores from ${fmt(lo, 2)} to ${fmt(hi, 2)}; ${groups.map((g) => `${g.name} ${g.values.length}`).join(", ")}` });
  for (let i = 0; i < bins; i += 1) {
    let base = 0;
    counts.forEach((c, g) => {
      const tall = (c[i] / peak) * (height - bottom - 8);
      chart.append(svg("rect", { x: left + i * barW + 1, y: height - bottom - base - tall, width: barW - 2, height: tall, fill: COLOURS[g] }));
      base += tall;
    });
  }
  chart.append(svg("text", { x: left, y: height - 6, class: "tick" }, fmt(lo, 2)));
  chart.append(svg("text", { x: width, y: height - 6, "text-anchor": "end", class: "tick" }, fmt(hi, 2)));
  const legend = h("ul", { class: "legend" }, groups.map((g, i) =>
    h("li", {}, h("span", { class: "swatch", style: `border-top: 8px solid ${COLOURS[i]}` }), `${g.name} (${g.values.length})`)));
  return h("figure", { class: "chart" }, h("figcaption", {}, title), chart, legend);
}

function consoleNav(current) {
  const views = [["#/console", "Health"], ["#/console/models", "Models"], ["#/console/experiments", "Experiments"], ["#/console/preview", "Preview a reader"]];
  return h("nav", { class: "subnav", "aria-label": "Console" }, views.map(([href, label]) =>
    h("a", { href, "aria-current": href === current ? "page" : null }, label)));
}

// --- health -------------------------------------------------------------------------------

let refresh;
export function leaveConsole() {
  clearInterval(refresh);
}

async function health() {
  const body = h("div", {});
  const draw = async () => {
    const vitals = await api("GET", "/ops/vitals");
    const points = vitals.points;
    const last = points[points.length - 1] || {};
    const series = (key) => points.map((p) => [p.at, p[key]]);
    body.replaceChildren(
      h("p", {}, `Serving ${vitals.bundle_version}. One point per ${vitals.every_s} s of this process's traffic, refreshed as often; the figures are the last interval's.`),
      h("dl", { class: "figures" }, [
        ["Requests/s", fmt(last.rps)], ["p50", `${fmt(last.p50_ms)} ms`], ["p99", `${fmt(last.p99_ms)} ms`],
        ["5xx", pct(last.error_rate)], ["Fallbacks", pct(last.fallback_rate)], ["Cache hits", pct(last.cache_hit_ratio)],
        ["Events/s", fmt(last.events_per_s)],
      ].map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v)))),
      points.length < 2 ? h("p", {}, "Collecting: the first points appear within a few seconds.") : h("div", { class: "charts" },
        lineChart("Requests per second", [{ name: "requests/s", points: series("rps") }]),
        lineChart("Latency", [{ name: "p50", points: series("p50_ms") }, { name: "p99", points: series("p99_ms") }], { unit: " ms" }),
        lineChart("Error and fallback rates", [{ name: "5xx", points: series("error_rate") }, { name: "fallbacks", points: series("fallback_rate") }], { percent: true }),
        lineChart("Cache hit ratio", [{ name: "hits", points: series("cache_hit_ratio") }], { percent: true }),
        lineChart("Events stored per second", [{ name: "events/s", points: series("events_per_s") }]),
      ),
    );
  };
  clearInterval(refresh); // before the first draw: leaving during it stops the polling
  refresh = setInterval(() => draw().catch((error) => body.replaceChildren(...failure(error))), 5000);
  await draw();
  return page("Service health", consoleNav("#/console"), body);
}

// --- models -------------------------------------------------------------------------------

const SHOWN_METRICS = {  // the bundle's validation metrics worth a column
  "two_stage/recall@20": "Two-stage R@20",
  "two_stage/ndcg@20": "Two-stage N@20",
  "test/two_stage/recall@20": "Test R@20",
  "test/two_stage/ndcg@20": "Test N@20",
};

async function models() {
  const listing = await api("GET", "/models");
  const reason = h("input", { id: "change-reason", maxlength: 500, autocomplete: "off" });
  const outcome = h("div", { "aria-live": "polite" });
  const change = async (path, body, what) => {
    try {
      const done = await api("POST", path, { ...body, reason: reason.value });
      say(`${what}: now serving ${done.bundle_version}.`);
      window.dispatchEvent(new HashChangeEvent("hashchange"));
    } catch (error) {
      outcome.replaceChildren(...failure(error));
    }
  };
  const metrics = Object.keys(SHOWN_METRICS).filter((m) => listing.versions.some((v) => m in v.metrics));
  const table = h("table", {},
    h("caption", {}, `Versions of ${listing.family}, newest first`),
    h("thead", {}, h("tr", {}, ["Version", "Stage", "Built", ...metrics.map((m) => SHOWN_METRICS[m]), "Last change", ""].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, listing.versions.map((v) => h("tr", { "data-version": v.version, class: v.stage },
      h("th", { scope: "row" }, v.version),
      h("td", {}, v.stage + (v.version === listing.bundle_version ? " (serving)" : "")),
      h("td", {}, new Date(v.created_at * 1000).toLocaleString()),
      metrics.map((m) => h("td", { class: "number" }, fmt(v.metrics[m], 4))),
      h("td", {}, [v.actor, ...v.reasons].filter(Boolean).join(": ")),
      h("td", {}, !["candidate", "archived"].includes(v.stage) ? "" : h("button", {
        type: "button",
        onclick: () => window.confirm(`Make ${v.version} production on every server?`)
          && change("/models/promote", { version: v.version }, `Promoted ${v.version}`),
      }, `Promote ${v.version}`)),
    ))),
  );
  return page("Model versions", consoleNav("#/console/models"),
    h("p", {}, `Production: ${listing.production || "none"}; this server serves ${listing.bundle_version}. Promotion and rollback reach every server following the registry within its poll.`),
    h("div", { class: "rating" }, h("label", { for: "change-reason" }, "Reason (recorded with the change)"), reason,
      h("button", {
        type: "button",
        onclick: () => window.confirm("Roll every server back to the previous production version?")
          && change("/models/rollback", {}, "Rolled back"),
      }, "Roll back")),
    outcome, h("div", { class: "scroll" }, table));
}

// --- experiments --------------------------------------------------------------------------

const hourLabel = (t) => new Date(t * 1000).toLocaleString([], { dateStyle: "short", timeStyle: "short" });

async function experiments() {
  const overview = await api("GET", "/experiments");
  const sections = await Promise.all(overview.experiments.map(async (exp) => {
    const rows = Object.entries(exp.results || {});
    const table = h("table", {},
      h("caption", {}, `${exp.name}: click-through per variant (Wilson 95 % interval)`),
      h("thead", {}, h("tr", {}, ["Variant", "Traffic", "Impressions", "Clicked", "CTR", "95 % interval", "vs control"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows.map(([name, r]) => h("tr", {},
        h("th", { scope: "row" }, name), h("td", {}, `${exp.variants[name] ?? "–"} %`),
        h("td", { class: "number" }, r.impressions), h("td", { class: "number" }, r.clicked),
        h("td", { class: "number" }, pct(r.ctr)), h("td", {}, `${pct(r.ctr_95_low)} – ${pct(r.ctr_95_high)}`),
        h("td", {}, r.diff_vs_control === null || r.diff_vs_control === undefined ? "–"
          : `${pct(r.diff_vs_control)} (${pct(r.diff_95_low)} – ${pct(r.diff_95_high)})`)))));
    const series = await api("GET", `/experiments/${enc(exp.name)}/series?bucket_s=3600`);
    const variants = [...new Set(series.points.map((p) => p.variant))];
    const chart = series.points.length
      ? lineChart(`${exp.name}: hourly click-through, shaded: 95 % interval`, variants.map((v) => {
        const mine = series.points.filter((p) => p.variant === v);
        return { name: v, points: mine.map((p) => [p.at, p.ctr]), band: mine.map((p) => [p.at, p.ctr_95_low, p.ctr_95_high]) };
      }), { percent: true, xLabel: hourLabel })
      : h("p", {}, "No impressions logged yet.");
    const volume = series.points.length
      ? lineChart(`${exp.name}: impressions per hour`, variants.map((v) => ({
        name: v, points: series.points.filter((p) => p.variant === v).map((p) => [p.at, p.impressions]),
      })), { xLabel: hourLabel })
      : "";
    return h("section", { class: "experiment", "aria-label": exp.name }, h("h2", {}, `${exp.name} ${exp.active ? "(running)" : "(stopped)"}`), h("div", { class: "scroll" }, table), h("div", { class: "charts" }, chart, volume));
  }));
  return page("Experiments", consoleNav("#/console/experiments"),
    sections.length ? sections : h("p", {}, "No experiments are configured (experiments.file)."));
}

// --- per-user preview ---------------------------------------------------------------------

const SOURCE_NAMES = { two_tower: "two-tower", ease: "EASE", mf: "MF", cooccurrence: "co-reads" };

function previewForm(user, book, limit) {
  const field = (id, label, attrs) => h("div", { class: "field" }, h("label", { for: id }, label), h("input", { id, name: id, ...attrs }));
  return h("form", {
    class: "preview-form",
    onsubmit: (event) => {
      event.preventDefault();
      const data = new FormData(event.currentTarget);
      const query = new URLSearchParams({ user: data.get("reader").trim(), limit: data.get("limit") });
      if (data.get("book").trim()) query.set("book", data.get("book").trim());
      location.hash = `#/console/preview?${query}`;
    },
  },
  field("reader", "Reader id", { required: true, maxlength: 200, value: user || "" }),
  field("book", "Why (not) this book id (optional)", { maxlength: 200, value: book || "" }),
  field("limit", "List length", { type: "number", min: 1, max: 50, value: limit }),
  h("button", { type: "submit" }, "Preview"));
}

async function preview(params) {
  const user = params.get("user"), book = params.get("book"), limit = Number(params.get("limit") || 10);
  const parts = [consoleNav("#/console/preview"), previewForm(user, book, limit)];
  if (!user) return page("Preview a reader", ...parts);
  const body = { limit };
  if (book) body.book_id = book;
  const view = await api("POST", `/users/${enc(user)}/preview`, body);
  const status = {
    personal: "Personal list from the two-stage model.",
    unknown_user: "Nothing is known about this reader: popularity answers.",
    erased: "This reader was erased: nothing personal is served.",
    fallback: `The fallback answers (${view.fallback_reason || view.source}).`,
  }[view.status];
  parts.push(h("p", { class: "source" }, `${status} Bundle ${view.bundle_version}; ${view.history_length} books in the history.`));
  if (view.why) {
    parts.push(h("section", { class: "why", "aria-label": "Why or why not" },
      h("h2", {}, `Why ${view.why.title || view.why.book_id}?`),
      h("p", {}, h("strong", { class: "verdict" }, view.why.verdict.replaceAll("_", " ")), ": ", view.why.detail)));
  }
  parts.push(h("h2", {}, "What the reader would see"),
    h("ol", { class: "served", "aria-label": "Served list" }, view.served.map((b) =>
      h("li", { "data-book-id": b.book_id }, h("a", { href: bookHref(b.book_id) }, b.title || b.book_id),
        ` — ${b.reasoning} (score ${fmt(b.score, 3)})`))));
  if (view.candidates.length) {
    parts.push(histogram("Ranker scores of the candidates", [
      { name: "in the list", values: view.candidates.filter((c) => c.listed).map((c) => c.score) },
      { name: "not in the list", values: view.candidates.filter((c) => !c.listed).map((c) => c.score) },
    ]));
    const table = h("div", { class: "scroll" });
    const showTable = (rows) => table.replaceChildren(h("table", { class: "candidates" },
      h("caption", {}, rows.length === view.candidates.length
        ? `All ${rows.length} candidates, best score first`
        : `The first ${rows.length} of ${view.candidates.length} candidates, best score first`),
      h("thead", {}, h("tr", {}, ["#", "Book", "Score", "Sources (rank)", "Reason", "Features"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows.map((c) => h("tr", { class: c.listed ? "listed" : "", "data-book-id": c.book_id },
        h("td", { class: "number" }, c.position ?? "filtered"),
        h("th", { scope: "row" }, c.title || c.book_id, c.listed ? " ✓" : ""),
        h("td", { class: "number" }, fmt(c.score, 3)),
        h("td", {}, Object.entries(c.sources).map(([s, r]) => `${SOURCE_NAMES[s] || s} ${r}`).join(", ")),
        h("td", {}, c.reasoning),
        h("td", {}, h("details", {}, h("summary", {}, "show"),
          h("dl", { class: "features" }, Object.entries(c.features).map(([k, v]) => [h("dt", {}, k), h("dd", {}, fmt(v, 3))])))))))),
      rows.length < view.candidates.length
        ? h("button", { type: "button", onclick: () => showTable(view.candidates) }, `Show all ${view.candidates.length} candidates`)
        : null);
    showTable(view.candidates.slice(0, Math.max(50, view.served.length)));
    parts.push(table);
  }
  return page(`Preview: ${user}`, ...parts);
}

export const CONSOLE_ROUTES = [
  [/^#\/console$/, health],
  [/^#\/console\/models$/, models],
  [/^#\/console\/experiments$/, experiments],
  [/^#\/console\/preview(?:\?(.*))?$/, (m) => preview(new URLSearchParams(m[1] || ""))],
];
