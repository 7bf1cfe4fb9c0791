// Collaborative quote editing: open this page twice on the same quote
// (?token=JWT&quote=UUID). Edits appear live in the other window, a focused
// field shows who is on it, and a change based on an outdated version is a
// conflict shown with the server's message and required action.
import { makeClient, mountConnectionPanel, params, showBanner } from "./common.js";

const quoteId = params.get("quote");
const client = makeClient();
const form = document.getElementById("fields");
const versionEl = document.querySelector('[data-testid="version"]');
document.getElementById("quote-id").textContent = quoteId ?? "(none)";

if (client !== null && !quoteId) showBanner("info", "Required action: open this page with &quote=<quote uuid>.");
if (client !== null && quoteId) {
  mountConnectionPanel(client);
  /** Version each field's edit is based on: the version when the user focused it. */
  const baseVersions = new Map();
  const inputs = new Map();

  const q = client.quotes.subscribe(quoteId, {
    onState: (quote, { version, editableFields, reload }) => {
      renderFields(quote, editableFields);
      versionEl.textContent = String(version);
      if (reload) showBanner("info", `Reconnected: the quote was reloaded at version ${version}.`);
    },
    onUpdate: (frame) => {
      versionEl.textContent = String(q.version);
      if (frame.type !== "field_update") return;
      const input = inputs.get(frame.field);
      if (input === undefined) return;
      input.value = display(frame.value);
      input.classList.remove("flash");
      void input.offsetWidth;
      input.classList.add("flash");
    },
    onFocus: ({ field, user }) => setRemoteFocus(field, user),
    onBlur: ({ field }) => setRemoteFocus(field, null),
    onError: (e) => showBanner("conflict", `${e.message} ${e.action}`),
  });

  function renderFields(quote, editableFields) {
    form.replaceChildren();
    inputs.clear();
    for (const [name, type] of Object.entries(editableFields)) {
      const label = document.createElement("label");
      label.textContent = `${name} (${type})`;
      label.htmlFor = `f-${name}`;
      const badge = document.createElement("span");
      badge.className = "focus-badge";
      badge.dataset.testid = `focus-${name}`;
      label.append(badge);
      const input = document.createElement("input");
      input.id = `f-${name}`;
      input.name = name;
      input.dataset.testid = `field-${name}`;
      input.value = display(quote.fields?.[name]);
      input.addEventListener("focus", () => {
        baseVersions.set(name, q.version);
        if (client.state === "connected") q.focus(name);
      });
      input.addEventListener("blur", () => { if (client.state === "connected") q.blur(name); });
      input.addEventListener("change", () => save(name, type, input));
      form.append(label, input);
      inputs.set(name, input);
    }
  }

  async function save(name, type, input) {
    const value = parse(type, input.value);
    try {
      const ack = await q.edit(name, value, { baseVersion: baseVersions.get(name) ?? q.version });
      baseVersions.set(name, ack.version);
      versionEl.textContent = String(q.version);
      document.getElementById("banner").hidden = true;
    } catch (e) {
      if (e.code === "conflict") {
        input.value = display(e.details.current_value);
        baseVersions.set(name, q.version);
        versionEl.textContent = String(q.version);
        const banner = showBanner("conflict", `Conflict on ${name}: ${e.message} ${e.action}`);
        banner.dataset.testid = "conflict";
      } else {
        showBanner("conflict", `${e.code}: ${e.message} ${e.action}`);
      }
    }
  }

  function setRemoteFocus(field, user) {
    const input = inputs.get(field);
    const badge = document.querySelector(`[data-testid="focus-${field}"]`);
    if (input === undefined || badge === null) return;
    input.classList.toggle("remote-focus", user !== null);
    badge.textContent = user === null ? "" : `✎ ${user.slice(0, 8)} is editing`;
  }

  window.example = { client, quote: q };
  client.connect().catch((e) => showBanner("conflict", `${e.code}: ${e.message} ${e.action}`));
}

function display(value) { return value === undefined || value === null ? "" : String(value); }

function parse(type, text) {
  if (type === "number") return Number(text);
  if (type === "integer") return Number.parseInt(text, 10);
  if (type === "boolean") return text === "true";
  return text;
}
