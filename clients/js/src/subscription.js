/**
 * One room subscription: its stream position, duplicate filtering and recovery report.
 * @module
 */

/**
 * @typedef {object} MessageMeta
 * @property {string} room
 * @property {number} seq
 * @property {string|null} from
 * @property {string} type  the frame type ("message", "field_update", ...)
 * @property {Record<string, unknown>} frame  the whole frame
 */

/**
 * @typedef {object} RecoverInfo
 * @property {boolean} recovered
 * @property {number} replayed
 * @property {string|null} reason
 * @property {string|null} action
 * @property {number|null} missed  messages known to be missed (when the server told the position)
 */

export class Subscription {
  /**
   * @param {{room: string, kind: "room"|"quote", client: any,
   *          onMessage?: (data: unknown, meta: MessageMeta) => void,
   *          onRecover?: (info: RecoverInfo) => void,
   *          onError?: (error: import("./errors.js").RtError) => void,
   *          onFrame?: (frame: Record<string, any>) => void}} init
   */
  constructor({ room, kind, client, onMessage, onRecover, onError, onFrame }) {
    this.room = room;
    this.kind = kind;
    this._client = client;
    this._onMessage = onMessage ?? null;
    this._onRecover = onRecover ?? null;
    this._onError = onError ?? null;
    this._onFrame = onFrame ?? null;
    /** "pending" until the first `subscribed`, then "subscribed"; "resubscribing" after a reconnect; "closed" at the end. */
    this.state = "pending";
    /** @type {string|null} the stream's epoch (servers with recovery) */
    this.epoch = null;
    /** @type {number|null} the last seq delivered (or the subscribe position) */
    this.seq = null;
    /** Duplicates dropped by seq. */
    this.duplicatesDropped = 0;
    /** @type {(value: Subscription) => void} */
    let resolveReady = () => {};
    /** @type {(error: unknown) => void} */
    let rejectReady = () => {};
    /** Resolves on the first `subscribed`; rejects on the server's error. */
    this.ready = new Promise((resolve, reject) => {
      resolveReady = resolve;
      rejectReady = reject;
    });
    // A rejection nobody awaits must not crash Node: the error is also reported
    // through onError / the client's "error" event.
    this.ready.catch(() => {});
    this._resolveReady = resolveReady;
    this._rejectReady = rejectReady;
  }

  /** Leave the room (resolves when the server confirmed, or at once when offline). */
  unsubscribe() {
    return this._client._unsubscribe(this);
  }

  /** The position to resume from, or undefined when the server gave no epoch. */
  _since() {
    return this.epoch !== null && this.seq !== null ? { epoch: this.epoch, seq: this.seq } : undefined;
  }

  /**
   * The server's `subscribed` for this room.
   * @param {Record<string, any>} frame
   */
  _subscribed(frame) {
    const first = this.state === "pending";
    const previous = this.seq;
    const previousEpoch = this.epoch;
    this.state = "subscribed";
    if (typeof frame.epoch === "string") this.epoch = frame.epoch;
    if (first) {
      this.seq = frame.seq;
      this._resolveReady(this);
      return;
    }
    /** @type {RecoverInfo} */
    let info;
    if (frame.recovered === true) {
      info = { recovered: true, replayed: frame.replayed ?? 0, reason: null, action: null, missed: 0 };
      // The replayed messages follow with seq > this.seq: keep the position.
    } else if (frame.recovered === false) {
      info = { recovered: false, replayed: 0, reason: frame.reason ?? "unknown",
               action: frame.action ?? null, missed: null };
      this.seq = frame.seq;
    } else if (previous === null) {
      info = { recovered: false, replayed: 0, reason: "no_position", action: null, missed: null };
      this.seq = frame.seq;
    } else if (previousEpoch !== null && this.epoch !== previousEpoch) {
      info = { recovered: false, replayed: 0, reason: "epoch_changed",
               action: "Required action: reload this room's state", missed: null };
      this.seq = frame.seq;
    } else if (frame.seq === previous) {
      // A server without replay: nothing was published while we were away.
      info = { recovered: true, replayed: 0, reason: null, action: null, missed: 0 };
    } else if (frame.seq > previous) {
      info = { recovered: false, replayed: 0, reason: "recovery_unsupported",
               action: "Required action: reload this room's state (the server keeps no history)",
               missed: frame.seq - previous };
      this.seq = frame.seq;
    } else {
      // The seq went backwards: a new seq lineage (the room's state was lost).
      info = { recovered: false, replayed: 0, reason: "epoch_changed",
               action: "Required action: reload this room's state", missed: null };
      this.seq = frame.seq;
    }
    this._client._reportRecover(this, info);
    if (this._onRecover !== null) this._onRecover(info);
  }

  /**
   * A frame of this room carrying `seq`: delivered once, in order.
   * @param {Record<string, any>} frame
   * @returns {boolean} false when dropped as a duplicate
   */
  _deliver(frame) {
    const seq = frame.seq;
    if (this.seq !== null && seq <= this.seq) {
      this.duplicatesDropped += 1;
      return false;
    }
    if (this.seq !== null && seq > this.seq + 1) {
      const info = { recovered: false, replayed: 0, reason: "gap",
                     action: "Required action: reload this room's state",
                     missed: seq - this.seq - 1 };
      this._client._reportRecover(this, info);
      if (this._onRecover !== null) this._onRecover(info);
    }
    this.seq = seq;
    this._dispatch(frame);
    return true;
  }

  /**
   * A `gap` frame: messages `from_seq..to_seq` will never arrive; the stream
   * goes on from `to_seq + 1`.
   * @param {Record<string, any>} frame
   */
  _gap(frame) {
    const from = frame.from_seq;
    const to = frame.to_seq;
    const missed = typeof from === "number" && typeof to === "number" ? to - from + 1 : null;
    const info = { recovered: false, replayed: 0, reason: frame.reason ?? "gap",
                   action: frame.action ?? "Required action: reload this room's state", missed };
    if (typeof frame.epoch === "string") this.epoch = frame.epoch;
    if (typeof to === "number" && (this.seq === null || to > this.seq)) this.seq = to;
    this._client._reportRecover(this, info);
    if (this._onRecover !== null) this._onRecover(info);
  }

  /** @param {Record<string, any>} frame */
  _dispatch(frame) {
    if (this._onFrame !== null) this._onFrame(frame);
    if (this._onMessage !== null) {
      const data = frame.type === "message" ? frame.data : frame;
      this._onMessage(data, { room: this.room, seq: frame.seq, from: frame.from ?? frame.user ?? null,
                              type: frame.type, frame });
    }
  }

  /**
   * @param {import("./errors.js").RtError} error
   * @param {boolean} [notify] call onError (false when the application closed the client)
   */
  _fail(error, notify = true) {
    const wasPending = this.state === "pending";
    this.state = "closed";
    if (wasPending) this._rejectReady(error);
    if (notify && this._onError !== null) this._onError(error);
  }
}
