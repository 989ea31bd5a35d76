// The board's own use of the Telegraphy JS API, next to the widgets:
//  - the connection state in the header;
//  - an activity log from one prefix subscription over every board topic
//    (the gateway checks each event against this user's token, and each
//    task's recipients, so it only shows what this user may see);
//  - a channel with a filter: points of tasks moved to "done";
//  - the "new task" form posts without reloading: the row arrives live.

import { client, config } from "/static/telegraphy/boot.js";

const stateText = document.querySelector(".connection .state-text");
const show = (state) => { if (stateText) stateText.textContent = state; };
show(client ? client.state : "off");
client?.on("state", (state) => show(state));

const activity = document.getElementById("activity");
function log(text) {
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  activity.prepend(li);
  while (activity.children.length > 8) activity.lastElementChild.remove();
}

if (client) {
  const board = `${config.prefix}.board.`;
  client.subscribeTopic(board, (args, _kwargs, details) => {
    const event = args[0];
    const what = event.data.title ?? event.data.text ?? event.data.name ?? `#${event.data.id}`;
    log(`${event.meta.verbose_name}: “${what}” ${event.meta.event_type}d`);
  }, { match: "prefix" }).catch((err) => log(`cannot follow the board: ${err.message}`));

  let done = 0;
  client.subscribe(`${config.prefix}.board.task`).filter({ status: "done" }).onUpdate((task) => {
    done += task.points;
    document.getElementById("points-done").textContent = String(done);
  });
}

const form = document.getElementById("new-task");
form?.addEventListener("submit", async (e) => {
  e.preventDefault();
  const response = await fetch(form.action, { method: "POST", body: new FormData(form), credentials: "same-origin" });
  if (response.ok) form.reset();
  else log(`could not add the task: HTTP ${response.status}`);
});
