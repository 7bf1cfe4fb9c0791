/**
 * RtClient: one WebSocket to rtserver with visible reconnection, resubscription
 * with recovery, token refresh, liveness checks and a bounded offline queue.
 * @module
 */

import { Backoff } from "./backoff.js";
import { closePolicy } from "./close-codes.js";
import { Admin, Analytics, Notifications, Quotes } from "./domain.js";
import { Emitter } from "./emitter.js";
import { RtError } from "./errors.js";
import { PublishQueue } from "./publish-queue.js";
import { Subscription } from "./subscription.js";
import { tokenExpiry } from "./token.js";

/** Defaults of every option (ms); documented in docs/client.md. */
export const DEFAULTS = Object.freeze({
  reconnect: Object.freeze({ minDelay: 500, maxDelay: 20000, stableAfter: 10000,
                             maxAttempts: Infinity }),
  // rtserver's heartbeat.interval (15 s shipped); the welcome frame's
  // heartbeat_interval (seconds) wins when the server sends one.
  heartbeatInterval: 15000,
  heartbeatGrace: 5000,
  // Below rtserver's heartbeat.idle_timeout (60 s shipped).
  pingInterval: 20000,
  requestTimeout: 10000,
  tokenRefreshMargin: 30000,
  offlineQueue: Object.freeze({ maxCount: 100, maxAge: 30000 }),
  // Every publish carries a `key`; one whose ack was lost is retried with it
  // (rtserver applies a key once within bus.idempotency_window).
  idempotentPublish: true,
  // Recent notification ids remembered to drop a repeated delivery.
  notificationDedupe: 1000,
});

const OPEN = 1;
const MAX_TIMER = 2 ** 31 - 1;
// A client-side close code (4000-4999 are application codes) for a connection
// the SDK abandons because no frame arrived in time.
const LIVENESS_CLOSE = 4000;

/**
 * @typedef {"connecting"|"connected"|"disconnected"|"closed"} ClientState
 */

/** @param {unknown} value @param {string} name */
function positive(value, name) {
  if (typeof value !== "number" || !(value > 0)) {
    throw new RangeError(`${name} must be a positive number of ms (got ${String(value)})`);
  }
  return value;
}

let keyCounter = 0;
function newKey() {
  keyCounter = (keyCounter + 1) % Number.MAX_SAFE_INTEGER;
  const rand = globalThis.crypto?.randomUUID?.() ??
    `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
  return `${rand}-${keyCounter}`;
}

export class RtClient {
  /**
   * @param {import("./rtserver-client.js").RtClientOptions} options
   */
  constructor(options) {
    const o = options ?? /** @type {any} */ ({});
    if (typeof o.url !== "string") throw new TypeError("RtClient: options.url (ws://host:port/ws) is required");
    if (typeof o.getToken !== "function") {
      throw new TypeError("RtClient: options.getToken (async () => token) is required");
    }
    const WS = o.WebSocket ?? globalThis.WebSocket;
    if (typeof WS !== "function") {
      throw new TypeError("RtClient: no WebSocket implementation. Required action: pass " +
        "options.WebSocket (for example the `ws` package's WebSocket in Node 20)");
    }
    const rc = { ...DEFAULTS.reconnect, ...(o.reconnect ?? {}) };
    const q = { ...DEFAULTS.offlineQueue, ...(o.offlineQueue ?? {}) };
    this.url = o.url;
    this._getToken = o.getToken;
    this._WebSocket = WS;
    this._logger = o.logger ?? console;
    this._backoff = new Backoff({ minDelay: positive(rc.minDelay, "reconnect.minDelay"),
                                  maxDelay: positive(rc.maxDelay, "reconnect.maxDelay"),
                                  random: o.random ?? Math.random });
    this._stableAfter = positive(rc.stableAfter, "reconnect.stableAfter");
    this._maxAttempts = positive(rc.maxAttempts, "reconnect.maxAttempts");
    this._configuredHeartbeat = positive(o.heartbeatInterval ?? DEFAULTS.heartbeatInterval,
                                         "heartbeatInterval");
    this._heartbeatGrace = positive(o.heartbeatGrace ?? DEFAULTS.heartbeatGrace, "heartbeatGrace");
    this._pingInterval = positive(o.pingInterval ?? DEFAULTS.pingInterval, "pingInterval");
    this._requestTimeout = positive(o.requestTimeout ?? DEFAULTS.requestTimeout, "requestTimeout");
    this._tokenRefreshMargin = positive(o.tokenRefreshMargin ?? DEFAULTS.tokenRefreshMargin,
                                        "tokenRefreshMargin");
    this._notificationDedupe = positive(o.notificationDedupe ?? DEFAULTS.notificationDedupe,
                                        "notificationDedupe");
    /** @type {Notifications|null} */
    this._notifications = null;
    this._idempotentPublish = Boolean(o.idempotentPublish ?? DEFAULTS.idempotentPublish);
    this._queue = new PublishQueue({ maxCount: positive(q.maxCount, "offlineQueue.maxCount"),
                                     maxAge: positive(q.maxAge, "offlineQueue.maxAge"),
                                     now: () => Date.now() });
    this._emitter = new Emitter();
    /** @type {ClientState} */
    this.state = "disconnected";
    /** @type {Map<string, Subscription>} */
    this._subs = new Map();
    /** Domain streams re-established after every reconnect. @type {Set<any>} */
    this._streams = new Set();
    /** @type {Map<string|number, any>} */
    this._pending = new Map();
    /** The server sends `epoch` in `subscribed` (it speaks the recovery protocol). */
    this._serverEpochs = false;
    this._nextId = 1;
    /** @type {any} */
    this._ws = null;
    this._token = /** @type {string|null} */ (null);
    this._tokenUsed = /** @type {string|null} */ (null);
    this._authRetried = false;
    this._authError = /** @type {RtError|null} */ (null);
    this._closing = false;
    this._connectedAt = 0;
    this._lastFrameAt = 0;
    this._lastSentAt = 0;
    this._heartbeatInterval = this._configuredHeartbeat;
    /** @type {ReturnType<typeof setTimeout>|null} */
    this._livenessTimer = null;
    /** @type {ReturnType<typeof setTimeout>|null} */
    this._reconnectTimer = null;
    /** @type {ReturnType<typeof setTimeout>|null} */
    this._refreshTimer = null;
    /** @type {(() => void)|null} */
    this._envListener = null;
    /** @type {{resolve: () => void, reject: (e: RtError) => void}[]} */
    this._connectWaiters = [];
    /** Connection facts for UIs (connection panel). */
    this.info = { attempt: 0, lastCloseCode: /** @type {number|null} */ (null),
                  lastCloseReason: "", connectionId: /** @type {string|null} */ (null),
                  worker: /** @type {number|null} */ (null), user: /** @type {string|null} */ (null),
                  permissions: /** @type {string[]} */ ([]), reconnects: 0,
                  duplicatesDropped: 0 };
  }

  // ------------------------------------------------------------------ public API

  /**
   * Listen to "state", "reconnect", "error", "recover", "frame" (every server frame).
   * @param {string} event
   * @param {(payload: any) => void} listener
   * @returns {() => void} off()
   */
  on(event, listener) {
    return this._emitter.on(event, listener);
  }

  /** Quote helpers (docs/domain.md, quotes). */
  get quotes() { return new Quotes(this); }

  /** Analytics dashboard streams. */
  get analytics() { return new Analytics(this); }

  /** Admin monitoring and alerts. */
  get admin() { return new Admin(this); }

  /** Notifications (one helper per client; register listeners before connect()). */
  get notifications() {
    if (this._notifications === null || this._notifications.stopped) {
      this._notifications = new Notifications(this, this._notificationDedupe);
    }
    return this._notifications;
  }

  /** @param {string} [event] */
  listenerCount(event) {
    return this._emitter.listenerCount(event);
  }

  /**
   * Open the connection (again, after close()). Resolves once authenticated;
   * rejects if the client closes first (terminal close code, getToken failure, close()).
   * @returns {Promise<void>}
   */
  connect() {
    if (this.state === "connected") return Promise.resolve();
    const done = new Promise((resolve, reject) => {
      this._connectWaiters.push({ resolve: () => resolve(undefined), reject });
    });
    if (this.state === "closed") {
      this._closing = false;
      this._authRetried = false;
      this._backoff.reset();
      void this._open();
    } else if (this.state === "disconnected" && this._reconnectTimer === null && this._ws === null) {
      void this._open();
    }
    return /** @type {Promise<void>} */ (done);
  }

  /**
   * Subscribe to a room. One subscription per room: a second one throws.
   * @param {string} room
   * @param {{onMessage?: (data: unknown, meta: any) => void, onRecover?: (info: any) => void,
   *          onError?: (error: RtError) => void}} [handlers]
   * @returns {Subscription}
   */
  subscribe(room, handlers = {}) {
    return this._addSubscription(room, "room", handlers);
  }

  /** @param {string} room @returns {Subscription|undefined} */
  getSubscription(room) {
    return this._subs.get(room);
  }

  /** Every subscription, by room. */
  subscriptions() {
    return [...this._subs.values()];
  }

  /**
   * Publish `data` to `room`; resolves with `{room, seq}` on the server's ack.
   * Offline, the publish waits in the bounded queue.
   * @param {string} room
   * @param {unknown} data
   * @returns {Promise<{room: string, seq: number}>}
   */
  publish(room, data) {
    return new Promise((resolve, reject) => {
      if (this.state === "closed") {
        reject(this._closedError(`publish to ${room}`));
        return;
      }
      const entry = { room, data, key: this._idempotentPublish ? newKey() : undefined,
                      enqueuedAt: Date.now(), resolve, reject };
      if (this.state === "connected") this._sendPublish(entry);
      else this._queue.push(entry);
    });
  }

  /**
   * Send a request frame (a `type` from docs/protocol.md or docs/domain.md) and
   * resolve with the reply of `replyType` (same `id`); rejects with the server's
   * error as an RtError, on timeout, or when the connection is lost first.
   * @param {Record<string, unknown>} frame
   * @param {string} replyType
   * @returns {Promise<Record<string, any>>}
   */
  request(frame, replyType) {
    return new Promise((resolve, reject) => {
      if (this.state !== "connected") {
        reject(new RtError({
          code: "not_connected",
          message: `cannot send ${String(frame.type)}: the client is ${this.state}`,
          action: "Required action: wait for state \"connected\" (client.on(\"state\")) and retry",
        }));
        return;
      }
      const id = this._nextId++;
      this._track(id, { replyType, resolve, reject, what: String(frame.type) });
      this._send({ ...frame, id });
    });
  }

  /** Send a frame that gets no reply (for example `field_focus`). */
  send(/** @type {Record<string, unknown>} */ frame) {
    if (this.state !== "connected") {
      throw new RtError({ code: "not_connected",
                          message: `cannot send ${String(frame.type)}: the client is ${this.state}`,
                          action: "Required action: wait for state \"connected\" and retry" });
    }
    this._send(frame);
  }

  /**
   * Close for good: every timer, listener, socket and pending promise ends.
   * Pending publishes and requests reject with `client_closed`.
   */
  close() {
    if (this.state === "closed" && this._ws === null) {
      this._emitter.removeAll();
      return;
    }
    this._closing = true;
    this._clearTimer("_reconnectTimer");
    this._clearTimer("_refreshTimer");
    this._clearTimer("_livenessTimer");
    const ws = this._ws;
    this._detach();
    if (ws !== null) this._closeSocket(ws, 1000, "client closed");
    this._finishClosed(1000, "client closed", null);
    this._emitter.removeAll();
  }

  // ------------------------------------------------------------------ internals

  /** @param {string} what */
  _closedError(what) {
    return new RtError({ code: "client_closed", message: `${what}: the client is closed`,
                         action: "Required action: create a client (or call connect()) first" });
  }

  /** @param {ClientState} state @param {number|null} [code] @param {string} [reason] */
  _setState(state, code = null, reason = "") {
    if (this.state === state) return;
    this.state = state;
    this._emit("state", { state, code, reason });
  }

  /** @param {string} event @param {unknown} payload */
  _emit(event, payload) {
    this._emitter.emit(event, payload, (error, ev) => {
      this._log("error", "listener threw", { event: ev, error: String(error) });
    });
  }

  /** @param {"debug"|"info"|"warn"|"error"} level @param {string} msg @param {object} fields */
  _log(level, msg, fields) {
    const fn = this._logger[level] ?? this._logger.log;
    if (typeof fn === "function") fn.call(this._logger, `rtserver-client: ${msg}`, fields);
  }

  /** @param {RtError} error */
  _reportError(error) {
    this._log("error", error.message, { code: error.code, action: error.action });
    this._emit("error", error);
  }

  /**
   * Browsers: check liveness at once when the tab becomes visible or the
   * network comes back (timers of background tabs are throttled).
   */
  _attachEnvironment() {
    if (this._envListener !== null || typeof globalThis.addEventListener !== "function") return;
    this._envListener = () => {
      if (typeof document !== "undefined" && document.visibilityState === "hidden") return;
      if (this._ws !== null) this._checkLiveness();
    };
    globalThis.addEventListener("online", this._envListener);
    if (typeof document !== "undefined") document.addEventListener("visibilitychange", this._envListener);
  }

  _detachEnvironment() {
    if (this._envListener === null) return;
    globalThis.removeEventListener("online", this._envListener);
    if (typeof document !== "undefined") document.removeEventListener("visibilitychange", this._envListener);
    this._envListener = null;
  }

  async _open() {
    this._attachEnvironment();
    this._setState("connecting");
    let token;
    try {
      token = await this._currentToken();
    } catch (error) {
      this._terminal(null, "getToken failed", new RtError({
        code: "token_unavailable", message: `getToken() rejected: ${String(error)}`,
        action: "Required action: make getToken() return a valid token, then call connect()",
        cause: error }));
      return;
    }
    if (this._closing || this.state !== "connecting") return;
    this._tokenUsed = token;
    this._authError = null;
    let ws;
    try {
      ws = new this._WebSocket(this.url);
    } catch (error) {
      this._terminal(null, "invalid url", new RtError({
        code: "invalid_url", message: `cannot open ${this.url}: ${String(error)}`,
        action: "Required action: pass a ws:// or wss:// url", cause: error }));
      return;
    }
    this._ws = ws;
    this._lastFrameAt = Date.now();
    this._lastSentAt = Date.now();
    this._heartbeatInterval = this._configuredHeartbeat;
    ws.onopen = () => {};
    ws.onerror = () => {}; // the close event that follows carries the code
    ws.onmessage = (/** @type {{data: unknown}} */ ev) => this._onFrame(ws, ev.data);
    ws.onclose = (/** @type {{code: number, reason: string}} */ ev) => {
      if (this._ws === ws) this._closed(ev.code, String(ev.reason ?? ""));
    };
    this._scheduleLiveness();
  }

  async _currentToken() {
    if (this._token !== null) return this._token;
    const token = await this._getToken();
    if (typeof token !== "string" || token.length === 0) {
      throw new TypeError(`getToken() resolved to ${typeof token}, not a token string`);
    }
    this._token = token;
    return token;
  }

  /** @param {any} ws @param {unknown} raw */
  _onFrame(ws, raw) {
    if (this._ws !== ws) return;
    this._lastFrameAt = Date.now();
    let frame;
    try {
      frame = JSON.parse(typeof raw === "string" ? raw : String(raw));
    } catch (error) {
      this._reportError(new RtError({ code: "invalid_frame",
                                      message: `the server sent a frame that is not JSON: ${String(error)}`,
                                      action: "Required action: report this server bug" }));
      return;
    }
    this._emit("frame", frame);
    switch (frame.type) {
      case "connection": this._onWelcome(frame); return;
      case "authenticated": this._onAuthenticated(frame); return;
      case "heartbeat": case "pong": return;
      case "error": this._onErrorFrame(frame); return;
      case "subscribed": this._onSubscribed(frame); return;
      case "ack": if (this._settle(frame)) return; break;
      case "gap": { const sub = this._subs.get(frame.room); if (sub !== undefined) sub._gap(frame); return; }
      default: break;
    }
    if (frame.id !== undefined && frame.type !== "subscribed") this._settle(frame);
    this._route(frame);
  }

  /** @param {Record<string, any>} frame */
  _onWelcome(frame) {
    this.info.connectionId = frame.connection_id ?? null;
    this.info.worker = frame.worker ?? null;
    if (typeof frame.heartbeat_interval === "number" && frame.heartbeat_interval > 0) {
      this._heartbeatInterval = frame.heartbeat_interval * 1000;
    }
    this._send({ type: "auth", token: this._tokenUsed });
  }

  /** @param {Record<string, any>} frame */
  _onAuthenticated(frame) {
    const attempts = this._backoff.attempt;
    this._authRetried = false;
    this._connectedAt = Date.now();
    this.info.user = frame.user ?? null;
    this.info.permissions = frame.permissions ?? [];
    this._setState("connected");
    if (attempts > 0) this._log("info", "reconnected", { attempts, connection_id: this.info.connectionId });
    this._resubscribe();
    for (const stream of this._streams) stream._restart();
    for (const entry of this._queue.drain()) this._sendPublish(entry);
    this._scheduleRefresh();
    const waiters = this._connectWaiters;
    this._connectWaiters = [];
    for (const w of waiters) w.resolve();
  }

  /** @param {Record<string, any>} frame */
  _onErrorFrame(frame) {
    const error = RtError.fromFrame(frame);
    if (frame.id !== undefined && this._settle(frame)) return;
    if (["token_missing", "token_invalid", "token_expired", "auth_timeout"].includes(error.code)) {
      this._authError = error; // close 4001 follows
      this._log("warn", `authentication error: ${error.message}`, { code: error.code });
      return;
    }
    // Errors for a subscribe (id of a subscribe frame) arrive through _settle.
    this._reportError(error);
  }

  /** @param {Record<string, any>} frame */
  _onSubscribed(frame) {
    if (typeof frame.epoch === "string") this._serverEpochs = true;
    const sub = this._subs.get(frame.room);
    if (frame.id !== undefined) {
      const p = this._pending.get(frame.id);
      if (p !== undefined && p.replyType === "subscribed" && p.rooms.has(frame.room)) {
        p.rooms.delete(frame.room);
        if (p.rooms.size === 0) this._untrack(frame.id);
      }
    }
    if (sub !== undefined && sub.state !== "closed") sub._subscribed(frame);
  }

  /**
   * Resolve or reject the pending request of `frame.id`.
   * @param {Record<string, any>} frame
   * @returns {boolean} whether a pending request took it
   */
  _settle(frame) {
    const p = this._pending.get(frame.id);
    if (p === undefined) return false;
    if (frame.type === "error") {
      this._untrack(frame.id);
      const error = RtError.fromFrame(frame);
      if (p.publish !== undefined) p.publish.reject(error);
      else if (p.rooms !== undefined) this._failRooms(p, frame, error);
      else p.reject(error);
      return true;
    }
    if (frame.type !== p.replyType) return false;
    this._untrack(frame.id);
    if (p.publish !== undefined) p.publish.resolve({ room: frame.room, seq: frame.seq });
    else p.resolve(frame);
    return true;
  }

  /** @param {any} p @param {Record<string, any>} frame @param {RtError} error */
  _failRooms(p, frame, error) {
    const rooms = typeof frame.room === "string" && p.rooms.has(frame.room) ? [frame.room] : [...p.rooms];
    for (const room of rooms) {
      const sub = this._subs.get(room);
      if (sub === undefined) continue;
      this._subs.delete(room);
      this._log("error", `subscribe to ${room} failed: ${error.message}`, { code: error.code, action: error.action });
      sub._fail(error);
      this._emit("error", error);
    }
  }

  /** @param {Record<string, any>} frame */
  _route(frame) {
    for (const stream of this._streams) {
      if (stream._accept(frame)) return;
    }
    const room = frame.room ?? (typeof frame.quote_id === "string" ? `quote:${frame.quote_id}` : undefined);
    if (room === undefined) return;
    const sub = this._subs.get(room);
    if (sub === undefined || sub.state === "closed") return;
    if (typeof frame.seq === "number") {
      if (!sub._deliver(frame)) this.info.duplicatesDropped += 1;
    } else {
      sub._dispatch(frame);
    }
  }

  /** @param {Subscription} sub @param {any} info */
  _reportRecover(sub, info) {
    const level = info.recovered ? "info" : "warn";
    this._log(level, `${sub.room}: ${info.recovered ? "recovered" : "not recovered"}`, info);
    this._emit("recover", { room: sub.room, ...info });
  }

  /** @param {string} room @param {"room"|"quote"} kind @param {any} handlers @param {any} [extra] */
  _addSubscription(room, kind, handlers, extra = {}) {
    if (typeof room !== "string" || room.length === 0) throw new TypeError("room must be a non-empty string");
    if (this._subs.has(room)) {
      throw new RtError({ code: "duplicate_subscription",
                          message: `this client is already subscribed to ${room}`,
                          action: "Required action: use the existing subscription " +
                            "(client.getSubscription(room)) or unsubscribe it first" });
    }
    if (this.state === "closed") throw this._closedError(`subscribe to ${room}`);
    const sub = new Subscription({ room, kind, client: this, ...handlers, ...extra });
    this._subs.set(room, sub);
    if (this.state === "connected") this._sendSubscribes([sub]);
    return sub;
  }

  /** @param {Subscription} sub */
  async _unsubscribe(sub) {
    if (this._subs.get(sub.room) !== sub) return;
    this._subs.delete(sub.room);
    sub.state = "closed";
    if (this.state !== "connected") return; // the next connection does not subscribe it
    try {
      await this.request({ type: "unsubscribe", room: sub.room }, "unsubscribed");
    } catch (error) {
      // A subscribe still in flight that the server refused: there is nothing to leave.
      if (!(error instanceof RtError && error.code === "not_subscribed")) throw error;
    }
  }

  _resubscribe() {
    const subs = [...this._subs.values()].filter((s) => s.state !== "closed");
    for (const sub of subs) if (sub.state === "subscribed") sub.state = "resubscribing";
    this._sendSubscribes(subs);
  }

  /**
   * Room subscriptions in one frame (`rooms: [{room, since?}]`) when the server
   * speaks the recovery protocol, one pipelined frame per room otherwise;
   * quote subscriptions use quote_subscribe (fresh state).
   * @param {Subscription[]} subs
   */
  _sendSubscribes(subs) {
    const rooms = subs.filter((s) => s.kind === "room");
    const batch = rooms.length > 1 && (this._serverEpochs || rooms.every((s) => s._since() !== undefined));
    if (batch) {
      const id = this._nextId++;
      this._track(id, { replyType: "subscribed", rooms: new Set(rooms.map((s) => s.room)),
                        what: "subscribe" });
      this._send({ type: "subscribe", id, rooms: rooms.map((s) => {
        const since = s._since();
        return since === undefined ? { room: s.room } : { room: s.room, since };
      }) });
    } else {
      for (const sub of rooms) {
        const id = this._nextId++;
        this._track(id, { replyType: "subscribed", rooms: new Set([sub.room]), what: "subscribe" });
        const since = sub._since();
        this._send(since === undefined ? { type: "subscribe", room: sub.room, id }
          : { type: "subscribe", room: sub.room, since, id });
      }
    }
    for (const sub of subs.filter((s) => s.kind === "quote")) {
      const id = this._nextId++;
      this._track(id, { replyType: "subscribed", rooms: new Set([sub.room]), what: "quote_subscribe" });
      this._send({ type: "quote_subscribe", quote_id: sub.room.slice("quote:".length), id });
    }
  }

  /** @param {any} entry */
  _sendPublish(entry) {
    const id = this._nextId++;
    this._track(id, { replyType: "ack", publish: entry, what: `publish to ${entry.room}` });
    const frame = { type: "publish", room: entry.room, data: entry.data, id };
    this._send(entry.key === undefined ? frame : { ...frame, key: entry.key });
  }

  /** @param {string|number} id @param {any} p */
  _track(id, p) {
    p.timer = setTimeout(() => {
      if (this._pending.get(id) !== p) return;
      this._untrack(id);
      const error = new RtError({
        code: "request_timeout",
        message: `no reply to ${p.what} within ${this._requestTimeout} ms`,
        action: "Required action: check the connection and the server's health; raise " +
          "requestTimeout if the server is just slow" });
      if (p.publish !== undefined) p.publish.reject(error);
      else if (p.rooms !== undefined) this._failRooms(p, {}, error);
      else p.reject(error);
    }, this._requestTimeout);
    this._pending.set(id, p);
  }

  /** @param {string|number} id */
  _untrack(id) {
    const p = this._pending.get(id);
    if (p === undefined) return;
    clearTimeout(p.timer);
    this._pending.delete(id);
  }

  /** @param {Record<string, unknown>} frame */
  _send(frame) {
    const ws = this._ws;
    if (ws === null || ws.readyState !== OPEN) return;
    ws.send(JSON.stringify(frame));
    this._lastSentAt = Date.now();
  }

  _scheduleLiveness() {
    this._clearTimer("_livenessTimer");
    const every = Math.min(1000, this._heartbeatInterval / 4, this._pingInterval / 2);
    this._livenessTimer = setTimeout(() => {
      this._livenessTimer = null;
      this._checkLiveness();
    }, every);
  }

  /** Timestamps, not timer counts: a throttled timer still sees the real silence. */
  _checkLiveness() {
    const ws = this._ws;
    if (ws === null) return;
    const now = Date.now();
    const limit = this._heartbeatInterval + this._heartbeatGrace;
    const silent = now - this._lastFrameAt;
    if (silent > limit) {
      const reason = `no frame from the server for ${silent} ms (heartbeat ${this._heartbeatInterval} ms + grace ${this._heartbeatGrace} ms)`;
      this._log("warn", "connection dead", { silent_ms: silent, limit_ms: limit });
      this._detach();
      this._closeSocket(ws, LIVENESS_CLOSE, "liveness timeout");
      this._closed(1006, reason);
      return;
    }
    if (this.state === "connected" && now - this._lastSentAt >= this._pingInterval) {
      this._send({ type: "ping" });
    }
    this._scheduleLiveness();
  }

  _scheduleRefresh() {
    this._clearTimer("_refreshTimer");
    const token = this._tokenUsed;
    if (token === null) return;
    const exp = tokenExpiry(token);
    if (exp === null) {
      this._log("warn", "token has no readable exp: it is refreshed only when the server rejects it", {});
      return;
    }
    const wait = Math.min(MAX_TIMER, Math.max(0, exp - this._tokenRefreshMargin - Date.now()));
    this._refreshTimer = setTimeout(() => {
      this._refreshTimer = null;
      void this._refreshToken("expiry");
    }, wait);
  }

  /**
   * Fetch the next token (before expiry, or after the server refused one).
   * The server does not re-authenticate a live connection: the new token is
   * used by the next connection (which follows the server's token_expired close).
   * @param {string} why
   * @returns {Promise<boolean>}
   */
  async _refreshToken(why) {
    try {
      const token = await this._getToken();
      if (typeof token !== "string" || token.length === 0) {
        throw new TypeError(`getToken() resolved to ${typeof token}, not a token string`);
      }
      this._token = token;
      this._log("info", "token refreshed", { why });
      return true;
    } catch (error) {
      const rtError = new RtError({ code: "token_refresh_failed",
                                    message: `getToken() rejected (${why}): ${String(error)}`,
                                    action: "Required action: make getToken() return a valid token",
                                    cause: error });
      this._reportError(rtError);
      return false;
    }
  }

  /** @param {number} code @param {string} reason */
  _closed(code, reason) {
    this._onClose(code, reason).catch((error) => {
      this._terminal(code, reason, new RtError({
        code: "internal_error", message: `rtserver-client failed handling close ${code}: ${String(error)}`,
        action: "Required action: report this client bug; call connect() to start again", cause: error }));
    });
  }

  /** @param {number} code @param {string} reason */
  async _onClose(code, reason) {
    const ws = this._ws;
    if (ws !== null) this._detach();
    const wasConnected = this.state === "connected";
    const stable = wasConnected && Date.now() - this._connectedAt >= this._stableAfter;
    this.info.lastCloseCode = code;
    this.info.lastCloseReason = reason;
    this._failInFlight(code, reason);
    if (this._closing) return;
    const { policy, listed } = closePolicy(code);
    if (!listed) this._log("warn", `close code ${code} is not in the close-code table: reconnecting with backoff`, { code, reason });
    if (policy === "never") {
      this._terminal(code, reason, new RtError({
        code: "connection_closed", closeCode: code,
        message: `the server closed the connection with ${code} (${reason || "no reason"}); not reconnecting`,
        action: code === 1008 || code === 1009 ? "Required action: fix the client (see the error frames before the close), then call connect()"
          : "Required action: call connect() when the application wants to connect again" }));
      return;
    }
    if (stable) this._backoff.reset();
    this._setState("disconnected", code, reason);
    if (policy === "token") {
      const authError = this._authError;
      if (this._authRetried) {
        this._terminal(code, reason, new RtError({
          code: authError?.code ?? "authentication_failed", closeCode: code,
          message: `authentication failed again with a fresh token: ${authError?.message ?? reason}`,
          action: authError?.action ?? "Required action: make getToken() return a token the server accepts" }));
        return;
      }
      this._authRetried = true;
      // A token fetched before expiry and not yet used counts as the fresh one.
      const fresh = this._token !== null && this._token !== this._tokenUsed;
      this._token = fresh ? this._token : null;
      if (!fresh && !(await this._refreshToken(`server closed ${code}`))) {
        this._terminal(code, reason, new RtError({
          code: "token_unavailable", closeCode: code,
          message: "the server refused the token and getToken() failed",
          action: "Required action: make getToken() return a valid token, then call connect()" }));
        return;
      }
      if (this._closing) return;
    }
    if (this._backoff.attempt >= this._maxAttempts) {
      this._terminal(code, reason, new RtError({
        code: "reconnect_exhausted", closeCode: code,
        message: `gave up after ${this._backoff.attempt} reconnect attempts (last close ${code} ${reason})`,
        action: "Required action: check the server, then call connect()" }));
      return;
    }
    const delay = this._backoff.next();
    const attempt = this._backoff.attempt;
    this.info.attempt = attempt;
    this.info.reconnects += 1;
    this._log("warn", `reconnecting in ${delay} ms (attempt ${attempt})`, { attempt, delay, code, reason });
    this._emit("reconnect", { attempt, delay, code, reason });
    this._reconnectTimer = setTimeout(() => {
      this._reconnectTimer = null;
      if (!this._closing) void this._open();
    }, delay);
  }

  /**
   * Requests in flight when the connection is lost: publishes are retried with
   * their idempotency key (idempotentPublish) or rejected with `ack_lost`;
   * subscribes are re-sent on the next connection; other requests reject.
   * @param {number} code @param {string} reason
   */
  _failInFlight(code, reason) {
    const retry = [];
    for (const [id, p] of [...this._pending]) {
      this._untrack(id);
      if (p.rooms !== undefined) continue;
      if (p.publish !== undefined && p.publish.key !== undefined && !this._closing) {
        retry.push(p.publish);
        continue;
      }
      const error = this._closing ? this._closedError(p.what) : new RtError({
        code: p.publish !== undefined ? "ack_lost" : "disconnected", closeCode: code,
        message: p.publish !== undefined
          ? `the connection closed (${code} ${reason}) before the ack of ${p.what}: it may or may not have been published`
          : `the connection closed (${code} ${reason}) before the reply to ${p.what}`,
        action: p.publish !== undefined
          ? "Required action: check the room (its seq) before publishing again, or enable idempotentPublish on a server with publish keys"
          : "Required action: send it again once the client is connected" });
      if (p.publish !== undefined) p.publish.reject(error);
      else p.reject(error);
    }
    if (retry.length > 0) this._queue.requeue(retry);
  }

  /** @param {number|null} code @param {string} reason @param {RtError|null} error */
  _terminal(code, reason, error) {
    this._clearTimer("_refreshTimer");
    this._clearTimer("_livenessTimer");
    this._clearTimer("_reconnectTimer");
    const ws = this._ws;
    if (ws !== null) {
      this._detach();
      this._closeSocket(ws, 1000, "client stopped");
    }
    this._finishClosed(code, reason, error);
  }

  /** @param {number|null} code @param {string} reason @param {RtError|null} error */
  _finishClosed(code, reason, error) {
    const closedError = error ?? this._closedError("connect");
    this._failInFlight(code ?? 1000, reason);
    this._queue.rejectAll(error ?? this._closedError("queued publish"));
    this._token = null;
    for (const sub of this._subs.values()) sub._fail(closedError, error !== null);
    this._subs.clear();
    for (const stream of this._streams) stream._closed();
    this._streams.clear();
    this._detachEnvironment();
    this.state = "closed";
    this._emit("state", { state: "closed", code, reason });
    if (error !== null) this._reportError(error);
    const waiters = this._connectWaiters;
    this._connectWaiters = [];
    for (const w of waiters) w.reject(closedError);
  }

  _detach() {
    const ws = this._ws;
    this._ws = null;
    this._clearTimer("_livenessTimer");
    if (ws === null) return;
    ws.onopen = null;
    ws.onmessage = null;
    ws.onclose = null;
    ws.onerror = () => {}; // a socket closed while connecting still reports an error
  }

  /** @param {any} ws @param {number} code @param {string} reason */
  _closeSocket(ws, code, reason) {
    try {
      ws.close(code, reason);
    } catch (error) {
      this._log("debug", "closing the socket threw", { error: String(error) });
    }
  }

  /** @param {"_livenessTimer"|"_reconnectTimer"|"_refreshTimer"} name */
  _clearTimer(name) {
    const t = this[name];
    if (t !== null) {
      clearTimeout(t);
      this[name] = null;
    }
  }
}
