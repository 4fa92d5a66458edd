// The dashboard's entry: the session (sign in, sign out), the live stream, and hash routing between pages.
import { setCsrf, whenSignedOut } from "./api.js";
import { clear, route } from "./dom.js";
import { startLive, stopLive } from "./live.js";
import { renderJob } from "./job.js";
import { renderJobs } from "./jobs.js";
import { renderProviders } from "./providers.js";
import { renderUsage } from "./usage.js";
import { renderWebhooks } from "./webhooks.js";

const pages = { jobs: renderJobs, usage: renderUsage, providers: renderProviders, webhooks: renderWebhooks };
const $ = (id) => document.getElementById(id);
let cleanup = () => {};

async function readSession() {
  const response = await fetch("/dashboard/session", { credentials: "same-origin" });
  return response.ok ? response.json() : null;
}

function showSignIn(message = "") {
  stopLive();
  cleanup();
  cleanup = () => {};
  clear($("page"));
  $("nav").hidden = true;
  $("who").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message;
  $("api-key").focus();
}

function showApp(session) {
  setCsrf(session.csrf_token);
  $("sign-in").hidden = true;
  $("nav").hidden = false;
  $("who").hidden = false;
  $("key-name").textContent = `${session.key_name} (${session.key_id})`;
  startLive(liveClosed);
  navigate();
}

// The event stream was refused: signed out (or the key revoked) shows the sign-in form, else it opens again.
async function liveClosed() {
  if ($("nav").hidden) return;
  const session = await readSession();
  if (session) startLive(liveClosed);
  else showSignIn("Your session ended; sign in again.");
}

function navigate() {
  if ($("nav").hidden) return;
  const { path, query } = route();
  cleanup();
  const root = clear($("page"));
  let name = path[0] || "jobs";
  if (name === "jobs" && path[1]) {
    cleanup = renderJob(root, path[1]);
  } else {
    if (!pages[name]) name = "jobs";
    cleanup = pages[name](root, query);
  }
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

async function signIn(event) {
  event.preventDefault();
  const form = event.target;
  const response = await fetch(form.action, {
    method: "POST",
    body: new URLSearchParams(new FormData(form)),
    credentials: "same-origin",
  });
  form.reset();
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    showSignIn((body.error && body.error.message) || `Sign-in failed (HTTP ${response.status})`);
    return;
  }
  showApp(await response.json());
}

async function signOut() {
  await fetch("/dashboard/session", { method: "DELETE", credentials: "same-origin" });
  showSignIn();
}

document.addEventListener("DOMContentLoaded", async () => {
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  window.addEventListener("hashchange", navigate);
  whenSignedOut(() => showSignIn("Your session ended; sign in again."));
  const session = await readSession();
  if (session) showApp(session);
  else showSignIn();
});
