// One EventSource on /v1/events for the whole page (the session cookie authenticates it); pages subscribe to it.
// EventSource reconnects by itself and resumes with Last-Event-ID, so no event is missed across a drop.

export const EVENT_TYPES = [
  "job.created",
  "job.submitted",
  "job.processing",
  "job.succeeded",
  "job.failed",
  "job.cancelled",
  "job.rerouted",
  "job.archived",
  "budget.threshold",
];
export const TERMINAL_EVENTS = new Set(["job.succeeded", "job.failed", "job.cancelled"]);

const listeners = new Set();
const openers = new Set();
let source = null;

function setIndicator(open) {
  const el = document.getElementById("live");
  if (!el) return;
  el.textContent = open ? "● live" : "○ reconnecting";
  el.classList.toggle("on", open);
}

// `onClosed()` runs when the stream is refused for good (EventSource retries only a dropped connection, not an
// answer such as a 401 once the session ended); it decides whether to start again.
export function startLive(onClosed = () => {}) {
  if (source) return;
  const mine = new EventSource("/v1/events");
  source = mine;
  mine.addEventListener("open", () => {
    setIndicator(true);
    for (const fn of openers) fn();
  });
  mine.addEventListener("error", () => {
    setIndicator(mine.readyState === EventSource.OPEN);
    if (mine.readyState === EventSource.CLOSED && source === mine) {
      source = null;
      setTimeout(onClosed, 1000);
    }
  });
  for (const type of EVENT_TYPES) {
    mine.addEventListener(type, (message) => {
      const event = JSON.parse(message.data);
      for (const fn of listeners) fn(event);
    });
  }
}

export function stopLive() {
  if (source) source.close();
  source = null;
  setIndicator(false);
}

// fn(event) for every event of the key's jobs; returns the unsubscribe function.
export function onEvent(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

// fn() each time the stream (re)opens: what happened before it opened comes from a fresh read, not the stream.
export function onOpen(fn) {
  openers.add(fn);
  return () => openers.delete(fn);
}

// A job's own stream: its past events, then live ones, up to its terminal event (then closed, not resumed).
export function jobStream(jobId, fn) {
  const stream = new EventSource(`/v1/jobs/${encodeURIComponent(jobId)}/events`);
  for (const type of EVENT_TYPES) {
    stream.addEventListener(type, (message) => {
      const event = JSON.parse(message.data);
      fn(event);
      if (TERMINAL_EVENTS.has(type)) stream.close();
    });
  }
  return () => stream.close();
}
