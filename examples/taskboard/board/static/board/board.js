// The board's own use of the Telegraphy JS API, next to the widgets:
//  - the connection state in the header, and a banner that says in plain
//    words why live updates paused or stopped (close code, reason) and what
//    happens next;
//  - errors the client reports, shown on the page;
//  - an activity log from one prefix subscription over every board topic
//    (the gateway checks each event against this user's token, and each
//    task's recipients, so it only shows what this user may see);
//  - a channel with a filter: points of tasks moved to "done";
//  - the "new task" form posts without reloading: the row arrives live.

import { client, config } from "/static/telegraphy/boot.js";

// ---- connection state -------------------------------------------------------------------

// Close codes in plain words (docs/protocol.md, "Close codes and error URIs").
const CLOSE_WORDS = {
  1000: "the connection was closed",
  1001: "the gateway went away",
  1002: "the gateway could not understand this page (protocol error)",
  1005: "the connection closed without a status code",
  1006: "the connection to the gateway dropped — is it running?",
  1011: "the gateway hit an internal error",
  1012: "the gateway is restarting",
  1013: "the gateway is busy",
  1014: "a proxy in front of the gateway failed",
  4000: "this page fell behind and the gateway dropped it",
  4001: "the session was idle for too long",
  4002: "the handshake did not finish in time",
  4003: "your sign-in token expired",
  4500: "the gateway refused your sign-in token",
};
const URI_WORDS = {
  "wamp.close.system_shutdown": "the gateway is restarting",
  "telegraphy.close.token_expired": "your sign-in token expired",
  "wamp.error.authentication_failed": "the gateway refused your sign-in token",
  "wamp.error.not_authorized": "you may not see that",
  "wamp.error.no_such_realm": "the gateway does not serve this site's realm",
};
const PILL = { connected: "Live", connecting: "Connecting…", disconnected: "Reconnecting…", closed: "Offline",
  anonymous: "Not signed in", off: "Live updates off" };

function why(info) {
  const words = URI_WORDS[info?.reason] ?? CLOSE_WORDS[info?.code] ?? info?.message ?? "the connection closed";
  const technical = [info?.code != null ? `close code ${info.code}` : "", info?.reason].filter(Boolean).join(", ");
  return `${words.charAt(0).toUpperCase()}${words.slice(1)}${technical ? ` (${technical})` : ""}.`;
}

const stateText = document.querySelector(".connection .state-text");
const banner = document.getElementById("connection-banner");
let countdown = null, hideTimer = null;

function showBanner(kind, title, text, action) {
  if (!banner) return;
  clearTimeout(hideTimer);
  const box = document.createElement("div");
  box.className = `banner-box ${kind}`;
  const body = document.createElement("div");
  body.className = "banner-text";
  const strong = document.createElement("strong");
  strong.textContent = title;
  const span = document.createElement("span");
  span.textContent = text;
  body.append(strong, span);
  box.append(body);
  if (action) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "secondary";
    button.textContent = action.label;
    button.addEventListener("click", action.run);
    box.append(button);
  }
  banner.replaceChildren(box);
  banner.hidden = false;
  return span;
}

function hideBanner(after = 0) {
  if (!banner) return;
  clearTimeout(hideTimer);
  hideTimer = setTimeout(() => { banner.hidden = true; banner.replaceChildren(); }, after);
}

function showState(state, info) {
  if (stateText) stateText.textContent = PILL[state] ?? state;
  clearInterval(countdown);
  if (state === "connected") {
    if (info?.reconnected) {
      showBanner("ok", "Back online", "Live updates resumed; the board is refreshed with anything that changed meanwhile.");
      hideBanner(5000);
    } else {
      hideBanner();
    }
  } else if (state === "disconnected") {
    const deadline = Date.now() + (info?.delay ?? 0);
    const span = showBanner("", "Live updates paused",
      "", { label: "Retry now", run: () => client.connect() });
    const tick = () => {
      const secs = Math.max(0, Math.ceil((deadline - Date.now()) / 1000));
      span.textContent = `${why(info)} ${secs > 0 ? `Reconnecting in ${secs} s…` : "Reconnecting…"} ` +
        "Changes made meanwhile will show once the page is back.";
    };
    tick();
    countdown = setInterval(tick, 1000);
  } else if (state === "closed") {
    showBanner("bad", "Live updates stopped", `${why(info)} The page will not reconnect on its own: reload it to try again.`,
      { label: "Reload", run: () => location.reload() });
  }
}

showState(client ? client.state : "off");
client?.on("state", (state, info) => showState(state, info));
client?.on("error", (err) => {
  if (client.state === "closed") return; // the banner already says why
  showBanner("bad", "Something went wrong", err.message, { label: "Dismiss", run: () => hideBanner() });
});

// ---- status badges in the table (the widget keeps the text current) ----------------------

const table = document.querySelector("table.telegraphy-table");
function badges() {
  for (const td of table.querySelectorAll("td[data-field=status_label]")) {
    const label = td.textContent.trim();
    const status = label.toLowerCase().replace(/\s+/g, "");
    if (td.dataset.status !== status) td.dataset.status = status;
    if (td.dataset.label !== label) td.dataset.label = label;
  }
}
if (table) {
  badges();
  new MutationObserver(badges).observe(table, { subtree: true, childList: true, characterData: true });
}

// ---- activity log -----------------------------------------------------------------------

const activity = document.getElementById("activity");
const activityEmpty = document.getElementById("activity-empty");
function log(text, kind = "") {
  const li = document.createElement("li");
  if (kind) li.className = kind;
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const what = document.createElement("span");
  what.textContent = text;
  li.append(time, " ", what);
  activity.prepend(li);
  while (activity.children.length > 8) activity.lastElementChild.remove();
  if (activityEmpty) activityEmpty.hidden = true;
}

if (client) {
  const board = `${config.prefix}.board.`;
  client.subscribeTopic(board, (args, _kwargs, details) => {
    const event = args[0];
    const what = event.data.title ?? event.data.text ?? event.data.name ?? `#${event.data.id}`;
    const kind = String(event.meta.verbose_name);
    log(`${kind.charAt(0).toUpperCase()}${kind.slice(1)}: “${what}” ${event.meta.event_type}d`);
  }, { match: "prefix" }).catch((err) => log(`Cannot follow the board: ${err.message}`, "bad"));

  let done = 0;
  client.subscribe(`${config.prefix}.board.task`).filter({ status: "done" }).onUpdate((task) => {
    done += task.points;
    document.getElementById("points-done").textContent = String(done);
  });
}

// ---- new task form ----------------------------------------------------------------------

const form = document.getElementById("new-task");
const formError = document.getElementById("new-task-error");
form?.addEventListener("submit", async (e) => {
  e.preventDefault();
  const button = form.querySelector("button");
  formError.textContent = "";
  button.disabled = true;
  try {
    const response = await fetch(form.action, { method: "POST", body: new FormData(form), credentials: "same-origin" });
    if (response.ok) {
      form.reset();
    } else {
      const detail = response.headers.get("Content-Type")?.startsWith("text/plain") ? await response.text() : "";
      formError.textContent = response.status === 403
        ? "Could not add the task: your session expired. Reload the page and sign in again."
        : `Could not add the task (HTTP ${response.status}${detail ? `: ${detail}` : ""}).`;
    }
  } catch (err) {
    formError.textContent = `Could not reach the site to add the task: ${err.message}`;
  } finally {
    button.disabled = false;
  }
});

// ---- "Your work": calls through the gateway (board/procedures.py) --------------------------

const workSummary = document.getElementById("work-summary");
const workError = document.getElementById("work-error");

function callFailed(what, err) {
  const reason = {
    "wamp.error.no_such_procedure": "the gateway does not know this procedure (is [[rpc.http]] configured?)",
    "wamp.error.not_authorized": "your role may not make this call",
    "telegraphy.error.callee_unavailable": "the gateway cannot reach the site right now",
    "wamp.error.timeout": "the site took too long to answer",
  }[err.uri] ?? err.message;
  workError.textContent = `Could not ${what}: ${reason}.`;
}

async function refreshWork() {
  workError.textContent = "";
  try {
    const s = await client.call("board.summary", [], {}, { timeout: 10000 });
    workSummary.textContent = `You have ${s.open} open task${s.open === 1 ? "" : "s"} (${s.open_points} points); ` +
      `${s.unassigned} open task${s.unassigned === 1 ? " has" : "s have"} nobody yet.`;
  } catch (err) {
    callFailed("sum up your work", err);
  }
}

if (client && workSummary) {
  document.getElementById("work-refresh").addEventListener("click", refreshWork);
  document.getElementById("work-take").addEventListener("click", async (e) => {
    const button = e.currentTarget;
    button.disabled = true;
    workError.textContent = "";
    try {
      const task = await client.call("board.task.take_next", [], {}, { timeout: 10000 });
      workSummary.textContent = `“${task.title}” is yours now.`;
    } catch (err) {
      if (err.uri === "board.error.nothing_to_take") workSummary.textContent = "Every open task already has someone.";
      else callFailed("take a task", err);
    } finally {
      button.disabled = false;
    }
  });
}
