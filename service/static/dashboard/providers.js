// Providers: GET /v1/providers (circuit, errors, latency, jobs in flight), read again every 2 s while shown.
import { get } from "./api.js";
import { h, notice, table, when } from "./dom.js";

const EVERY_MS = 2000;
const ms = (v) => (v === null || v === undefined ? "—" : `${v} ms`);

function row(p) {
  return h(
    "tr",
    { dataset: { provider: p.provider } },
    h("th", { scope: "row" }, p.provider),
    h("td", {}, p.configured ? "yes" : "no"),
    h("td", {}, h("span", { class: `badge circuit-${p.state}` }, p.state.replace("_", "-"))),
    h("td", { class: "num" }, p.failures),
    h("td", {}, p.open_until ? when(p.open_until) : "—"),
    h("td", { class: "num" }, p.error_rate === null ? "—" : `${(p.error_rate * 100).toFixed(1)}%`),
    h("td", { class: "num" }, `${ms(p.create_latency_ms.p50)} / ${ms(p.create_latency_ms.p99)}`),
    h("td", { class: "num" }, p.jobs_in_flight),
    h("td", { class: "num" }, p.rate_limit === null ? "∞" : `${p.rate_limit}/s`),
    h("td", { class: "num" }, p.polls_behind_seconds === null ? "—" : `${p.polls_behind_seconds.toFixed(1)} s`),
    h("td", { class: "wrap" }, p.last_error ? `${p.last_error} (${when(p.last_error_at)})` : "—"),
  );
}

export function renderProviders(root) {
  const body = h("div", {}, h("p", { class: "hint" }, "Loading…"));
  const stamp = h("p", { class: "hint", "aria-live": "off" });
  root.append(h("h1", {}, "Providers"), stamp, body);
  let stopped = false;
  let timer = 0;
  async function tick() {
    try {
      const list = await get("/v1/providers");
      if (stopped) return;
      body.replaceChildren(
        table(
          ["Provider", "Configured", "Circuit", "Failures", "Open until", "Error rate", "Create p50 / p99", "In flight", "Rate limit", "Polls behind", "Last error"],
          list.data.map(row),
          { id: "providers" },
        ),
      );
      stamp.textContent = `Updated ${new Date().toLocaleTimeString()}; refreshed every ${EVERY_MS / 1000} s.`;
    } catch (error) {
      if (!stopped) body.replaceChildren(notice(error.message));
    }
    if (!stopped) timer = setTimeout(tick, EVERY_MS);
  }
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
