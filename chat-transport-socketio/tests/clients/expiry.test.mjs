// A token that expires while connected ends the connection, as 4401 does
// natively (section 10, "Auth"): a `close` event {code: 4401, reason}, then a
// server-side disconnect. The server keeps a session open for its expiry
// leeway (5 s) past the token's `exp`, so this takes about six seconds; both
// transports are tried at once.

import { after, test } from "node:test";
import assert from "node:assert/strict";
import * as L from "./lib.mjs";

after(L.closeAll);

test("a token expiring while connected ends the connection with close 4401", async () => {
  const started = Date.now();
  const exp = L.now() + 1;
  const one = async ({ label, options }) => {
    const user = L.uid("short");
    const socket = await L.connectToken(L.mint({ sub: user, exp }), options, `${user} (${label})`);
    // Still open past the expiry itself, within the leeway.
    await L.sleep(Math.max(0, (exp + 1) * 1000 - Date.now()));
    assert.equal(socket.connected, true, `${label}: still connected within the leeway`);
    await L.ok(socket, "ping");
    const close = await socket.inbox.take("close", () => true, 10_000);
    assert.equal(close.code, 4401, `${label}: ${JSON.stringify(close)}`);
    assert.match(close.reason, /expired/, `${label}: ${JSON.stringify(close)}`);
    assert.equal(await socket.inbox.take("disconnect"), "io server disconnect", label);
    assert.equal(socket.connected, false);
    return Date.now() - started;
  };
  const elapsed = await Promise.all(L.TRANSPORTS.map(one));
  for (const ms of elapsed) {
    assert.ok(ms >= 4000, `closed after ${ms} ms, before the expiry plus leeway`);
    assert.ok(ms <= 10_000, `closed after ${ms} ms`);
  }
});
