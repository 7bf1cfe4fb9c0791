/**
 * Reading a JWT's `exp` (the client never verifies tokens: the server does).
 * @module
 */

/**
 * The token's expiry in ms since the epoch, or null when it has no readable `exp`.
 * @param {string} token
 * @returns {number|null}
 */
export function tokenExpiry(token) {
  const parts = typeof token === "string" ? token.split(".") : [];
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
    const payload = JSON.parse(atob(padded));
    return typeof payload.exp === "number" ? payload.exp * 1000 : null;
  } catch {
    return null;
  }
}
