// Every command of section 1 that the server implements, as a Socket.IO
// event of the same name with an ack (section 10): the ack's shape, the
// errors, a failure without an ack as an `error` event, and the aliases
// (`room:joined`, `message:ack`, `pong`).

import { after, afterEach, describe, test } from "node:test";
import assert from "node:assert/strict";
import * as L from "./lib.mjs";

afterEach(L.closeAll);
after(L.closeAll);

const isError = (e) => typeof e?.code === "string" && typeof e?.message === "string";

for (const { label, options } of L.TRANSPORTS) {
  describe(`commands over ${label}`, () => {
    test("every command is acked {ok:true,data} with the reply's data", async () => {
      const [annId, bobId, carlId] = [L.uid("ann"), L.uid("bob"), L.uid("carl")];
      const ann = await L.connect(annId, options);
      const bob = await L.connect(bobId, options);
      // Carl is known to the server once he has connected.
      (await L.connect(carlId, options)).close();

      // room:create: a group, then a direct room, made once for the pair.
      const { room } = await L.ok(ann, "room:create", { kind: "group", name: "Team", visibility: "public" });
      assert.equal(room.kind, "group");
      assert.equal(room.name, "Team");
      assert.equal(room.visibility, "public");
      assert.equal(room.created_by, annId);
      assert.equal(room.last_seq, 0);
      const direct = await L.ok(ann, "room:create", { kind: "direct", members: [bobId] });
      const again = await L.ok(ann, "room:create", { kind: "direct", members: [bobId] });
      assert.equal(again.room.id, direct.room.id, "a direct room is not made twice");

      // room:join, for the creator and another user.
      const joined = await L.ok(ann, "room:join", { room_id: room.id });
      assert.equal(joined.room.id, room.id);
      assert.deepEqual(joined.members.map((u) => u.id), [annId]);
      assert.equal(joined.last_seq, 0);
      assert.equal(joined.read_seq, 0);
      const bobJoined = await L.ok(bob, "room:join", { room_id: room.id });
      assert.deepEqual(bobJoined.members.map((u) => u.id).sort(), [annId, bobId].sort());

      // message:send, idempotent by client_msg_id.
      const id1 = L.cmid();
      const { message } = await L.ok(ann, "message:send", { room_id: room.id, client_msg_id: id1, body: "hello" });
      assert.equal(message.room_id, room.id);
      assert.equal(message.seq, 1);
      assert.equal(message.sender_id, annId);
      assert.equal(message.client_msg_id, id1);
      assert.equal(message.body, "hello");
      assert.deepEqual(message.attachments, []);
      assert.equal(message.deleted, false);
      const resent = await L.ok(ann, "message:send", { room_id: room.id, client_msg_id: id1, body: "hello" });
      assert.equal(resent.message.id, message.id, "the same client_msg_id returns the first message");
      const second = await L.ok(bob, "message:send", {
        room_id: room.id,
        client_msg_id: L.cmid(),
        body: "hi ann",
        reply_to: message.id,
      });
      assert.equal(second.message.seq, 2);

      // room:history.
      const history = await L.ok(ann, "room:history", { room_id: room.id });
      assert.deepEqual(history.messages.map((m) => m.seq), [1, 2]);
      assert.equal(history.has_more, false);
      const page = await L.ok(ann, "room:history", { room_id: room.id, after_seq: 1, limit: 1 });
      assert.deepEqual(page.messages.map((m) => m.body), ["hi ann"]);

      // message:edit and message:delete.
      const edited = await L.ok(ann, "message:edit", { room_id: room.id, message_id: message.id, body: "hello!" });
      assert.equal(edited.message.body, "hello!");
      assert.equal(typeof edited.message.edited_at, "string");
      assert.deepEqual(await L.ok(ann, "message:delete", { room_id: room.id, message_id: message.id }), {});

      // typing, receipts, presence.
      assert.deepEqual(await L.ok(bob, "typing:start", { room_id: room.id }), {});
      assert.deepEqual(await L.ok(bob, "typing:stop", { room_id: room.id }), {});
      assert.deepEqual(await L.ok(bob, "message:delivered", { room_id: room.id, up_to_seq: 2 }), {});
      assert.deepEqual(await L.ok(bob, "message:read", { room_id: room.id, up_to_seq: 1 }), {});
      assert.deepEqual(await L.ok(bob, "presence:update", { status: "away" }), {});

      // users:online and users:search.
      const online = await L.ok(ann, "users:online");
      const bobOnline = online.users.find((u) => u.user.id === bobId);
      assert.equal(bobOnline?.status, "away", JSON.stringify(online));
      const found = await L.ok(ann, "users:search", { q: carlId, limit: 5 });
      assert.deepEqual(found.users.map((u) => u.id), [carlId]);

      // room:invite, room:list, room:leave.
      const priv = await L.ok(ann, "room:create", { kind: "group", name: "Private", visibility: "private" });
      assert.deepEqual(await L.ok(ann, "room:invite", { room_id: priv.room.id, user_id: carlId }), {});
      const list = await L.ok(ann, "room:list");
      const ids = list.rooms.map((r) => r.id);
      for (const id of [room.id, direct.room.id, priv.room.id]) assert.ok(ids.includes(id), `${id} in ${ids}`);
      const summary = list.rooms.find((r) => r.id === room.id);
      assert.equal(summary.last_seq, 2);
      assert.equal(typeof summary.unread, "number");
      assert.equal(typeof summary.read_seq, "number");
      assert.deepEqual(await L.ok(bob, "room:leave", { room_id: room.id }), {});

      // ping: {server_time} in data, and beside it for the widget dialect.
      const pong = await L.call(ann, "ping", {});
      assert.equal(pong.ok, true);
      assert.equal(typeof pong.data.server_time, "string");
      assert.equal(pong.server_time, pong.data.server_time);
    });

    test("failures are acked {ok:false,error:{code,message}}", async () => {
      const annId = L.uid("ann");
      const ann = await L.connect(annId, options);
      const bob = await L.connect(L.uid("bob"), options);
      const priv = await L.ok(bob, "room:create", { kind: "group", name: "Bob's", visibility: "private" });

      assert.equal((await L.fail(ann, "room:history", { room_id: priv.room.id })).code, "not_member");
      assert.equal(
        (await L.fail(ann, "message:send", { room_id: priv.room.id, client_msg_id: L.cmid(), body: "x" })).code,
        "not_member",
      );
      assert.equal((await L.fail(ann, "room:join", { room_id: priv.room.id })).code, "forbidden");
      assert.equal((await L.fail(ann, "room:join", { room_id: "not-a-room-id" })).code, "invalid");
      assert.equal((await L.fail(ann, "room:join", {})).code, "invalid");
      assert.equal((await L.fail(ann, "room:join", "a string")).code, "invalid");
      assert.equal((await L.fail(ann, "room:create", { kind: "castle" })).code, "invalid");
      const mine = await L.ok(ann, "room:create", { kind: "group", name: "Mine" });
      assert.equal(
        (await L.fail(ann, "room:invite", { room_id: mine.room.id, user_id: L.uid("nobody") })).code,
        "not_found",
      );
      const unknown = await L.fail(ann, "room:teleport", { room_id: mine.room.id });
      assert.equal(unknown.code, "unknown_command");
      assert.match(unknown.message, /room:teleport/);
      // The session goes on.
      await L.ok(ann, "ping");
    });

    test("a failure without an ack is an `error` event {code,message}", async () => {
      const ann = await L.connect(L.uid("ann"), options);
      ann.emit("room:join", { room_id: "nope" });
      const invalid = await ann.inbox.take("error");
      assert.ok(isError(invalid), JSON.stringify(invalid));
      assert.equal(invalid.code, "invalid");
      ann.emit("no:such:command", {});
      const unknown = await ann.inbox.take("error");
      assert.equal(unknown.code, "unknown_command");
      const bob = await L.connect(L.uid("bob"), options);
      const priv = await L.ok(bob, "room:create", { kind: "group", name: "Bob's" });
      ann.emit("message:send", { room_id: priv.room.id, client_msg_id: L.cmid(), body: "let me in" });
      assert.equal((await ann.inbox.take("error")).code, "not_member");
      // A success without an ack is silent.
      ann.emit("typing:stop", { room_id: (await L.ok(ann, "room:create", { kind: "group", name: "A" })).room.id });
      await L.ok(ann, "ping");
      await ann.inbox.none("error", 100);
    });

    test("aliases: room:joined, message:ack and pong beside the acks", async () => {
      const ann = await L.connect(L.uid("ann"), options);
      const { room } = await L.ok(ann, "room:create", { kind: "group", name: "Aliases" });

      const joined = await L.ok(ann, "room:join", { room_id: room.id });
      assert.deepEqual(await ann.inbox.take("room:joined"), joined, "room:joined carries the join's reply data");
      // Without an ack too.
      ann.emit("room:join", { room_id: room.id, since_seq: 0 });
      assert.equal((await ann.inbox.take("room:joined")).room.id, room.id);

      const client_msg_id = L.cmid();
      const sent = await L.ok(ann, "message:send", { room_id: room.id, client_msg_id, body: "acked" });
      assert.deepEqual(await ann.inbox.take("message:ack"), { client_msg_id, message: sent.message });
      const quiet = L.cmid();
      ann.emit("message:send", { room_id: room.id, client_msg_id: quiet, body: "no ack callback" });
      const ack = await ann.inbox.take("message:ack");
      assert.equal(ack.client_msg_id, quiet);
      assert.equal(ack.message.seq, 2);

      const pinged = await L.call(ann, "ping", {});
      assert.deepEqual(await ann.inbox.take("pong"), { server_time: pinged.server_time });
      ann.emit("ping");
      assert.equal(typeof (await ann.inbox.take("pong")).server_time, "string");

      // No alias for a failure.
      await L.fail(ann, "room:join", { room_id: "00000000-0000-7000-8000-000000000000" });
      await L.fail(ann, "message:send", { room_id: "00000000-0000-7000-8000-000000000000", client_msg_id: "x", body: "y" });
      await L.ok(ann, "ping");
      await ann.inbox.take("pong");
      await ann.inbox.none("room:joined", 100);
      await ann.inbox.none("message:ack", 0);
      // The sender's socket never gets its own message:new.
      await ann.inbox.none("message:new", 0);
    });
  });
}
