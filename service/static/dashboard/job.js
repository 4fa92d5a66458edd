// Job: its output (a player on the archived video, else on the provider's URL), input, event timeline (the job's
// own stream), provider attempts, webhook deliveries with resend, and cancel.
import { get, post } from "./api.js";
import { h, money, notice, pre, statusBadge, table, when } from "./dom.js";
import { jobStream, onEvent, onOpen } from "./live.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

// The archived copy when there is one (Reelay serves it), else what the provider returned.
export function videoSource(output) {
  if (!output) return null;
  const archived = (output.assets || []).find((asset) => asset.variant === "video");
  if (archived) return { url: archived.url, archived: true };
  const video = (output.videos || [])[0];
  return video && video.url ? { url: video.url, archived: false } : null;
}

function outputSection(job) {
  const source = videoSource(job.output);
  const parts = [h("h2", {}, "Output")];
  if (source) {
    parts.push(
      h("video", { id: "video", controls: true, preload: "auto", src: source.url, width: 640 }),
      h(
        "p",
        { class: "hint" },
        source.archived ? "Archived copy, served by Reelay. " : "The provider's URL (not archived). ",
        h("a", { href: source.url }, "Open the video"),
      ),
    );
  } else {
    parts.push(h("p", { class: "hint" }, TERMINAL.has(job.status) ? "No video." : "Not finished yet."));
  }
  if (job.output && job.output.archive_error) {
    const e = job.output.archive_error;
    parts.push(notice(`Archiving failed (${e.code}, ${e.variant} ${e.index}): ${e.message}`));
  }
  if (job.error) parts.push(notice(`${job.error.code}: ${job.error.message}`));
  return withHeadingId(parts, "output-h");
}

function withHeadingId(parts, id) {
  parts[0].id = id;
  return h("section", { "aria-labelledby": id }, parts);
}

function attemptsSection(job) {
  const rows = (job.attempts || []).map((a) =>
    h(
      "tr",
      {},
      h("td", {}, a.model),
      h("td", {}, a.provider),
      h("td", { class: "mono" }, a.provider_task_id || "—"),
      h("td", {}, when(a.started_at)),
      h("td", {}, a.left ? `${a.left} at ${when(a.left_at)}` : "current"),
      h("td", {}, a.error ? `${a.error.code}: ${a.error.message}` : ""),
    ),
  );
  return withHeadingId(
    [
      h("h2", {}, "Provider attempts"),
      rows.length
        ? table(["Model", "Provider", "Task", "Started", "Left", "Error"], rows)
        : h("p", { class: "hint" }, "Not sent to a provider yet."),
    ],
    "attempts-h",
  );
}

function summary(job) {
  const c = job.cost || {};
  const item = (term, value) => [h("dt", {}, term), h("dd", {}, value)];
  return h(
    "dl",
    { class: "summary" },
    item("Status", statusBadge(job.status)),
    item("Model", job.routed_model === job.model ? job.model : `${job.model} → ${job.routed_model}`),
    item("Provider", job.provider),
    item("Provider task", job.provider_task_id || "—"),
    item("Created", when(job.created_at)),
    item("Completed", when(job.completed_at)),
    item("Cost (USD)", `${money(c.usd_charged)} charged, ${money(c.usd_estimate)} estimated`),
    item("Cost (credits)", `${money(c.credits_charged, "credits")} charged, ${money(c.credits_estimate, "credits")} estimated`),
    item("Metadata", Object.keys(job.metadata).length ? pre(job.metadata) : "—"),
  );
}

function deliveryRows(deliveries, resend) {
  return deliveries.flatMap((d) => [
    h(
      "tr",
      { dataset: { deliveryId: d.id } },
      h("td", {}, d.event_type),
      h("td", { class: "wrap" }, d.url),
      h("td", {}, d.status),
      h("td", { class: "num" }, d.attempts_count),
      h("td", {}, d.last_status ?? "—"),
      h("td", {}, h("button", { type: "button", onclick: () => resend(d) }, "Resend")),
    ),
    ...d.attempts.map((a) =>
      h(
        "tr",
        { class: "sub" },
        h("td", {}, "↳ attempt"),
        h("td", { colspan: 2 }, when(a.attempted_at)),
        h("td", { class: "num" }, `${Math.round(a.duration_ms)} ms`),
        h("td", {}, a.status_code ?? "—"),
        h("td", { class: "wrap" }, a.error || ""),
      ),
    ),
  ]);
}

export function renderJob(root, jobId) {
  const heading = h("h1", {}, "Job ", h("span", { class: "mono" }, jobId));
  const message = h("div", { "aria-live": "polite" });
  const cancel = h("button", { type: "button", id: "cancel", class: "danger", hidden: true }, "Cancel job");
  const top = h("div", { class: "job-top" });
  const output = h("div");
  const attempts = h("div");
  const input = h("div");
  const timeline = h("ol", { class: "timeline", id: "timeline" });
  const deliveries = h("div");
  let job = null;
  let early = null; // the newest job an event carried before the first read answered
  let shownVideo = null;

  function show(next) {
    job = next;
    cancel.hidden = TERMINAL.has(job.status);
    top.replaceChildren(summary(job));
    const source = videoSource(job.output);
    if (!output.firstChild || (source && source.url) !== shownVideo) {
      shownVideo = source && source.url; // a re-render would restart a playing video
      output.replaceChildren(outputSection(job));
    }
    attempts.replaceChildren(attemptsSection(job));
  }

  async function refresh() {
    try {
      const read = await get(`/v1/jobs/${encodeURIComponent(jobId)}`);
      show(early && early.updated_at > read.updated_at ? early : read);
      early = null;
    } catch (error) {
      message.replaceChildren(notice(error.message));
    }
  }

  async function loadDeliveries() {
    try {
      const list = (await get(`/v1/jobs/${encodeURIComponent(jobId)}/deliveries`)).data;
      deliveries.replaceChildren(
        list.length
          ? table(["Event", "URL", "Status", "Attempts", "Last HTTP", ""], deliveryRows(list, resend))
          : h("p", { class: "hint" }, "No webhook deliveries."),
      );
    } catch (error) {
      deliveries.replaceChildren(notice(error.message));
    }
  }

  async function resend(delivery) {
    try {
      await post(`/v1/deliveries/${encodeURIComponent(delivery.id)}/resend`);
      message.replaceChildren(notice(`Delivery ${delivery.id} queued again.`, "ok"));
      loadDeliveries();
    } catch (error) {
      message.replaceChildren(notice(error.message));
    }
  }

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      show(await post(`/v1/jobs/${encodeURIComponent(jobId)}/cancel`));
      message.replaceChildren(notice("Cancelled.", "ok"));
    } catch (error) {
      message.replaceChildren(notice(error.message));
    }
    cancel.disabled = false;
  });

  function addEvent(event) {
    if (timeline.querySelector(`[data-event-id="${event.id}"]`)) return;
    timeline.append(
      h(
        "li",
        { dataset: { eventId: event.id, type: event.type } },
        h("time", { datetime: event.created_at }, when(event.created_at)),
        " ",
        h("strong", {}, event.type),
        event.detail ? h("span", { class: "hint" }, ` ${JSON.stringify(event.detail)}`) : "",
      ),
    );
  }

  const closeStream = jobStream(jobId, (event) => {
    addEvent(event);
    // Replayed events carry older states than the page read (and no archived assets): only newer ones show, and
    // none before the read answers.
    if (event.job && !job && (!early || event.job.updated_at > early.updated_at)) early = event.job;
    else if (event.job && job && event.job.updated_at > job.updated_at) show(event.job);
    if (event.type !== "job.created") loadDeliveries();
  });
  // After its terminal event a job's own stream ends; later events (job.archived) come on the shared stream, and
  // what happened before that stream (re)opened comes from a fresh read.
  const stopReloading = onOpen(() => refresh());
  const unsubscribe = onEvent((event) => {
    if (!event.job || event.job.id !== jobId) return;
    addEvent(event);
    refresh(); // the API's view re-signs asset URLs
  });

  root.append(
    h("p", {}, h("a", { href: "#/jobs" }, "← Jobs")),
    h("div", { class: "title-row" }, heading, cancel),
    message,
    top,
    output,
    h("section", { "aria-labelledby": "input-h" }, h("h2", { id: "input-h" }, "Input"), input),
    h("section", { "aria-labelledby": "timeline-h" }, h("h2", { id: "timeline-h" }, "Events"), timeline),
    attempts,
    h("section", { "aria-labelledby": "deliveries-h" }, h("h2", { id: "deliveries-h" }, "Webhook deliveries"), deliveries),
  );
  refresh().then(() => job && input.replaceChildren(pre(job.input)));
  loadDeliveries();
  return () => {
    closeStream();
    stopReloading();
    unsubscribe();
  };
}
