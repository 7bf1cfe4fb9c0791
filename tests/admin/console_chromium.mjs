// The admin console in real Chromium (Debian's /usr/bin/chromium, driven by playwright-core
// from clients/js/node_modules), run by tests/admin/test_console_chromium.py.
//
// The Python side owns the server, the test clients, Redis and PostgreSQL; this script owns
// the browser. They talk in JSON lines: this script writes {"step": name, ...} on stdout and
// waits for the answer line on stdin ({"ok": true, ...} or {"ok": false, "error": ...}).
// Any console error, page error, failed request or HTTP error answer fails the run.
//
// env: CONSOLE_URL (http://127.0.0.1:PORT), OPERATOR_TOKEN, READONLY_TOKEN, ARTIFACTS (dir),
//      SCENARIO ("single": panels and actions, the cluster panels from pushes, and the
//      explicit polling while the WebSocket is down; "workers": publish accepted -> delivered
//      latency of both workers, a SIGKILLed worker turns stale and comes back respawned;
//      "link": the single-use link of `rtserver admin-url` in LINK_URL logs in once and is
//      refused in a new page; the quote activity panel shows an edit).

import { createRequire } from "node:module";
import { mkdirSync } from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "..", "..", "clients", "js", "package.json"));
const { chromium } = require("playwright-core");

const BASE = process.env.CONSOLE_URL;
const ARTIFACTS = process.env.ARTIFACTS;
const SCENARIO = process.env.SCENARIO ?? "single";
const TIMEOUT = 20000;
if (!BASE || !ARTIFACTS || !process.env.OPERATOR_TOKEN) {
  throw new Error("CONSOLE_URL, ARTIFACTS and OPERATOR_TOKEN are required (set by the pytest wrapper)");
}
mkdirSync(ARTIFACTS, { recursive: true });

const lines = readline.createInterface({ input: process.stdin });
const answers = lines[Symbol.asyncIterator]();

/** Ask the Python side to do something; resolves with its answer. */
async function step(name, fields = {}) {
  process.stdout.write(JSON.stringify({ step: name, ...fields }) + "\n");
  const { value, done } = await answers.next();
  if (done) throw new Error(`stdin closed while waiting for ${name}`);
  const answer = JSON.parse(value);
  if (!answer.ok) throw new Error(`step ${name} failed on the Python side: ${answer.error}`);
  return answer;
}

const problems = [];
/** GET /admin/cluster requests made by any page (the console reads it only while its
 * WebSocket is down). */
const clusterReads = [];
/** Every page opened, for the failure screenshots. */
const pages = [];

/**
 * A page that records every console error, page error, failed request and HTTP error, except
 * a 401 from a URL ending in one of `expected401` (and Chromium's console line about it).
 */
async function watchedPage(browser, expected401 = []) {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  pages.push(page);
  page.on("console", (msg) => process.stderr.write(`[page ${msg.type()}] ${msg.text()}\n`));
  const expected = (url, status) => status === 401 && expected401.some((end) => url.endsWith(end));
  page.on("console", (msg) => {
    if (msg.type() !== "error") return;
    if (expected(msg.location()?.url ?? "", 401) && msg.text().includes("status of 401")) return;
    problems.push(`console error: ${msg.text()}`);
  });
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  page.on("requestfailed", (req) => problems.push(`request failed: ${req.url()} ${req.failure()?.errorText}`));
  page.on("response", (res) => {
    if (res.status() >= 400 && !expected(res.url(), res.status())) problems.push(`HTTP ${res.status()}: ${res.url()}`);
  });
  page.on("request", (req) => { if (new URL(req.url()).pathname === "/admin/cluster") clusterReads.push(req.url()); });
  return { context, page };
}

function check(condition, message) {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}

async function polls(page) {
  return Number(await page.evaluate(() => document.body.dataset.polls ?? "0"));
}

async function waitPolls(page, n) {
  const start = await polls(page);
  await page.waitForFunction((target) => Number(document.body.dataset.polls ?? "0") >= target, start + n);
}

async function clusterPushes(page) {
  return Number(await page.evaluate(() => document.body.dataset.clusterPushes ?? "0"));
}

/**
 * The console's WebSocket through a route the test can cut: while `wsRoute.blocked`, the
 * open socket is closed (1012) and every reconnect attempt is closed at once.
 */
const wsRoute = { blocked: false, open: /** @type {any[]} */ ([]) };
async function routeSockets(page) {
  await page.routeWebSocket(/\/ws(\?|$)/, (ws) => {
    if (wsRoute.blocked) { ws.close({ code: 1012, reason: "blocked by the test" }); return; }
    ws.connectToServer();
    wsRoute.open.push(ws);
  });
}

async function login(browser, token, { route = false } = {}) {
  const { context, page } = await watchedPage(browser);
  if (route) await routeSockets(page);
  await page.goto(`${BASE}/admin/#token=${token}`);
  await page.waitForFunction(() => document.body.dataset.screen === "console");
  check(!page.url().includes("token="), "the token left the address bar");
  await page.waitForFunction(() => document.body.dataset.ws === "connected");
  await waitPolls(page, 1);
  return { context, page };
}

async function single(browser) {
  // Login screen without a token, then a token that lacks admin:monitor.
  {
    const { context, page } = await watchedPage(browser);
    await page.goto(`${BASE}/admin/`);
    await page.waitForFunction(() => document.body.dataset.screen === "login");
    await page.screenshot({ path: path.join(ARTIFACTS, "login.png") });
    await context.close();
  }
  // Read-only: every panel, no action.
  {
    const { context, page } = await login(browser, process.env.READONLY_TOKEN);
    check((await page.textContent("#mode")) === "read-only", "read-only badge");
    check(await page.isHidden("#disconnect-controls"), "no disconnect controls for read-only");
    await step("raise_alert");
    await page.waitForSelector("[data-testid^='alert-row-']");
    check((await page.$$("[data-testid^='resolve-']")).length === 0, "no resolve buttons for read-only");
    await page.fill("#conn-query", (await step("victim_user")).user);
    await page.click("#conn-form button[type=submit]");
    await page.waitForSelector("[data-testid='connections-table'] tbody tr");
    check((await page.$$("[data-testid^='disconnect-']")).length === 0, "no disconnect buttons for read-only");
    await page.screenshot({ path: path.join(ARTIFACTS, "read-only.png"), fullPage: true });
    await context.close();
  }
  // Operator: live counters and latency while a client publishes, all from pushes.
  const { context, page } = await login(browser, process.env.OPERATOR_TOKEN, { route: true });
  check((await page.textContent("#mode")) === "operator", "operator badge");
  await waitPolls(page, 1);
  const readsWhileUp = clusterReads.length;
  // Read together: every chart point below comes from one applied document.
  const [pushesBefore, latencyBefore] = await page.evaluate(() => [
    Number(document.body.dataset.clusterPushes ?? "0"), Number(document.body.dataset.latencyPoints ?? "0")]);
  await step("publish_start");
  await page.waitForFunction(() => {
    const b = document.querySelector("[data-testid='counter-publications'] b");
    return b !== null && Number(b.textContent) > 0;
  });
  await page.waitForFunction((before) => Number(document.body.dataset.latencyPoints ?? "0") >= before + 4, latencyBefore);
  // With the Redis bus every worker of every node is listed, keyed by its Redis node id.
  const statusCell = "#cluster-rows [data-testid^='worker-'][data-testid$='-status']";
  await page.waitForSelector(statusCell);
  const wid = await page.evaluate((sel) => document.querySelector(sel)?.getAttribute("data-testid")?.slice(7, -7), statusCell);
  await page.waitForFunction((id) => document.querySelector(`[data-testid='worker-${id}-status']`)?.textContent === "ok", wid);
  // Each worker's row names its node (host:supervisor pid, or host:pid of a process of its own).
  const workerNode = await page.textContent(`[data-testid='worker-${wid}-node']`);
  check(/^\S+:\d+$/.test(workerNode ?? ""), `worker ${wid}'s row names its node: ${workerNode}`);
  await page.waitForFunction((id) => /\d/.test(document.querySelector(`[data-testid='delivery-${id}-p99']`)?.textContent ?? ""), wid);
  const { published, history_size: historySize, rate_window: rateWindow } = await step("publish_stop");
  await page.screenshot({ path: path.join(ARTIFACTS, "console.png"), fullPage: true });
  // The panels changed from cluster_status pushes (a read still in flight from before the
  // WebSocket was up may land too; none is made while it is up, checked below).
  await page.waitForFunction((n) => Number(document.body.dataset.clusterPushes ?? "0") >= n, pushesBefore + 4);
  check(clusterReads.length === readsWhileUp,
        `no GET /admin/cluster while the WebSocket was up (${clusterReads.length - readsWhileUp} made)`);
  check((await page.evaluate(() => document.body.dataset.ws)) === "connected", "the WebSocket stayed up");
  check(await page.isHidden("#push-state"), "no 'pushes down' notice while the WebSocket is up");

  // The WebSocket down: the page says so and reads /admin/cluster once per interval.
  wsRoute.blocked = true;
  for (const ws of wsRoute.open.splice(0)) await ws.close({ code: 1012, reason: "cut by the test" });
  await page.waitForFunction(() => /Live pushes down.*polling \/admin\/cluster/.test(
    document.querySelector("[data-testid='push-state']")?.textContent ?? ""));
  const readsBefore = clusterReads.length;
  const appliedBefore = await polls(page);
  await page.waitForFunction((n) => Number(document.body.dataset.polls ?? "0") >= n, appliedBefore + 2);
  check(clusterReads.length >= readsBefore + 2, "polling /admin/cluster while the WebSocket is down");
  await page.screenshot({ path: path.join(ARTIFACTS, "pushes-down.png"), fullPage: true });
  wsRoute.blocked = false;
  await page.waitForFunction(() => document.body.dataset.ws === "connected", null, { timeout: 30000 });
  await page.waitForFunction(() => document.querySelector("[data-testid='push-state']")?.hidden === true);
  const pushesBack = await clusterPushes(page);
  await page.waitForFunction((n) => Number(document.body.dataset.clusterPushes ?? "0") >= n, pushesBack + 1);

  // Rooms: the publisher's room with its messages/s, last seq and history depth.
  const roomLoads = Number(await page.evaluate(() => document.body.dataset.roomLoads ?? "0"));
  await page.fill("#room-query", "bench:console");
  await page.click("#room-form button[type=submit]");
  await page.waitForFunction((n) => Number(document.body.dataset.roomLoads ?? "0") > n, roomLoads);
  const rateCell = await page.waitForSelector("[data-testid='rate-bench:console']");
  const rate = Number(await rateCell.getAttribute("data-rate"));
  check(rate > 0 && rate <= published / rateWindow + 1e-9, `msgs/s ${rate} for ${published} publications`);
  const held = Number(await page.getAttribute("[data-testid='history-bench:console']", "data-held"));
  check(held === Math.min(published, historySize), `history depth ${held} (${published} published, size ${historySize})`);
  const historyText = await page.textContent("[data-testid='history-bench:console']");
  check(historyText.includes(`seq ${published - held + 1}..${published}`), `history seqs shown: ${historyText}`);
  check((await page.textContent("[data-testid='rooms-table'] tbody")).includes(String(published)), "last seq shown");
  check(/answered by worker\(s\) \S+ \(1 of 1\); every node \(Redis\)/.test(await page.textContent("[data-testid='rooms-coverage']")), "rooms coverage shown");
  await page.screenshot({ path: path.join(ARTIFACTS, "rooms.png"), fullPage: true });

  // Rooms: search, then a room's presence list (the console itself is in admin:alerts).
  await page.fill("#room-query", "admin:");
  await page.click("#room-form button[type=submit]");
  await page.click("[data-testid='presence-admin:alerts']");
  await page.waitForFunction(() => /admin:alerts: [1-9]\d* present.*answered by worker\(s\) \S+ \(1 of 1\)/.test(
    document.querySelector("[data-testid='presence']")?.textContent ?? ""));

  // Disconnect a user from the page: the Python side checks the close code.
  const { user } = await step("victim_user");
  await page.fill("#conn-query", user);
  await page.click("#conn-form button[type=submit]");
  await page.waitForSelector("[data-testid^='disconnect-']");
  // Its state history: accepted, then authenticated by its token.
  const states = await page.textContent("[data-testid^='state-history-']");
  check(/^connecting .+ → authenticated .+$/.test(states), `state history shown: ${states}`);
  await page.screenshot({ path: path.join(ARTIFACTS, "connection.png"), fullPage: true });
  await page.selectOption("#close-code", "4000");
  await page.fill("#close-reason", "closed from the console");
  await page.click("#disconnect-user");
  await page.waitForFunction(() => document.body.dataset.lastAction === "sent");
  await step("victim_closed", { code: 4000, reason: "closed from the console" });

  // A Redis outage appears live; resolved from the page with a comment.
  await step("stop_redis");
  const row = await page.waitForSelector("[data-testid^='alert-row-']:has-text('component_degraded')");
  const id = (await row.getAttribute("data-testid")).replace("alert-row-", "");
  check(/^\d+$/.test(id), `the outage alert is stored (row ${id})`);
  await page.screenshot({ path: path.join(ARTIFACTS, "alert.png"), fullPage: true });
  await page.fill(`[data-testid='resolve-comment-${id}']`, "redis restarted by the test");
  await page.click(`[data-testid='resolve-${id}']`);
  await page.waitForSelector(`[data-testid='alert-row-${id}']`, { state: "detached" });
  await page.waitForFunction(() => [...document.querySelectorAll("[data-testid='audit-table'] td")]
    .some((td) => td.textContent === "admin_resolve_alert"));
  await page.screenshot({ path: path.join(ARTIFACTS, "audit.png"), fullPage: true });
  await context.close();
  return { resolved_alert: Number(id) };
}

async function workers(browser) {
  const { context, page } = await login(browser, process.env.OPERATOR_TOKEN);
  for (const w of ["0", "1"]) {
    await page.waitForFunction((id) => document.querySelector(`[data-testid='worker-${id}-status']`)?.textContent === "ok", w);
  }
  // Published on both workers, delivered by both: accepted -> delivered of each worker.
  await step("publish_across");
  for (const w of ["0", "1"]) {
    await page.waitForFunction((id) => /\d/.test(
      document.querySelector(`[data-testid='delivery-${id}-p99']`)?.textContent ?? ""), w);
  }
  await step("publish_stop");
  await page.screenshot({ path: path.join(ARTIFACTS, "delivery-latency.png"), fullPage: true });
  const { worker } = await step("kill_worker");
  // The rooms answer names the worker that cannot answer (never a silently partial list).
  const roomLoads = Number(await page.evaluate(() => document.body.dataset.roomLoads ?? "0"));
  await page.click("#room-form button[type=submit]");
  await page.waitForFunction((n) => Number(document.body.dataset.roomLoads ?? "0") > n, roomLoads);
  const coverage = await page.textContent("[data-testid='rooms-coverage']");
  check(coverage.includes(`NOT ANSWERING: ${worker}`), `the rooms panel names worker ${worker}: ${coverage}`);
  await page.waitForFunction((id) =>
    document.querySelector(`[data-testid='worker-${id}-status']`)?.textContent === "stale", String(worker));
  await page.screenshot({ path: path.join(ARTIFACTS, "worker-stale.png"), fullPage: true });
  // Respawned by the supervisor: answering again, with one restart counted.
  await page.waitForFunction((id) => {
    const row = document.querySelector(`[data-testid='worker-${id}-status']`)?.closest("tr");
    return row?.querySelector("td:nth-child(3)")?.textContent === "ok" && row.lastElementChild?.textContent === "1";
  }, String(worker), { timeout: 60000 });
  await page.screenshot({ path: path.join(ARTIFACTS, "worker-respawned.png"), fullPage: true });
  await context.close();
  return { worker };
}

async function link(browser) {
  const url = process.env.LINK_URL;
  check(url && url.includes("/admin/#token="), `LINK_URL is a login link (${url})`);
  // First open: the link's token is exchanged once for a session token.
  const { context, page } = await watchedPage(browser);
  await page.goto(url);
  await page.waitForFunction(() => document.body.dataset.screen === "console");
  check(!page.url().includes("token="), "the link's token left the address bar");
  const kept = await page.evaluate(() => sessionStorage.getItem("rtserver-admin-token"));
  check(kept !== null && !url.endsWith(kept), "the session token is kept, not the link's");
  await page.waitForFunction(() => document.body.dataset.ws === "connected");
  // Quote activity: a test client edits a quote and the row appears.
  await page.waitForFunction(() => document.body.dataset.quoteActivity === "live");
  const { quote_id: quote, version, user } = await step("edit_quote");
  const row = await page.waitForSelector(`[data-testid='quote-activity-${quote}-${version}']`);
  const cells = await row.$$eval("td", (tds) => tds.map((td) => td.textContent));
  check(cells[1] === quote && cells[2] === "edit of driver_name" && cells[3] === String(version) &&
        cells[4] === user, `the quote activity row (${cells})`);
  await page.screenshot({ path: path.join(ARTIFACTS, "quote-activity.png"), fullPage: true });
  // A reload keeps the session (sessionStorage); the link is not used again.
  await page.reload();
  await page.waitForFunction(() => document.body.dataset.screen === "console");
  // Opened again in a new page: refused, with the screen that says so.
  const again = await watchedPage(browser, ["/admin/session/exchange"]);
  await again.page.goto(url);
  await again.page.waitForFunction(() => document.body.dataset.screen === "denied");
  check(await again.page.evaluate(() => document.body.dataset.denied) === "link_already_used",
        "refused as already used");
  check((await again.page.textContent("#denied-title")) === "Login link already used", "the title");
  const text = await again.page.textContent("#denied-text");
  check(text.includes("already used at") && text.includes("rtserver admin-url"), `the text (${text})`);
  check(!again.page.url().includes("token="), "the refused link's token left the address bar too");
  await again.page.screenshot({ path: path.join(ARTIFACTS, "link-already-used.png"), fullPage: true });
  await again.context.close();
  await context.close();
  return {};
}

const SCENARIOS = { single, workers, link };

const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
let result;
try {
  const scenario = SCENARIOS[SCENARIO];
  if (scenario === undefined) throw new Error(`unknown SCENARIO ${SCENARIO}`);
  result = await scenario(browser);
} catch (err) {
  for (const [i, page] of pages.entries()) {
    if (page.isClosed()) continue;
    await page.screenshot({ path: path.join(ARTIFACTS, `failure-${i}.png`), fullPage: true });
    process.stderr.write(`page ${i} dataset: ${JSON.stringify(await page.evaluate(() => ({ ...document.body.dataset })))}\n`);
  }
  process.stderr.write(`problems so far:\n${problems.join("\n")}\n`);
  throw err;
} finally {
  await browser.close();
}
if (problems.length) throw new Error(`the page reported problems:\n${problems.join("\n")}`);
process.stdout.write(JSON.stringify({ done: true, ...result }) + "\n");
lines.close();
