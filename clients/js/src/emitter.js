/**
 * A minimal event emitter: `on()` returns its `off()`.
 * @module
 */

export class Emitter {
  constructor() {
    /** @type {Map<string, Set<(payload: any) => void>>} */
    this._listeners = new Map();
  }

  /**
   * @param {string} event
   * @param {(payload: any) => void} listener
   * @returns {() => void} removes the listener
   */
  on(event, listener) {
    if (typeof listener !== "function") {
      throw new TypeError(`listener for "${event}" must be a function`);
    }
    let set = this._listeners.get(event);
    if (set === undefined) {
      set = new Set();
      this._listeners.set(event, set);
    }
    set.add(listener);
    return () => this.off(event, listener);
  }

  /**
   * @param {string} event
   * @param {(payload: any) => void} listener
   */
  off(event, listener) {
    const set = this._listeners.get(event);
    if (set === undefined) return;
    set.delete(listener);
    if (set.size === 0) this._listeners.delete(event);
  }

  /**
   * Calls every listener; a throwing listener is reported to `onListenerError`
   * and does not stop the others.
   * @param {string} event
   * @param {unknown} payload
   * @param {(error: unknown, event: string) => void} onListenerError
   */
  emit(event, payload, onListenerError) {
    const set = this._listeners.get(event);
    if (set === undefined) return;
    for (const listener of [...set]) {
      try {
        listener(payload);
      } catch (error) {
        onListenerError(error, event);
      }
    }
  }

  /** @param {string} [event] */
  listenerCount(event) {
    if (event !== undefined) return this._listeners.get(event)?.size ?? 0;
    let n = 0;
    for (const set of this._listeners.values()) n += set.size;
    return n;
  }

  removeAll() {
    this._listeners.clear();
  }
}
