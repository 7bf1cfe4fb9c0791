// Backoff: full-jitter distribution with a seeded RNG, and the reconnect
// schedule of RtClient against a real rtserver under fake timers.
import assert from "node:assert/strict";
import { afterEach, describe, mock, test } from "node:test";
import { Backoff, RtClient, seededRandom } from "../src/rtserver-client.js";
import { Server, WebSocket, closeAll, recordingLogger, token, track, until } from "./harness.js";

afterEach(closeAll);

describe("Backoff", () => {
  test("delays are uniform in [0, min(maxDelay, minDelay * 2^attempt))", () => {
    const b = new Backoff({ minDelay: 100, maxDelay: 3000, random: seededRandom(42) });
    const ceilings = [100, 200, 400, 800, 1600, 3000, 3000];
    for (const ceiling of ceilings) {
      assert.equal(b.ceiling(), ceiling);
      const d = b.next();
      assert.ok(d >= 0 && d < ceiling, `${d} in [0, ${ceiling})`);
    }
    // The distribution at the cap: 20,000 draws, mean ~ cap/2, every decile filled.
    const capped = new Backoff({ minDelay: 1000, maxDelay: 1000, random: seededRandom(7) });
    const deciles = new Array(10).fill(0);
    let sum = 0;
    const n = 20000;
    for (let i = 0; i < n; i++) {
      const d = capped.next();
      assert.ok(d >= 0 && d < 1000);
      sum += d;
      deciles[Math.floor(d / 100)] += 1;
    }
    assert.ok(Math.abs(sum / n - 500) < 15, `mean ${sum / n}`);
    for (const count of deciles) assert.ok(Math.abs(count - n / 10) < n / 10 * 0.1, `decile ${count}`);
  });

  test("a seed gives the same sequence; reset returns to attempt 0", () => {
    const a = new Backoff({ minDelay: 500, maxDelay: 20000, random: seededRandom(1) });
    const b = new Backoff({ minDelay: 500, maxDelay: 20000, random: seededRandom(1) });
    const sa = Array.from({ length: 8 }, () => a.next());
    const sb = Array.from({ length: 8 }, () => b.next());
    assert.deepEqual(sa, sb);
    assert.equal(a.attempt, 8);
    a.reset();
    assert.equal(a.attempt, 0);
    assert.equal(a.ceiling(), 500);
  });

  test("invalid delays are refused", () => {
    assert.throws(() => new Backoff({ minDelay: 0, maxDelay: 10 }), RangeError);
    assert.throws(() => new Backoff({ minDelay: 10, maxDelay: 5 }), RangeError);
  });
});

describe("reconnect schedule (fake timers, seeded RNG, real server)", () => {
  test("delays follow the seeded full-jitter schedule; a stable connection resets it", async () => {
    const server = new Server({ workers: 2, heartbeat: 1.0 });
    await server.start();
    mock.timers.enable({ apis: ["setTimeout", "Date"], now: Date.now() });
    try {
      const expected = new Backoff({ minDelay: 500, maxDelay: 4000, random: seededRandom(99) });
      const client = track(new RtClient({
        url: server.url, WebSocket, getToken: async () => token(), logger: recordingLogger(),
        reconnect: { minDelay: 500, maxDelay: 4000, stableAfter: 10000 }, random: seededRandom(99),
        heartbeatInterval: 600000, pingInterval: 600000 }));
      const reconnects = [];
      client.on("reconnect", (r) => reconnects.push(r));
      await client.connect();
      await server.stop("SIGTERM");
      await until(() => reconnects.length === 1, "the reconnect after the drain");
      assert.equal(reconnects[0].code, 1012);
      // Six failed attempts while the server is down: each delay is the seeded draw.
      for (let n = 1; n <= 6; n++) {
        const r = reconnects[n - 1];
        assert.equal(r.attempt, n);
        assert.equal(r.delay, expected.next());
        mock.timers.tick(r.delay);
        await until(() => reconnects.length === n + 1, `reconnect ${n + 1}`);
        assert.equal(reconnects[n].code, 1006);
      }
      assert.ok(reconnects.slice(4).every((r) => r.delay < 4000), "capped at maxDelay");
      await server.start(server.port);
      const last = reconnects.at(-1);
      assert.equal(last.delay, expected.next());
      mock.timers.tick(last.delay);
      await until(() => client.state === "connected", "connected again");
      // Stable for stableAfter: the next failure starts again at attempt 1.
      mock.timers.tick(10000);
      const count = reconnects.length;
      await server.stop("SIGTERM");
      await until(() => reconnects.length === count + 1, "the reconnect after the second drain");
      assert.equal(reconnects.at(-1).attempt, 1);
      assert.ok(reconnects.at(-1).delay < 500);
      // The client's generator has been drawn once per reconnect: this is the next draw at attempt 0.
      assert.equal(reconnects.at(-1).delay, Math.floor(expectedDraw(99, reconnects.length - 1) * 500));
      client.close();
    } finally {
      mock.timers.reset();
      await server.dispose();
    }
  });

  test("an unstable connection keeps growing the delay", async () => {
    const server = new Server({ workers: 1, heartbeat: 1.0 });
    await server.start();
    mock.timers.enable({ apis: ["setTimeout", "Date"], now: Date.now() });
    try {
      const client = track(new RtClient({
        url: server.url, WebSocket, getToken: async () => token(), logger: recordingLogger(),
        reconnect: { minDelay: 500, maxDelay: 64000, stableAfter: 10000 }, random: () => 0.999,
        heartbeatInterval: 600000, pingInterval: 600000 }));
      const reconnects = [];
      client.on("reconnect", (r) => reconnects.push(r));
      await client.connect();
      for (let round = 1; round <= 3; round++) {
        await server.stop("SIGTERM");
        await until(() => reconnects.length === round, `reconnect ${round}`);
        await server.start(server.port);
        mock.timers.tick(reconnects.at(-1).delay);
        await until(() => client.state === "connected", "connected");
        mock.timers.tick(1000); // connected for 1 s < stableAfter
      }
      assert.deepEqual(reconnects.map((r) => r.attempt), [1, 2, 3]);
      assert.deepEqual(reconnects.map((r) => r.delay), [499, 999, 1998]);
      client.close();
    } finally {
      mock.timers.reset();
      await server.dispose();
    }
  });
});

/** The `index`-th draw of seededRandom(seed). */
function expectedDraw(seed, index) {
  const rnd = seededRandom(seed);
  let v = 0;
  for (let i = 0; i <= index; i++) v = rnd();
  return v;
}
