// Webhooks: the key's endpoints (create, rotate secret, send a test, disable or enable) and each one's attempt log.
import { get, patch, post } from "./api.js";
import { h, notice, table, when } from "./dom.js";

function attemptsLog(endpoint, page) {
  const rows = page.data.flatMap((d) => [
    h(
      "tr",
      {},
      h("td", { class: "mono" }, d.id),
      h("td", {}, d.event_type),
      h("td", { class: "mono" }, d.job_id || "—"),
      h("td", {}, d.status),
      h("td", {}, when(d.created_at)),
    ),
    ...d.attempts.map((a) =>
      h(
        "tr",
        { class: "sub" },
        h("td", {}, "↳ attempt"),
        h("td", {}, when(a.attempted_at)),
        h("td", {}, a.status_code ?? "—"),
        h("td", { class: "num" }, `${Math.round(a.duration_ms)} ms`),
        h("td", { class: "wrap" }, a.error || (a.response_body || "").slice(0, 120)),
      ),
    ),
  ]);
  return rows.length
    ? table(["Delivery", "Event", "Job", "Status", "Created"], rows)
    : h("p", { class: "hint" }, "No deliveries yet.");
}

export function renderWebhooks(root) {
  const message = h("div", { "aria-live": "polite" });
  const list = h("div", {}, h("p", { class: "hint" }, "Loading…"));
  const log = h("section", { "aria-labelledby": "log-h" });
  const say = (text, kind = "ok") => message.replaceChildren(notice(text, kind));
  const fail = (error) => say(error.message, "error");

  const create = h(
    "form",
    { class: "filters", "aria-label": "New endpoint" },
    h("label", { class: "field" }, h("span", {}, "URL"), h("input", { name: "url", type: "url", required: true, size: 40, placeholder: "https://example.com/hooks" })),
    h("label", { class: "field" }, h("span", {}, "Events"), h("input", { name: "events", type: "text", value: "*", size: 24 })),
    h("label", { class: "field" }, h("span", {}, "Description"), h("input", { name: "description", type: "text", size: 20 })),
    h("button", { type: "submit" }, "Create endpoint"),
  );
  create.addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData(create);
    const events = String(form.get("events")).split(",").map((e) => e.trim()).filter(Boolean);
    try {
      const made = await post("/v1/webhook-endpoints", {
        url: form.get("url"),
        events: events.length ? events : ["*"],
        description: form.get("description"),
      });
      create.reset();
      say(`Created ${made.id}. Its secret (shown once): ${made.secret}`);
      load();
    } catch (error) {
      fail(error);
    }
  });

  async function showLog(endpoint, cursor = null) {
    try {
      const query = new URLSearchParams({ limit: "20" });
      if (cursor) query.set("cursor", cursor);
      const page = await get(`/v1/webhook-endpoints/${encodeURIComponent(endpoint.id)}/deliveries?${query}`);
      const more = page.next_cursor
        ? h("button", { type: "button", onclick: () => showLog(endpoint, page.next_cursor) }, "Older →")
        : null;
      log.replaceChildren(
        h("h2", { id: "log-h", tabindex: -1 }, `Attempt log: ${endpoint.url}`),
        attemptsLog(endpoint, page),
        ...(more ? [more] : []),
      );
      log.querySelector("h2").focus();
    } catch (error) {
      fail(error);
    }
  }

  const action = (label, fn) => h("button", { type: "button", onclick: fn }, label);
  function endpointRow(e) {
    return h(
      "tr",
      { dataset: { endpointId: e.id } },
      h("td", { class: "wrap" }, e.url, e.description ? h("div", { class: "hint" }, e.description) : ""),
      h("td", {}, e.events.join(", ")),
      h("td", {}, e.disabled ? `disabled${e.disabled_reason ? ` (${e.disabled_reason})` : ""}` : "enabled"),
      h("td", {}, when(e.created_at)),
      h(
        "td",
        { class: "actions" },
        action("Rotate secret", async () => {
          try {
            const rotated = await post(`/v1/webhook-endpoints/${encodeURIComponent(e.id)}/rotate-secret`);
            say(`New secret for ${e.id} (shown once): ${rotated.secret}`);
          } catch (error) {
            fail(error);
          }
        }),
        action("Send test", async () => {
          try {
            await post(`/v1/webhook-endpoints/${encodeURIComponent(e.id)}/test`);
            say(`Test delivery queued for ${e.id}.`);
            showLog(e);
          } catch (error) {
            fail(error);
          }
        }),
        action(e.disabled ? "Enable" : "Disable", async () => {
          try {
            await patch(`/v1/webhook-endpoints/${encodeURIComponent(e.id)}`, { disabled: !e.disabled });
            load();
          } catch (error) {
            fail(error);
          }
        }),
        action("Attempts", () => showLog(e)),
      ),
    );
  }

  async function load() {
    try {
      const endpoints = (await get("/v1/webhook-endpoints")).data;
      list.replaceChildren(
        endpoints.length
          ? table(["URL", "Events", "State", "Created", "Actions"], endpoints.map(endpointRow), { id: "endpoints" })
          : h("p", { class: "hint" }, "No endpoints yet."),
      );
    } catch (error) {
      fail(error);
    }
  }

  root.append(h("h1", {}, "Webhooks"), create, message, list, log);
  load();
  return () => {};
}
