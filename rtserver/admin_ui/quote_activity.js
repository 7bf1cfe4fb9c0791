/**
 * The Quote activity panel: room `admin:quote_activity` (needs admin:monitor), one
 * `quote_activity` frame per applied quote edit or backend quote update on any worker,
 * shown newest first, live over the console's WebSocket (the SDK's subscription: in order,
 * recovered after a reconnect). Frames carry no field values.
 * @module
 */

/** The room of the quote activity stream (rtserver/domains/insurance/quote_activity.py). */
export const QUOTE_ACTIVITY_ROOM = "admin:quote_activity";
/** Rows kept on the page. */
const MAX_ROWS = 200;

/**
 * @typedef {object} QuoteActivityFrame
 * @property {"quote_activity"} type
 * @property {"field_update"|"quote_update"} kind
 * @property {string} quote_id
 * @property {number} version
 * @property {string|null} field
 * @property {string|null} update_type
 * @property {string|null} user
 * @property {number} worker
 * @property {string} at
 */

export class QuoteActivity {
  /**
   * @param {import("/client/rtserver-client.js").RtClient} client
   * @param {string[]} permissions the session's
   * @param {HTMLElement} note
   * @param {HTMLElement} rows a tbody
   */
  constructor(client, permissions, note, rows) {
    this.client = client;
    this.permissions = permissions;
    this.note = note;
    this.rows = rows;
  }

  start() {
    if (!this.permissions.includes("admin:monitor")) {
      this.note.textContent = "Quote activity needs the admin:monitor permission.";
      return;
    }
    const sub = this.client.subscribe(QUOTE_ACTIVITY_ROOM, {
      onMessage: (_data, meta) => this.add(/** @type {QuoteActivityFrame} */ (/** @type {unknown} */ (meta.frame))),
      onError: (error) => {
        this.note.textContent = `Quote activity is off: ${error.message}. ${error.action}`;
        document.body.dataset.quoteActivity = "refused";
      },
    });
    sub.ready.then(() => {
      this.note.textContent = "Quote edits and backend updates on every worker, live (no field values).";
      document.body.dataset.quoteActivity = "live";
    }, () => {}); // a refusal is shown by onError
  }

  /** @param {QuoteActivityFrame} frame */
  add(frame) {
    if (frame.type !== "quote_activity") return;
    const what = frame.kind === "field_update" ? `edit of ${frame.field}` : `backend ${frame.update_type}`;
    const cells = [new Date(frame.at).toLocaleTimeString(), frame.quote_id, what, String(frame.version),
                   frame.user ?? "backend", String(frame.worker)];
    const tr = document.createElement("tr");
    tr.setAttribute("data-testid", `quote-activity-${frame.quote_id}-${frame.version}`);
    for (const c of cells) {
      const td = document.createElement("td");
      td.textContent = c;
      tr.append(td);
    }
    this.rows.prepend(tr);
    while (this.rows.children.length > MAX_ROWS) this.rows.lastElementChild?.remove();
  }
}
