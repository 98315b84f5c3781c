// A reference Socket.IO chat server with the semantics chat-server has in the
// benchmark scenarios, so that benches/run.sh can drive both with the same
// load generator (`chat-load`) and compare like with like:
//
// - auth: the handshake's `auth.token` must be an HS256 JWT signed with the
//   shared secret (the same tokens chat-server accepts), with `sub` and an
//   unexpired `exp`; anything else is refused before the connection opens;
// - `join` {room, since_seq?} (acked with {last_seq}) subscribes the socket;
// - `send` {room, client_msg_id, body} (acked with {seq, id}) appends the
//   message with the next per-room seq, idempotent on (room, sender,
//   client_msg_id), then broadcasts `message` to the room's other sockets and
//   acks. With `--durable FILE` each message is one better-sqlite3 transaction
//   (WAL, synchronous=FULL) committed before the broadcast and the ack; with
//   `--durable-pg URL` each message is one PostgreSQL transaction through a
//   node-postgres pool, its commit awaited before the broadcast and the ack
//   (sends to one room are chained, so seqs go out in order); otherwise
//   messages live in memory;
// - `typing` {room, typing} emits `typing` {room_id, user_id, typing} to the
//   room's other sockets when the user's state changes; typing ends by itself
//   6 s after the last start, and when the user sends a message;
// - `history` {room, after_seq, limit} (acked with {messages, has_more})
//   returns the oldest page above after_seq, for clients resuming after a
//   reconnect.
//
// Idle connections hold nothing beyond what Socket.IO itself keeps.
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
const MAX_HISTORY_PAGE = 100;
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

// The store: rooms with their last seq and messages, in memory or in SQLite.
function memoryStore() {
  const rooms = new Map(); // room -> { lastSeq, messages: [], byClientId: Map }
  function room(name) {
    let r = rooms.get(name);
    if (!r) {
      r = { lastSeq: 0, messages: [], byClientId: new Map() };
      rooms.set(name, r);
    }
    return r;
  }
  return {
    lastSeq(name) {
      const r = rooms.get(name);
      return r ? r.lastSeq : 0;
    },
    append(name, sender, clientMsgId, body) {
      const r = room(name);
      const key = `${sender}\u0000${clientMsgId}`;
      const existing = r.byClientId.get(key);
      if (existing !== undefined) return { message: r.messages[existing - 1], fresh: false };
      const message = newMessage(name, ++r.lastSeq, sender, clientMsgId, body);
      r.messages.push(message);
      r.byClientId.set(key, message.seq);
      return { message, fresh: true };
    },
    history(name, afterSeq, limit) {
      const r = rooms.get(name);
      if (!r) return { messages: [], has_more: false };
      const page = r.messages.slice(afterSeq, afterSeq + limit + 1);
      return { messages: page.slice(0, limit), has_more: page.length > limit };
    },
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
    CREATE TABLE IF NOT EXISTS rooms (name TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS messages (
      room TEXT NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL, sender_id TEXT NOT NULL,
      client_msg_id TEXT NOT NULL, body TEXT NOT NULL, created_at TEXT NOT NULL,
      PRIMARY KEY (room, seq));
    CREATE UNIQUE INDEX IF NOT EXISTS messages_idempotency ON messages (room, sender_id, client_msg_id);
  `);
  const getLast = db.prepare("SELECT last_seq FROM rooms WHERE name = ?").pluck();
  const upsertRoom = db.prepare(
    "INSERT INTO rooms (name, last_seq) VALUES (?, 1) ON CONFLICT (name) DO UPDATE SET last_seq = last_seq + 1 RETURNING last_seq",
  ).pluck();
  const findDup = db.prepare("SELECT * FROM messages WHERE room = ? AND sender_id = ? AND client_msg_id = ?");
  const insert = db.prepare(
    "INSERT INTO messages (room, seq, id, sender_id, client_msg_id, body, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
  );
  const page = db.prepare("SELECT * FROM messages WHERE room = ? AND seq > ? ORDER BY seq LIMIT ?");
  // One transaction, so one commit (and with synchronous=FULL one WAL fsync),
  // per message.
  const append = db.transaction((name, sender, clientMsgId, body) => {
    const dup = findDup.get(name, sender, clientMsgId);
    if (dup) return { message: fromRow(dup), fresh: false };
    const message = newMessage(name, upsertRoom.get(name), sender, clientMsgId, body);
    insert.run(name, message.seq, message.id, sender, clientMsgId, body, message.created_at);
    return { message, fresh: true };
  });
  return {
    lastSeq(name) {
      return getLast.get(name) ?? 0;
    },
    append,
    history(name, afterSeq, limit) {
      const rows = page.all(name, afterSeq, limit + 1);
      return { messages: rows.slice(0, limit).map(fromRow), has_more: rows.length > limit };
    },
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
    CREATE TABLE IF NOT EXISTS rooms (name TEXT PRIMARY KEY, last_seq BIGINT NOT NULL);
    CREATE TABLE IF NOT EXISTS messages (
      room TEXT NOT NULL, seq BIGINT NOT NULL, id UUID NOT NULL, sender_id TEXT NOT NULL,
      client_msg_id TEXT NOT NULL, body TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL,
      PRIMARY KEY (room, seq));
    CREATE UNIQUE INDEX IF NOT EXISTS messages_idempotency ON messages (room, sender_id, client_msg_id);
  `);
  // The tail of each room's chain of sends: a send starts after the previous
  // one to its room has committed, so broadcasts leave in seq order.
  const tails = new Map();
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
      const counter = await client.query(
        "INSERT INTO rooms (name, last_seq) VALUES ($1, 1) ON CONFLICT (name) DO UPDATE SET last_seq = rooms.last_seq + 1 RETURNING last_seq",
        [name],
      );
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
  return {
    async lastSeq(name) {
      const r = await pool.query("SELECT last_seq FROM rooms WHERE name = $1", [name]);
      return r.rows.length > 0 ? Number(r.rows[0].last_seq) : 0;
    },
    append(name, sender, clientMsgId, body) {
      const run = (tails.get(name) ?? Promise.resolve()).then(() => appendNow(name, sender, clientMsgId, body));
      const tail = run.catch(() => {});
      tails.set(name, tail);
      tail.then(() => {
        if (tails.get(name) === tail) tails.delete(name);
      });
      return run;
    },
    async history(name, afterSeq, limit) {
      const r = await pool.query("SELECT * FROM messages WHERE room = $1 AND seq > $2 ORDER BY seq LIMIT $3", [
        name,
        afterSeq,
        limit + 1,
      ]);
      return { messages: r.rows.slice(0, limit).map(fromRow), has_more: r.rows.length > limit };
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
    maxHttpBufferSize: 65536,
  });

  io.use((socket, next) => {
    const claims = verifyToken(socket.handshake.auth && socket.handshake.auth.token);
    if (!claims) return next(new Error("unauthorized"));
    socket.data.user = claims.sub;
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
          socket.to(room).emit("typing", { room_id: room, user_id: user, typing: false });
        }, TYPING_TIMEOUT_MS),
      );
      socket.to(room).emit("typing", { room_id: room, user_id: user, typing: true });
    } else if (timer) {
      clearTimeout(timer);
      typing.delete(key);
      socket.to(room).emit("typing", { room_id: room, user_id: user, typing: false });
    }
  }

  function fail(ack, code, message) {
    if (typeof ack === "function") ack({ error: { code, message } });
  }

  io.on("connection", (socket) => {
    socket.on("join", (data, ack) => {
      if (!data || typeof data.room !== "string" || data.room.length === 0) return fail(ack, "invalid", "room");
      socket.join(data.room);
      Promise.resolve(store.lastSeq(data.room)).then(
        (lastSeq) => typeof ack === "function" && ack({ last_seq: lastSeq }),
        (e) => {
          console.error("join failed", e);
          fail(ack, "unavailable", "store unavailable");
        },
      );
    });

    socket.on("send", (data, ack) => {
      if (!data || typeof data.room !== "string") return fail(ack, "invalid", "room");
      if (!socket.rooms.has(data.room)) return fail(ack, "not_member", "not a member of this room");
      if (typeof data.client_msg_id !== "string" || data.client_msg_id.length === 0 || data.client_msg_id.length > 128)
        return fail(ack, "invalid", "client_msg_id");
      if (typeof data.body !== "string" || data.body.length === 0) return fail(ack, "invalid", "body");
      if (data.body.length > MAX_BODY_CHARS) return fail(ack, "too_large", "body");
      const done = (result) => {
        if (result.fresh) {
          setTyping(socket, data.room, false);
          socket.to(data.room).emit("message", result.message);
        }
        if (typeof ack === "function") ack({ seq: result.message.seq, id: result.message.id });
      };
      const failed = (e) => {
        console.error("append failed", e);
        fail(ack, "unavailable", "store unavailable");
      };
      let result;
      try {
        result = store.append(data.room, socket.data.user, data.client_msg_id, data.body);
      } catch (e) {
        return failed(e);
      }
      // The in-memory and SQLite stores answer at once; PostgreSQL with a promise.
      if (typeof result.then === "function") result.then(done, failed);
      else done(result);
    });

    socket.on("typing", (data) => {
      if (!data || typeof data.room !== "string" || !socket.rooms.has(data.room)) return;
      setTyping(socket, data.room, data.typing !== false);
    });

    socket.on("history", (data, ack) => {
      if (!data || typeof data.room !== "string") return fail(ack, "invalid", "room");
      if (!socket.rooms.has(data.room)) return fail(ack, "not_member", "not a member of this room");
      const after = Number.isInteger(data.after_seq) && data.after_seq >= 0 ? data.after_seq : 0;
      const limit = Math.min(Number.isInteger(data.limit) && data.limit > 0 ? data.limit : 50, MAX_HISTORY_PAGE);
      Promise.resolve(store.history(data.room, after, limit)).then(
        (page) => typeof ack === "function" && ack(page),
        (e) => {
          console.error("history failed", e);
          fail(ack, "unavailable", "store unavailable");
        },
      );
    });
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
