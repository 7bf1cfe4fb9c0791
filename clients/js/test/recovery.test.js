// Recovery against a real rtserver (--workers 2): resubscription in one frame
// with (epoch, seq), the missed messages replayed once and in order,
// history_trimmed, and a publish whose ack was lost retried with its key.
import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";
import { RtClient } from "../src/rtserver-client.js";
import { Server, WebSocket, closeAll, connected, flakyNetwork, once, recordingLogger, token, track,
         until } from "./harness.js";

afterEach(closeAll);

function make(server, WS, extra = {}) {
  return track(new RtClient({ url: server.url, WebSocket: WS, getToken: async () => token(),
                              logger: recordingLogger(), reconnect: { minDelay: 20, maxDelay: 100 },
                              heartbeatInterval: 500, ...extra }));
}

describe("recovery (real server)", () => {
  let server;
  let small;
  before(async () => {
    server = new Server({ workers: 2, heartbeat: 0.5 });
    small = new Server({ workers: 2, heartbeat: 0.5,
                         extra: (t) => t.replace(/\nhistory_size = \d+/, "\nhistory_size = 2") });
    await Promise.all([server.start(), small.start()]);
  });
  after(async () => { await Promise.all([server.dispose(), small.dispose()]); });

  test("after a network cut: one subscribe frame with since, the missed messages once and in order", async () => {
    const net = flakyNetwork();
    const sub = make(server, net.WebSocket);
    const pub = make(server, WebSocket);
    await Promise.all([sub.connect(), pub.connect()]);
    const got = { a: [], b: [] };
    const recovers = { a: [], b: [] };
    const sa = sub.subscribe("bench:rec-a", { onMessage: (d) => got.a.push(d), onRecover: (i) => recovers.a.push(i) });
    const sb = sub.subscribe("bench:rec-b", { onMessage: (d) => got.b.push(d), onRecover: (i) => recovers.b.push(i) });
    await Promise.all([sa.ready, sb.ready]);
    assert.equal(typeof sa.epoch, "string");
    for (let i = 0; i < 3; i++) await Promise.all([pub.publish("bench:rec-a", `a${i}`), pub.publish("bench:rec-b", `b${i}`)]);
    await until(() => got.a.length === 3 && got.b.length === 3, "the live messages");
    const down = once(sub, "reconnect");
    net.cut();
    assert.equal((await down).code, 1006);
    for (let i = 3; i < 7; i++) await Promise.all([pub.publish("bench:rec-a", `a${i}`), pub.publish("bench:rec-b", `b${i}`)]);
    assert.notEqual(sub.state, "connected");
    net.sent.length = 0;
    net.restore();
    await connected(sub);
    await until(() => recovers.a.length === 1 && recovers.b.length === 1, "both recovery reports");
    assert.deepEqual(recovers.a, [{ recovered: true, replayed: 4, reason: null, action: null, missed: 0 }]);
    assert.deepEqual(recovers.b, [{ recovered: true, replayed: 4, reason: null, action: null, missed: 0 }]);
    const subscribes = net.sent.filter((f) => f.type === "subscribe");
    assert.equal(subscribes.length, 1, "one frame for every room");
    assert.deepEqual(subscribes[0].rooms.map((r) => [r.room, r.since.seq]), [["bench:rec-a", 3], ["bench:rec-b", 3]]);
    await pub.publish("bench:rec-a", "a7");
    await until(() => got.a.length === 8 && got.b.length === 7, "replayed and live messages");
    assert.deepEqual(got.a, ["a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7"]);
    assert.deepEqual(got.b, ["b0", "b1", "b2", "b3", "b4", "b5", "b6"]);
  });

  test("more missed than the history holds: recovered false, history_trimmed, with an action", async () => {
    const net = flakyNetwork();
    const sub = make(small, net.WebSocket);
    const pub = make(small, WebSocket);
    await Promise.all([sub.connect(), pub.connect()]);
    const got = [];
    const recovers = [];
    const s = sub.subscribe("bench:trim", { onMessage: (d) => got.push(d), onRecover: (i) => recovers.push(i) });
    await s.ready;
    await pub.publish("bench:trim", 0);
    await until(() => got.length === 1, "the first message");
    const down = once(sub, "reconnect");
    net.cut();
    await down;
    for (let i = 1; i <= 5; i++) await pub.publish("bench:trim", i);
    net.restore();
    await connected(sub);
    await until(() => recovers.length === 1, "the recovery report");
    assert.equal(recovers[0].recovered, false);
    assert.equal(recovers[0].reason, "history_trimmed");
    assert.match(recovers[0].action, /Required action/);
    assert.equal(s.seq, 6);
    await pub.publish("bench:trim", 6);
    await until(() => got.length === 2, "the next live message");
    assert.deepEqual(got, [0, 6]);
  });

  test("a publish whose ack is lost is retried with its key: applied exactly once", async () => {
    const net = flakyNetwork();
    const publisher = make(server, net.WebSocket);
    const watcher = make(server, WebSocket);
    await Promise.all([publisher.connect(), watcher.connect()]);
    const seen = [];
    const w = watcher.subscribe("bench:key-real", { onMessage: (d, m) => seen.push([d, m.seq]) });
    await w.ready;
    net.cutAfterSend = (f) => f.type === "publish";
    const reconnect = once(publisher, "reconnect");
    const acked = publisher.publish("bench:key-real", "once");
    await reconnect;
    net.restore();
    const ack = await acked;
    const sent = net.sent.filter((f) => f.type === "publish");
    assert.equal(sent.length, 2);
    assert.equal(sent[0].key, sent[1].key);
    await watcher.publish("bench:key-real", "after");
    await until(() => seen.some(([d]) => d === "after"), "the watcher's next message");
    assert.deepEqual(seen, [["once", ack.seq], ["after", ack.seq + 1]]);
  });
});
