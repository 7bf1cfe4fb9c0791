// Offline publish queue limits (count, age) and the 1,000-cycle leak test.
import assert from "node:assert/strict";
import { describe, mock, test } from "node:test";
import { RtClient, RtError } from "../src/rtserver-client.js";
import { Server, WebSocket, recordingLogger, sleep, token } from "./harness.js";

/** A network where connections never open (a black-holed host): no server at all. */
class NeverOpens {
  constructor() { this.readyState = 0; }
  send() { throw new Error("not open"); }
  close() { this.readyState = 3; }
}

describe("offline publish queue", () => {
  test("over maxCount: the new publish rejects with queue_full; past maxAge: queue_expired", async () => {
    mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_000_000 });
    try {
      const client = new RtClient({ url: "ws://127.0.0.1:9/ws", WebSocket: NeverOpens, getToken: async () => token(),
                                    logger: recordingLogger(), offlineQueue: { maxCount: 3, maxAge: 5000 },
                                    heartbeatInterval: 600000 });
      void client.connect().catch(() => {});
      const outcomes = [];
      const track = (p, i) => p.then(() => outcomes.push([i, "ok"]), (e) => outcomes.push([i, e.code]));
      const ps = [track(client.publish("bench:q", 0), 0), track(client.publish("bench:q", 1), 1)];
      mock.timers.tick(2000);
      ps.push(track(client.publish("bench:q", 2), 2), track(client.publish("bench:q", 3), 3));
      await Promise.resolve();
      await Promise.resolve();
      assert.deepEqual(outcomes, [[3, "queue_full"]]);
      mock.timers.tick(3000); // entries 0 and 1 are 5 s old
      await Promise.resolve();
      await Promise.resolve();
      assert.deepEqual(outcomes, [[3, "queue_full"], [0, "queue_expired"], [1, "queue_expired"]]);
      mock.timers.tick(2000);
      await Promise.all(ps);
      assert.deepEqual(outcomes.at(-1), [2, "queue_expired"]);
      client.close();
      await assert.rejects(client.publish("bench:q", 4), (e) => e instanceof RtError && e.code === "client_closed");
    } finally {
      mock.timers.reset();
    }
  });

  test("close() rejects queued publishes with client_closed", async () => {
    const client = new RtClient({ url: "ws://127.0.0.1:9/ws", WebSocket: NeverOpens, getToken: async () => token(),
                                  logger: recordingLogger(), heartbeatInterval: 600000 });
    const connecting = client.connect();
    const p = client.publish("bench:q", 1);
    client.close();
    await assert.rejects(p, (e) => e.code === "client_closed");
    await assert.rejects(connecting, (e) => e.code === "client_closed");
  });

  test("queued publishes are sent after the connection is made (real server)", async () => {
    const server = new Server({ workers: 1 });
    await server.start();
    try {
      const client = new RtClient({ url: server.url, WebSocket, getToken: async () => token(), logger: recordingLogger() });
      const acks = Promise.all([client.publish("bench:late", 1), client.publish("bench:late", 2)]);
      await client.connect();
      assert.deepEqual((await acks).map((a) => a.seq), [1, 2]);
      client.close();
    } finally {
      await server.dispose();
    }
  });
});

function handles() {
  const counts = {};
  for (const r of process.getActiveResourcesInfo()) counts[r] = (counts[r] ?? 0) + 1;
  return counts;
}

test("1,000 connect/subscribe/close cycles: timers, listeners and sockets back to baseline", async () => {
  const server = new Server({ workers: 2, heartbeat: 1.0 });
  await server.start();
  try {
    const tok = token();
    await sleep(50);
    const baseline = handles();
    const heapBefore = process.memoryUsage().heapUsed;
    for (let i = 0; i < 1000; i++) {
      const client = new RtClient({ url: server.url, WebSocket, getToken: async () => tok, logger: recordingLogger() });
      const offState = client.on("state", () => {});
      client.on("reconnect", () => {});
      await client.connect();
      const sub = client.subscribe(`bench:leak${i % 10}`, { onMessage: () => {} });
      await sub.ready;
      if (i % 100 === 0) await client.publish(sub.room, i);
      offState();
      client.close();
      assert.equal(client.listenerCount(), 0);
      assert.equal(client._pending.size, 0);
      assert.equal(client._subs.size, 0);
      assert.equal(client._streams.size, 0);
      assert.equal(client._ws, null);
      assert.equal(client._livenessTimer, null);
      assert.equal(client._refreshTimer, null);
      assert.equal(client._reconnectTimer, null);
      assert.equal(client._envListener, null);
    }
    // Closed sockets finish their closing handshake asynchronously.
    const t0 = performance.now();
    let now = handles();
    while (((now.TCPSocketWrap ?? 0) > (baseline.TCPSocketWrap ?? 0) || (now.Timeout ?? 0) > (baseline.Timeout ?? 0))
           && performance.now() - t0 < 10000) {
      await sleep(50);
      now = handles();
    }
    assert.equal(now.Timeout ?? 0, baseline.Timeout ?? 0, `timers: ${JSON.stringify(now)} vs ${JSON.stringify(baseline)}`);
    assert.equal(now.TCPSocketWrap ?? 0, baseline.TCPSocketWrap ?? 0, "sockets");
    if (global.gc) {
      global.gc();
      const grown = process.memoryUsage().heapUsed - heapBefore;
      assert.ok(grown < 20 * 1024 * 1024, `heap grew ${grown} bytes over 1,000 cycles`);
    }
  } finally {
    await server.dispose();
  }
});
