/**
 * The bounded queue of publishes waiting for a connection.
 *
 * Limits: `maxCount` entries and `maxAge` ms per entry; an entry past either
 * limit is rejected with an {@link RtError} (`queue_full`, `queue_expired`).
 * One timer (for the oldest entry) enforces the age, only while entries wait.
 * @module
 */

import { RtError } from "./errors.js";

/**
 * @typedef {object} PublishEntry
 * @property {string} room
 * @property {unknown} data
 * @property {string|undefined} key
 * @property {number} enqueuedAt
 * @property {(ack: {room: string, seq: number}) => void} resolve
 * @property {(error: RtError) => void} reject
 */

export class PublishQueue {
  /**
   * @param {{maxCount: number, maxAge: number, now: () => number}} options
   */
  constructor({ maxCount, maxAge, now }) {
    this.maxCount = maxCount;
    this.maxAge = maxAge;
    this.now = now;
    /** @type {PublishEntry[]} */
    this.entries = [];
    /** @type {ReturnType<typeof setTimeout>|null} */
    this._timer = null;
  }

  get size() {
    return this.entries.length;
  }

  /** @param {PublishEntry} entry */
  push(entry) {
    this.expire();
    if (this.entries.length >= this.maxCount) {
      entry.reject(new RtError({
        code: "queue_full",
        message: `offline publish queue is full (${this.maxCount} waiting); ` +
          `publish to ${entry.room} not queued`,
        action: "Required action: wait for state \"connected\" before publishing more, " +
          "or raise offlineQueue.maxCount",
      }));
      return;
    }
    this.entries.push(entry);
    this._schedule();
  }

  /**
   * Put entries whose ack was lost back at the front (oldest first), keeping
   * their original enqueue time.
   * @param {PublishEntry[]} entries
   */
  requeue(entries) {
    this.entries.unshift(...entries);
    this.expire();
  }

  /** Take every waiting entry (to send them). */
  drain() {
    this.expire();
    const out = this.entries;
    this.entries = [];
    this._clearTimer();
    return out;
  }

  /** Reject entries older than maxAge. */
  expire() {
    const now = this.now();
    while (this.entries.length > 0 && now - this.entries[0].enqueuedAt >= this.maxAge) {
      const entry = /** @type {PublishEntry} */ (this.entries.shift());
      entry.reject(new RtError({
        code: "queue_expired",
        message: `publish to ${entry.room} waited ${now - entry.enqueuedAt} ms without a ` +
          `connection (offlineQueue.maxAge ${this.maxAge} ms)`,
        action: "Required action: publish again once the client is connected, " +
          "or raise offlineQueue.maxAge",
      }));
    }
    this._schedule();
  }

  /**
   * Reject every entry with `error` (client closed).
   * @param {RtError} error
   */
  rejectAll(error) {
    const entries = this.entries;
    this.entries = [];
    this._clearTimer();
    for (const entry of entries) entry.reject(error);
  }

  _schedule() {
    this._clearTimer();
    if (this.entries.length === 0) return;
    const wait = Math.max(0, this.entries[0].enqueuedAt + this.maxAge - this.now());
    this._timer = setTimeout(() => {
      this._timer = null;
      this.expire();
    }, wait);
  }

  _clearTimer() {
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
  }
}
