// Helpers of the Node client tests: tokens minted with node:crypto, a
// socket.io-client wrapper that keeps every event it did not wait for, a
// native WebSocket client (section 1 of the wire contract) on `ws`, and the
// HTTP calls the tests need. The server is started by server/tests/socketio.rs,
// which passes CHAT_URL and CHAT_JWT_SECRET.

import { createHmac, randomUUID } from "node:crypto";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import WebSocket from "ws";

export const URL = process.env.CHAT_URL;
export const SECRET = process.env.CHAT_JWT_SECRET;
if (!URL || !SECRET) {
  throw new Error("CHAT_URL and CHAT_JWT_SECRET must be set (server/tests/socketio.rs sets them)");
}

/** How long anything that should happen at once may take. */
export const WAIT = 5000;

/** The ways a socket.io-client gets to the server. */
export const TRANSPORTS = [
  { label: "websocket only", options: { transports: ["websocket"] } },
  { label: "polling then upgrade", options: {} },
  { label: "polling only", options: { transports: ["polling"] } },
];

const b64url = (data) => Buffer.from(data).toString("base64url");

/** An HS256 JWT of `claims`, signed with `secret`. */
export function mint(claims, secret = SECRET) {
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

export const now = () => Math.floor(Date.now() / 1000);

/** A token for `user`, good for an hour. */
export function token(user, roles) {
  const claims = { sub: user, name: user, exp: now() + 3600 };
  if (roles) claims.roles = roles;
  return mint(claims);
}

/** A user id of its own for each test, so that tests sharing a server do not meet. */
export function uid(prefix) {
  return `${prefix}-${randomUUID().slice(0, 8)}`;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Waits for `predicate()` to hold, polling. */
export async function until(predicate, what, wait = WAIT) {
  const deadline = Date.now() + wait;
  for (;;) {
    if (await predicate()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/**
 * Events as they arrived, each `{name, data}`; `take` removes and returns the
 * first that matches (waiting for it), so that events a test did not ask for
 * yet are not lost.
 */
export class Inbox {
  constructor(label) {
    this.label = label;
    this.events = [];
    this.all = [];
    this.waiters = [];
  }

  push(name, data) {
    const event = { name, data };
    this.all.push(event);
    const i = this.waiters.findIndex((w) => w.match(event));
    if (i >= 0) {
      const [waiter] = this.waiters.splice(i, 1);
      waiter.resolve(event);
    } else {
      this.events.push(event);
    }
  }

  /** The data of the first kept or coming event `name` whose data satisfies `pred`. */
  async take(name, pred = () => true, wait = WAIT) {
    const match = (e) => e.name === name && pred(e.data);
    const i = this.events.findIndex(match);
    if (i >= 0) return this.events.splice(i, 1)[0].data;
    return new Promise((resolve, reject) => {
      const waiter = { match, resolve: (e) => (clearTimeout(timer), resolve(e.data)) };
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        const kept = this.events.map((e) => `${e.name} ${JSON.stringify(e.data)}`.slice(0, 200));
        reject(new Error(`${this.label}: no ${name} within ${wait} ms; kept: ${kept.join(" | ")}`));
      }, wait);
      this.waiters.push(waiter);
    });
  }

  /** Asserts that no event `name` matching `pred` is kept or arrives within `ms`. */
  async none(name, ms, pred = () => true) {
    await sleep(ms);
    const found = this.events.find((e) => e.name === name && pred(e.data));
    assert.equal(found, undefined, `${this.label}: unexpected ${name} ${JSON.stringify(found?.data)}`);
  }

  /** Every kept event `name` (matching `pred`), removed. */
  drain(name, pred = () => true) {
    const taken = this.events.filter((e) => e.name === name && pred(e.data));
    this.events = this.events.filter((e) => !(e.name === name && pred(e.data)));
    return taken.map((e) => e.data);
  }

  /**
   * How many events `name` (matching `pred`) arrived in all, taken or not;
   * from the `since`th event on when given (a past `all.length`).
   */
  count(name, pred = () => true, since = 0) {
    return this.all.slice(since).filter((e) => e.name === name && pred(e.data)).length;
  }
}

/** Every socket opened by a test, closed by `closeAll`. */
const opened = new Set();

/**
 * A socket.io-client socket that has connected with `auth`; its events are
 * kept in `socket.inbox`. Rejects with the `connect_error`.
 */
export function openSocket(auth, options = {}) {
  const socket = io(URL, {
    auth,
    autoConnect: false,
    reconnection: false,
    timeout: WAIT,
    forceNew: true,
    ...options,
  });
  socket.inbox = new Inbox(`socket ${auth?.token ? "" : "(no token)"}`);
  socket.onAny((name, data) => socket.inbox.push(name, data));
  socket.on("disconnect", (reason) => socket.inbox.push("disconnect", reason));
  opened.add(socket);
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (err) => {
      socket.close();
      reject(err);
    });
    socket.connect();
  });
}

/** A connected socket for `user` (roles optional), once `ready` arrived; `socket.ready` holds it. */
export async function connect(user, options = {}, roles) {
  return connectToken(token(user, roles), options, user);
}

export async function connectToken(tok, options = {}, label = "") {
  const socket = await openSocket({ token: tok }, options);
  socket.inbox.label = `socket.io ${label}`;
  socket.ready = await socket.inbox.take("ready");
  return socket;
}

/** Emits with an ack and returns the ack's argument. */
export function call(socket, name, data) {
  return socket.timeout(WAIT).emitWithAck(name, data);
}

/** A command that must succeed: its ack's `data`. */
export async function ok(socket, name, data = {}) {
  const ack = await call(socket, name, data);
  assert.equal(ack.ok, true, `${name} ${JSON.stringify(data)} failed: ${JSON.stringify(ack)}`);
  assert.ok("data" in ack, `${name}: an ack without data: ${JSON.stringify(ack)}`);
  return ack.data;
}

/** A command that must fail: its error `{code, message}`. */
export async function fail(socket, name, data = {}) {
  const ack = await call(socket, name, data);
  assert.equal(ack.ok, false, `${name} ${JSON.stringify(data)} should have failed: ${JSON.stringify(ack)}`);
  assert.equal(typeof ack.error?.code, "string", JSON.stringify(ack));
  assert.equal(typeof ack.error?.message, "string", JSON.stringify(ack));
  return ack.error;
}

/** Waits for the socket to be upgraded to (or to be on) WebSocket. */
export async function onWebSocket(socket) {
  await until(() => socket.io.engine?.transport?.name === "websocket", "the upgrade to websocket");
}

/** A native WebSocket client of section 1: `{type, ref, data}` frames. */
export class Native {
  static async connect(tok, label = "native") {
    const ws = new WebSocket(`${URL.replace(/^http/, "ws")}/v1/ws?token=${encodeURIComponent(tok)}`);
    const native = new Native(ws, label);
    opened.add(native);
    await new Promise((resolve, reject) => {
      ws.once("open", resolve);
      ws.once("error", reject);
    });
    native.ready = await native.inbox.take("ready");
    return native;
  }

  constructor(ws, label) {
    this.ws = ws;
    this.ref = 0;
    this.inbox = new Inbox(label);
    this.replies = new Map();
    ws.on("message", (raw) => {
      const frame = JSON.parse(raw.toString());
      if (frame.type === "reply") {
        const waiting = this.replies.get(frame.ref);
        if (waiting) {
          this.replies.delete(frame.ref);
          waiting(frame);
          return;
        }
      }
      this.inbox.push(frame.type, frame.type === "error" ? frame.error : frame.data);
    });
    ws.on("close", (code) => this.inbox.push("close", code));
  }

  /** Sends a command and returns its whole reply frame. */
  request(type, data = {}) {
    const ref = ++this.ref;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.inbox.label}: no reply to ${type}`)), WAIT);
      this.replies.set(ref, (frame) => (clearTimeout(timer), resolve(frame)));
      this.ws.send(JSON.stringify({ type, ref, data }));
    });
  }

  async ok(type, data = {}) {
    const reply = await this.request(type, data);
    assert.equal(reply.ok, true, `${type} failed: ${JSON.stringify(reply)}`);
    return reply.data;
  }

  close() {
    this.ws.close();
  }
}

/** Closes every socket and native client the test opened. */
export function closeAll() {
  for (const s of opened) s.close();
  opened.clear();
}

/** `POST /v1/visitor-sessions`: `{token, user}` of a new visitor. */
export async function visitorSession(name = "Vic") {
  const response = await fetch(`${URL}/v1/visitor-sessions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name }),
  });
  const body = await response.json();
  assert.equal(response.status, 201, JSON.stringify(body));
  return body;
}

/** A GET's JSON body (`token` as a bearer token when given). */
export async function getJson(path, tok) {
  const headers = tok ? { authorization: `Bearer ${tok}` } : {};
  const response = await fetch(`${URL}${path}`, { headers });
  return { status: response.status, body: await response.json() };
}

/** A group room made by `socket` (`ok` on a socket or a native client), its id. */
export async function group(okFn, visibility = "public", members = []) {
  const data = await okFn("room:create", { kind: "group", name: uid("room"), visibility, members });
  return data.room.id;
}

/** A fresh client message id. */
export const cmid = () => randomUUID();
