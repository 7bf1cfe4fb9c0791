// Shared by every example: the client from the page's URL parameters and the
// connection panel (state, attempt count, last close code and reason).
//
// Open a page as  /examples/<page>.html?token=JWT  (the token comes from
// `python -m rtserver token ...`, see README). A product would fetch tokens
// from its backend in getToken() instead.
import { RtClient } from "/client/rtserver-client.js";

export const params = new URLSearchParams(location.search);

/** An RtClient for this page, or null (with a visible message) when ?token= is missing. */
export function makeClient(extra = {}) {
  const token = params.get("token");
  if (!token) {
    showBanner("info", "This page needs a token: open it with ?token=JWT " +
      "(Required action: mint one with python -m rtserver token, see the README).");
    return null;
  }
  const url = params.get("ws") ?? `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
  return new RtClient({
    url,
    getToken: async () => token,
    reconnect: { minDelay: 250, maxDelay: 5000 },
    ...extra,
  });
}

/** @param {"info"|"conflict"} kind @param {string} text */
export function showBanner(kind, text) {
  const el = document.getElementById("banner");
  el.className = `banner ${kind}`;
  el.textContent = text;
  el.hidden = false;
  return el;
}

/**
 * Renders the connection panel into #connection and logs every event to #events.
 * @param {import("/client/rtserver-client.js").RtClient} client
 */
export function mountConnectionPanel(client) {
  const root = document.getElementById("connection");
  root.innerHTML = '<span class="state" data-testid="state"></span>' +
    '<span>attempts: <b data-testid="attempts">0</b></span>' +
    '<span>last close: <b data-testid="last-close">—</b></span>';
  const stateEl = /** @type {HTMLElement} */ (root.querySelector('[data-testid="state"]'));
  const attemptsEl = root.querySelector('[data-testid="attempts"]');
  const closeEl = root.querySelector('[data-testid="last-close"]');
  const events = document.getElementById("events");
  const log = (text) => {
    const line = document.createElement("div");
    line.textContent = `${new Date().toLocaleTimeString()} ${text}`;
    events.prepend(line);
    while (events.childElementCount > 50) events.lastElementChild.remove();
  };
  const render = () => {
    stateEl.textContent = client.state;
    stateEl.dataset.state = client.state;
    attemptsEl.textContent = String(client.info.reconnects);
    closeEl.textContent = client.info.lastCloseCode === null ? "—"
      : `${client.info.lastCloseCode} ${client.info.lastCloseReason}`.trim();
  };
  client.on("state", ({ state, code, reason }) => {
    render();
    log(`state ${state}${code === null ? "" : ` (${code} ${reason})`}`);
  });
  client.on("reconnect", ({ attempt, delay, code }) => { render(); log(`reconnect attempt ${attempt} in ${delay} ms after ${code}`); });
  client.on("recover", ({ room, recovered, replayed, reason }) =>
    log(`${room}: ${recovered ? `recovered (${replayed} replayed)` : `not recovered: ${reason}`}`));
  client.on("error", (e) => log(`error ${e.code}: ${e.message}`));
  render();
}
