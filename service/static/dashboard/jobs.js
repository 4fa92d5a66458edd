// Jobs: one page of GET /v1/jobs at a time (cursor paging, never the whole table), its filters kept in the URL,
// and kept live by the shared event stream: new jobs appear on the first page and rows change status in place.
import { ApiError, get } from "./api.js";
import { costText, h, notice, statusBadge, table, when } from "./dom.js";
import { onEvent, onOpen } from "./live.js";

const PAGE_SIZE = 50;
const STATUSES = ["", "queued", "processing", "succeeded", "failed", "cancelled"];

// "team=red, env=prod" -> [["team", "red"], ["env", "prod"]]
function metadataPairs(text) {
  return text
    .split(",")
    .map((pair) => pair.split("="))
    .filter((parts) => parts.length === 2 && parts[0].trim())
    .map(([key, value]) => [key.trim(), value.trim()]);
}

function listPath(filters, cursor) {
  const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
  for (const name of ["status", "model", "provider"]) if (filters.get(name)) query.set(name, filters.get(name));
  for (const [key, value] of metadataPairs(filters.get("metadata") || "")) query.set(`metadata.${key}`, value);
  if (cursor) query.set("cursor", cursor);
  return `/v1/jobs?${query}`;
}

function matches(job, filters) {
  for (const name of ["status", "model", "provider"]) {
    if (filters.get(name) && job[name] !== filters.get(name)) return false;
  }
  return metadataPairs(filters.get("metadata") || "").every(([key, value]) => job.metadata[key] === value);
}

function jobRow(job) {
  return h(
    "tr",
    { dataset: { jobId: job.id, status: job.status, updatedAt: job.updated_at } },
    h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, class: "mono" }, job.id)),
    h("td", { class: "status" }, statusBadge(job.status)),
    h("td", {}, job.model),
    h("td", {}, job.provider),
    h("td", {}, when(job.created_at)),
    h("td", { class: "num" }, costText(job.cost)),
  );
}

function filterForm(filters) {
  const field = (name, label, input) => h("label", { class: "field" }, h("span", {}, label), input);
  const status = h(
    "select",
    { name: "status" },
    STATUSES.map((s) => h("option", { value: s, selected: filters.get("status") === s }, s || "any")),
  );
  const text = (name, placeholder) =>
    h("input", { name, type: "text", value: filters.get(name) || "", placeholder, size: 18 });
  return h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter jobs" },
    field("status", "Status", status),
    field("model", "Model", text("model", "seedancee2/pro")),
    field("provider", "Provider", text("provider", "seedancee2")),
    field("metadata", "Metadata", text("metadata", "key=value, …")),
    h("button", { type: "submit" }, "Filter"),
  );
}

export function renderJobs(root, filters) {
  let cursors = [null]; // the cursor of each page shown so far: Newer pops, Older pushes
  const body = h("tbody", { id: "jobs-body" });
  const message = h("div", { "aria-live": "polite" });
  const older = h("button", { type: "button", id: "older" }, "Older →");
  const newer = h("button", { type: "button", id: "newer" }, "← Newer");
  let nextCursor = null;
  let loads = 0; // only the latest read may fill the table

  const search = h(
    "form",
    { class: "search", role: "search", "aria-label": "Find a job by id" },
    h("label", { for: "job-id" }, "Job id"),
    h("input", { id: "job-id", name: "id", type: "text", placeholder: "job_…", size: 32 }),
    h("button", { type: "submit" }, "Open"),
  );
  search.addEventListener("submit", async (event) => {
    event.preventDefault();
    const id = new FormData(search).get("id").trim();
    if (!id) return;
    try {
      await get(`/v1/jobs/${encodeURIComponent(id)}`);
      location.hash = `#/jobs/${encodeURIComponent(id)}`;
    } catch (error) {
      message.replaceChildren(notice(error instanceof ApiError && error.status === 404 ? `No job ${id}.` : error.message));
    }
  });

  const form = filterForm(filters);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    for (const [name, value] of new FormData(form)) if (String(value).trim()) query.set(name, String(value).trim());
    location.hash = `#/jobs?${query}`;
  });

  async function load() {
    const cursor = cursors[cursors.length - 1];
    const mine = ++loads;
    try {
      const page = await get(listPath(filters, cursor));
      if (mine !== loads) return;
      body.replaceChildren(...page.data.map(jobRow));
      if (!page.data.length) body.append(h("tr", {}, h("td", { colspan: 6, class: "empty" }, "No jobs.")));
      nextCursor = page.next_cursor;
      message.replaceChildren();
    } catch (error) {
      message.replaceChildren(notice(error.message));
    }
    older.disabled = !nextCursor;
    newer.disabled = cursors.length === 1;
  }
  older.addEventListener("click", () => {
    cursors.push(nextCursor);
    load();
  });
  newer.addEventListener("click", () => {
    cursors.pop();
    load();
  });

  // Jobs created before the stream opened reach the table by a read after it opened.
  const stopReloading = onOpen(() => load());
  const stopListening = onEvent((event) => {
    const job = event.job;
    if (!job) return;
    const row = body.querySelector(`tr[data-job-id="${CSS.escape(job.id)}"]`);
    if (row) {
      if (job.updated_at < row.dataset.updatedAt) return; // a page read since already shows a newer state
      if (!matches(job, filters) && filters.get("status")) row.remove();
      else row.replaceWith(jobRow(job));
    } else if (cursors.length === 1 && matches(job, filters)) {
      // Newest first by id, as the API lists them: a job older than a full page's last row belongs further down.
      const rows = [...body.querySelectorAll("tr[data-job-id]")];
      const before = rows.find((r) => r.dataset.jobId < job.id);
      if (!before && rows.length >= PAGE_SIZE) return;
      body.querySelector("td.empty")?.parentElement.remove();
      if (before) before.before(jobRow(job));
      else body.append(jobRow(job));
      while (body.rows.length > PAGE_SIZE) body.lastElementChild.remove();
    }
  });

  root.append(
    h("h1", {}, "Jobs"),
    h("div", { class: "toolbar" }, form, search),
    message,
    table(["Id", "Status", "Model", "Provider", "Created (UTC)", "Cost"], [], { class: "jobs", id: "jobs" }),
    h("div", { class: "pager" }, newer, older),
  );
  root.querySelector("#jobs tbody").replaceWith(body);
  load();
  return () => {
    stopReloading();
    stopListening();
  };
}
