// Notifications: a bell with the unread count, live arrival, and offline
// catch-up (the server pushes what arrived while the user was away at the next
// connect; the unread list comes from notifications_list). Click one to mark it read.
import { makeClient, mountConnectionPanel, showBanner } from "./common.js";

const client = makeClient();
const list = document.getElementById("list");
const unreadEl = document.querySelector('[data-testid="unread"]');
/** notification id -> {title, body, created_at, read} */
const items = new Map();

function render() {
  const sorted = [...items.entries()].sort((a, b) => b[0] - a[0]);
  list.replaceChildren(...sorted.map(([id, n]) => {
    const li = document.createElement("li");
    li.className = n.read ? "" : "unread";
    li.dataset.testid = `notification-${id}`;
    li.innerHTML = "<b></b><div></div>";
    li.querySelector("b").textContent = n.title;
    li.querySelector("div").textContent = n.body;
    li.addEventListener("click", () => markRead(id));
    return li;
  }));
  unreadEl.textContent = String([...items.values()].filter((n) => !n.read).length);
}

async function markRead(id) {
  const n = items.get(id);
  if (n === undefined || n.read) return;
  try {
    await client.notifications.ack(id);
    n.read = true;
    render();
  } catch (e) {
    showBanner("conflict", `${e.code}: ${e.message} ${e.action}`);
  }
}

async function loadUnread() {
  const page = await client.notifications.list({ unreadOnly: true, limit: 50 });
  for (const n of page.items) {
    if (!items.has(n.notification_id)) items.set(n.notification_id, { ...n, read: n.read_at !== null });
  }
  render();
}

if (client !== null) {
  mountConnectionPanel(client);
  // Registered before connect(): the pending notifications pushed at connect arrive here.
  client.notifications.onNotification((n) => {
    if (!items.has(n.id)) items.set(n.id, { title: n.title, body: n.body, created_at: n.created_at, read: false });
    render();
  });
  // After every (re)connect the unread list is read again: nothing missed while away stays hidden.
  client.on("state", ({ state }) => {
    if (state === "connected") loadUnread().catch((e) => showBanner("conflict", `${e.code}: ${e.message} ${e.action}`));
  });
  window.example = { client, items };
  client.connect().catch((e) => showBanner("conflict", `${e.code}: ${e.message} ${e.action}`));
}
