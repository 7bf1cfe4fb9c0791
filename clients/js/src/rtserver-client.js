/**
 * rtserver-client: the JavaScript client of rtserver (browser and Node >= 20).
 *
 * ```js
 * import { RtClient } from "rtserver-client";            // or "/client/rtserver-client.js"
 * const client = new RtClient({ url: "ws://127.0.0.1:8765/ws", getToken: async () => token });
 * client.on("state", ({ state, code, reason }) => {});
 * await client.connect();
 * ```
 * @module
 */

export { RtClient, DEFAULTS } from "./client.js";
export { RtError } from "./errors.js";
export { Backoff, seededRandom } from "./backoff.js";
export { CLOSE_POLICY, closePolicy } from "./close-codes.js";
export { Subscription } from "./subscription.js";
export { QuoteSubscription, Stream, Notifications } from "./domain.js";
export { tokenExpiry } from "./token.js";
