// Usage: GET /v1/usage for a range of days, as charts of jobs and cost by day and by model, and the budget gauge.
import { get } from "./api.js";
import { h, notice } from "./dom.js";
import { barChart, columnChart, gauge } from "./charts.js";

const usd = (v) => `$${Number(v).toFixed(2)}`;
const credits = (v) => `${Number(v)} cr`;
// A group's cost in a unit: what providers charged, else the estimate at acceptance.
const costIn = (unit) => (t) => Number(t[`${unit}_charged`] ?? t[`${unit}_estimate`] ?? 0);

function dayRange(days) {
  const end = new Date();
  end.setUTCHours(0, 0, 0, 0);
  end.setUTCDate(end.getUTCDate() + 1);
  const start = new Date(end);
  start.setUTCDate(start.getUTCDate() - days);
  return { start, end };
}

function everyDay(start, end, byDay) {
  const points = [];
  for (let d = new Date(start); d < end; d.setUTCDate(d.getUTCDate() + 1)) {
    const key = d.toISOString().slice(0, 10);
    points.push({ key, label: key.slice(5), totals: byDay[key] || { jobs: 0 } });
  }
  return points;
}

function budgetPanel(budget) {
  if (!budget) return h("p", { class: "hint" }, "This key has no budget.");
  const unit = budget.limit_usd !== null ? "usd" : "credits";
  const limit = Number(budget[`limit_${unit}`]);
  const spent = Number(budget.spent[unit] || 0);
  const reserved = Number(budget.reserved[unit] || 0);
  const fmt = unit === "usd" ? usd : (v) => `${v} credits`;
  return h(
    "div",
    { class: "budget" },
    gauge(spent + reserved, limit, `Budget used: ${fmt(spent + reserved)} of ${fmt(limit)}`),
    h(
      "dl",
      { class: "summary" },
      h("dt", {}, "Period"),
      h("dd", {}, budget.period_key),
      h("dt", {}, "Limit"),
      h("dd", {}, fmt(limit)),
      h("dt", {}, "Spent"),
      h("dd", {}, fmt(spent)),
      h("dt", {}, "Reserved"),
      h("dd", {}, fmt(reserved)),
      h("dt", {}, "Remaining"),
      h("dd", {}, fmt(Number(budget.remaining[unit] || 0))),
      h("dt", {}, "Resets"),
      h("dd", {}, budget.resets_at || "never"),
    ),
  );
}

export function renderUsage(root, query) {
  const days = Math.min(Math.max(Number(query.get("days")) || 30, 1), 366);
  const body = h("div", {}, h("p", { class: "hint" }, "Loading…"));
  const choose = h(
    "nav",
    { class: "range", "aria-label": "Range" },
    [7, 30, 90].map((n) => h("a", { href: `#/usage?days=${n}`, "aria-current": n === days ? "page" : null }, `${n} days`)),
  );
  root.append(h("h1", {}, "Usage"), choose, body);
  const { start, end } = dayRange(days);
  get(`/v1/usage?start=${start.toISOString().slice(0, 10)}&end=${end.toISOString().slice(0, 10)}`)
    .then((report) => {
      const points = everyDay(start, end, report.by_day);
      // USD where any job has a price in it, else credits (some providers only price in credits).
      const unit = report.total.usd_charged != null || report.total.usd_estimate != null ? "usd" : "credits";
      const cost = costIn(unit);
      const fmt = unit === "usd" ? usd : credits;
      const unitName = unit === "usd" ? "USD" : "credits";
      const models = Object.entries(report.by_model).sort((a, b) => b[1].jobs - a[1].jobs);
      body.replaceChildren(
        h("p", {}, `${report.total.jobs} jobs, ${fmt(cost(report.total))} in the last ${days} days (UTC).`),
        h("h2", {}, "Budget"),
        budgetPanel(report.budget),
        h("h2", {}, "Jobs by day"),
        columnChart(points.map((p) => ({ label: p.label, value: p.totals.jobs })), "Jobs by day"),
        h("h2", {}, `Cost by day (${unitName})`),
        columnChart(points.map((p) => ({ label: p.label, value: cost(p.totals) })), `Cost by day in ${unitName}`, fmt),
        h("h2", {}, "Jobs by model"),
        barChart(models.map(([m, t]) => ({ label: m, value: t.jobs })), "Jobs by model"),
        h("h2", {}, `Cost by model (${unitName})`),
        barChart(models.map(([m, t]) => ({ label: m, value: cost(t) })), `Cost by model in ${unitName}`, fmt),
      );
    })
    .catch((error) => body.replaceChildren(notice(error.message)));
  return () => {};
}
