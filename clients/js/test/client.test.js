// RtClient against a real rtserver (`--workers 2`): connect, publish/ack, auth
// errors, drain (1012) -> reconnect -> resubscribe, SIGKILL of the workers,
// liveness (SIGSTOP), idle 4008, token refresh, terminal codes.
import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";
import { RtClient, RtError } from "../src/rtserver-client.js";
import { Server, WebSocket, closeAll, connected, once, recordingLogger, token, track, until } from "./harness.js";

afterEach(closeAll);

function makeClient(server, extra = {}) {
  const logger = recordingLogger();
  const calls = { getToken: 0 };
  const tok = extra.token ?? token();
  const client = track(new RtClient({
    url: server.url, WebSocket, logger,
    getToken: async () => { calls.getToken += 1; return typeof tok === "function" ? tok(calls.getToken) : tok; },
    reconnect: { minDelay: 50, maxDelay: 400 },
    heartbeatInterval: 1000, heartbeatGrace: 1500,
    ...extra.options,
  }));
  const states = [];
  const reconnects = [];
  const errors = [];
  client.on("state", (s) => states.push(s));
  client.on("reconnect", (r) => reconnects.push(r));
  client.on("error", (e) => errors.push(e));
  return { client, logger, calls, states, reconnects, errors };
}

describe("against a real rtserver", () => {
  /** @type {Server} */
  let server;
  before(async () => { server = new Server({ workers: 2, heartbeat: 0.5 }); await server.start(); });
  after(async () => { await server.dispose(); });

  test("connect, subscribe, publish: ack with seq, message with meta", async () => {
    const user = crypto.randomUUID();
    const { client, states } = makeClient(server, { token: token({ user }) });
    await client.connect();
    assert.equal(client.state, "connected");
    assert.equal(client.info.user, user);
    assert.deepEqual(states.map((s) => s.state), ["connecting", "connected"]);
    const got = [];
    const sub = client.subscribe("bench:basic", { onMessage: (data, meta) => got.push({ data, meta }) });
    await sub.ready;
    assert.equal(sub.seq, 0);
    const ack = await client.publish("bench:basic", { hello: "world" });
    assert.deepEqual(ack, { room: "bench:basic", seq: 1 });
    await until(() => got.length === 1, "the message");
    assert.deepEqual(got[0].data, { hello: "world" });
    assert.equal(got[0].meta.room, "bench:basic");
    assert.equal(got[0].meta.seq, 1);
    assert.equal(got[0].meta.from, user);
    assert.throws(() => client.subscribe("bench:basic"), (e) => e instanceof RtError && e.code === "duplicate_subscription");
    await sub.unsubscribe();
    assert.equal(client.getSubscription("bench:basic"), undefined);
    client.close();
    assert.equal(client.state, "closed");
    assert.equal(client.listenerCount(), 0);
  });

  test("a forbidden publish rejects with the server's typed error", async () => {
    const { client } = makeClient(server, { token: token({ rooms: ["bench:mine"] }) });
    await client.connect();
    await assert.rejects(client.publish("bench:other", 1), (e) => {
      assert.ok(e instanceof RtError);
      assert.equal(e.code, "forbidden");
      assert.match(e.action, /^Required action:/);
      return true;
    });
    const sub = client.subscribe("bench:other");
    await assert.rejects(sub.ready, (e) => e.code === "forbidden");
    assert.equal(client.getSubscription("bench:other"), undefined);
    client.close();
  });

  test("4001: getToken is called once more for a fresh token, then the client stops", async () => {
    const bad = token().slice(0, -4) + "AAAA";
    const { client, calls, states, errors, reconnects } = makeClient(server, { token: bad });
    await assert.rejects(client.connect(), (e) => e instanceof RtError && e.code === "token_invalid");
    assert.equal(calls.getToken, 2);
    assert.equal(reconnects.length, 1);
    assert.equal(reconnects[0].code, 4001);
    assert.equal(client.state, "closed");
    assert.equal(states.at(-1).state, "closed");
    assert.equal(states.at(-1).code, 4001);
    assert.ok(errors.some((e) => e.code === "token_invalid" && e.closeCode === 4001));
    client.close();
  });

  test("4001 then a good fresh token: connected", async () => {
    const { client, calls } = makeClient(server, { token: (n) => (n === 1 ? token({ ttl: -10 }) : token()) });
    await client.connect();
    assert.equal(calls.getToken, 2);
    assert.equal(client.state, "connected");
    client.close();
  });

  test("getToken rejecting is reported and stops the client", async () => {
    const client = track(new RtClient({ url: server.url, WebSocket, logger: recordingLogger(),
                                        getToken: async () => { throw new Error("auth service down"); } }));
    const errors = [];
    client.on("error", (e) => errors.push(e));
    await assert.rejects(client.connect(), (e) => e.code === "token_unavailable" && /auth service down/.test(e.message));
    assert.equal(errors.length, 1);
    assert.equal(client.state, "closed");
  });

  test("terminal 1008 (too many errors): closed, no reconnect", async () => {
    const { client, reconnects, errors } = makeClient(server);
    await client.connect();
    const closed = once(client, "state", (s) => s.state === "closed");
    for (let i = 0; i < 40 && client.state === "connected"; i++) client.send({ type: "no_such_type" });
    const s = await closed;
    assert.equal(s.code, 1008);
    assert.equal(reconnects.length, 0);
    assert.ok(errors.some((e) => e.code === "unknown_type"));
    assert.ok(errors.some((e) => e.code === "connection_closed" && e.closeCode === 1008));
    client.close();
  });

  test("terminal 1009 (frame too big): closed, the publish rejects, no reconnect", async () => {
    const { client, reconnects } = makeClient(server);
    await client.connect();
    const closed = once(client, "state", (s) => s.state === "closed");
    await assert.rejects(client.publish("bench:big", "x".repeat(70000)), (e) => e instanceof RtError);
    assert.equal((await closed).code, 1009);
    assert.equal(reconnects.length, 0);
    client.close();
  });

  test("4008 idle timeout: reconnects with backoff", async () => {
    const idle = new Server({ workers: 2, heartbeat: 0.25, idleTimeout: 0.75 });
    await idle.start();
    try {
      const { client, reconnects, logger } = makeClient(idle, { options: { pingInterval: 60000, heartbeatInterval: 250 } });
      await client.connect();
      const r = await once(client, "reconnect");
      assert.equal(r.code, 4008);
      assert.ok(r.delay >= 0 && r.delay < 50);
      await once(client, "state", (s) => s.state === "connected");
      assert.ok(logger.lines.some((l) => l.level === "warn" && /reconnecting/.test(l.msg)));
      assert.equal(reconnects[0].attempt, 1);
      client.close();
    } finally {
      await idle.dispose();
    }
  });

  test("pings keep an idle connection open past idle_timeout", async () => {
    const idle = new Server({ workers: 2, heartbeat: 0.25, idleTimeout: 0.75 });
    await idle.start();
    try {
      const { client, reconnects } = makeClient(idle, { options: { pingInterval: 200, heartbeatInterval: 250 } });
      await client.connect();
      const sub = client.subscribe("bench:ping");
      await sub.ready;
      // Three idle timeouts: the server would have closed 4008 without the pings.
      const heartbeats = [];
      const off = client.on("frame", (f) => { if (f.type === "pong") heartbeats.push(f); });
      await until(() => heartbeats.length >= 10, "ten pongs");
      off();
      assert.equal(reconnects.length, 0);
      assert.equal(client.state, "connected");
      client.close();
    } finally {
      await idle.dispose();
    }
  });

  test("token refresh before expiry; the server's token_expired close reconnects with it", async () => {
    const { client, calls, reconnects, logger } = makeClient(server, {
      token: () => token({ ttl: 3 }), options: { tokenRefreshMargin: 1500 } });
    await client.connect();
    const sub = client.subscribe("bench:token");
    await sub.ready;
    await until(() => calls.getToken === 2, "the refresh before expiry");
    assert.equal(client.state, "connected");
    const r = await once(client, "reconnect");
    assert.equal(r.code, 4001);
    await once(client, "state", (s) => s.state === "connected");
    assert.equal(calls.getToken, 2, "the pre-fetched token is the fresh one");
    assert.ok(logger.lines.some((l) => /authentication error/.test(l.msg) && l.fields.code === "token_expired"));
    await once(client, "recover", (i) => i.room === "bench:token");
    assert.equal(reconnects.length, 1);
    client.close();
  });
});

describe("server restarts under the client", () => {
  test("drain (SIGTERM, 1012) -> visible reconnects -> resubscribed on the restarted server", async () => {
    const server = new Server({ workers: 2, heartbeat: 0.5 });
    await server.start();
    try {
      const { client, reconnects, logger } = makeClient(server);
      await client.connect();
      const got = [];
      const recovers = [];
      const sub = client.subscribe("bench:drain", { onMessage: (d, m) => got.push(m.seq), onRecover: (i) => recovers.push(i) });
      await sub.ready;
      for (let i = 0; i < 3; i++) await client.publish("bench:drain", i);
      await until(() => got.length === 3, "three messages");
      const first = once(client, "reconnect");
      await server.stop("SIGTERM");
      assert.equal((await first).code, 1012);
      await until(() => reconnects.length >= 2, "a failed attempt while the server is down");
      assert.equal(reconnects[1].code, 1006);
      await server.start(server.port);
      await connected(client);
      await until(() => recovers.length === 1, "the recovery report");
      // A restarted embedded hub starts the room's seq lineage again.
      assert.equal(recovers[0].recovered, false);
      assert.equal(recovers[0].reason, "epoch_changed");
      await client.publish("bench:drain", "after");
      await until(() => got.length === 4, "the message after the restart");
      assert.deepEqual(got, [1, 2, 3, 1]);
      assert.ok(reconnects.every((r, i) => r.attempt === i + 1));
      assert.equal(logger.lines.filter((l) => /reconnecting in/.test(l.msg)).length, reconnects.length);
      client.close();
    } finally {
      await server.dispose();
    }
  });

  test("SIGKILL of the workers -> reconnect, position recovered, no lost or duplicated message", async () => {
    const server = new Server({ workers: 2, heartbeat: 0.5 });
    await server.start();
    try {
      const { client } = makeClient(server);
      const watcher = makeClient(server).client;
      await client.connect();
      await watcher.connect();
      const got = [];
      const seen = [];
      const recovers = [];
      const sub = client.subscribe("bench:kill", { onMessage: (d) => got.push(d), onRecover: (i) => recovers.push(i) });
      const wrecovers = [];
      const wsub = watcher.subscribe("bench:kill", { onMessage: (d) => seen.push(d), onRecover: (i) => wrecovers.push(i) });
      await Promise.all([sub.ready, wsub.ready]);
      for (let i = 0; i < 5; i++) await client.publish("bench:kill", i);
      const listening = server.events("listening").length;
      const down = once(client, "reconnect");
      const queued = [];
      client.on("state", (s) => {
        // Published while offline: queued, sent after the resubscribe.
        if (s.state === "disconnected" && queued.length === 0) {
          for (let i = 5; i < 8; i++) queued.push(client.publish("bench:kill", i));
        }
      });
      for (const pid of server.workerPids()) process.kill(pid, "SIGKILL");
      const r = await down;
      assert.equal(r.code, 1006);
      await server.waitListening(listening, 2);
      await connected(client);
      const acks = await Promise.all(queued);
      assert.deepEqual(acks.map((a) => a.seq), [6, 7, 8]);
      assert.deepEqual(recovers, [{ recovered: true, replayed: 0, reason: null, action: null, missed: 0 }]);
      await until(() => got.length === 8, "eight messages");
      assert.deepEqual(got, [0, 1, 2, 3, 4, 5, 6, 7]);
      // The watcher reconnects on its own schedule: what was published before its
      // resubscribe is replayed from the room's history (the hub survived the workers).
      await until(() => seen.length === 8, "the watcher's eight messages");
      assert.deepEqual(seen, [0, 1, 2, 3, 4, 5, 6, 7]);
      assert.equal(wrecovers.length, 1);
      assert.equal(wrecovers[0].recovered, true);
      client.close();
      watcher.close();
    } finally {
      await server.dispose();
    }
  });

  test("SIGKILL of the whole server (supervisor) -> reconnects to the restarted server", async () => {
    const server = new Server({ workers: 2, heartbeat: 0.5 });
    await server.start();
    const workers = server.workerPids();
    try {
      const { client, reconnects } = makeClient(server);
      await client.connect();
      const recovers = [];
      const sub = client.subscribe("bench:sigkill", { onRecover: (i) => recovers.push(i) });
      await sub.ready;
      await client.publish("bench:sigkill", 1);
      const down = once(client, "reconnect");
      await server.stop("SIGKILL");
      const r = await down;
      // The workers notice their supervisor is gone and drain (1012), or the socket just drops (1006).
      assert.ok([1006, 1012].includes(r.code), `close ${r.code}`);
      await until(() => workers.every((pid) => { try { process.kill(pid, 0); return false; } catch { return true; } }),
                  "the old workers to exit", 15000);
      await server.start(server.port);
      await connected(client);
      await until(() => recovers.length === 1, "the recovery report");
      assert.equal(recovers[0].recovered, false);
      assert.equal(recovers[0].reason, "epoch_changed");
      assert.deepEqual(await client.publish("bench:sigkill", 2), { room: "bench:sigkill", seq: 1 });
      assert.ok(reconnects.length >= 1);
    } finally {
      for (const pid of workers) { try { process.kill(pid, "SIGKILL"); } catch { /* exited */ } }
      await server.dispose();
    }
  });

  test("liveness: frozen workers (SIGSTOP) are detected from timestamps, then the client reconnects", async () => {
    const server = new Server({ workers: 2, heartbeat: 0.25 });
    await server.start();
    const pids = server.workerPids();
    try {
      const { client, logger } = makeClient(server, { options: { heartbeatInterval: 250, heartbeatGrace: 500 } });
      await client.connect();
      const dead = once(client, "reconnect");
      for (const pid of pids) process.kill(pid, "SIGSTOP");
      const r = await dead;
      assert.equal(r.code, 1006);
      assert.match(r.reason, /no frame from the server for \d+ ms/);
      assert.ok(logger.lines.some((l) => l.msg.includes("connection dead")));
      for (const pid of pids) process.kill(pid, "SIGCONT");
      await once(client, "state", (s) => s.state === "connected");
      client.close();
    } finally {
      for (const pid of pids) { try { process.kill(pid, "SIGCONT"); } catch { /* already gone */ } }
      await server.dispose();
    }
  });
});

test("timers are back to baseline after close (no leaked handles)", async () => {
  // Sanity for the leak test below: an unclosed client keeps a timer alive.
  const server = new Server({ workers: 1, heartbeat: 1.0 });
  await server.start();
  try {
    const before = process.getActiveResourcesInfo().filter((r) => r === "Timeout").length;
    const { client } = makeClient(server);
    await client.connect();
    const during = process.getActiveResourcesInfo().filter((r) => r === "Timeout").length;
    assert.ok(during > before, "a connected client holds its liveness timer");
    client.close();
    // ws's closing-handshake timer ends when the server answers the close.
    const timers = () => process.getActiveResourcesInfo().filter((r) => r === "Timeout").length;
    await until(() => timers() <= before, "timers back to baseline", 5000);
    const afterClose = timers();
    assert.equal(afterClose, before);
  } finally {
    await server.dispose();
  }
});
