// Connecting and authenticating (section 10, "Auth", and the `ready` and
// `connection_status` that follow), over WebSocket only and over polling
// upgraded to WebSocket.

import { after, afterEach, describe, test } from "node:test";
import assert from "node:assert/strict";
import * as L from "./lib.mjs";

afterEach(L.closeAll);
after(L.closeAll);

/** The `connect_error` of a connection attempt, which must fail. */
async function refused(auth, options) {
  try {
    await L.openSocket(auth, options);
  } catch (err) {
    return err;
  }
  assert.fail(`the connection with ${JSON.stringify(auth)} was accepted`);
}

function assertUnauthorized(err, why) {
  assert.match(err.message, /^unauthorized/, `connect_error message: ${err.message}`);
  if (why) assert.match(err.message, why);
}

for (const { label, options } of L.TRANSPORTS) {
  describe(`auth over ${label}`, () => {
    test("a good token gets ready (the native ready's data), then connection_status", async () => {
      const user = L.uid("ann");
      const tok = L.token(user);
      // A room first, so that ready has one to list.
      const native = await L.Native.connect(tok);
      const room = await L.group(native.ok.bind(native));
      native.close();
      // No support agent of an earlier test is still online.
      await L.until(
        async () => !(await L.getJson("/v1/support/availability")).body.available,
        "support to be unavailable",
      );

      const socket = await L.connectToken(tok, options, user);
      const status = await socket.inbox.take("connection_status");
      assert.deepEqual(status, { status: "connected", support_available: false });
      const names = socket.inbox.all.map((e) => e.name);
      assert.deepEqual(names.slice(0, 2), ["ready", "connection_status"], "ready first, then connection_status");

      const ready = socket.ready;
      assert.deepEqual(Object.keys(ready).sort(), Object.keys(native.ready).sort(), "the native ready's fields");
      assert.equal(typeof ready.session_id, "string");
      assert.notEqual(ready.session_id, native.ready.session_id);
      assert.deepEqual(ready.user, { id: user, name: user, roles: [] });
      assert.ok(!Number.isNaN(Date.parse(ready.server_time)), ready.server_time);
      assert.equal(ready.rooms.length, 1);
      assert.equal(ready.rooms[0].id, room);
      assert.equal(ready.rooms[0].unread, 0);
      assert.equal(ready.rooms[0].read_seq, 0);
      if (!options.transports) {
        await L.onWebSocket(socket);
      }
      assert.equal(await L.ok(socket, "ping").then((d) => typeof d.server_time), "string");
    });

    test("connection_status says whether support is available", async () => {
      const agent = await L.Native.connect(L.token(L.uid("agent"), ["support"]), "agent");
      const socket = await L.connect(L.uid("ann"), options);
      const status = await socket.inbox.take("connection_status");
      assert.deepEqual(status, { status: "connected", support_available: true });
      agent.close();
    });

    test("the token may come as an Authorization: Bearer header", async () => {
      const user = L.uid("hdr");
      const socket = await L.openSocket(undefined, {
        ...options,
        extraHeaders: { authorization: `Bearer ${L.token(user)}` },
      });
      const ready = await socket.inbox.take("ready");
      assert.equal(ready.user.id, user);
    });

    test("an expired token is refused: unauthorized", async () => {
      const expired = L.mint({ sub: L.uid("old"), exp: L.now() - 120 });
      assertUnauthorized(await refused({ token: expired }, options), /expired/);
    });

    test("a forged token is refused: unauthorized", async () => {
      const forged = L.mint({ sub: L.uid("eve"), exp: L.now() + 3600 }, "not-the-server-secret-not-the-server-secret");
      assertUnauthorized(await refused({ token: forged }, options));
      const [head, body] = forged.split(".");
      const none = `${Buffer.from('{"alg":"none","typ":"JWT"}').toString("base64url")}.${body}.`;
      assertUnauthorized(await refused({ token: none }, options));
      assertUnauthorized(await refused({ token: `${head}.${body}.` }, options));
      assertUnauthorized(await refused({ token: "not a jwt" }, options));
    });

    test("no token is refused: unauthorized", async () => {
      assertUnauthorized(await refused({}, options), /token/);
      assertUnauthorized(await refused(undefined, options));
    });

    test("/health and /metrics count Socket.IO sessions", async () => {
      // This file's server: only this test's sockets, once the earlier tests' are gone.
      const counted = async () => (await L.getJson("/health")).body.transports.socketio ?? 0;
      await L.until(async () => (await counted()) === 0, "the earlier tests' sessions to end");
      const a = await L.connect(L.uid("ann"), options);
      const b = await L.connect(L.uid("bob"), options);
      const health = await L.getJson("/health");
      assert.equal(health.body.transports.socketio, 2, JSON.stringify(health.body));
      const response = await fetch(`${L.URL}/metrics`, { headers: { authorization: `Bearer ${process.env.CHAT_API_KEY}` } });
      const metrics = await response.text();
      assert.match(metrics, new RegExp(`^chat_transport_connections\\{transport="socketio"\\} 2$`, "m"));
      a.close();
      b.close();
      await L.until(async () => (await counted()) === 0, "the sessions to be counted out");
    });
  });
}
