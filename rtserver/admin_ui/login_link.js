/**
 * Single-use login links of `rtserver admin-url`: the token in the link's fragment carries
 * `purpose: "admin_login"` and is exchanged once (GET /admin/session/exchange) for a session
 * token with the same permissions and expiry. Opening the link again is refused by the
 * server (401 link_already_used); this module turns each answer into what the page shows.
 * @module
 */

/** The `purpose` claim of a login link's token. */
export const LOGIN_PURPOSE = "admin_login";

/**
 * The token's `purpose` claim, or null (an access token, or not a readable JWT).
 * @param {string} token
 * @returns {string|null}
 */
export function tokenPurpose(token) {
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)));
    return typeof claims.purpose === "string" ? claims.purpose : null;
  } catch {
    return null;
  }
}

/**
 * @typedef {{ok: true, token: string}
 *   | {ok: false, error: string, title: string, message: string}} ExchangeResult
 */

/** @type {Record<string, string>} */
const TITLES = {
  link_already_used: "Login link already used",
  link_expired: "Login link expired",
};

/**
 * Exchange a login link's token for a session token.
 * @param {string} linkToken
 * @returns {Promise<ExchangeResult>}
 */
export async function exchangeLink(linkToken) {
  const res = await fetch("/admin/session/exchange", { headers: { Authorization: `Bearer ${linkToken}` } });
  const doc = await res.json();
  if (res.ok) return { ok: true, token: doc.token };
  const title = TITLES[doc.error] ?? "Login link refused";
  const message = doc.error === "link_already_used"
    ? `A login link logs in once: ${doc.message}. ${doc.action}.`
    : `The server refused this login link: ${doc.message}. ${doc.action}.`;
  return { ok: false, error: doc.error, title, message };
}
