/**
 * rtserver's admin console: plain ES modules over the SDK served at /client/.
 *
 * Login: a token pasted here or given in the URL fragment (#token=...), kept in
 * sessionStorage until it expires; the single-use link of `rtserver admin-url` is
 * exchanged once for a session token first (login_link.js). Data: the
 * cluster document pushed over the console's own WebSocket every refresh_seconds
 * (start_cluster: every worker's counters, fan-out and publish → delivered latency
 * buckets, turned into rates and p50/p99 here; GET /admin/cluster is read instead
 * only while the WebSocket is down, and the page says so), start_monitoring
 * (system_metrics and admin_alert as they happen), and the admin routes for alerts,
 * connections, rooms and the audit log. Actions (admin:operate) go over the WebSocket.
 * @module
 */

import { RtClient, tokenExpiry } from "/client/rtserver-client.js";
import { LineChart, histogramQuantile } from "/admin/chart.js";
import { LOGIN_PURPOSE, exchangeLink, tokenPurpose } from "/admin/login_link.js";
import { QuoteActivity } from "/admin/quote_activity.js";

const TOKEN_KEY = "rtserver-admin-token";

/** @param {string} id @returns {any} */
const $ = (id) => {
  const el = document.getElementById(id);
  if (el === null) throw new Error(`console: element #${id} is missing`);
  return el;
};

/** @param {string} tag @param {Record<string, string>} [attrs] @param {...(Node|string)} children */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}

/** @param {HTMLElement} body @param {Array<Array<Node|string>>} rows */
function fillRows(body, rows) {
  body.replaceChildren(...rows.map((cells) => el("tr", {}, ...cells.map((c) => el("td", {}, c)))));
}

const fmt = {
  /** @param {number|null|undefined} s */
  duration(s) {
    if (s === null || s === undefined) return "–";
    if (s < 60) return `${s.toFixed(0)} s`;
    if (s < 3600) return `${(s / 60).toFixed(1)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  },
  /** @param {number|null|undefined} b */
  bytes(b) { return b === null || b === undefined ? "–" : `${(b / 1048576).toFixed(1)} MiB`; },
  /** @param {number|null} v */
  rate(v) { return v === null ? "–" : v >= 100 ? v.toFixed(0) : v.toFixed(1); },
  /** @param {number|string|null|undefined} t */
  time(t) {
    if (t === null || t === undefined) return "–";
    const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
    return d.toLocaleTimeString();
  },
};

/** @param {Record<string, number>|null|undefined} m */
const sum = (m) => Object.values(m ?? {}).reduce((a, b) => a + b, 0);

/** A worker's label: "w0" for a worker number, a Redis node id as it is. @param {string} w */
const workerLabel = (w) => `${/^\d+$/.test(w) ? "w" : ""}${w}`;

/** Members by worker ("w0: 2, w1: 1"; Redis node ids as they are). @param {Record<string, number>} m */
const byWorker = (m) => Object.entries(m).map(([w, n]) => `${workerLabel(w)}: ${n}`).join(", ");

/**
 * Which workers an admin answer covers: the ones that answered, and by name the ones that
 * did not answer in time or failed (never a silently partial answer).
 * @param {any} doc
 */
function coverage(doc) {
  const answered = Object.keys(doc.workers ?? {}).sort();
  let text = `answered by worker(s) ${answered.join(", ") || "none"} (${answered.length} of ${doc.expected_workers})`;
  if (doc.missing?.length) text += `; NOT ANSWERING: ${doc.missing.join(", ")}`;
  const failed = Object.keys(doc.failed ?? {});
  if (failed.length) text += `; FAILED: ${failed.join(", ")}`;
  text += { cluster: "; every node (Redis)", node: "; this machine's workers", process: "; one process" }[
    /** @type {"cluster"|"node"|"process"} */ (doc.scope)] ?? "";
  return text;
}

/**
 * A connection's state transitions, oldest first: "connecting 12:00:01 → authenticated ...".
 * @param {Array<{state: string, at: number, reason: string, close_code: number|null}>} history
 * @param {number} dropped
 */
function stateHistory(history, dropped) {
  const steps = history.map((h) => `${h.state} ${fmt.time(h.at)}` +
    (h.close_code === null ? "" : ` (${h.close_code})`));
  if (dropped > 0 && steps.length > 1) steps.splice(1, 0, `… ${dropped} more`);
  return steps.join(" → ");
}

/** @param {number|null} v milliseconds, or null without observations */
const ms = (v) => (v === null ? "–" : `${v >= 10 ? v.toFixed(1) : v.toFixed(3)} ms`);

/**
 * p50 and p99 (ms) of the observations between two reads of one cumulative histogram.
 * @param {{buckets: Array<[number|null, number]>}|undefined} h
 * @param {{buckets: Array<[number|null, number]>}|undefined} prev
 * @returns {{p50: number|null, p99: number|null}}
 */
function intervalQuantiles(h, prev) {
  if (!h || !prev) return { p50: null, p99: null };
  const bounds = h.buckets.map((b) => b[0]);
  const cum = h.buckets.map((b) => b[1]);
  const pcum = prev.buckets.map((b) => b[1]);
  const deltas = cum.map((c, i) =>
    Math.max(0, (c - (pcum[i] ?? 0)) - (i > 0 ? cum[i - 1] - (pcum[i - 1] ?? 0) : 0)));
  const p50 = histogramQuantile(0.5, bounds, deltas);
  const p99 = histogramQuantile(0.99, bounds, deltas);
  return { p50: p50 === null ? null : p50 * 1000, p99: p99 === null ? null : p99 * 1000 };
}

class Console {
  constructor() {
    /** @type {string|null} */
    this.token = null;
    /** @type {any} */
    this.session = null;
    /** @type {RtClient|null} */
    this.client = null;
    /** @type {any} */
    this.previous = null;
    /** @type {Map<string, number>} worker id -> time (ms) of its last answer */
    this.lastSeen = new Map();
    /** @type {Map<string, string>} worker id -> its node (host:supervisor pid), as last named */
    this.nodeOf = new Map();
    /** @type {Map<number, any>} open alerts by id */
    this.openAlerts = new Map();
    /** @type {number[]} */
    this.timers = [];
    this.charts = {
      latency: new LineChart($("chart-latency"), { unit: " ms" }),
      delivery: new LineChart($("chart-delivery"), { unit: " ms" }),
      messages: new LineChart($("chart-messages")),
      pubs: new LineChart($("chart-pubs")),
    };
    /** Cluster documents applied, pushed or read (tests wait on it through data-polls). */
    this.polls = 0;
    /** cluster_status pushes received (data-cluster-pushes). */
    this.clusterPushes = 0;
    /** GET /admin/cluster reads while the WebSocket is down (data-cluster-reads). */
    this.clusterReads = 0;
    /** @type {number|null} the fallback reading timer while the WebSocket is down */
    this.pollTimer = null;
  }

  // ---------------------------------------------------------------- login

  start() {
    $("login-button").addEventListener("click", () => this.login($("token-input").value.trim()));
    $("denied-login").addEventListener("click", () => this.showLogin(""));
    $("logout").addEventListener("click", () => this.end("login", "Logged out."));
    const fragment = new URLSearchParams(location.hash.slice(1));
    const fromLink = fragment.get("token");
    if (fromLink) history.replaceState(null, "", location.pathname); // the token leaves the address bar
    const token = fromLink || sessionStorage.getItem(TOKEN_KEY);
    if (token) this.login(token);
    else this.showLogin("");
  }

  /** @param {string} message */
  showLogin(message) {
    this.show("login");
    $("login-error").textContent = message;
  }

  /** @param {"login"|"denied"|"console"} screen */
  show(screen) {
    $("login").hidden = screen !== "login";
    $("denied").hidden = screen !== "denied";
    $("console").hidden = screen !== "console";
    $("whoami").hidden = screen !== "console";
    document.body.dataset.screen = screen;
  }

  /** @param {string} token */
  async login(token) {
    if (!token) { this.showLogin("Paste a token first."); return; }
    if (tokenPurpose(token) === LOGIN_PURPOSE) {
      // A single-use login link: exchanged once for a session token (same permissions and
      // expiry); only the session token is kept.
      const exchanged = await exchangeLink(token);
      if (!exchanged.ok) {
        this.end("denied", exchanged.message, exchanged.title, exchanged.error);
        return;
      }
      token = exchanged.token;
    }
    const exp = tokenExpiry(token);
    if (exp !== null && exp <= Date.now()) {
      sessionStorage.removeItem(TOKEN_KEY);
      this.end("denied", "This token has expired. Ask for a new one (rtserver admin-url --ttl 3600).");
      return;
    }
    this.token = token;
    const res = await fetch(`/admin/session?origin=${encodeURIComponent(location.origin)}`,
                            { headers: this.headers() });
    if (res.status === 401 || res.status === 403) {
      const doc = await res.json();
      sessionStorage.removeItem(TOKEN_KEY);
      this.token = null;
      this.end("denied", res.status === 403
        ? `This token lacks the admin:monitor permission (${doc.message}).`
        : `The server refused this token: ${doc.message}.`);
      return;
    }
    if (!res.ok) throw new Error(`/admin/session answered ${res.status}`);
    sessionStorage.setItem(TOKEN_KEY, token);
    this.session = await res.json();
    this.enter(exp);
  }

  headers() { return { Authorization: `Bearer ${this.token}` }; }

  /**
   * @param {"login"|"denied"} screen @param {string} message
   * @param {string} [title] of the denied screen @param {string} [reason] its data-denied code
   */
  end(screen, message, title = "Access ended", reason = "") {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    this.stopPolling();
    this.client?.close();
    this.client = null;
    this.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    if (screen === "login") { this.showLogin(message); return; }
    this.show("denied");
    $("denied-title").textContent = title;
    $("denied-text").textContent = message;
    document.body.dataset.denied = reason;
  }

  /** @param {number|null} exp */
  enter(exp) {
    const s = this.session;
    this.show("console");
    document.body.dataset.operate = String(s.can_operate);
    $("who").textContent = `${s.user ?? "(no user)"} · ${s.permissions.join(", ")}`;
    $("mode").textContent = s.can_operate ? "operator" : "read-only";
    $("expires").textContent = exp === null ? "no expiry" : `until ${new Date(exp).toLocaleTimeString()}`;
    $("disconnect-controls").hidden = !s.can_operate;
    if (exp !== null) {
      this.timers.push(window.setInterval(() => {
        if (Date.now() >= exp) this.end("denied", "Your token expired. Log in again with a new one.");
      }, 1000));
    }
    this.connect();
    this.loadAlerts();
    this.loadAudit();
    this.loadRooms();
    $("conn-form").addEventListener("submit", (/** @type {Event} */ e) => { e.preventDefault(); this.lookup(); });
    $("room-form").addEventListener("submit", (/** @type {Event} */ e) => { e.preventDefault(); this.loadRooms(); });
    $("audit-refresh").addEventListener("click", () => this.loadAudit());
    $("disconnect-user").addEventListener("click", () => this.disconnectUser());
  }

  // ---------------------------------------------------------------- WebSocket pushes

  connect() {
    const s = this.session;
    if (s.origin_allowed === false) {
      // The server would refuse the handshake (403): say what to change instead.
      $("ws-state").textContent = "refused";
      $("cluster-error").textContent = `Live pushes are off: this page's origin ${s.origin} is not in ` +
        "server.allowed_origins. Required action: add it there (docs/admin.md) and reload.";
      this.pushesDown("refused");
      return;
    }
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const client = new RtClient({ url: `${scheme}://${location.host}${s.ws_path}`,
                                  getToken: async () => this.token ?? "" });
    this.client = client;
    client.on("state", ({ state }) => {
      $("ws-state").textContent = state;
      document.body.dataset.ws = state;
      if (state === "connected") this.pushesUp();
      else this.pushesDown(state);
    });
    client.on("frame", (/** @type {any} */ f) => {
      if (f.type === "user_activity") this.activity(f);
      if (f.type === "alert_resolved" && f.id === undefined) this.alertResolved(f.alert_id);
    });
    client.connect().then(() => {
      client.admin.startMonitoring({
        interval: s.refresh_seconds,
        onMetrics: (/** @type {any} */ m) => { document.body.dataset.pushes = String(Number(document.body.dataset.pushes ?? 0) + 1); this.pushed = m; },
        onAlert: (/** @type {any} */ a) => this.alertRaised(a),
      });
      new QuoteActivity(client, s.permissions, $("quote-activity-note"), $("quote-activity-rows")).start();
      client.admin.startCluster({
        onStatus: (/** @type {any} */ doc) => {
          this.clusterPushes += 1;
          document.body.dataset.clusterPushes = String(this.clusterPushes);
          this.apply(doc);
        },
      });
      if (s.can_read_activity) {
        client.request({ type: "start_user_activity", filters: { hours: 24 } }, "stream_started")
          .then(() => { $("activity-note").textContent = "Admin activity of the last 24 hours, live."; });
      } else {
        $("activity-note").textContent = "The activity stream needs the audit:read permission.";
      }
    });
  }

  // ---------------------------------------------------------------- cluster and traffic

  /** The WebSocket is up: the cluster panels come from its pushes alone. */
  pushesUp() {
    this.stopPolling();
    $("push-state").hidden = true;
    $("push-state").textContent = "";
    document.body.dataset.clusterSource = "push";
  }

  /**
   * The WebSocket is not connected: say so, and read GET /admin/cluster once per interval
   * until it is back (the first read after one interval: a connect in progress makes none).
   * @param {string} state
   */
  pushesDown(state) {
    const seconds = this.session.refresh_seconds;
    $("push-state").hidden = false;
    $("push-state").textContent = `Live pushes down (WebSocket ${state}): polling /admin/cluster ` +
      `every ${seconds} s until the WebSocket is back.`;
    document.body.dataset.clusterSource = "polling";
    if (this.pollTimer === null) this.pollTimer = window.setInterval(() => this.read(), seconds * 1000);
  }

  stopPolling() {
    if (this.pollTimer !== null) clearInterval(this.pollTimer);
    this.pollTimer = null;
  }

  /** One GET /admin/cluster (only while the WebSocket is down). */
  async read() {
    const stale = this.session.stale_after * 1000;
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), stale);
    let doc;
    try {
      this.clusterReads += 1;
      document.body.dataset.clusterReads = String(this.clusterReads);
      const res = await fetch("/admin/cluster", { headers: this.headers(), signal: ctl.signal });
      if (res.status === 401 || res.status === 403) { this.end("denied", "The server no longer accepts this token."); return; }
      doc = await res.json();
    } catch (err) {
      $("cluster-error").textContent = `cluster status unavailable: ${err}`;
      this.renderCluster(null);
      return;
    } finally {
      clearTimeout(timer);
    }
    this.apply(doc);
  }

  /**
   * A cluster document (pushed or read). One with `error` (the hub or Redis did not answer)
   * has the answering worker's own view only (under its key, worker_key): the others show
   * as not answering, then stale.
   * @param {any} doc
   */
  apply(doc) {
    if (doc.error) {
      $("cluster-error").textContent = `${doc.message} ${doc.action}`;
      doc = { ...doc, workers: { [String(doc.worker_key ?? doc.answered_by)]: doc.worker }, missing: [] };
    } else {
      $("cluster-error").textContent = "";
    }
    const now = Date.now();
    for (const wid of Object.keys(doc.workers)) this.lastSeen.set(wid, now);
    // Every worker of every node (Redis) is grouped by node; one that did not answer is
    // listed under its node too (doc.nodes).
    for (const [node, group] of Object.entries(doc.nodes ?? {})) {
      for (const wid of [...group.workers, ...group.missing, ...group.failed]) this.nodeOf.set(wid, node);
    }
    for (const [wid, w] of Object.entries(doc.workers)) if (w.node) this.nodeOf.set(wid, w.node);
    this.renderCluster(doc);
    this.renderTraffic(doc, now);
    this.previous = { doc, at: now };
    this.polls += 1;
    document.body.dataset.polls = String(this.polls);
  }

  /**
   * Seconds between the previous document and `doc`, on the server's clock when both carry it.
   * @param {any} doc @param {number} now
   */
  elapsed(doc, now) {
    const prev = this.previous;
    if (!prev) return 0;
    if (typeof doc.server_time === "number" && typeof prev.doc.server_time === "number") {
      return doc.server_time - prev.doc.server_time;
    }
    return (now - prev.at) / 1000;
  }

  /** @param {any} doc */
  renderCluster(doc) {
    const now = Date.now();
    const stale = this.session.stale_after * 1000;
    const ids = new Set([...this.lastSeen.keys(), ...(doc ? Object.keys(doc.workers) : []),
                         ...(doc ? doc.missing : [])]);
    const nodeOf = (/** @type {string} */ wid) => this.nodeOf.get(wid) ?? "–";
    const order = (/** @type {string} */ a, /** @type {string} */ b) =>
      nodeOf(a).localeCompare(nodeOf(b)) || (Number(a) - Number(b)) || a.localeCompare(b);
    const rows = [...ids].sort(order).map((wid) => {
      const node = el("span", { "data-testid": `worker-${wid}-node` }, nodeOf(wid));
      const w = doc?.workers[wid];
      const seen = this.lastSeen.get(wid);
      const age = seen === undefined ? null : (now - seen) / 1000;
      const isStale = w === undefined && (seen === undefined || now - seen > stale);
      const status = el("span", { class: isStale ? "stale" : w?.health.status === "ok" ? "ok" : "degraded",
                                  "data-testid": `worker-${wid}-status` },
                        isStale ? "stale" : w === undefined ? "not answering" : w.health.status);
      if (w === undefined) return [node, String(wid), status, "–", "–", "–", "–", "–", fmt.duration(age), "–"];
      const prev = this.previous?.doc.workers[wid];
      const dt = doc ? this.elapsed(doc, now) : 0;
      const cpu = prev && dt > 0 ? `${(((w.cpu_seconds - prev.cpu_seconds) / dt) * 100).toFixed(0)} %` : "–";
      const conns = Object.entries(w.connections).map(([k, v]) => `${k} ${v}`).join(", ") || "0";
      const bus = w.health.bus ? `${w.health.bus.kind} ${w.health.bus.ok ? "ok" : "down"}` : "–";
      return [node, String(wid), status, fmt.duration(w.uptime), conns, cpu, fmt.bytes(w.rss_bytes), bus,
              "now", String(w.restarts ?? 0)];
    });
    fillRows($("cluster-rows"), rows);
    const missingNodes = doc?.missing_nodes?.length ? `; NODES NOT ANSWERING: ${doc.missing_nodes.join(", ")}` : "";
    $("cluster-updated").textContent = doc ? `answered by worker ${doc.answered_by}` +
      `${doc.answered_by_node ? ` of node ${doc.answered_by_node}` : ""} at ${new Date().toLocaleTimeString()}${missingNodes}` : "";
  }

  /** @param {any} doc @param {number} now */
  renderTraffic(doc, now) {
    const prev = this.previous;
    if (!prev) return;
    const dt = this.elapsed(doc, now);
    if (dt <= 0) return;
    const totals = { in: 0, out: 0, pubs: 0, connects: 0, disconnects: 0, slow: 0 };
    /** @type {Record<string, number|null>} */
    const latency = {};
    /** @type {Record<string, number|null>} */
    const delivery = {};
    /** @type {Array<Array<string>>} */
    const latencyRows = [];
    /** @type {Record<string, number>} */
    const closes = {};
    /** @type {Record<string, number>} */
    const errors = {};
    for (const [wid, w] of Object.entries(doc.workers)) {
      const p = /** @type {any} */ (prev.doc.workers[wid]);
      if (!p || w.uptime < p.uptime) continue; // a new process: no rate across the restart
      const d = (/** @type {number} */ a, /** @type {number} */ b) => Math.max(0, a - b);
      totals.in += d(sum(w.messages_in), sum(p.messages_in));
      totals.out += d(sum(w.messages_out), sum(p.messages_out));
      totals.pubs += d(w.publications ?? 0, p.publications ?? 0);
      const closed = d(sum(w.closes), sum(p.closes));
      totals.disconnects += closed;
      totals.connects += Math.max(0, closed + sum(w.connections) - sum(p.connections));
      totals.slow += d(w.slow_consumers ?? 0, p.slow_consumers ?? 0);
      for (const [code, n] of Object.entries(w.closes)) closes[code] = (closes[code] ?? 0) + d(n, p.closes[code] ?? 0);
      for (const [code, n] of Object.entries(w.errors)) errors[code] = (errors[code] ?? 0) + d(n, p.errors[code] ?? 0);
      const fan = intervalQuantiles(w.latency, p.latency);
      const del = intervalQuantiles(w.delivery_latency, p.delivery_latency);
      latency[`${workerLabel(wid)} p50`] = fan.p50;
      latency[`${workerLabel(wid)} p99`] = fan.p99;
      delivery[`${workerLabel(wid)} p50`] = del.p50;
      delivery[`${workerLabel(wid)} p99`] = del.p99;
      latencyRows.push([wid, ms(fan.p50), ms(fan.p99), ms(del.p50), ms(del.p99)]);
    }
    const rate = (/** @type {number} */ n) => n / dt;
    this.charts.latency.push(now, latency);
    this.charts.delivery.push(now, delivery);
    document.body.dataset.deliveryPoints = String(this.charts.delivery.points);
    $("latency-rows").replaceChildren(...latencyRows.map(([wid, ...cells]) => el("tr", {},
      el("td", {}, wid), ...cells.map((c, i) => el("td", {
        "data-testid": `${i < 2 ? "fanout" : "delivery"}-${wid}-${i % 2 === 0 ? "p50" : "p99"}` }, c)))));
    this.charts.messages.push(now, { in: rate(totals.in), out: rate(totals.out) });
    this.charts.pubs.push(now, { publications: rate(totals.pubs), connects: rate(totals.connects),
                                 disconnects: rate(totals.disconnects) });
    document.body.dataset.latencyPoints = String(this.charts.latency.points);
    const counters = [
      ["connects/s", rate(totals.connects)], ["disconnects/s", rate(totals.disconnects)],
      ["messages in/s", rate(totals.in)], ["messages out/s", rate(totals.out)],
      ["publications/s", rate(totals.pubs)], ["slow-consumer closes/s", rate(totals.slow)],
    ];
    $("counters").replaceChildren(...counters.map(([name, v]) =>
      el("div", { class: "counter", "data-testid": `counter-${String(name).split("/")[0].replace(/ /g, "-")}` },
         el("b", {}, fmt.rate(/** @type {number} */ (v))), String(name))));
    const list = (/** @type {Record<string, number>} */ m) =>
      Object.entries(m).filter(([, n]) => n > 0).map(([k, n]) => `${k}: ${fmt.rate(rate(n))}/s`).join(", ") || "none";
    $("closes").textContent = list(closes);
    $("errors").textContent = list(errors);
  }

  // ---------------------------------------------------------------- alerts

  async loadAlerts() {
    const [open, all] = await Promise.all([this.get("/admin/alerts?state=open&limit=200"),
                                           this.get("/admin/alerts?state=all&limit=50")]);
    if (open === null || all === null) return;
    this.openAlerts = new Map(open.alerts.map((/** @type {any} */ a) => [a.id, {
      alert_id: a.id, raised_at: a.created_at, severity: a.severity, alert_type: a.alert_type, message: a.message }]));
    this.renderAlerts();
    fillRows($("alert-history"), all.alerts.map((/** @type {any} */ a) => [
      String(a.id), fmt.time(a.created_at), a.alert_type, a.resolved_by ?? "open", fmt.time(a.resolved_at)]));
  }

  /** @param {any} alert */
  alertRaised(alert) {
    if (alert.alert_id === null) {
      // Not stored yet (database down): shown until it comes back with its id.
      this.openAlerts.set(-Date.now(), alert);
    } else {
      for (const [k, a] of this.openAlerts) if (k < 0 && a.raised_at === alert.raised_at) this.openAlerts.delete(k);
      this.openAlerts.set(alert.alert_id, alert);
    }
    this.renderAlerts();
  }

  /** @param {number} id */
  alertResolved(id) {
    this.openAlerts.delete(id);
    this.renderAlerts();
    this.loadAlerts();
  }

  renderAlerts() {
    const rows = [...this.openAlerts.entries()].sort((a, b) => b[0] - a[0]).map(([id, a]) => {
      const action = el("span");
      if (this.session.can_operate && id > 0) {
        const comment = el("input", { placeholder: "comment", "aria-label": `comment for alert ${id}`,
                                      "data-testid": `resolve-comment-${id}` });
        const button = el("button", { type: "button", "data-testid": `resolve-${id}` }, "Resolve");
        button.addEventListener("click", () => this.resolve(id, /** @type {HTMLInputElement} */ (comment).value));
        action.append(comment, button);
      }
      const sev = el("span", { class: `sev-${a.severity}` }, a.severity);
      return [id > 0 ? String(id) : "not stored", fmt.time(a.raised_at), sev, a.alert_type, a.message, action];
    });
    const body = $("alert-rows");
    fillRows(body, rows);
    [...body.children].forEach((tr, i) => tr.setAttribute("data-testid", `alert-row-${rows[i][0]}`));
  }

  /** @param {number} id @param {string} comment */
  async resolve(id, comment) {
    if (this.client === null) return;
    try {
      await this.client.request({ type: "admin_resolve_alert", alert_id: id, comment }, "admin_action_done");
      this.alertResolved(id);
      this.loadAudit();
    } catch (err) {
      $("conn-result").textContent = `resolve failed: ${/** @type {any} */ (err).message} ${/** @type {any} */ (err).action ?? ""}`;
    }
  }

  // ---------------------------------------------------------------- connections, rooms, audit

  /** @param {string} path */
  async get(path) {
    const res = await fetch(path, { headers: this.headers() });
    if (res.status === 401 || res.status === 403) { this.end("denied", "The server no longer accepts this token."); return null; }
    const doc = await res.json();
    if (!res.ok) { $("cluster-error").textContent = `${path}: ${doc.message} ${doc.action}`; return null; }
    return doc;
  }

  async lookup() {
    const q = $("conn-query").value.trim();
    if (!q) return;
    const [byUser, byId] = await Promise.all([
      this.get(`/admin/connections?user=${encodeURIComponent(q)}`),
      this.get(`/admin/connections?connection_id=${encodeURIComponent(q)}`)]);
    if (byUser === null || byId === null) return;
    const conns = [...byUser.connections, ...byId.connections];
    this.lookedUp = conns;
    const rows = conns.map((/** @type {any} */ c) => {
      const action = el("span");
      if (this.session.can_operate) {
        const b = el("button", { type: "button", "data-testid": `disconnect-${c.connection_id}` }, "Disconnect");
        b.addEventListener("click", () => this.disconnect({ connection_id: c.connection_id, user: c.user ?? undefined }));
        action.append(b);
      }
      const states = el("span", { "data-testid": `state-history-${c.connection_id}` },
                        stateHistory(c.state_history, c.state_history_dropped));
      return [c.source, c.connection_id, c.user ?? "anonymous", c.state, states, c.rooms.join(", "),
              c.remote, c.user_agent ?? "–", fmt.time(c.connected_at), `${fmt.duration(c.idle_seconds)} ago`, action];
    });
    fillRows($("conn-rows"), rows);
    $("conn-result").textContent = `${conns.length} connection(s); ${coverage(byUser)}`;
    if (this.session.database) {
      const key = /^[0-9a-f]{8}-[0-9a-f]{4}-/.test(q) ? "user" : "connection_id";
      const [byUserRec, byIdRec] = await Promise.all([
        this.get(`/admin/connection_history?${key}=${encodeURIComponent(q)}`),
        key === "user" ? this.get(`/admin/connection_history?connection_id=${encodeURIComponent(q)}`)
                       : Promise.resolve({ records: [] })]);
      if (byUserRec === null || byIdRec === null) return;
      fillRows($("history-rows"), [...byUserRec.records, ...byIdRec.records].map((/** @type {any} */ r) => [
        r.connection_id, r.user_id ?? "anonymous", String(r.worker), r.ip_address ?? "–",
        fmt.time(r.connected_at), fmt.time(r.last_activity), fmt.time(r.disconnected_at),
        r.close_code === null ? "open" : String(r.close_code), r.close_reason ?? "",
        r.state_history === null ? "–" : stateHistory(r.state_history, 0)]));
    }
  }

  disconnectUser() {
    const q = $("conn-query").value.trim();
    if (q) this.disconnect({ user: q });
  }

  /** @param {{user?: string, connection_id?: string}} target */
  async disconnect(target) {
    if (this.client === null) return;
    const code = Number($("close-code").value);
    const reason = $("close-reason").value;
    try {
      const done = await this.client.request({ type: "admin_disconnect", code, reason, ...target }, "admin_action_done");
      $("conn-result").textContent = `${done.result}: ${done.detail}`;
      document.body.dataset.lastAction = done.result;
    } catch (err) {
      $("conn-result").textContent = `disconnect failed: ${/** @type {any} */ (err).message}`;
    }
    this.loadAudit();
  }

  async loadRooms() {
    const q = $("room-query").value.trim();
    const doc = await this.get(`/admin/rooms?limit=50&q=${encodeURIComponent(q)}`);
    if (doc === null) return;
    const bounds = doc.history_bounds;
    fillRows($("room-rows"), doc.rooms.map((/** @type {any} */ r) => {
      const b = el("button", { type: "button", "data-testid": `presence-${r.room}` }, "Presence");
      b.addEventListener("click", () => this.presence(r.room));
      const rate = el("span", { "data-testid": `rate-${r.room}`, "data-rate": String(r.messages_per_second) },
                      fmt.rate(r.messages_per_second));
      const h = r.history;
      const depth = el("span", { "data-testid": `history-${r.room}`, "data-held": h === null ? "" : String(h.held) },
                       h === null ? (doc.history_error === null ? "none" : "unknown")
                         : `${h.held}${bounds ? ` / ${bounds.history_size}` : ""} msgs, ${h.bytes} B` +
                           (h.first_seq === null ? "" : `, seq ${h.first_seq}..${h.last_seq}`));
      return [r.room, `${r.members} (${byWorker(r.members_by_worker)})`, rate, r.epoch ?? "–",
              r.last_seq === null ? "–" : String(r.last_seq), depth, b];
    }));
    const notes = [coverage(doc), `messages/s over the last ${doc.rate_window} s`];
    if (bounds) notes.push(`history kept: ${bounds.history_size} messages, ${bounds.history_max_bytes} B, ${bounds.history_ttl} s`);
    if (doc.history_error !== null) notes.push(`history depth unknown: ${doc.history_error.message} ${doc.history_error.action}`);
    $("rooms-coverage").textContent = notes.join("; ");
    document.body.dataset.roomLoads = String(Number(document.body.dataset.roomLoads ?? "0") + 1);
  }

  /** @param {string} room */
  async presence(room) {
    const res = await fetch(`/admin/presence?room=${encodeURIComponent(room)}`, { headers: this.headers() });
    const doc = await res.json();
    if (!res.ok) { $("presence").textContent = `${room}: ${doc.message}. ${doc.action}`; return; }
    const who = doc.members.map((/** @type {any} */ m) => m.user ?? `anonymous ${m.connection_id}`).join(", ");
    $("presence").textContent = `${room}: ${doc.count} present${doc.truncated ? " (list truncated)" : ""}: ` +
      `${who || "nobody"} (members by worker: ${byWorker(doc.members_by_worker) || "none"}; ${coverage(doc)})`;
  }

  async loadAudit() {
    if (!this.session.database) { fillRows($("audit-rows"), [["the audit log needs the database"]]); return; }
    const doc = await this.get("/admin/audit?limit=50");
    if (doc === null) return;
    fillRows($("audit-rows"), doc.entries.map((/** @type {any} */ e) => [
      fmt.time(e.created_at), e.admin_user_id, e.action, `${e.resource_type ?? ""} ${e.resource_id ?? ""}`,
      e.status, JSON.stringify(e.details)]));
    document.body.dataset.auditRows = String(doc.entries.length);
  }

  /** @param {any} frame */
  activity(frame) {
    const list = $("activity-list");
    for (const e of frame.entries) {
      list.prepend(el("li", {}, `${fmt.time(e.created_at)} ${e.admin_user_id} ${e.action} ${e.resource_id ?? ""} → ${e.status}`));
    }
    while (list.children.length > 200) list.lastChild.remove();
  }
}

new Console().start();
