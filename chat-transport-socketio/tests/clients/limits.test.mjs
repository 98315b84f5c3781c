// The native limits over Socket.IO (section 10, "Auth"): a rate-limited
// command is acked `rate_limited`, and a packet over the frame limit ends
// that connection only. server/tests/socketio.rs starts this file's server
// with 5 commands a second (burst 5) and a 4 KiB frame limit.

import { after, afterEach, describe, test } from "node:test";
import assert from "node:assert/strict";
import * as L from "./lib.mjs";

afterEach(L.closeAll);
after(L.closeAll);

for (const { label, options } of L.TRANSPORTS) {
  describe(`limits over ${label}`, () => {
    test("a command past the rate limit is acked rate_limited, and the session goes on", async () => {
      const socket = await L.connect(L.uid("fast"), options);
      if (!options.transports) await L.onWebSocket(socket);
      const acks = await Promise.all(Array.from({ length: 20 }, () => L.call(socket, "ping", {})));
      const limited = acks.filter((a) => a.ok === false);
      assert.ok(acks.some((a) => a.ok === true), JSON.stringify(acks));
      assert.ok(limited.length >= 10, `${limited.length} of 20 refused: ${JSON.stringify(acks)}`);
      for (const a of limited) assert.equal(a.error.code, "rate_limited", JSON.stringify(a));
      // Without an ack: an `error` event.
      for (let i = 0; i < 10; i++) socket.emit("ping", {});
      assert.equal((await socket.inbox.take("error")).code, "rate_limited");
      await L.sleep(1200);
      await L.ok(socket, "ping");
    });

    test("a packet over the frame limit ends that connection only", async () => {
      const [bigId, otherId] = [L.uid("big"), L.uid("other")];
      const big = await L.connect(bigId, options);
      const other = await L.connect(otherId, options);
      const { room } = await L.ok(other, "room:create", { kind: "group", name: "Big", visibility: "public" });
      await L.ok(big, "room:join", { room_id: room.id });
      if (!options.transports) await L.onWebSocket(big);
      big.emit("message:send", { room_id: room.id, client_msg_id: L.cmid(), body: "x".repeat(8000) });
      const reason = await big.inbox.take("disconnect", () => true, L.WAIT);
      assert.notEqual(reason, "io client disconnect", reason);
      await L.ok(other, "ping");
      const history = await L.ok(other, "room:history", { room_id: room.id });
      assert.equal(history.messages.length, 0, "nothing of the oversized packet was stored");
    });
  });
}
