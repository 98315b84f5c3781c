// A native WebSocket client (section 1, on the `ws` package: `/v1/ws?token=`,
// `{type, ref, data}` frames) and Socket.IO clients in one room (section 10,
// "native and Socket.IO clients share rooms"): both directions, each message
// to each other client exactly once, nothing to its own sending session.

import { after, afterEach, describe, test } from "node:test";
import assert from "node:assert/strict";
import * as L from "./lib.mjs";

afterEach(L.closeAll);
after(L.closeAll);

const COUNT = 20;

for (const { label, options } of L.TRANSPORTS) {
  describe(`native and Socket.IO over ${label}`, () => {
    test("one room, both directions, nothing twice", async () => {
      const [natId, sioId] = [L.uid("nat"), L.uid("sio")];
      const nat = await L.Native.connect(L.token(natId), "native");
      const sio = await L.connect(sioId, options);
      // The same user on both transports.
      const sio2 = await L.connect(natId, options);
      const { room } = await nat.ok("room:create", { kind: "group", name: "Mixed", visibility: "public" });
      await nat.ok("room:join", { room_id: room.id });
      await L.ok(sio2, "room:join", { room_id: room.id });
      await L.ok(sio, "room:join", { room_id: room.id });
      assert.equal((await nat.inbox.take("user:joined")).user.id, sioId);
      assert.equal((await sio2.inbox.take("user:joined")).user.id, sioId);

      // Interleaved: odd numbers from the native client, even ones from
      // Socket.IO; the native client's is the last.
      const sent = [];
      for (let i = 0; i < COUNT; i++) {
        const body = `m${i}`;
        const data = { room_id: room.id, client_msg_id: L.cmid(), body };
        const reply = i % 2 === 1 ? await nat.ok("message:send", data) : await L.ok(sio, "message:send", data);
        sent.push(reply.message);
      }
      assert.deepEqual(
        sent.map((m) => m.seq),
        Array.from({ length: COUNT }, (_, i) => i + 1),
      );

      const heard = async (inbox, pred, n) => {
        const got = [];
        while (got.length < n) got.push((await inbox.take("message:new", (d) => pred(d.message))).message);
        return got;
      };
      const fromNat = (m) => m.sender_id === natId;
      const fromSio = (m) => m.sender_id === sioId;
      // Each hears the other's messages, in order, with the same content.
      assert.deepEqual(await heard(sio.inbox, fromNat, COUNT / 2), sent.filter(fromNat));
      assert.deepEqual(await heard(nat.inbox, fromSio, COUNT / 2), sent.filter(fromSio));
      // The native user's Socket.IO socket hears everything: its own user's
      // messages from the other session too.
      assert.deepEqual(await heard(sio2.inbox, () => true, COUNT), sent);

      // Typing and receipts across transports.
      await nat.ok("typing:start", { room_id: room.id });
      assert.deepEqual(await sio.inbox.take("typing:user"), { room_id: room.id, user_id: natId, typing: true });
      await L.ok(sio, "message:read", { room_id: room.id, up_to_seq: COUNT });
      const status = await nat.inbox.take("message:status");
      assert.deepEqual(status, { room_id: room.id, user_id: sioId, status: "read", up_to_seq: COUNT });

      await nat.ok("ping");
      await L.ok(sio, "ping");
      await L.sleep(200);
      assert.equal(sio.inbox.count("message:new"), COUNT / 2, "nothing twice, nothing of its own");
      assert.equal(nat.inbox.count("message:new"), COUNT / 2, "nothing twice, nothing of its own");
      assert.equal(sio2.inbox.count("message:new"), COUNT, "nothing twice");
      assert.equal(sio.inbox.count("typing:user"), 1);
      assert.equal(nat.inbox.count("message:status"), 1);
    });

    test("presence between a native and a Socket.IO client", async () => {
      const [natId, sioId] = [L.uid("nat"), L.uid("sio")];
      const nat = await L.Native.connect(L.token(natId), "native");
      const sio = await L.connect(sioId, options);
      const { room } = await L.ok(sio, "room:create", { kind: "direct", members: [natId] });
      assert.equal((await nat.inbox.take("room:added")).room.id, room.id);
      // Presence is announced in the background to those sharing a room
      // when it is: either may or may not have heard the other come online.
      await nat.ok("presence:update", { status: "away" });
      const away = await sio.inbox.take("presence:changed", (d) => d.user_id === natId && d.status === "away");
      assert.deepEqual(away, { user_id: natId, status: "away" });
      sio.close();
      const offline = await nat.inbox.take("presence:changed", (d) => d.user_id === sioId && d.status === "offline");
      assert.equal(typeof offline.last_seen, "string", JSON.stringify(offline));
      // user:offline is an alias of Socket.IO only.
      await nat.inbox.none("user:offline", 100);
    });
  });
}
