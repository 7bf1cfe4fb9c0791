// Recovery-protocol frames a real server cannot be made to send on demand
// (a gap frame, a heartbeat_interval in the welcome frame, a replay with a
// duplicate at the boundary, a lost ack with keys off), spoken by a tiny
// in-test fake in the exact shapes of docs/protocol.md. The same paths
// against the real server are in recovery.test.js.
import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";
import { WebSocketServer } from "ws";
import { RtClient } from "../src/rtserver-client.js";
import { WebSocket, closeAll, connected, once, recordingLogger, token, track, until } from "./harness.js";

afterEach(closeAll);

class FakeServer {
  constructor() {
    this.received = [];
    this.sockets = [];
    this.onFrame = () => {};
  }
  async start() {
    this.wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
    await new Promise((r) => this.wss.once("listening", r));
    this.wss.on("connection", (ws) => {
      this.sockets.push(ws);
      ws.send(JSON.stringify({ type: "connection", status: "connected", connection_id: crypto.randomUUID(), worker: 0, server_time: "now" }));
      ws.on("message", (raw) => {
        const f = JSON.parse(String(raw));
        this.received.push(f);
        if (f.type === "auth") ws.send(JSON.stringify({ type: "authenticated", user: "u", permissions: [], anonymous: false }));
        else this.onFrame(ws, f);
      });
    });
    return `ws://127.0.0.1:${this.wss.address().port}/ws`;
  }
  send(ws, f) { ws.send(JSON.stringify(f)); }
  dropAll() { for (const ws of this.sockets) ws.terminate(); this.sockets = []; }
  async stop() { this.dropAll(); await new Promise((r) => this.wss.close(r)); }
}

describe("recovery protocol edge cases (in-test fake)", () => {
  /** @type {FakeServer} */
  let fake;
  let url;
  before(async () => { fake = new FakeServer(); url = await fake.start(); });
  after(async () => { await fake.stop(); });

  function client(extra = {}) {
    return track(new RtClient({ url, WebSocket, getToken: async () => token(), logger: recordingLogger(),
                          reconnect: { minDelay: 10, maxDelay: 50 }, ...extra }));
  }

  test("resubscribe in one frame with (epoch, seq); replay delivered once, in order; not recovered reported", async () => {
    let connection = 0;
    fake.received = [];
    fake.onFrame = (ws, f) => {
      if (f.type === "subscribe" && f.room !== undefined) {
        fake.send(ws, { type: "subscribed", room: f.room, seq: 2, epoch: "e1", id: f.id });
        fake.send(ws, { type: "message", room: f.room, from: null, data: `${f.room}#1`, seq: 1 }); // stale: dropped
        fake.send(ws, { type: "message", room: f.room, from: null, data: `${f.room}#3`, seq: 3 });
      }
      if (f.type === "subscribe" && f.rooms !== undefined) {
        connection += 1;
        const [a, b] = f.rooms;
        fake.send(ws, { type: "subscribed", room: a.room, seq: 5, epoch: "e1", recovered: true, replayed: 2, id: f.id });
        fake.send(ws, { type: "message", room: a.room, from: null, data: "a#3", seq: 3 }); // duplicate at the boundary
        fake.send(ws, { type: "message", room: a.room, from: null, data: "a#4", seq: 4 });
        fake.send(ws, { type: "message", room: a.room, from: null, data: "a#5", seq: 5 });
        fake.send(ws, { type: "subscribed", room: b.room, seq: 0, epoch: "e2", recovered: false, reason: "epoch_changed",
                        action: "Required action: reload the room's state", id: f.id });
        fake.send(ws, { type: "message", room: b.room, from: null, data: "b-new#1", seq: 1 });
      }
    };
    const c = client();
    await c.connect();
    const got = { a: [], b: [] };
    const recovers = { a: [], b: [] };
    const a = c.subscribe("bench:a", { onMessage: (d) => got.a.push(d), onRecover: (i) => recovers.a.push(i) });
    const b = c.subscribe("bench:b", { onMessage: (d) => got.b.push(d), onRecover: (i) => recovers.b.push(i) });
    await Promise.all([a.ready, b.ready]);
    await until(() => got.a.length === 1 && got.b.length === 1, "the first messages");
    assert.equal(a.epoch, "e1");
    assert.equal(a.seq, 3);
    fake.dropAll();
    await until(() => connection === 1, "the resubscribe");
    const batch = fake.received.find((f) => f.type === "subscribe" && f.rooms !== undefined);
    assert.deepEqual(batch.rooms, [{ room: "bench:a", since: { epoch: "e1", seq: 3 } },
                                   { room: "bench:b", since: { epoch: "e1", seq: 3 } }]);
    await until(() => got.a.length === 3 && got.b.length === 2, "the replay");
    assert.deepEqual(got.a, ["bench:a#3", "a#4", "a#5"]);
    assert.deepEqual(got.b, ["bench:b#3", "b-new#1"]);
    assert.deepEqual(recovers.a, [{ recovered: true, replayed: 2, reason: null, action: null, missed: 0 }]);
    assert.equal(recovers.b[0].recovered, false);
    assert.equal(recovers.b[0].reason, "epoch_changed");
    assert.match(recovers.b[0].action, /^Required action/);
    assert.ok(a.duplicatesDropped >= 2);
    c.close();
  });

  test("a gap frame is reported to onRecover", async () => {
    fake.onFrame = (ws, f) => {
      if (f.type === "subscribe") {
        fake.send(ws, { type: "subscribed", room: f.room, seq: 0, epoch: "e", id: f.id });
        fake.send(ws, { type: "gap", room: f.room, from_seq: 1, to_seq: 9, epoch: "e", reason: "history_trimmed",
                        action: "Required action: reload" });
        fake.send(ws, { type: "message", room: f.room, from: null, data: 10, seq: 10 });
      }
    };
    const c = client();
    await c.connect();
    const recovers = [];
    const got = [];
    const sub = c.subscribe("bench:gap", { onRecover: (i) => recovers.push(i), onMessage: (d) => got.push(d) });
    await sub.ready;
    await until(() => got.length === 1, "the message after the gap");
    assert.equal(recovers.length, 1);
    assert.equal(recovers[0].reason, "history_trimmed");
    assert.equal(recovers[0].missed, 9);
    assert.deepEqual(got, [10]);
    assert.equal(sub.seq, 10);
    c.close();
  });

  test("idempotentPublish: a publish whose ack was lost is retried with the same key and resolves once", async () => {
    let drops = 0;
    fake.received = [];
    fake.onFrame = (ws, f) => {
      if (f.type !== "publish") return;
      if (drops === 0) { drops += 1; ws.terminate(); return; } // the ack is lost
      fake.send(ws, { type: "ack", room: f.room, seq: 7, id: f.id });
    };
    const c = client({ idempotentPublish: true });
    await c.connect();
    const reconnect = once(c, "reconnect");
    const ack = await c.publish("bench:key", { n: 1 });
    await reconnect;
    assert.deepEqual(ack, { room: "bench:key", seq: 7 });
    const sent = fake.received.filter((f) => f.type === "publish");
    assert.equal(sent.length, 2);
    assert.equal(typeof sent[0].key, "string");
    assert.equal(sent[0].key, sent[1].key);
    assert.notEqual(sent[0].id, sent[1].id);
    c.close();
  });

  test("without idempotentPublish a lost ack rejects with ack_lost (never a silent duplicate)", async () => {
    fake.received = [];
    fake.onFrame = (ws, f) => { if (f.type === "publish") ws.terminate(); };
    const c = client({ idempotentPublish: false });
    await c.connect();
    await assert.rejects(c.publish("bench:key", 1), (e) => e.code === "ack_lost" && e.closeCode === 1006);
    await connected(c);
    assert.equal(fake.received.filter((f) => f.type === "publish").length, 1);
    assert.equal(fake.received.find((f) => f.type === "publish").key, undefined);
    c.close();
  });

  test("a heartbeat_interval in the welcome frame sets the liveness limit", async () => {
    const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
    await new Promise((r) => wss.once("listening", r));
    wss.on("connection", (ws) => {
      ws.send(JSON.stringify({ type: "connection", status: "connected", connection_id: "x", worker: 0, server_time: "t", heartbeat_interval: 0.2 }));
      ws.on("message", () => ws.send(JSON.stringify({ type: "authenticated", user: "u", permissions: [], anonymous: false })));
      // then silence: no heartbeat ever
    });
    try {
      const c = track(new RtClient({ url: `ws://127.0.0.1:${wss.address().port}/ws`, WebSocket, getToken: async () => token(),
                                     logger: recordingLogger(), heartbeatInterval: 600000, heartbeatGrace: 200 }));
      await c.connect();
      const r = await once(c, "reconnect", () => true, 3000);
      assert.match(r.reason, /heartbeat 200 ms/);
      c.close();
    } finally {
      for (const ws of wss.clients) ws.terminate();
      await new Promise((r) => wss.close(r));
    }
  });
});
