// The SDK's close-code table agrees with the server's RECONNECT table.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { CLOSE_POLICY } from "../src/rtserver-client.js";
import { REPO } from "./harness.js";

test("every code in rtserver/protocol/close_codes.py RECONNECT has the same policy here", () => {
  const py = readFileSync(join(REPO, "rtserver/protocol/close_codes.py"), "utf8");
  const codes = Object.fromEntries([...py.matchAll(/^\s+(\w+) = (\d{4})$/gm)].map((m) => [m[1], Number(m[2])]));
  const table = py.slice(py.indexOf("RECONNECT: dict"), py.indexOf("}", py.indexOf("RECONNECT: dict")));
  const rows = [...table.matchAll(/CloseCode\.(\w+): "(\w+)"/g)];
  assert.ok(rows.length >= 8, "parsed the server's table");
  for (const [, name, policy] of rows) {
    assert.ok(codes[name] !== undefined, `close code ${name}`);
    assert.equal(CLOSE_POLICY[codes[name]], policy, `close code ${name} (${codes[name]})`);
  }
});
