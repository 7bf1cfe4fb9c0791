/**
 * How the client reacts to each WebSocket close code.
 *
 * Mirrors `RECONNECT` in rtserver/protocol/close_codes.py (a test checks both
 * agree) plus the codes a browser or the network produce:
 * "backoff" reconnects after a full-jitter delay, "token" fetches a fresh
 * token once and then reconnects, "never" stops (a change is needed first).
 * @module
 */

/** @type {Readonly<Record<number, "backoff"|"token"|"never">>} */
export const CLOSE_POLICY = Object.freeze({
  1000: "never", // normal closure: the server or the operator meant it
  1001: "backoff", // going away (a proxy or the server shutting down)
  1002: "never", // protocol error: the client must be fixed
  1003: "never", // unsupported data
  1005: "backoff", // no status received
  1006: "backoff", // abnormal closure: network loss, refused connection
  1007: "never", // invalid payload data
  1008: "never", // policy violation (too many errors)
  1009: "never", // message too big
  1010: "never", // mandatory extension
  1011: "backoff", // server error or WebSocket ping unanswered
  1012: "backoff", // service restart (drain)
  1013: "backoff", // try again later (slow consumer)
  1014: "backoff", // bad gateway
  1015: "backoff", // TLS handshake failure
  4001: "token", // authentication failed or token expired
  4008: "backoff", // idle timeout
  4029: "never", // too many connections for this user (close others first)
});

/**
 * The reaction to a close code; a code missing from the table reconnects with
 * backoff (the caller logs that the code is unlisted).
 * @param {number} code
 * @returns {{policy: "backoff"|"token"|"never", listed: boolean}}
 */
export function closePolicy(code) {
  const policy = CLOSE_POLICY[code];
  return policy === undefined ? { policy: "backoff", listed: false } : { policy, listed: true };
}
