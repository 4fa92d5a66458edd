// Small DOM helpers: elements are built with h(), never from HTML strings, so API data is always text.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

export function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toISOString().replace("T", " ").slice(0, 19);
}

export function money(value, unit = "USD") {
  if (value === null || value === undefined) return "—";
  return unit === "USD" ? `$${Number(value).toFixed(4)}` : `${Number(value)} credits`;
}

// A job's cost in one line: charged if known, else estimated; USD if known, else credits.
export function costText(cost) {
  const c = cost || {};
  if ((c.usd_charged ?? c.usd_estimate) != null) return money(c.usd_charged ?? c.usd_estimate);
  return money(c.credits_charged ?? c.credits_estimate, "credits");
}

export function statusBadge(status) {
  return h("span", { class: `badge status-${status}`, dataset: { status } }, status);
}

export function table(headers, rows, attrs = {}) {
  return h(
    "table",
    attrs,
    h("thead", {}, h("tr", {}, headers.map((name) => h("th", { scope: "col" }, name)))),
    h("tbody", {}, rows),
  );
}

export function pre(value) {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

export function notice(text, kind = "error") {
  return h("p", { class: kind, role: kind === "error" ? "alert" : "status" }, text);
}

// Parses "#/jobs/job_1?status=failed" into { path: ["jobs", "job_1"], query: URLSearchParams }.
export function route() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?");
  return { path: path.split("/").filter(Boolean).map(decodeURIComponent), query: new URLSearchParams(query) };
}
