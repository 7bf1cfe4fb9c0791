// Domain helpers against a real rtserver with a database: quotes (state,
// edit, conflict), analytics stream (restarted after a worker SIGKILL),
// admin monitoring, notifications (list, ack, live, de-duplicated).
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, afterEach, before, describe, test } from "node:test";
import { RtClient, RtError } from "../src/rtserver-client.js";
import { Server, WebSocket, closeAll, connected, psql, recordingLogger, rtserverCli, tempDatabase,
         token, track, until } from "./harness.js";

afterEach(closeAll);

describe("domain helpers (real server, real PostgreSQL)", () => {
  let db;
  let server;
  before(async () => {
    db = tempDatabase();
    server = new Server({ workers: 2, heartbeat: 0.5, database: db.dsn, analyticsInterval: 0.5 });
    await server.start();
  });
  after(async () => {
    await server?.dispose();
    db?.drop();
  });

  const client = (perms, rooms = [], user = randomUUID()) => track(new RtClient({
    url: server.url, WebSocket, logger: recordingLogger(), reconnect: { minDelay: 50, maxDelay: 300 },
    heartbeatInterval: 500, getToken: async () => token({ user, perms, rooms }) }));

  test("quotes: state, edit acked, a stale base version conflicts with the winner's value", async () => {
    const quoteId = psql(db.name, "INSERT INTO quotes (state, status, fields) VALUES ('CA', 'draft', '{}') RETURNING id").split("\n")[0];
    const a = client(["quote:read", "quote:write"], ["quote:*"]);
    const b = client(["quote:read", "quote:write"], ["quote:*"]);
    await Promise.all([a.connect(), b.connect()]);
    const updates = [];
    const qa = a.quotes.subscribe(quoteId);
    const qb = b.quotes.subscribe(quoteId, { onUpdate: (f) => updates.push(f) });
    const [state] = await Promise.all([qa.ready, qb.ready]);
    assert.equal(state.id, quoteId);
    assert.equal(qa.version, 1);
    assert.ok("driver_name" in qa.editableFields);
    assert.throws(() => a.subscribe(`quote:${quoteId}`), (e) => e.code === "duplicate_subscription");
    const ack = await qa.edit("driver_name", "Ann");
    assert.equal(ack.version, 2);
    await until(() => updates.length === 1, "B's field_update");
    assert.equal(qb.version, 2);
    assert.equal(qb.quote.fields.driver_name, "Ann");
    await assert.rejects(qb.edit("driver_name", "Bob", { baseVersion: 1 }), (e) => {
      assert.ok(e instanceof RtError);
      assert.equal(e.code, "conflict");
      assert.equal(e.details.current_value, "Ann");
      assert.equal(e.details.current_version, 2);
      assert.match(e.action, /^Required action:/);
      return true;
    });
    await assert.rejects(qa.edit("no_such_field", 1), (e) => e.code === "validation_error" && e.details.field === "no_such_field");
  });

  test("analytics: start, updates, restarted after the workers are SIGKILLed, stop", async () => {
    const c = client(["analytics:read"]);
    await c.connect();
    const updates = [];
    const stream = c.analytics.start("quotes", { hours: 24 }, { onUpdate: (f) => updates.push(f) });
    const started = await stream.ready;
    assert.equal(started.dashboard, "quotes");
    await until(() => updates.length >= 1, "an analytics_update");
    assert.equal(typeof updates[0].data.total_quotes, "number");
    assert.throws(() => c.analytics.start("quotes", { hours: 1 }), (e) => e.code === "duplicate_stream");
    const listening = server.events("listening").length;
    for (const pid of server.workerPids()) process.kill(pid, "SIGKILL");
    await until(() => c.state !== "connected", "the disconnect");
    await server.waitListening(listening, 2);
    await connected(c);
    const before = updates.length;
    await until(() => updates.length > before, "an update on the new connection");
    const stopped = await stream.stop();
    assert.equal(stopped.dashboard, "quotes");
  });

  test("admin monitoring: stream_started, system_metrics, stop", async () => {
    const c = client(["admin:monitor"]);
    await c.connect();
    const metrics = [];
    const mon = c.admin.startMonitoring({ interval: 1, onMetrics: (m) => metrics.push(m) });
    const started = await mon.ready;
    assert.equal(started.stream, "monitoring");
    await until(() => metrics.length >= 1, "system_metrics");
    assert.equal(typeof metrics[0].uptime, "number");
    const alerts = await c.admin.alertsList();
    assert.ok(Array.isArray(alerts.alerts));
    assert.equal((await mon.stop()).stream, "monitoring");
    const denied = client([]);
    await denied.connect();
    const s = denied.admin.startMonitoring({ interval: 1 });
    await assert.rejects(s.ready, (e) => e.code === "forbidden");
  });

  test("admin cluster: cluster_started, cluster_status pushes of both workers, stop", async () => {
    const c = client(["admin:monitor"]);
    await c.connect();
    const docs = [];
    const feed = c.admin.startCluster({ onStatus: (d) => docs.push(d) });
    const started = await feed.ready;
    assert.equal(typeof started.interval, "number");
    await until(() => docs.some((d) => Object.keys(d.workers ?? {}).length === 2), "a push with both workers");
    const doc = docs.at(-1);
    assert.ok(doc.workers["0"].delivery_latency && doc.workers["1"].latency);
    assert.equal((await feed.stop()).was_running, true);
    const denied = client([]);
    await denied.connect();
    await assert.rejects(denied.admin.startCluster().ready, (e) => e.code === "forbidden");
  });

  test("notifications: pending pushed at connect, live, list and ack", async () => {
    const user = randomUUID();
    rtserverCli("notify", "--database", db.dsn, "--user", user, "--title", "first", "--body", "while away");
    const c = client([], [], user);
    const got = [];
    c.notifications.onNotification((n) => got.push(n));
    await c.connect();
    await until(() => got.length === 1, "the pending notification");
    assert.equal(got[0].title, "first");
    rtserverCli("notify", "--database", db.dsn, "--user", user, "--title", "second", "--body", "live");
    await until(() => got.length === 2, "the live notification");
    const page = await c.notifications.list({ unreadOnly: true, limit: 10 });
    assert.deepEqual(page.items.map((n) => n.title), ["second", "first"]);
    const acked = await c.notifications.ack(got[0].id);
    assert.equal(acked.notification_id, got[0].id);
    const unread = await c.notifications.list({ unreadOnly: true, limit: 10 });
    assert.deepEqual(unread.items.map((n) => n.title), ["second"]);
    await assert.rejects(c.notifications.ack(999999999), (e) => e.code === "not_found");
  });
});
