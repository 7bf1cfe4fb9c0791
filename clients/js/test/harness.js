// Test harness: a real rtserver (`python -m rtserver serve --workers 2`) on a
// loopback port, tokens signed with the test secret, small waiting helpers.
import { execFileSync, spawn } from "node:child_process";
import { createHmac, randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";

export { WebSocket };
// Real timers and clock, captured before any test enables mock timers.
const realSetTimeout = globalThis.setTimeout;
const realClearTimeout = globalThis.clearTimeout;
const realNow = () => performance.now();
const realDateNow = Date.now.bind(Date);
export const SECRET = "test-secret-0123456789abcdef-0123456789";
export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const PYTHON = process.env.RTSERVER_PYTHON ?? "python";

/** A JWT signed like `rtserver token` (HS256 with the test secret). */
export function token({ user = randomUUID(), perms = ["publish"], rooms = ["bench:*"], ttl = 3600 } = {}) {
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  const now = Math.floor(realDateNow() / 1000);
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64({ sub: user, exp: now + ttl, iat: now, perms, rooms });
  const sig = createHmac("sha256", SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/** The shipped configuration with test-sized heartbeats. */
function configFile(dir, { heartbeat = 1.0, idleTimeout = 60.0, dev = false, analyticsInterval = null,
                           origins = [], extra = (t) => t }) {
  let text = readFileSync(join(REPO, "rtserver/rtserver.toml"), "utf8");
  const set = (section, key, value) => {
    const re = new RegExp(`(\\[${section}\\][\\s\\S]*?\\n)${key} = [^\\n]*`);
    if (!re.test(text)) throw new Error(`config key ${section}.${key} not found in rtserver.toml`);
    text = text.replace(re, `$1${key} = ${value}`);
  };
  set("heartbeat", "interval", heartbeat.toFixed(2));
  set("heartbeat", "sweep_slices", "5");
  set("heartbeat", "idle_timeout", idleTimeout.toFixed(2));
  set("server", "shutdown_grace", "3.0");
  if (dev) set("server", "dev", "true");
  if (origins.length > 0) set("server", "allowed_origins", JSON.stringify(origins));
  if (analyticsInterval !== null) set("domain", "analytics_interval", analyticsInterval.toFixed(2));
  text = extra(text);
  const path = join(dir, "rtserver.toml");
  writeFileSync(path, text);
  return path;
}

// Servers still running when the test process exits are killed with it.
const running = new Set();
process.on("exit", () => {
  for (const proc of running) { try { proc.kill("SIGKILL"); } catch { /* already gone */ } }
});

/** Clients made by tests, closed by closeAll() (afterEach) even when a test failed. */
const clients = new Set();
export function track(client) { clients.add(client); return client; }
export function closeAll() { for (const c of clients) c.close(); clients.clear(); }

export class Server {
  /**
   * @param {{workers?: number, port?: number, heartbeat?: number, idleTimeout?: number,
   *          database?: string, dev?: boolean}} [options]
   */
  constructor(options = {}) {
    this.options = { workers: 2, port: 0, ...options };
    this.lines = [];
    this.port = 0;
    this.proc = null;
    this.dir = mkdtempSync(join(tmpdir(), "rtserver-js-"));
  }

  get url() { return `ws://127.0.0.1:${this.port}/ws`; }
  get http() { return `http://127.0.0.1:${this.port}`; }

  /**
   * Start and wait until every worker listens. With `sameOrigin` the port is
   * chosen first so that the server's own origin (its pages) may open WebSockets.
   */
  async start(port = this.options.port) {
    if (this.options.sameOrigin && port === 0) port = await freePort();
    const o = { ...this.options, origins: this.options.sameOrigin ? [`http://127.0.0.1:${port}`] : [] };
    const args = ["-m", "rtserver", "serve", "--workers", String(o.workers), "--port", String(port),
                  "--config", configFile(this.dir, o)];
    if (o.database) args.push("--database", o.database);
    if (o.dev) args.push("--dev");
    const env = { ...process.env, RTSERVER_JWT_SECRET: SECRET, PYTHONPATH: process.env.PYTHONPATH ?? REPO };
    delete env.RTSERVER_PORT;
    const proc = spawn(PYTHON, args, { cwd: REPO, env, stdio: ["ignore", "ignore", "pipe"] });
    this.proc = proc;
    running.add(proc);
    this.exited = new Promise((res) => proc.on("exit", (code, signal) => { running.delete(proc); res({ code, signal }); }));
    let pending = "";
    let listening = 0;
    const want = o.workers;
    await new Promise((res, rej) => {
      const timer = realSetTimeout(() => rej(new Error(`server did not start: ${JSON.stringify(this.lines.slice(-5))}`)), 30000);
      proc.stderr.on("data", (chunk) => {
        pending += chunk.toString();
        const parts = pending.split("\n");
        pending = parts.pop();
        for (const line of parts) {
          let rec;
          try { rec = JSON.parse(line); } catch { rec = { event: "raw", text: line }; }
          this.lines.push(rec);
          if (rec.event === "listening") {
            listening += 1;
            this.port = Number(rec.port);
            if (listening === want) { realClearTimeout(timer); res(); }
          }
        }
      });
      proc.on("exit", (code) => { realClearTimeout(timer); rej(new Error(`server exited ${code}: ${JSON.stringify(this.lines.slice(-5))}`)); });
    });
    return this.port;
  }

  events(name) { return this.lines.filter((r) => r.event === name); }

  /** Pids of the running workers (from the supervisor's worker_started lines). */
  workerPids() {
    const latest = new Map();
    for (const r of this.events("worker_started")) latest.set(r.worker_id, r.pid);
    return [...latest.values()];
  }

  /** Wait for `n` more "listening" lines than `before` (respawned workers). */
  async waitListening(before, n, timeout = 20000) {
    const t0 = realNow();
    while (this.events("listening").length < before + n) {
      if (realNow() - t0 > timeout) throw new Error("workers did not listen again");
      await sleep(50);
    }
  }

  /** SIGTERM (graceful drain, close 1012) and wait for the exit. */
  async stop(signal = "SIGTERM") {
    if (this.proc === null || this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    this.proc.kill(signal);
    await this.exited;
  }

  async dispose() {
    await this.stop("SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export function sleep(ms) { return new Promise((r) => realSetTimeout(r, ms)); }

/** Poll `predicate` every 10 ms until true; fail with `what` after `timeout` ms. */
export async function until(predicate, what, timeout = 10000) {
  const t0 = realNow();
  while (!predicate()) {
    if (realNow() - t0 > timeout) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** Resolves with the first payload of `event` that matches. */
export function once(client, event, match = () => true, timeout = 15000) {
  return new Promise((res, rej) => {
    const timer = realSetTimeout(() => { off(); rej(new Error(`no ${event} event within ${timeout} ms`)); }, timeout);
    const off = client.on(event, (payload) => {
      if (!match(payload)) return;
      realClearTimeout(timer);
      off();
      res(payload);
    });
  });
}

/** A logger that records lines (and prints nothing). */
export function recordingLogger() {
  const lines = [];
  const rec = (level) => (msg, fields) => lines.push({ level, msg, fields });
  return { lines, debug: rec("debug"), info: rec("info"), warn: rec("warn"), error: rec("error") };
}

/** Resolves when the client is (or becomes) connected. */
export function connected(client, timeout = 15000) {
  if (client.state === "connected") return Promise.resolve();
  return once(client, "state", (s) => s.state === "connected", timeout);
}

const PG = process.env.RTSERVER_TEST_PG ?? "postgresql://postgres@127.0.0.1:5432";

/** psql -At -c SQL on database `db` of the test PostgreSQL; returns the output. */
export function psql(db, sql) {
  return execFileSync("psql", [`${PG}/${db}`, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql],
                      { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }).trim();
}

/** `python -m rtserver ARGS` with the test secret; returns stdout. */
export function rtserverCli(...args) {
  return execFileSync(PYTHON, ["-m", "rtserver", ...args], {
    cwd: REPO, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, RTSERVER_JWT_SECRET: SECRET, PYTHONPATH: process.env.PYTHONPATH ?? REPO } });
}

/** A fresh, migrated database: {name, dsn, drop()}. */
export function tempDatabase() {
  const name = `rtsjs_${randomUUID().replace(/-/g, "").slice(0, 12)}`;
  psql("postgres", `CREATE DATABASE "${name}" TEMPLATE template0 ENCODING 'UTF8'`);
  const dsn = `${PG}/${name}`;
  rtserverCli("migrate", "--database", dsn);
  return { name, dsn, drop: () => psql("postgres", `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`) };
}

/**
 * A WebSocket class whose network a test can cut: `cut()` drops the current
 * connection (1006) and refuses new ones until `restore()`; `sent` records
 * every frame sent; `cutAfterSend(frame)` returning true cuts right after
 * that frame was handed to the socket (its reply is lost).
 */
export function flakyNetwork() {
  const net = { offline: false, sent: [], current: null, cutAfterSend: null };
  class FlakyWebSocket extends WebSocket {
    constructor(url) {
      super(net.offline ? "ws://127.0.0.1:9/ws" : url);
      net.current = this;
    }
    send(data) {
      const frame = JSON.parse(data);
      net.sent.push(frame);
      super.send(data);
      if (net.cutAfterSend !== null && net.cutAfterSend(frame)) {
        net.cutAfterSend = null;
        net.cut();
      }
    }
  }
  net.WebSocket = FlakyWebSocket;
  net.cut = () => { net.offline = true; net.current?.terminate(); };
  net.restore = () => { net.offline = false; };
  return net;
}

/** A free loopback port (bound and released). */
export function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once("error", rej);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}
