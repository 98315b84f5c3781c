// Resuming (section 10: `room:join` with `since_seq`, exactly as natively):
// a Socket.IO client that was away gets exactly the messages it missed, once
// and in seq order, then the live ones, with nothing lost or doubled, even
// while messages keep coming during the join.

import { after, afterEach, describe, test } from "node:test";
import assert from "node:assert/strict";
import * as L from "./lib.mjs";

afterEach(L.closeAll);
after(L.closeAll);

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

for (const { label, options } of L.TRANSPORTS) {
  describe(`resume over ${label}`, () => {
    test("room:join with since_seq replays what was missed, then live messages", async () => {
      const [annId, bobId] = [L.uid("ann"), L.uid("bob")];
      // Bob writes natively, ann reads over Socket.IO.
      const bob = await L.Native.connect(L.token(bobId), "bob");
      const { room } = await bob.ok("room:create", { kind: "group", name: "Resume", visibility: "public" });
      const send = (body) => bob.ok("message:send", { room_id: room.id, client_msg_id: L.cmid(), body });

      let ann = await L.connect(annId, options);
      await L.ok(ann, "room:join", { room_id: room.id });
      for (let i = 1; i <= 3; i++) await send(`before ${i}`);
      let lastSeq = 0;
      for (let i = 1; i <= 3; i++) lastSeq = (await ann.inbox.take("message:new")).message.seq;
      assert.equal(lastSeq, 3);
      ann.close();
      await L.until(async () => {
        const online = await bob.ok("users:online");
        return !online.users.some((u) => u.user.id === annId);
      }, "ann's session to end");

      // Missed while away.
      for (let i = 4; i <= 25; i++) await send(`missed ${i}`);

      ann = await L.connect(annId, options);
      // Live messages race the join and its replay.
      const live = (async () => {
        for (let i = 26; i <= 35; i++) await send(`live ${i}`);
      })();
      const joined = await L.ok(ann, "room:join", { room_id: room.id, since_seq: lastSeq });
      assert.ok(joined.last_seq >= 25, JSON.stringify(joined));
      await live;
      const got = [];
      while (got.length < 32) got.push((await ann.inbox.take("message:new")).message);
      assert.deepEqual(
        got.map((m) => m.seq),
        range(4, 35),
        "every missed message once and in order, then the live ones",
      );
      assert.deepEqual(
        got.map((m) => m.body),
        range(4, 35).map((i) => (i <= 25 ? `missed ${i}` : `live ${i}`)),
      );
      // And nothing more.
      await send("after 36");
      assert.equal((await ann.inbox.take("message:new")).message.seq, 36);
      await L.ok(ann, "ping");
      await ann.inbox.none("message:new", 200);
      assert.equal(ann.inbox.count("message:new"), 33);

      // A second resume from an older seq replays again, as asked.
      ann.emit("room:join", { room_id: room.id, since_seq: 33 });
      const again = [];
      while (again.length < 3) again.push((await ann.inbox.take("message:new")).message.seq);
      assert.deepEqual(again, [34, 35, 36]);
    });
  });
}
