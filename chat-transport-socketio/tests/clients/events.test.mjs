// Events between Socket.IO clients (section 10: every server event under its
// own name, to the same sessions as natively): message:new (not to the
// sending socket, but to the sender's other sockets), message:updated and
// message:deleted, typing:user, message:status, presence:changed with its
// user:online / user:offline aliases, room:added, user:joined, user:left.

import { after, afterEach, describe, test } from "node:test";
import assert from "node:assert/strict";
import * as L from "./lib.mjs";

afterEach(L.closeAll);
after(L.closeAll);

for (const { label, options } of L.TRANSPORTS) {
  describe(`events over ${label}`, () => {
    test("messages, edits, typing and receipts reach the other members once", async () => {
      const [annId, bobId] = [L.uid("ann"), L.uid("bob")];
      const ann1 = await L.connect(annId, options);
      const ann2 = await L.connect(annId, options);
      const bob = await L.connect(bobId, options);
      const { room } = await L.ok(ann1, "room:create", { kind: "group", name: "Events", visibility: "public" });
      await L.ok(ann1, "room:join", { room_id: room.id });
      await L.ok(ann2, "room:join", { room_id: room.id });

      await L.ok(bob, "room:join", { room_id: room.id });
      for (const s of [ann1, ann2]) {
        const joined = await s.inbox.take("user:joined");
        assert.equal(joined.room_id, room.id);
        assert.equal(joined.user.id, bobId);
      }
      await bob.inbox.none("user:joined", 0);

      const client_msg_id = L.cmid();
      const { message } = await L.ok(ann1, "message:send", { room_id: room.id, client_msg_id, body: "one" });
      for (const s of [ann2, bob]) {
        assert.deepEqual(await s.inbox.take("message:new"), { message });
      }
      const reply = await L.ok(bob, "message:send", { room_id: room.id, client_msg_id: L.cmid(), body: "two" });
      for (const s of [ann1, ann2]) {
        assert.deepEqual(await s.inbox.take("message:new"), { message: reply.message });
      }

      const edited = await L.ok(ann1, "message:edit", { room_id: room.id, message_id: message.id, body: "one!" });
      for (const s of [ann2, bob]) {
        assert.deepEqual(await s.inbox.take("message:updated"), { message: edited.message });
      }
      await L.ok(ann1, "message:delete", { room_id: room.id, message_id: message.id });
      for (const s of [ann2, bob]) {
        assert.deepEqual(await s.inbox.take("message:deleted"), { room_id: room.id, message_id: message.id });
      }

      await L.ok(bob, "typing:start", { room_id: room.id });
      for (const s of [ann1, ann2]) {
        assert.deepEqual(await s.inbox.take("typing:user"), { room_id: room.id, user_id: bobId, typing: true });
      }
      await L.ok(bob, "typing:stop", { room_id: room.id });
      assert.deepEqual(await ann1.inbox.take("typing:user"), { room_id: room.id, user_id: bobId, typing: false });

      // Receipts for a message of ann's that bob has not read (his cursors
      // already follow his own messages).
      const third = await L.ok(ann1, "message:send", { room_id: room.id, client_msg_id: L.cmid(), body: "three" });
      assert.equal(third.message.seq, 3);
      assert.equal((await bob.inbox.take("message:new")).message.seq, 3);
      assert.equal((await ann2.inbox.take("message:new")).message.seq, 3);
      await L.ok(bob, "message:delivered", { room_id: room.id, up_to_seq: 3 });
      await L.ok(bob, "message:read", { room_id: room.id, up_to_seq: 3 });
      for (const s of [ann1, ann2]) {
        const delivered = await s.inbox.take("message:status", (d) => d.status === "delivered");
        assert.deepEqual(delivered, { room_id: room.id, user_id: bobId, status: "delivered", up_to_seq: 3 });
        const read = await s.inbox.take("message:status", (d) => d.status === "read");
        assert.deepEqual(read, { room_id: room.id, user_id: bobId, status: "read", up_to_seq: 3 });
      }
      // Cursors only move forward: nothing to announce.
      await L.ok(bob, "message:read", { room_id: room.id, up_to_seq: 1 });

      // Nobody got anything twice, nor their own.
      await L.ok(ann1, "ping");
      await L.ok(bob, "ping");
      await L.sleep(150);
      assert.equal(ann1.inbox.count("message:new"), 1, "ann's sending socket: bob's message only");
      assert.equal(ann2.inbox.count("message:new"), 3, "ann's other socket: all three");
      assert.equal(bob.inbox.count("message:new"), 2, "bob: ann's messages only");
      assert.equal(ann1.inbox.count("message:status"), 2, "one status per moved cursor");
      for (const s of [ann1, ann2, bob]) {
        assert.equal(s.inbox.count("message:updated"), s === ann1 ? 0 : 1);
        assert.equal(s.inbox.count("message:deleted"), s === ann1 ? 0 : 1);
      }
      assert.equal(bob.inbox.count("typing:user"), 0, "typing is not echoed");
      assert.equal(bob.inbox.count("message:status"), 0, "receipts are not echoed");
    });

    test("presence:changed, with user:online and user:offline", async () => {
      const [annId, bobId] = [L.uid("ann"), L.uid("bob")];
      const ann = await L.connect(annId, options);
      let bob = await L.connect(bobId, options);
      // Presence goes to users who share a room.
      const { room } = await L.ok(ann, "room:create", { kind: "group", name: "P", visibility: "public" });
      await L.ok(bob, "room:join", { room_id: room.id });
      const bobs = (d) => d.user_id === bobId;
      // The server announces presence in the background, to those who share
      // a room with the user when it does: bob's coming online may reach ann
      // or not. Once ann hears a change made after it, and an ack after
      // that (and so any alias of it), what came before is dropped.
      await L.ok(bob, "presence:update", { status: "busy" });
      await ann.inbox.take("presence:changed", (d) => bobs(d) && d.status === "busy");
      await L.ok(ann, "ping");
      for (const name of ["presence:changed", "user:online", "user:offline"]) ann.inbox.drain(name, bobs);
      const mark = ann.inbox.all.length;

      await L.ok(bob, "presence:update", { status: "away" });
      assert.equal((await ann.inbox.take("presence:changed", bobs)).status, "away");
      await L.ok(bob, "presence:update", { status: "online" });
      assert.equal((await ann.inbox.take("presence:changed", bobs)).status, "online");
      await L.ok(bob, "presence:update", { status: "busy" });
      assert.equal((await ann.inbox.take("presence:changed", bobs)).status, "busy");
      await L.ok(bob, "presence:update", { status: "online" });
      assert.equal((await ann.inbox.take("presence:changed", bobs)).status, "online");
      await L.ok(ann, "ping");
      await ann.inbox.none("user:offline", 0, bobs);
      await ann.inbox.none("user:online", 0, bobs);

      // invisible reads as offline to the others.
      await L.ok(bob, "presence:update", { status: "invisible" });
      assert.equal((await ann.inbox.take("presence:changed", bobs)).status, "offline");
      assert.deepEqual(await ann.inbox.take("user:offline", bobs), { user_id: bobId });
      await L.ok(bob, "presence:update", { status: "online" });
      assert.equal((await ann.inbox.take("presence:changed", bobs)).status, "online");
      assert.deepEqual(await ann.inbox.take("user:online", bobs), { user_id: bobId });

      bob.close();
      const offline = await ann.inbox.take("presence:changed", bobs);
      assert.equal(offline.status, "offline");
      assert.deepEqual(await ann.inbox.take("user:offline", bobs), { user_id: bobId });
      bob = await L.connect(bobId, options);
      assert.equal((await ann.inbox.take("presence:changed", bobs)).status, "online");
      assert.deepEqual(await ann.inbox.take("user:online", bobs), { user_id: bobId });
      // A second socket of a user who is online changes nothing.
      await L.connect(bobId, options);
      await ann.inbox.none("presence:changed", 200, bobs);
      assert.equal(ann.inbox.count("user:online", bobs, mark), 2);
      assert.equal(ann.inbox.count("user:offline", bobs, mark), 2);
      assert.equal(ann.inbox.count("presence:changed", bobs, mark), 8);
    });

    test("room:added to every socket of a new member; user:joined and user:left", async () => {
      const [annId, bobId, carlId] = [L.uid("ann"), L.uid("bob"), L.uid("carl")];
      const ann = await L.connect(annId, options);
      const bob1 = await L.connect(bobId, options);
      const bob2 = await L.connect(bobId, options);
      const carl = await L.connect(carlId, options);

      const { room } = await L.ok(ann, "room:create", {
        kind: "group",
        name: "Added",
        visibility: "private",
        members: [bobId],
      });
      for (const s of [bob1, bob2]) {
        assert.deepEqual(await s.inbox.take("room:added"), { room });
      }
      await L.ok(ann, "room:join", { room_id: room.id });
      // Bob is a member already: following the room announces nothing.
      await L.ok(bob1, "room:join", { room_id: room.id });

      // An invitation makes carl a member: room:added for him, user:joined
      // for the others.
      await L.ok(ann, "room:invite", { room_id: room.id, user_id: carlId });
      assert.equal((await carl.inbox.take("room:added")).room.id, room.id);
      await L.ok(carl, "room:join", { room_id: room.id });
      await ann.inbox.none("user:joined", 0, (d) => d.user.id === bobId);
      for (const s of [ann, bob1]) {
        const joined = await s.inbox.take("user:joined", (d) => d.user.id === carlId);
        assert.equal(joined.room_id, room.id);
        assert.deepEqual(joined.user, { id: carlId, name: carlId, roles: [] });
      }

      await L.ok(carl, "room:leave", { room_id: room.id });
      for (const s of [ann, bob1]) {
        assert.deepEqual(await s.inbox.take("user:left"), { room_id: room.id, user_id: carlId });
      }
      // Carl no longer hears the room.
      await L.ok(ann, "message:send", { room_id: room.id, client_msg_id: L.cmid(), body: "after carl" });
      assert.equal((await bob1.inbox.take("message:new")).message.body, "after carl");
      await carl.inbox.none("message:new", 150);
      await carl.inbox.none("user:left", 0);
    });
  });
}
