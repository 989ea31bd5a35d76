// Live widgets for Django pages: keeps the HTML that the template tags
// {% telegraphy_label %}, {% telegraphy_list %} and {% telegraphy_table %}
// rendered in step with the model events, using the JS client's channels.
//
//   label  <span data-telegraphy-widget="label" data-topic data-pk-field data-pk data-field>
//          its text follows the field of one object; class telegraphy-deleted after a delete
//   list   <ul data-telegraphy-widget="list" data-topic data-pk-field data-field data-filter>
//          one <li data-pk> per object: created ones join (when they match the filter),
//          updated ones change (and leave when they stop matching), deleted ones leave
//   table  <table data-telegraphy-widget="table" data-topic data-pk-field data-fields data-filter>
//          the same with one <tr data-pk> per object and one <td data-field> per field
//   feed   <ul data-telegraphy-widget="feed" data-topic data-match data-limit [data-denied]>
//          a plain topic (not model events): one <li> per event, newest first, at most
//          data-limit; each event also dispatches "telegraphy:event" ({ topic, args, kwargs, details })
//   presence <span data-telegraphy-widget="presence" data-topic data-count>
//          who else is on the object's topic (client.presence): the others' display names in
//          .telegraphy-presence-names, .telegraphy-presence-empty when nobody else is, the class
//          telegraphy-presence-alone and data-count (others); dispatches "telegraphy:presence"
//
// Changed elements get the class "telegraphy-changed" for 1.5 s, and the
// widget element dispatches a "telegraphy:change" DOM event ({ data, event }).
//
// After a reconnect the client resumes each topic (the gateway replays the
// events missed meanwhile, on topics that keep history). When every widget
// topic resumed, nothing more is needed; when one did not (no history for
// it, away too long), the widgets are refreshed from a new render of the
// page (GET location.href), unless {% telegraphy_scripts resync=False %}.

import { client, config } from "./boot.js";

/** How a value is shown (the same as display() in the template tags). */
export function display(value) {
  if (value === null || value === undefined) return "";
  if (value === true) return "yes";
  if (value === false) return "no";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function flash(element) {
  element.classList.remove("telegraphy-changed");
  void element.offsetWidth; // restart a CSS animation
  element.classList.add("telegraphy-changed");
  clearTimeout(element._telegraphyFlash);
  element._telegraphyFlash = setTimeout(() => element.classList.remove("telegraphy-changed"), 1500);
}

function changed(widget, data, event) {
  widget.dispatchEvent(new CustomEvent("telegraphy:change", { bubbles: true, detail: { data, event } }));
}

function lookups(widget) {
  const text = widget.dataset.filter;
  return text ? JSON.parse(text) : null;
}

// Handlers that ran while a resync fetch was in flight run again on the fresh HTML.
let replay = null;
function apply(fn) {
  fn();
  if (replay) replay.push(fn);
}

function bindLabel(widget) {
  const { topic, pkField, pk, field } = widget.dataset;
  const mine = client.subscribe(topic).filter((data) => String(data[pkField]) === pk);
  const update = (data, event) => apply(() => {
    if (!(field in data)) return;
    widget.classList.remove("telegraphy-deleted");
    widget.textContent = display(data[field]);
    flash(widget);
    changed(widget, data, event);
  });
  mine.onCreate(update).onUpdate(update).onDelete((data, event) => apply(() => {
    widget.classList.add("telegraphy-deleted");
    changed(widget, data, event);
  }));
}

function bindCollection(widget, { container, render }) {
  const { topic, pkField } = widget.dataset;
  const filter = lookups(widget);
  const channel = client.subscribe(topic);
  const itemOf = (pk) => container().querySelector(`:scope > [data-pk="${CSS.escape(String(pk))}"]`);
  const syncEmpty = () => {
    const empty = container().querySelector(":scope > .telegraphy-empty");
    if (empty) empty.hidden = container().querySelector(":scope > [data-pk]") !== null;
  };
  const upsert = (data, event) => apply(() => {
    const pk = data[pkField];
    let item = itemOf(pk);
    if (!item) {
      item = render(null, data);
      item.dataset.pk = String(pk);
      container().appendChild(item);
    } else {
      render(item, data);
    }
    flash(item);
    syncEmpty();
    changed(widget, data, event);
  });
  const remove = (data, event) => apply(() => {
    const item = itemOf(data[pkField]);
    if (!item) return;
    item.remove();
    syncEmpty();
    changed(widget, data, event);
  });
  const shown = filter ? channel.filter(filter) : channel;
  shown.onCreate(upsert).onUpdate(upsert);
  if (filter) channel.exclude(filter).onUpdate(remove);
  channel.onDelete(remove);
}

function bindList(widget) {
  const { field } = widget.dataset;
  bindCollection(widget, {
    container: () => widget,
    render(item, data) {
      if (!(field in data)) return item ?? document.createElement("li");
      const li = item ?? document.createElement("li");
      li.textContent = display(data[field]);
      return li;
    },
  });
}

function bindTable(widget) {
  const fields = widget.dataset.fields.split(",");
  bindCollection(widget, {
    container: () => widget.tBodies[0],
    render(item, data) {
      const tr = item ?? document.createElement("tr");
      for (const field of fields) {
        let td = tr.querySelector(`:scope > td[data-field="${CSS.escape(field)}"]`);
        if (!td) {
          td = document.createElement("td");
          td.dataset.field = field;
          tr.appendChild(td);
        }
        if (field in data) td.textContent = display(data[field]);
      }
      return tr;
    },
  });
}

/** How a plain event is shown in a feed: its args, then its kwargs as `key: value`. */
export function describe(args, kwargs) {
  return [...args.map(display), ...Object.entries(kwargs).map(([k, v]) => `${k}: ${display(v)}`)].join(" · ");
}

function bindFeed(widget) {
  // The template tag found that this user's token does not list the topic:
  // the gateway would refuse the subscription anyway.
  if ("denied" in widget.dataset) return;
  const { topic, match } = widget.dataset;
  const limit = Number(widget.dataset.limit) || 50;
  client.subscribeTopic(topic, (args, kwargs, details) => {
    const item = document.createElement("li");
    item.className = "telegraphy-item";
    item.dataset.topic = details.topic;
    item.textContent = describe(args, kwargs);
    const empty = widget.querySelector(":scope > .telegraphy-empty");
    widget.insertBefore(item, empty ? empty.nextSibling : widget.firstChild);
    if (empty) empty.hidden = true;
    const items = widget.querySelectorAll(":scope > .telegraphy-item");
    for (let i = limit; i < items.length; i++) items[i].remove();
    flash(item);
    widget.dispatchEvent(new CustomEvent("telegraphy:event", {
      bubbles: true, detail: { topic: details.topic, args, kwargs, details },
    }));
  }, { match: match || "exact" }).catch((err) => {
    widget.classList.add("telegraphy-denied");
    console.warn(`telegraphy: the feed of ${topic} is not available:`, err.uri || err.message);
  });
}

function bindPresence(widget) {
  const presence = client.presence(widget.dataset.topic);
  const names = widget.querySelector(":scope > .telegraphy-presence-names");
  const empty = widget.querySelector(":scope > .telegraphy-presence-empty");
  presence.on("change", () => {
    const me = client.session?.authid;
    const others = presence.authids.filter((a) => a !== me);
    const count = presence.count - (presence.authids.includes(me) ? 1 : 0);
    const more = Math.max(0, count - others.length);
    names.textContent = others.map((a) => presence.nameOf(a)).join(", ") + (more ? ` and ${more} more` : "");
    names.hidden = count === 0;
    if (empty) empty.hidden = count > 0;
    widget.classList.toggle("telegraphy-presence-alone", count === 0);
    if (widget.dataset.count !== String(count)) flash(widget);
    widget.dataset.count = String(count);
    widget.dispatchEvent(new CustomEvent("telegraphy:presence", {
      bubbles: true, detail: { count, authids: others, names: Object.fromEntries(others.map((a) => [a, presence.nameOf(a)])) },
    }));
  });
  presence.on("error", (err) => {
    widget.classList.add("telegraphy-denied");
    console.warn(`telegraphy: presence on ${widget.dataset.topic} is not available:`, err.uri || err.message);
  });
}

const BINDERS = { label: bindLabel, list: bindList, table: bindTable, feed: bindFeed, presence: bindPresence };

/** Binds every widget under `root` that is not bound yet. */
export function bindWidgets(root = document) {
  if (!client) return;
  for (const widget of root.querySelectorAll("[data-telegraphy-widget]")) {
    if (widget.dataset.telegraphyBound) continue;
    const bind = BINDERS[widget.dataset.telegraphyWidget];
    if (!bind) continue;
    widget.dataset.telegraphyBound = "1";
    bind(widget);
  }
}

/** Widgets whose content comes from the gateway, not from the server render. */
const LIVE_ONLY = ":not([data-telegraphy-widget=feed]):not([data-telegraphy-widget=presence])";

/** Replaces each widget's content with a fresh server render of this page. */
export async function resync() {
  // Feeds hold events and presence asks the gateway, not a server render:
  // they are left as they are.
  const widgets = [...document.querySelectorAll(`[data-telegraphy-widget][id]${LIVE_ONLY}`)];
  if (!widgets.length) return;
  replay = [];
  try {
    const response = await fetch(location.href, { credentials: "same-origin", cache: "no-store", headers: { "X-Telegraphy-Resync": "1" } });
    if (!response.ok) return;
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    for (const widget of widgets) {
      const copy = fresh.getElementById(widget.id);
      if (!copy || copy.dataset.telegraphyWidget !== widget.dataset.telegraphyWidget) continue;
      if (copy.innerHTML !== widget.innerHTML) {
        widget.innerHTML = copy.innerHTML;
        widget.className = copy.className;
        flash(widget);
      }
    }
    for (const fn of replay) fn();
  } catch (err) {
    console.warn("telegraphy: refreshing the widgets after a reconnect failed:", err);
  } finally {
    replay = null;
  }
  document.dispatchEvent(new CustomEvent("telegraphy:resync"));
}

if (client) {
  bindWidgets();
  if (config.resync !== false) {
    // Once every widget topic is subscribed again (so no later event is
    // missed), fetch the page, which holds what happened while we were
    // away, unless every topic resumed (its missed events were delivered).
    let waiting = null;
    client.on("state", (state, info) => {
      if (state !== "connected" || !info?.reconnected) return;
      const topics = new Set([...document.querySelectorAll(`[data-telegraphy-widget][data-topic]${LIVE_ONLY}`)].map((w) => w.dataset.topic));
      clearTimeout(waiting?.timer);
      waiting = { topics, lost: false, timer: setTimeout(() => { waiting = null; resync(); }, 3000) };
    });
    client.on("subscribed", (topic, info) => {
      if (!waiting || !waiting.topics.has(topic)) return;
      waiting.topics.delete(topic);
      if (!info?.resumed) waiting.lost = true;
      if (waiting.topics.size === 0) {
        clearTimeout(waiting.timer);
        const lost = waiting.lost;
        waiting = null;
        if (lost) resync();
      }
    });
  }
}
