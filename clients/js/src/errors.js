/**
 * Typed errors of the rtserver client.
 *
 * Every failure the SDK reports is an {@link RtError}: `code` is the server's
 * error code (docs/protocol.md) or one of the client codes listed in
 * docs/client.md, `action` says what to do ("Required action: ...").
 * @module
 */

export class RtError extends Error {
  /**
   * @param {{code: string, message: string, action: string, closeCode?: number|null,
   *          details?: Record<string, unknown>|null, cause?: unknown}} init
   */
  constructor({ code, message, action, closeCode = null, details = null, cause }) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "RtError";
    /** @type {string} */
    this.code = code;
    /** @type {string} */
    this.action = action;
    /** @type {number|null} */
    this.closeCode = closeCode;
    /** @type {Record<string, unknown>|null} */
    this.details = details;
  }

  /**
   * An RtError from a server `error` frame (its extra fields go to `details`).
   * @param {Record<string, unknown>} frame
   * @returns {RtError}
   */
  static fromFrame(frame) {
    const { type: _type, code, message, action, id: _id, ...rest } = frame;
    return new RtError({
      code: String(code),
      message: String(message),
      action: String(action),
      details: Object.keys(rest).length > 0 ? rest : null,
    });
  }
}
