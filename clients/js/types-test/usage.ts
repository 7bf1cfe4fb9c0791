// Compiled by `npm run typecheck` (tsc --noEmit): the README's API, typed.
import { RtClient, RtError, seededRandom, type RecoverInfo } from "rtserver-client";

declare const token: string;
const client = new RtClient({ url: "ws://127.0.0.1:8765/ws", getToken: async () => token,
                              reconnect: { minDelay: 500, maxDelay: 20000 }, random: seededRandom(1) });
const off: () => void = client.on("state", ({ state, code, reason }) => {
  const s: "connecting" | "connected" | "disconnected" | "closed" = state;
  void s; void code; void reason;
});
client.on("reconnect", ({ attempt, delay, code, reason }) => { void [attempt, delay, code, reason]; });
async function main(): Promise<void> {
  await client.connect();
  const sub = client.subscribe<{ price: number }>("quote:1", {
    onMessage: (data, meta) => { const p: number = data.price; void p; void meta.seq; void meta.from; },
    onRecover: (info: RecoverInfo) => { if (!info.recovered) void info.reason; },
  });
  await sub.ready;
  try {
    const ack = await client.publish("bench:x", { a: 1 });
    const seq: number = ack.seq;
    void seq;
  } catch (e) {
    if (e instanceof RtError) void [e.code, e.message, e.action];
  }
  const q = client.quotes.subscribe("q", { onState: (quote, { version }) => { void quote.fields; void version; } });
  await q.edit("driver_name", "Ann").catch((e: RtError) => e.details?.current_version);
  await sub.unsubscribe();
  off();
  client.close();
}
void main();
