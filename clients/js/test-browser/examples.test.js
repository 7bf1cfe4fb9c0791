// The examples in real Chromium (Debian's /usr/bin/chromium driven by
// playwright-core) against a real rtserver (--workers 2 --dev --database):
// collaborative editing in two pages (live update, focus, conflict),
// notifications (catch-up, live, read), and a server restart under an open page.
// Screenshots go to clients/js/artifacts/; any console error fails the test.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { chromium } from "playwright-core";
import { RtClient } from "../src/rtserver-client.js";
import { REPO, Server, WebSocket, psql, recordingLogger, rtserverCli, token } from "../test/harness.js";

const CHROMIUM = process.env.RTSERVER_CHROMIUM ?? "/usr/bin/chromium";
const ARTIFACTS = join(REPO, "clients/js/artifacts");
const rtserver = rtserverCli;

describe("examples in real Chromium", () => {
  const dbName = `rtsjs_${randomUUID().replace(/-/g, "").slice(0, 12)}`;
  const dsn = `${process.env.RTSERVER_TEST_PG ?? "postgresql://postgres@127.0.0.1:5432"}/${dbName}`;
  let server;
  let browser;
  /** Console errors by page; allowed: a refused WebSocket while a test keeps the server down. */
  const consoleErrors = [];
  let serverDown = false;

  before(async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    psql("postgres", `CREATE DATABASE "${dbName}" TEMPLATE template0 ENCODING 'UTF8'`);
    rtserver("migrate", "--database", dsn);
    // The pages are served by the server itself: its own origin is the allowed one.
    server = new Server({ workers: 2, heartbeat: 1.0, database: dsn, dev: true, sameOrigin: true,
                         analyticsInterval: 0.5 });
    await server.start();
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  });

  after(async () => {
    await browser?.close();
    await server?.dispose();
    psql("postgres", `DROP DATABASE IF EXISTS "${dbName}" WITH (FORCE)`);
    const unexpected = consoleErrors.filter((e) => !e.allowed);
    assert.deepEqual(unexpected, [], "console errors in the example pages");
  });

  async function open(name, page, query) {
    const p = await (page ?? browser).newPage();
    p.on("console", (m) => {
      if (m.type() !== "error") return;
      const allowed = serverDown && /WebSocket connection to 'ws:\/\/127\.0\.0\.1:\d+\/ws' failed/.test(m.text());
      consoleErrors.push({ page: name, text: m.text(), allowed });
    });
    p.on("pageerror", (e) => consoleErrors.push({ page: name, text: String(e), allowed: false }));
    await p.goto(`${server.http}/examples/${query}`);
    return p;
  }
  const state = (p) => p.locator('[data-testid="state"]');

  function newQuote() {
    return psql(dbName, "INSERT INTO quotes (state, status, fields) VALUES ('CA', 'draft', '{}') RETURNING id").split("\n")[0];
  }
  const editorToken = (user) => token({ user, perms: ["quote:read", "quote:write"], rooms: ["quote:*"] });

  test("collaborative editing: live update, focus indicator, conflict for the loser", async () => {
    const quote = newQuote();
    const ctxA = await browser.newContext();
    const ctxB = await browser.newContext();
    const a = await open("A", ctxA, `quote-editing.html?token=${editorToken(randomUUID())}&quote=${quote}`);
    const b = await open("B", ctxB, `quote-editing.html?token=${editorToken(randomUUID())}&quote=${quote}`);
    for (const p of [a, b]) {
      await state(p).filter({ hasText: "connected" }).waitFor();
      await p.locator('[data-testid="field-driver_name"]').waitFor({ timeout: 10000 }).catch(async (e) => {
        throw new Error(`${e.message}\npage: ${await p.textContent("body")}\nconsole: ${JSON.stringify(consoleErrors)}`);
      });
    }
    // Live update: A edits, B sees it.
    await a.fill('[data-testid="field-driver_name"]', "Alice");
    await a.press('[data-testid="field-driver_name"]', "Tab");
    await b.waitForFunction(() => document.querySelector('[data-testid="field-driver_name"]').value === "Alice");
    assert.equal(await b.textContent('[data-testid="version"]'), "2");
    // Focus indicator: A is on notes, B sees who.
    await a.focus('[data-testid="field-notes"]');
    await b.locator('[data-testid="focus-notes"]').filter({ hasText: "is editing" }).waitFor();
    await a.screenshot({ path: join(ARTIFACTS, "quote-editing-a.png") });
    // Conflict: B starts editing driver_name at version 2; A saves driver_name meanwhile.
    await b.focus('[data-testid="field-driver_name"]');
    await a.fill('[data-testid="field-driver_name"]', "Alice 2");
    await a.press('[data-testid="field-driver_name"]', "Tab");
    await b.waitForFunction(() => document.querySelector('[data-testid="version"]').textContent === "3");
    await b.fill('[data-testid="field-driver_name"]', "Bob");
    await b.press('[data-testid="field-driver_name"]', "Tab");
    const banner = b.locator('[data-testid="conflict"]');
    await banner.waitFor();
    const text = await banner.textContent();
    assert.match(text, /Conflict on driver_name/);
    assert.match(text, /Required action:/);
    assert.equal(await b.inputValue('[data-testid="field-driver_name"]'), "Alice 2");
    await b.screenshot({ path: join(ARTIFACTS, "quote-editing-b-conflict.png") });
    assert.equal(psql(dbName, `SELECT fields->>'driver_name' FROM quotes WHERE id = '${quote}'`), "Alice 2");
    await ctxA.close();
    await ctxB.close();
  });

  test("notifications: offline catch-up, live arrival, unread count", async () => {
    const user = randomUUID();
    const tok = token({ user, perms: [], rooms: [] });
    rtserver("notify", "--database", dsn, "--user", user, "--title", "While you were away", "--body", "catch-up");
    const p = await open("notifications", null, `notifications.html?token=${tok}`);
    await state(p).filter({ hasText: "connected" }).waitFor();
    await p.locator('[data-testid="unread"]').filter({ hasText: /^1$/ }).waitFor();
    assert.match(await p.textContent('[data-testid="list"]'), /While you were away/);
    rtserver("notify", "--database", dsn, "--user", user, "--title", "Live one", "--body", "arrived now");
    await p.locator('[data-testid="unread"]').filter({ hasText: /^2$/ }).waitFor();
    assert.match(await p.textContent('[data-testid="list"]'), /Live one/);
    await p.locator("li", { hasText: "While you were away" }).click();
    await p.locator('[data-testid="unread"]').filter({ hasText: /^1$/ }).waitFor();
    await p.screenshot({ path: join(ARTIFACTS, "notifications.png") });
    const read = psql(dsn.endsWith(dbName) ? dbName : dbName,
                      `SELECT count(*) FROM notifications WHERE user_id = '${user}' AND read_at IS NOT NULL`);
    assert.equal(read, "1");
    await p.close();
  });

  test("analytics dashboard: the chart is drawn from the stream", async () => {
    for (let i = 0; i < 3; i++) newQuote();
    const tok = token({ perms: ["analytics:read"], rooms: [] });
    const p = await open("analytics", null, `analytics.html?token=${tok}`);
    await state(p).filter({ hasText: "connected" }).waitFor();
    await p.waitForFunction(() => Number(document.querySelector('[data-testid="total"]').textContent) >= 3);
    assert.ok(await p.locator('[data-testid="chart"] rect').count() >= 24);
    await p.screenshot({ path: join(ARTIFACTS, "analytics.png") });
    await p.close();
  });

  test("the server restarts under an open page: states shown, quote recovered", async () => {
    const quote = newQuote();
    const p = await open("restart", null, `quote-editing.html?token=${editorToken(randomUUID())}&quote=${quote}`);
    await state(p).filter({ hasText: "connected" }).waitFor();
    await p.locator('[data-testid="field-notes"]').waitFor();
    serverDown = true;
    await server.stop("SIGTERM");
    // The drain's 1012 is shown (then the refused attempts while the server is down: 1006).
    await p.locator("#events").filter({ hasText: "state disconnected (1012 service restart)" }).waitFor({ timeout: 10000 });
    await p.locator('[data-testid="last-close"]').filter({ hasText: /^10(06|12)/ }).waitFor();
    assert.notEqual(await state(p).textContent(), "connected");
    // Changed while the page was away (by a backend, straight in the database).
    psql(dbName, `UPDATE quotes SET fields = fields || '{"notes": "changed while away"}', version = version + 1 WHERE id = '${quote}'`);
    await p.screenshot({ path: join(ARTIFACTS, "restart-disconnected.png") });
    await server.start(server.port);
    serverDown = false;
    await state(p).filter({ hasText: /^connected$/ }).waitFor({ timeout: 15000 });
    await p.waitForFunction(() => document.querySelector('[data-testid="field-notes"]').value === "changed while away");
    assert.ok(Number(await p.textContent('[data-testid="attempts"]')) >= 1);
    assert.match(await p.textContent("#banner"), /reloaded at version 2/);
    // Live again: an edit from another client arrives.
    const other = new RtClient({ url: server.url, WebSocket, getToken: async () => editorToken(randomUUID()), logger: recordingLogger() });
    try {
      await other.connect();
      const q = other.quotes.subscribe(quote);
      await q.ready;
      await q.edit("notes", "live after restart");
    } finally {
      other.close();
    }
    await p.waitForFunction(() => document.querySelector('[data-testid="field-notes"]').value === "live after restart");
    await p.screenshot({ path: join(ARTIFACTS, "restart-recovered.png") });
    await p.close();
  });
});
