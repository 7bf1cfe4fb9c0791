/**
 * Thin, typed helpers for rtserver's domain channels (docs/domain.md):
 * quotes (state, optimistic edits, conflicts, focus), analytics streams,
 * admin monitoring and notifications. Each is re-established after a reconnect.
 * @module
 */

import { RtError } from "./errors.js";

/** A quote subscription: state, then updates newer than that state's version. */
export class QuoteSubscription {
  /**
   * @param {any} client
   * @param {string} quoteId
   * @param {any} handlers
   */
  constructor(client, quoteId, handlers) {
    this.quoteId = quoteId;
    this.room = `quote:${quoteId}`;
    this._client = client;
    this._h = handlers;
    /** @type {Record<string, any>|null} */
    this.quote = null;
    this.version = 0;
    /** @type {Record<string, string>} */
    this.editableFields = {};
    /** Frames that arrived before quote_state (applied after it, by version). @type {any[]} */
    this._early = [];
    /** @type {(q: Record<string, any>) => void} */
    let resolve = () => {};
    /** @type {(e: unknown) => void} */
    let reject = () => {};
    /** Resolves with the quote on the first quote_state. */
    this.ready = new Promise((res, rej) => { resolve = res; reject = rej; });
    this.ready.catch(() => {});
    this._resolve = resolve;
    this._sub = client._addSubscription(this.room, "quote", {
      onRecover: handlers.onRecover,
      onError: handlers.onError,
    }, { onFrame: (/** @type {any} */ f) => this._onFrame(f) });
    this._sub.ready.catch((/** @type {unknown} */ e) => reject(e));
  }

  /** @param {Record<string, any>} frame */
  _onFrame(frame) {
    switch (frame.type) {
      case "quote_state": {
        const reload = this.quote !== null;
        this.quote = frame.quote;
        this.version = frame.version;
        this.editableFields = frame.editable_fields ?? {};
        this._h.onState?.(frame.quote, { version: frame.version, editableFields: this.editableFields, reload });
        const early = this._early;
        this._early = [];
        for (const f of early) this._apply(f);
        this._resolve(frame.quote);
        return;
      }
      case "field_update": case "quote_update":
        if (this.quote === null) this._early.push(frame);
        else this._apply(frame);
        return;
      case "field_focus": this._h.onFocus?.(frame); return;
      case "field_blur": this._h.onBlur?.(frame); return;
      case "calculation_progress": this._h.onProgress?.(frame); return;
      default: return;
    }
  }

  /** @param {Record<string, any>} frame */
  _apply(frame) {
    if (typeof frame.version === "number" && frame.version <= this.version) return;
    this.version = frame.version;
    if (frame.type === "field_update" && this.quote !== null) {
      this.quote.fields = { ...(this.quote.fields ?? {}), [frame.field]: frame.value };
    }
    this._h.onUpdate?.(frame);
  }

  /**
   * Edit a field on the current version. A lost race rejects with RtError
   * code "conflict" (details: current_value, current_version); the local copy
   * then holds the winner's value and version, so a retry merges on top of it.
   * `baseVersion` (default: the current version) is the version the user's
   * change is based on, e.g. the version when they focused the field: an edit
   * made meanwhile by someone else then conflicts instead of being overwritten.
   * @param {string} field
   * @param {unknown} value
   * @param {{baseVersion?: number}} [options]
   */
  async edit(field, value, { baseVersion } = {}) {
    try {
      const ack = await this._client.request({ type: "quote_edit", quote_id: this.quoteId, field, value,
                                               base_version: baseVersion ?? this.version }, "ack");
      if (typeof ack.version === "number" && ack.version > this.version) {
        this.version = ack.version;
        if (this.quote !== null) this.quote.fields = { ...(this.quote.fields ?? {}), [field]: value };
      }
      return ack;
    } catch (error) {
      if (error instanceof RtError && error.code === "conflict" && error.details !== null) {
        const v = error.details.current_version;
        if (typeof v === "number" && v > this.version) {
          this.version = v;
          if (this.quote !== null) {
            this.quote.fields = { ...(this.quote.fields ?? {}), [field]: error.details.current_value };
          }
        }
      }
      throw error;
    }
  }

  /** @param {string} field */
  focus(field) { this._client.send({ type: "field_focus", quote_id: this.quoteId, field }); }

  /** @param {string} field */
  blur(field) { this._client.send({ type: "field_blur", quote_id: this.quoteId, field }); }

  unsubscribe() { return this._sub.unsubscribe(); }
}

/** Quote helpers of one client. */
export class Quotes {
  /** @param {any} client */
  constructor(client) { this._client = client; }

  /**
   * @param {string} quoteId
   * @param {any} [handlers]
   * @returns {QuoteSubscription}
   */
  subscribe(quoteId, handlers = {}) { return new QuoteSubscription(this._client, quoteId, handlers); }
}

/**
 * A server stream (analytics, monitoring) started by one frame and restarted
 * after each reconnect; frames are routed to it by `accept`.
 */
export class Stream {
  /**
   * @param {any} client
   * @param {{start: Record<string, unknown>, startedType: string, stop: Record<string, unknown>,
   *          stoppedType: string, accept: (frame: any) => boolean, onError?: (e: RtError) => void}} spec
   */
  constructor(client, spec) {
    this._client = client;
    this._spec = spec;
    this.started = /** @type {Record<string, any>|null} */ (null);
    this.stopped = false;
    /** @type {(f: any) => void} */
    let resolve = () => {};
    /** @type {(e: unknown) => void} */
    let reject = () => {};
    /** Resolves with the "started" frame of the first start. */
    this.ready = new Promise((res, rej) => { resolve = res; reject = rej; });
    this.ready.catch(() => {});
    this._resolve = resolve;
    this._reject = reject;
    client._streams.add(this);
    if (client.state === "connected") this._restart();
  }

  _restart() {
    this._client.request(this._spec.start, this._spec.startedType).then(
      (/** @type {any} */ frame) => { this.started = frame; this._resolve(frame); },
      (/** @type {RtError} */ error) => {
        if (error.code === "disconnected" || error.code === "client_closed") return; // restarted on reconnect
        this._client._streams.delete(this);
        this._reject(error);
        this._spec.onError?.(error);
        this._client._reportError(error);
      });
  }

  /** @param {any} frame */
  _accept(frame) { return !this.stopped && this._spec.accept(frame); }

  _closed() {
    this.stopped = true;
    this._reject(new RtError({ code: "client_closed", message: "the client closed before the stream started",
                               action: "Required action: start it again on a connected client" }));
  }

  /** Stop the stream (resolves with the server's reply; at once when offline). */
  async stop() {
    this.stopped = true;
    this._client._streams.delete(this);
    if (this._client.state !== "connected") return null;
    return this._client.request(this._spec.stop, this._spec.stoppedType);
  }
}

/** Analytics dashboards: `start(dashboard, filters, handlers)`. */
export class Analytics {
  /** @param {any} client */
  constructor(client) { this._client = client; }

  /**
   * @param {"quotes"|"conversion"|"performance"} dashboard
   * @param {Record<string, unknown>} filters
   * @param {{onUpdate?: (f: any) => void, onEvent?: (f: any) => void, onError?: (e: RtError) => void}} [handlers]
   */
  start(dashboard, filters, handlers = {}) {
    for (const s of this._client._streams) {
      if (s._dashboard === dashboard) {
        throw new RtError({ code: "duplicate_stream", message: `analytics dashboard ${dashboard} is already started on this client`,
                            action: "Required action: stop() the running stream first" });
      }
    }
    const stream = new Stream(this._client, {
      start: { type: "start_analytics", dashboard, filters },
      startedType: "analytics_started",
      stop: { type: "stop_analytics", dashboard },
      stoppedType: "analytics_stopped",
      onError: handlers.onError,
      accept: (f) => {
        if (f.dashboard !== dashboard) return false;
        if (f.type === "analytics_update") { handlers.onUpdate?.(f); return true; }
        if (f.type === "analytics_event") { handlers.onEvent?.(f); return true; }
        if (f.type === "analytics_error") {
          handlers.onError?.(RtError.fromFrame(f));
          return true;
        }
        return false;
      },
    });
    /** @type {any} */ (stream)._dashboard = dashboard;
    return stream;
  }
}

/** Admin monitoring and alerts. */
export class Admin {
  /** @param {any} client */
  constructor(client) { this._client = client; }

  /**
   * @param {{interval: number, onMetrics?: (f: any) => void, onAlert?: (f: any) => void,
   *          onAlertResolved?: (f: any) => void, onError?: (e: RtError) => void}} options
   */
  startMonitoring({ interval, onMetrics, onAlert, onAlertResolved, onError }) {
    return new Stream(this._client, {
      start: { type: "start_monitoring", update_interval: interval },
      startedType: "stream_started",
      stop: { type: "stop_monitoring" },
      stoppedType: "stream_stopped",
      onError,
      accept: (f) => {
        if (f.type === "system_metrics") { onMetrics?.(f); return true; }
        if (f.type === "admin_alert") { onAlert?.(f); return true; }
        if (f.type === "alert_resolved" && f.id === undefined) { onAlertResolved?.(f); return true; }
        return false;
      },
    });
  }

  /**
   * The cluster document (every worker's status, counters and latency histograms, the
   * /admin/cluster document) pushed every admin.refresh_seconds; restarted after each
   * reconnect. A push with `error` (the hub did not answer) carries this worker's view
   * in `worker`.
   * @param {{onStatus?: (f: any) => void, onError?: (e: RtError) => void}} [options]
   */
  startCluster({ onStatus, onError } = {}) {
    return new Stream(this._client, {
      start: { type: "start_cluster" },
      startedType: "cluster_started",
      stop: { type: "stop_cluster" },
      stoppedType: "cluster_stopped",
      onError,
      accept: (f) => {
        if (f.type === "cluster_status") { onStatus?.(f); return true; }
        return false;
      },
    });
  }

  alertsList() { return this._client.request({ type: "alerts_list" }, "alerts"); }

  /** @param {string|number} alertId */
  resolveAlert(alertId) { return this._client.request({ type: "resolve_alert", alert_id: alertId }, "alert_resolved"); }
}

/** Notifications: live arrival (and the pending ones pushed at connect), list, ack. */
export class Notifications {
  /**
   * @param {any} client
   * @param {number} dedupeWindow how many recent notification ids are remembered to drop repeats
   */
  constructor(client, dedupeWindow) {
    this._client = client;
    this._window = dedupeWindow;
    /** @type {Set<unknown>} */
    this._seen = new Set();
    /** @type {Set<(n: any) => void>} */
    this._listeners = new Set();
    this.stopped = false;
    client._streams.add(this);
  }

  /**
   * Call before connect() so that the pending notifications pushed at connect arrive.
   * @param {(n: any) => void} listener
   * @returns {() => void} off()
   */
  onNotification(listener) {
    this._listeners.add(listener);
    return () => { this._listeners.delete(listener); };
  }

  /** @param {{unreadOnly?: boolean, limit?: number, beforeId?: number}} [options] */
  list({ unreadOnly = false, limit = 20, beforeId } = {}) {
    const frame = { type: "notifications_list", unread_only: unreadOnly, limit };
    return this._client.request(beforeId === undefined ? frame : { ...frame, before_id: beforeId }, "notifications");
  }

  /** @param {number|string} notificationId */
  ack(notificationId) {
    return this._client.request({ type: "notification_ack", notification_id: notificationId }, "notification_acked");
  }

  _restart() {}

  /** @param {any} f */
  _accept(f) {
    if (f.type !== "notification") return false;
    if (this._seen.has(f.id)) return true;
    this._seen.add(f.id);
    if (this._seen.size > this._window) this._seen.delete(this._seen.values().next().value);
    for (const l of [...this._listeners]) {
      try { l(f); } catch (error) { this._client._log("error", "notification listener threw", { error: String(error) }); }
    }
    return true;
  }

  _closed() {
    this.stopped = true;
    this._listeners.clear();
  }
}
