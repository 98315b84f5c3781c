// The support-widget dialect (section 10): a visitor (POST
// /v1/visitor-sessions) emits `chat message`, which opens its support room on
// first use and posts there; a support agent on the NATIVE protocol finds the
// room as natively (room:added, room:list), joins and answers; the visitor
// hears the agent as `chat message` {text, from, message}, never itself, and
// after a reconnect goes on in the same room.

import { after, afterEach, describe, test } from "node:test";
import assert from "node:assert/strict";
import * as L from "./lib.mjs";

afterEach(L.closeAll);
after(L.closeAll);

for (const { label, options } of L.TRANSPORTS) {
  describe(`the widget dialect over ${label}`, () => {
    test("a visitor and a native agent talk; the room survives a reconnect", async () => {
      const agentId = L.uid("agent");
      const agent = await L.Native.connect(L.token(agentId, ["support"]), "agent");
      const { token: visitorToken, user: visitorUser } = await L.visitorSession("Vic");
      assert.match(visitorUser.id, /^visitor:/);

      let vic = await L.connectToken(visitorToken, options, "visitor");
      assert.deepEqual(vic.ready.user.roles, ["visitor"]);
      assert.deepEqual(await vic.inbox.take("connection_status"), { status: "connected", support_available: true });

      // The first text, a bare string with an ack: the room opens.
      const first = await L.call(vic, "chat message", "Hello, is anyone there?");
      assert.equal(first.ok, true, JSON.stringify(first));
      const { message } = first.data;
      assert.equal(message.body, "Hello, is anyone there?");
      assert.equal(message.sender_id, visitorUser.id);
      assert.equal(message.seq, 1);
      const received = await vic.inbox.take("message_received");
      assert.deepEqual(received, { client_msg_id: message.client_msg_id, message });
      const roomId = message.room_id;

      // The agent learns of the waiting room as natively.
      const added = await agent.inbox.take("room:added");
      assert.equal(added.room.id, roomId);
      assert.equal(added.room.kind, "support");
      assert.equal(added.room.created_by, visitorUser.id);
      const listed = await agent.ok("room:list");
      assert.ok(listed.rooms.some((r) => r.id === roomId), JSON.stringify(listed));
      const joined = await agent.ok("room:join", { room_id: roomId });
      assert.ok(joined.members.some((u) => u.id === visitorUser.id));
      const history = await agent.ok("room:history", { room_id: roomId });
      assert.deepEqual(history.messages.map((m) => m.body), ["Hello, is anyone there?"]);

      // {text}, without an ack.
      vic.emit("chat message", { text: "My order is late" });
      const second = await vic.inbox.take("message_received");
      assert.equal(second.message.body, "My order is late");
      assert.equal(second.message.room_id, roomId, "the same room");
      assert.equal((await agent.inbox.take("message:new")).message.body, "My order is late");

      // The agent answers natively; the visitor hears it as `chat message`.
      const answer = await agent.ok("message:send", { room_id: roomId, client_msg_id: L.cmid(), body: "Let me check" });
      const chat = await vic.inbox.take("chat message");
      assert.equal(chat.text, "Let me check");
      assert.equal(chat.from.id, agentId);
      assert.equal(chat.from.name, agentId);
      assert.deepEqual(chat.from.roles, ["support"]);
      assert.deepEqual(chat.message, answer.message);
      // Its own texts never come back as `chat message`.
      await L.ok(vic, "ping");
      await vic.inbox.none("chat message", 150);
      assert.equal(vic.inbox.count("chat message"), 1);

      // Reconnect: the agent's replies still arrive, the next text goes to the same room.
      vic.close();
      vic = await L.connectToken(visitorToken, options, "visitor again");
      assert.ok(vic.ready.rooms.some((r) => r.id === roomId));
      // The server follows the open room for the visitor as it connects;
      // a ping's answer comes after that join's.
      await L.ok(vic, "ping");
      await agent.ok("message:send", { room_id: roomId, client_msg_id: L.cmid(), body: "Found it" });
      const later = await vic.inbox.take("chat message");
      assert.equal(later.text, "Found it");
      assert.equal(later.message.room_id, roomId);
      const third = await L.call(vic, "chat message", { text: "Thanks!" });
      assert.equal(third.ok, true, JSON.stringify(third));
      assert.equal(third.data.message.room_id, roomId, "the same room after a reconnect");
      assert.equal(third.data.message.seq, 5);
      assert.equal((await vic.inbox.take("message_received")).message.id, third.data.message.id);
      const heard = await agent.inbox.take("message:new", (d) => d.message.body === "Thanks!");
      assert.equal(heard.message.room_id, roomId);
      await vic.inbox.none("chat message", 150);
      assert.equal(vic.inbox.count("chat message"), 1);

      // Only one support room was ever opened.
      const rooms = await L.ok(vic, "room:list");
      assert.deepEqual(
        rooms.rooms.map((r) => r.id),
        [roomId],
      );
    });

    test("the dialect's rules: visitors only, a string or {text}, ping's server_time", async () => {
      const { token: visitorToken } = await L.visitorSession("Val");
      const vic = await L.connectToken(visitorToken, options, "visitor");
      const pong = await L.call(vic, "ping", {});
      assert.equal(typeof pong.server_time, "string", "the dialect's bare {server_time}");
      assert.deepEqual(await vic.inbox.take("pong"), { server_time: pong.server_time });
      assert.equal((await L.fail(vic, "chat message", 42)).code, "invalid");
      assert.equal((await L.fail(vic, "chat message", { body: "not text" })).code, "invalid");
      vic.emit("chat message");
      assert.equal((await vic.inbox.take("error")).code, "invalid");
      // Other commands of a visitor are refused as natively.
      assert.equal((await L.fail(vic, "users:online")).code, "forbidden");

      const user = await L.connect(L.uid("ann"), options);
      assert.equal((await L.fail(user, "chat message", "hi")).code, "forbidden");
    });
  });
}
