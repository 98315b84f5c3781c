// A reference Socket.IO chat server with the semantics chat-server has in the
// benchmark scenarios, speaking the subset of section 10 of the wire contract
// (the Socket.IO transport: each command an event of its name, acked with
// {ok:true, data} or {ok:false, error:{code, message}}) that the scenarios
// use, so that benches/run.sh drives it and chat-server's own /socket.io/
// with the same Socket.IO client code (`chat-load --proto socketio`) and
// compares like with like. It is plain socket.io 4.8 as a Node shop would
// write it: rooms are socket.io rooms, fan-out is `socket.to(room).emit`.
//
// - auth: the handshake's `auth.token` must be an HS256 JWT signed with the
//   shared secret (the same tokens chat-server accepts), with `sub` and an
//   unexpired `exp`; anything else is refused before the connection opens
//   (`connect_error` "unauthorized"); then the server emits `ready`;
// - `room:create` {kind, name?, visibility?} (acked with {room}) makes a room
//   with a new id;
// - `room:join` {room_id, since_seq?} (acked with {room, last_seq})
//   subscribes the socket to an existing room; with since_seq, every stored
//   message above it follows the ack as `message:new`, in order, before any
//   newer live one;
// - `message:send` {room_id, client_msg_id, body} (acked with {message})
//   appends the message with the room's next seq, idempotent on (room,
//   sender, client_msg_id), then broadcasts `message:new` {message} to the
//   room's other sockets and acks. With `--durable FILE` each message is one
//   better-sqlite3 transaction (WAL, synchronous=FULL) committed before the
//   broadcast and the ack; with `--durable-pg URL` each message is one
//   PostgreSQL transaction through a node-postgres pool, its commit awaited
//   before the broadcast and the ack (sends to one room are chained, so seqs
//   go out in order); otherwise messages live in memory;
// - `typing:start` / `typing:stop` {room_id} emit `typing:user` {room_id,
//   user_id, typing} to the room's other sockets when the user's state
//   changes; typing ends by itself 6 s after the last start, and when the
//   user sends a message.
//
// A failing command with an ack gets {ok:false, error}; without one, an
// `error` event {code, message}. Idle connections hold nothing beyond what
// Socket.IO itself keeps.
//
// Usage: node server.js --port 9090 [--host 127.0.0.1] [--durable FILE | --durable-pg URL]
// The JWT secret comes from the environment variable CHAT_JWT_SECRET.
"use strict";

const http = require("node:http");
const crypto = require("node:crypto");
const { Server } = require("socket.io");
const ws = require("ws");

function parseArgs(argv) {
  const args = { port: 9090, host: "127.0.0.1", durable: null, durablePg: null };
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--port") args.port = Number(argv[++i]);
    else if (a === "--host") args.host = argv[++i];
    else if (a === "--durable") args.durable = argv[++i];
    else if (a === "--durable-pg") args.durablePg = argv[++i];
    else throw new Error(`unknown argument ${a}`);
  }
  return args;
}

const args = parseArgs(process.argv);
const secret = process.env.CHAT_JWT_SECRET;
if (!secret || secret.length < 32) {
  console.error("CHAT_JWT_SECRET must be set (at least 32 bytes)");
  process.exit(2);
}

const MAX_BODY_CHARS = 4000;
const TYPING_TIMEOUT_MS = 6000;

// Verifies an HS256 JWT as chat-server does (signature, sub, exp with 5 s of
// leeway) and returns its claims, or null.
function verifyToken(token) {
  if (typeof token !== "string") return null;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  let header;
  let claims;
  try {
    header = JSON.parse(Buffer.from(parts[0], "base64url").toString("utf8"));
    claims = JSON.parse(Buffer.from(parts[1], "base64url").toString("utf8"));
  } catch {
    return null;
  }
  if (!header || header.alg !== "HS256") return null;
  const expected = crypto.createHmac("sha256", secret).update(`${parts[0]}.${parts[1]}`).digest();
  const given = Buffer.from(parts[2], "base64url");
  if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) return null;
  if (typeof claims.sub !== "string" || claims.sub.length === 0 || claims.sub.length > 128) return null;
  if (typeof claims.exp !== "number" || claims.exp + 5 < Date.now() / 1000) return null;
  return claims;
}

// The stores: rooms with their last seq and messages, in memory, in SQLite or
// in PostgreSQL. Each has
// - create(room): stores a new room (an object from newRoom);
// - join(id, afterSeq): the room with its last seq, and the messages above
//   afterSeq (none without it), as one consistent read; null for no room;
// - append(id, sender, clientMsgId, body): {message, fresh}.
// The memory and SQLite stores answer at once, PostgreSQL with promises.
function memoryStore() {
  const rooms = new Map(); // id -> { room, messages: [], byClientId: Map }
  return {
    create(room) {
      rooms.set(room.id, { room, messages: [], byClientId: new Map() });
      return room;
    },
    join(id, afterSeq) {
      const r = rooms.get(id);
      if (!r) return null;
      const room = { ...r.room, last_seq: r.messages.length };
      return { room, messages: afterSeq === undefined ? [] : r.messages.slice(afterSeq) };
    },
    append(id, sender, clientMsgId, body) {
      const r = rooms.get(id);
      const key = `${sender}\u0000${clientMsgId}`;
      const existing = r.byClientId.get(key);
      if (existing !== undefined) return { message: r.messages[existing - 1], fresh: false };
      const message = newMessage(id, r.messages.length + 1, sender, clientMsgId, body);
      r.messages.push(message);
      r.byClientId.set(key, message.seq);
      return { message, fresh: true };
    },
  };
}

// A new room as the clients see it.
function newRoom(data, creator) {
  return {
    id: crypto.randomUUID(),
    kind: "group",
    name: data.name,
    visibility: data.visibility === "private" ? "private" : "public",
    created_by: creator,
    created_at: new Date().toISOString(),
    last_seq: 0,
  };
}

// A stored room row (SQLite or PostgreSQL) as the clients see it.
function roomFromRow(r) {
  return {
    id: r.id,
    kind: "group",
    name: r.name,
    visibility: r.visibility,
    created_by: r.created_by,
    created_at: new Date(r.created_at).toISOString(),
    last_seq: Number(r.last_seq),
  };
}

// A new message as the clients see it.
function newMessage(room, seq, sender, clientMsgId, body) {
  return {
    id: crypto.randomUUID(),
    room_id: room,
    seq,
    sender_id: sender,
    client_msg_id: clientMsgId,
    body,
    created_at: new Date().toISOString(),
  };
}

// A stored message row (SQLite or PostgreSQL) as the clients see it.
function fromRow(m) {
  return {
    id: m.id,
    room_id: m.room,
    seq: Number(m.seq),
    sender_id: m.sender_id,
    client_msg_id: m.client_msg_id,
    body: m.body,
    created_at: new Date(m.created_at).toISOString(),
  };
}

function sqliteStore(file) {
  const Database = require("better-sqlite3");
  const db = new Database(file);
  db.pragma("journal_mode = WAL");
  db.pragma("synchronous = FULL");
  db.exec(`
    CREATE TABLE IF NOT EXISTS rooms (
      id TEXT PRIMARY KEY, name TEXT, visibility TEXT NOT NULL, created_by TEXT NOT NULL,
      created_at TEXT NOT NULL, last_seq INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS messages (
      room TEXT NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL, sender_id TEXT NOT NULL,
      client_msg_id TEXT NOT NULL, body TEXT NOT NULL, created_at TEXT NOT NULL,
      PRIMARY KEY (room, seq));
    CREATE UNIQUE INDEX IF NOT EXISTS messages_idempotency ON messages (room, sender_id, client_msg_id);
  `);
  const insertRoom = db.prepare(
    "INSERT INTO rooms (id, name, visibility, created_by, created_at, last_seq) VALUES (?, ?, ?, ?, ?, 0)",
  );
  const getRoom = db.prepare("SELECT * FROM rooms WHERE id = ?");
  const bumpSeq = db.prepare("UPDATE rooms SET last_seq = last_seq + 1 WHERE id = ? RETURNING last_seq").pluck();
  const findDup = db.prepare("SELECT * FROM messages WHERE room = ? AND sender_id = ? AND client_msg_id = ?");
  const insert = db.prepare(
    "INSERT INTO messages (room, seq, id, sender_id, client_msg_id, body, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
  );
  const after = db.prepare("SELECT * FROM messages WHERE room = ? AND seq > ? ORDER BY seq");
  // One transaction, so one commit (and with synchronous=FULL one WAL fsync),
  // per message.
  const append = db.transaction((id, sender, clientMsgId, body) => {
    const dup = findDup.get(id, sender, clientMsgId);
    if (dup) return { message: fromRow(dup), fresh: false };
    const message = newMessage(id, bumpSeq.get(id), sender, clientMsgId, body);
    insert.run(id, message.seq, message.id, sender, clientMsgId, body, message.created_at);
    return { message, fresh: true };
  });
  // The room and what follows afterSeq from one snapshot.
  const join = db.transaction((id, afterSeq) => {
    const row = getRoom.get(id);
    if (!row) return null;
    return { room: roomFromRow(row), messages: afterSeq === undefined ? [] : after.all(id, afterSeq).map(fromRow) };
  });
  return {
    create(room) {
      insertRoom.run(room.id, room.name ?? null, room.visibility, room.created_by, room.created_at);
      return room;
    },
    join,
    append,
    close() {
      db.close();
    },
  };
}

// PostgreSQL through a node-postgres pool (its default of 10 connections).
// Every method returns a promise. A send is one transaction: the duplicate
// check, the room's counter (its row lock orders writers of one room) and the
// insert, then COMMIT, which PostgreSQL makes durable before it answers.
async function postgresStore(url) {
  const { Pool } = require("pg");
  const pool = new Pool({ connectionString: url, max: 10 });
  await pool.query(`
    CREATE TABLE IF NOT EXISTS rooms (
      id TEXT PRIMARY KEY, name TEXT, visibility TEXT NOT NULL, created_by TEXT NOT NULL,
      created_at TIMESTAMPTZ NOT NULL, last_seq BIGINT NOT NULL);
    CREATE TABLE IF NOT EXISTS messages (
      room TEXT NOT NULL, seq BIGINT NOT NULL, id UUID NOT NULL, sender_id TEXT NOT NULL,
      client_msg_id TEXT NOT NULL, body TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL,
      PRIMARY KEY (room, seq));
    CREATE UNIQUE INDEX IF NOT EXISTS messages_idempotency ON messages (room, sender_id, client_msg_id);
  `);
  // The tail of each room's chain of sends (and joins): a send starts after
  // the previous one to its room has committed, so broadcasts leave in seq
  // order, and a join's read sees every message broadcast before it.
  const tails = new Map();
  function chained(id, run) {
    const result = (tails.get(id) ?? Promise.resolve()).then(run);
    const tail = result.catch(() => {});
    tails.set(id, tail);
    tail.then(() => {
      if (tails.get(id) === tail) tails.delete(id);
    });
    return result;
  }
  async function appendNow(name, sender, clientMsgId, body) {
    const client = await pool.connect();
    try {
      await client.query("BEGIN");
      const dup = await client.query(
        "SELECT * FROM messages WHERE room = $1 AND sender_id = $2 AND client_msg_id = $3",
        [name, sender, clientMsgId],
      );
      if (dup.rows.length > 0) {
        await client.query("COMMIT");
        return { message: fromRow(dup.rows[0]), fresh: false };
      }
      const counter = await client.query("UPDATE rooms SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq", [
        name,
      ]);
      const message = newMessage(name, Number(counter.rows[0].last_seq), sender, clientMsgId, body);
      await client.query(
        "INSERT INTO messages (room, seq, id, sender_id, client_msg_id, body, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        [name, message.seq, message.id, sender, clientMsgId, body, message.created_at],
      );
      await client.query("COMMIT");
      return { message, fresh: true };
    } catch (e) {
      await client.query("ROLLBACK").catch(() => {});
      throw e;
    } finally {
      client.release();
    }
  }
  // A join's read, in its room's chain: no send to the room commits while
  // it reads, and every earlier one has been broadcast.
  async function joinNow(id, afterSeq) {
    const r = await pool.query("SELECT * FROM rooms WHERE id = $1", [id]);
    if (r.rows.length === 0) return null;
    const room = roomFromRow(r.rows[0]);
    if (afterSeq === undefined) return { room, messages: [] };
    const m = await pool.query("SELECT * FROM messages WHERE room = $1 AND seq > $2 AND seq <= $3 ORDER BY seq", [
      id,
      afterSeq,
      room.last_seq,
    ]);
    return { room, messages: m.rows.map(fromRow) };
  }
  return {
    async create(room) {
      await pool.query(
        "INSERT INTO rooms (id, name, visibility, created_by, created_at, last_seq) VALUES ($1, $2, $3, $4, $5, 0)",
        [room.id, room.name ?? null, room.visibility, room.created_by, room.created_at],
      );
      return room;
    },
    join(id, afterSeq) {
      return chained(id, () => joinNow(id, afterSeq));
    },
    append(id, sender, clientMsgId, body) {
      return chained(id, () => appendNow(id, sender, clientMsgId, body));
    },
    close() {
      return pool.end();
    },
  };
}

async function openStore() {
  if (args.durablePg) return postgresStore(args.durablePg);
  return args.durable ? sqliteStore(args.durable) : memoryStore();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

async function main() {
  const store = await openStore();

  const httpServer = http.createServer((req, res) => {
    res.writeHead(404).end();
  });
  const io = new Server(httpServer, {
    wsEngine: ws.Server,
    transports: ["websocket"],
    serveClient: false,
    perMessageDeflate: false,
    // Files come as binary event arguments, as Socket.IO apps send them;
    // the whole file is one packet, so the buffer limit must hold it.
    maxHttpBufferSize: Math.max(65536, Number(process.env.MAX_UPLOAD_BYTES || 0) + 65536),
  });
  const uploadDir = process.env.UPLOAD_DIR;
  const fs = require("node:fs");

  io.use((socket, next) => {
    const claims = verifyToken(socket.handshake.auth && socket.handshake.auth.token);
    if (!claims) return next(new Error("unauthorized"));
    socket.data.user = claims.sub;
    socket.data.name = typeof claims.name === "string" ? claims.name : claims.sub;
    next();
  });

  // Typing state per (room, user): the timer that ends it.
  const typing = new Map();

  function setTyping(socket, room, on) {
    const user = socket.data.user;
    const key = `${room}\u0000${user}`;
    const timer = typing.get(key);
    if (on) {
      if (timer) {
        timer.refresh();
        return;
      }
      typing.set(
        key,
        setTimeout(() => {
          typing.delete(key);
          socket.to(room).emit("typing:user", { room_id: room, user_id: user, typing: false });
        }, TYPING_TIMEOUT_MS),
      );
      socket.to(room).emit("typing:user", { room_id: room, user_id: user, typing: true });
    } else if (timer) {
      clearTimeout(timer);
      typing.delete(key);
      socket.to(room).emit("typing:user", { room_id: room, user_id: user, typing: false });
    }
  }

  // A command's failure: to its ack, or as an `error` event without one.
  function fail(socket, ack, code, message) {
    const error = { code, message };
    if (typeof ack === "function") ack({ ok: false, error });
    else socket.emit("error", error);
  }

  function ok(ack, data) {
    if (typeof ack === "function") ack({ ok: true, data });
  }

  // Runs a store call that answers at once (memory, SQLite) or with a
  // promise (PostgreSQL), then `done` with its result.
  function withStore(socket, ack, what, call, done) {
    const failed = (e) => {
      console.error(`${what} failed`, e);
      fail(socket, ack, "unavailable", "store unavailable");
    };
    let result;
    try {
      result = call();
    } catch (e) {
      return failed(e);
    }
    if (result && typeof result.then === "function") result.then(done, failed);
    else done(result);
  }

  const isRoomId = (id) => typeof id === "string" && id.length > 0 && id.length <= 128;

  io.on("connection", (socket) => {
    socket.emit("ready", {
      session_id: socket.id,
      user: { id: socket.data.user, name: socket.data.name, roles: [] },
      rooms: [],
      server_time: new Date().toISOString(),
    });

    // Attachments the way a Socket.IO app does them: the file is a Buffer
    // argument of an event, written to disk once it has arrived whole, and
    // sent back whole as the ack's argument.
    socket.on("file:upload", (data, ack) => {
      if (!uploadDir) return fail(socket, ack, "invalid", "this server keeps no files (UPLOAD_DIR)");
      if (!data || !Buffer.isBuffer(data.data)) return fail(socket, ack, "invalid", "data");
      const id = crypto.randomUUID();
      fs.promises.writeFile(`${uploadDir}/${id}`, data.data).then(
        () => ok(ack, { id, size: data.data.length }),
        (e) => fail(socket, ack, "internal", String(e)),
      );
    });

    socket.on("file:download", (data, ack) => {
      if (!uploadDir || !data || !/^[0-9a-f-]{36}$/.test(String(data.id))) return fail(socket, ack, "invalid", "id");
      fs.promises.readFile(`${uploadDir}/${data.id}`).then(
        (bytes) => ok(ack, { bytes }),
        () => fail(socket, ack, "not_found", "file"),
      );
    });

    socket.on("room:create", (data, ack) => {
      if (!data || data.kind !== "group") return fail(socket, ack, "invalid", "kind: this server makes group rooms");
      if (data.name !== undefined && (typeof data.name !== "string" || data.name.length > 200))
        return fail(socket, ack, "invalid", "name");
      const room = newRoom(data, socket.data.user);
      withStore(
        socket,
        ack,
        "room:create",
        () => store.create(room),
        () => ok(ack, { room }),
      );
    });

    socket.on("room:join", (data, ack) => {
      if (!data || !isRoomId(data.room_id)) return fail(socket, ack, "invalid", "room_id");
      const since = data.since_seq;
      if (since !== undefined && !(Number.isInteger(since) && since >= 0)) return fail(socket, ack, "invalid", "since_seq");
      const room = data.room_id;
      withStore(
        socket,
        ack,
        "room:join",
        () => store.join(room, since),
        (joined) => {
          if (!joined) return fail(socket, ack, "not_found", "no such room");
          // Subscribed, acked and replayed in one go: no live message of the
          // room can come between (see the stores).
          socket.join(room);
          ok(ack, { room: joined.room, last_seq: joined.room.last_seq });
          for (const message of joined.messages) socket.emit("message:new", { message });
        },
      );
    });

    socket.on("message:send", (data, ack) => {
      if (!data || !isRoomId(data.room_id)) return fail(socket, ack, "invalid", "room_id");
      const room = data.room_id;
      if (!socket.rooms.has(room)) return fail(socket, ack, "not_member", "not a member of this room");
      if (typeof data.client_msg_id !== "string" || data.client_msg_id.length === 0 || data.client_msg_id.length > 128)
        return fail(socket, ack, "invalid", "client_msg_id");
      if (typeof data.body !== "string" || data.body.length === 0) return fail(socket, ack, "invalid", "body");
      if (data.body.length > MAX_BODY_CHARS) return fail(socket, ack, "too_large", "body");
      withStore(
        socket,
        ack,
        "message:send",
        () => store.append(room, socket.data.user, data.client_msg_id, data.body),
        (result) => {
          if (result.fresh) {
            setTyping(socket, room, false);
            socket.to(room).emit("message:new", { message: result.message });
          }
          ok(ack, { message: result.message });
        },
      );
    });

    for (const [event, on] of [
      ["typing:start", true],
      ["typing:stop", false],
    ]) {
      socket.on(event, (data, ack) => {
        if (!data || !isRoomId(data.room_id)) return fail(socket, ack, "invalid", "room_id");
        if (!socket.rooms.has(data.room_id)) return fail(socket, ack, "not_member", "not a member of this room");
        setTyping(socket, data.room_id, on);
        ok(ack, {});
      });
    }
  });

  httpServer.listen(args.port, args.host, () => {
    const kind = args.durablePg ? "durable PostgreSQL" : args.durable ? "durable " + args.durable : "memory";
    console.log(`socketio-ref listening on ${args.host}:${args.port} (${kind})`);
  });

  // Graceful stop, as chat-server does on SIGTERM: stop accepting, close every
  // connection, close the store.
  function stop() {
    io.close(() => {
      Promise.resolve(store.close && store.close()).finally(() => process.exit(0));
    });
    setTimeout(() => process.exit(0), 5000).unref();
  }
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}
