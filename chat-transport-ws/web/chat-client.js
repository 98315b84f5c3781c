// chat-client.js — a small client for the chat server's native WebSocket
// protocol (docs/protocol.md), for browsers and any runtime with a standard
// WebSocket. Served by chat-server at /chat-client.js; types at
// /chat-client.d.ts; guide in docs/web-client.md.
//
// What it adds to a bare socket:
// - commands as promises, matched to replies by `ref`;
// - events as callbacks, with duplicates removed (a message is handed out
//   once, whether it came live, from a resume replay, or as your own ack);
// - reconnection with exponential backoff and jitter, a heartbeat that notices
//   a dead network, and resume: every joined room is joined again with the
//   highest seq below which nothing is missing, so no message is lost;
// - an outbox: sends wait while offline and are resent after a reconnect
//   with the same client_msg_id, which the server stores only once;
// - uploads of attachments with progress (`upload`), and attachment URLs
//   made absolute against the chat server, wherever the page runs.

/** An error answered by the server (`code` is one of the protocol's codes)
 * or made by this client: `disconnected`, `timeout`, `closed`, `aborted`. */
export class ChatError extends Error {
  constructor(code, message) {
    super(message || code);
    this.name = 'ChatError';
    this.code = code;
  }
}

// Codes after which a send is worth trying again; any other error is final.
const RETRYABLE = new Set(['unavailable', 'rate_limited', 'disconnected', 'timeout']);
// A first join passes a since_seq beyond any room's newest message: the server
// counts it as the newest (the reply's last_seq), so the session gets every
// message after the reply and none before; older ones come from history.
const LIVE_ONLY = Number.MAX_SAFE_INTEGER;
const TYPING_REFRESH_MS = 3000;
// The server ends typing 6 s after the last typing:start; a missed
// typing:user false is cleaned up locally a little later.
const TYPING_EXPIRY_MS = 7000;

function randomId() {
  if (globalThis.crypto && typeof globalThis.crypto.randomUUID === 'function') {
    return globalThis.crypto.randomUUID();
  }
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

/** The http(s) base of a server, from a URL or a host, without a trailing slash. */
export function serverBase(server) {
  const base = server || (globalThis.location ? globalThis.location.origin : '');
  if (!base) throw new TypeError('chat-client: no server given and no page origin to default to');
  const url = new URL(base, globalThis.location ? globalThis.location.href : undefined);
  if (url.protocol === 'ws:') url.protocol = 'http:';
  if (url.protocol === 'wss:') url.protocol = 'https:';
  return url.origin;
}

async function httpJson(server, path, { method = 'GET', body, token } = {}) {
  const headers = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (token) headers.authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(serverBase(server) + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'omit',
    });
  } catch (err) {
    throw new ChatError('disconnected', `cannot reach the chat server: ${err.message}`);
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new ChatError(error.code || `http_${response.status}`, error.message || response.statusText);
  }
  return data;
}

// The server's attachment URLs are signed paths (`/v1/attachments/…?exp=…&sig=…`)
// relative to the server unless its operator set a public URL: a page on
// another origin (the widget) must resolve them against the chat server,
// not against itself.
function resolveAttachment(base, file) {
  if (!file || typeof file !== 'object') return file;
  for (const key of ['url', 'thumbnail_url']) {
    if (typeof file[key] !== 'string' || !file[key]) continue;
    try {
      file[key] = new URL(file[key], `${base}/`).href;
    } catch {
      // Left as the server wrote it.
    }
  }
  return file;
}

function resolveMessage(base, message) {
  if (message && Array.isArray(message.attachments)) {
    for (const file of message.attachments) resolveAttachment(base, file);
  }
  return message;
}

// The id of an attachment given as an Attachment or as its id.
const attachmentId = (file) => (typeof file === 'string' ? file : file && file.id);

/** `POST /v1/visitor-sessions`: an anonymous visitor for a support widget.
 * Resolves to `{token, user, expires_at}`. */
export function createVisitorSession(server, { name } = {}) {
  return httpJson(server, '/v1/visitor-sessions', { method: 'POST', body: name ? { name } : {} });
}

/** `GET /v1/support/availability`: `{available, online_agents}`. */
export function supportAvailability(server) {
  return httpJson(server, '/v1/support/availability');
}

/** Whether the server offers sign-in by name (its `dev_login` setting). */
export async function devLoginEnabled(server) {
  try {
    const data = await httpJson(server, '/v1/dev-login');
    return Boolean(data && data.enabled);
  } catch {
    return false;
  }
}

/** `POST /v1/dev-login`: a token for a name, on servers that allow it. */
export function devLogin(server, name, { roles = [] } = {}) {
  return httpJson(server, '/v1/dev-login', { method: 'POST', body: { name, roles } });
}

/** `GET /v1/push/vapid-public-key`: the server's VAPID public key (base64url,
 * an uncompressed P-256 point), the `applicationServerKey` for
 * `pushManager.subscribe`; `null` when the server offers no Web Push (it
 * answers 404 when push is not configured). */
export async function vapidKey(server) {
  try {
    const data = await httpJson(server, '/v1/push/vapid-public-key');
    return data && typeof data.key === 'string' && data.key ? data.key : null;
  } catch (err) {
    if (err.code === 'not_found' || err.code === 'http_404') return null;
    throw err;
  }
}

/** The state of one room as this client tracks it. */
class RoomTrack {
  constructor(id) {
    this.id = id;
    // Every seq up to the watermark has been handed out (or lies before
    // where this client started); `above` holds handed-out seqs past it.
    this.watermark = null;
    this.above = new Set();
    this.joined = false;
    this.wanted = false;
    this.receipts = new Map();
    // Member id → role in the room ('owner' | 'admin' | 'member').
    this.roles = new Map();
    this.readSent = 0;
    this.deliveredSent = 0;
    this.deliverTimer = null;
    this.typing = new Map();
    this.typingSentAt = 0;
    // After a (re)join, the seq the server's replay will reach; sends to the
    // room wait until it has (see _pumpOutbox).
    this.catchUpTo = 0;
    this.catchUpTimer = null;
  }

  get caughtUp() {
    return this.joined && this.watermark !== null && this.watermark >= this.catchUpTo;
  }

  /** Records a seq; false when it was seen before. */
  admit(seq) {
    if (this.watermark !== null && seq <= this.watermark) return false;
    if (this.above.has(seq)) return false;
    this.above.add(seq);
    this.advance();
    return true;
  }

  advance() {
    if (this.watermark === null) return;
    for (const seq of this.above) if (seq <= this.watermark) this.above.delete(seq);
    while (this.above.delete(this.watermark + 1)) this.watermark += 1;
  }
}

/** A connection to a chat server that survives disconnects. */
export class ChatClient {
  /**
   * @param {object} options see chat-client.d.ts (ChatClientOptions)
   */
  constructor(options = {}) {
    if (!options.token && typeof options.getToken !== 'function') {
      throw new TypeError('chat-client: give a token or a getToken function');
    }
    this.server = serverBase(options.server);
    this.options = {
      minBackoffMs: 500,
      maxBackoffMs: 8000,
      requestTimeoutMs: 15000,
      heartbeatMs: 25000,
      autoDelivered: true,
      ...options,
    };
    this._token = options.token || null;
    this._WebSocket = options.WebSocket || globalThis.WebSocket;
    this._listeners = new Map();
    this._pending = new Map();
    this._nextRef = 1;
    this._ws = null;
    this._attempt = 0;
    this._timer = null;
    this._heartbeat = null;
    this._authFailures = 0;
    this._waiters = [];
    this._rooms = new Map();
    this._outbox = [];
    this._presence = new Map();
    this.state = 'idle';
    this.user = null;
    this.sessionId = null;
    this.rooms = new Map();
    this._loadOutbox();
    this._onOnline = () => {
      if (this.state === 'reconnecting') this._reconnectNow();
    };
    if (globalThis.addEventListener) globalThis.addEventListener('online', this._onOnline);
  }

  // ---- events -------------------------------------------------------------

  /** Calls `fn(data)` for each event of `type`; returns a function that stops it. */
  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(fn);
    return () => this.off(type, fn);
  }

  off(type, fn) {
    const set = this._listeners.get(type);
    if (set) set.delete(fn);
  }

  _emit(type, data) {
    for (const fn of [...(this._listeners.get(type) || [])]) {
      try {
        fn(data);
      } catch (err) {
        // A listener's bug must not break the connection.
        setTimeout(() => {
          throw err;
        });
      }
    }
  }

  _setState(state, detail) {
    if (this.state === state) return;
    this.state = state;
    this._emit('state', { state, ...detail });
  }

  // ---- connection ---------------------------------------------------------

  /** Opens the connection; resolves with the first `ready` data. Reconnects
   * by itself afterwards until `close()`. */
  connect() {
    if (this.state === 'closed') throw new ChatError('closed', 'this client was closed');
    const ready = new Promise((resolve, reject) => {
      const offReady = this.on('ready', (data) => {
        offReady();
        offFail();
        resolve(data);
      });
      const offFail = this.on('auth-failed', (data) => {
        offReady();
        offFail();
        reject(new ChatError('unauthorized', data.reason));
      });
    });
    if (this.state === 'idle') this._open();
    return ready;
  }

  /** Closes the connection for good; pending commands fail with `closed`. */
  close() {
    this._setState('closed');
    clearTimeout(this._timer);
    clearTimeout(this._stable);
    clearInterval(this._heartbeat);
    if (globalThis.removeEventListener) globalThis.removeEventListener('online', this._onOnline);
    for (const room of this._rooms.values()) clearTimeout(room.deliverTimer);
    if (this._ws) {
      const ws = this._ws;
      this._ws = null;
      ws.onclose = null;
      try {
        ws.close(1000, 'client closed');
      } catch {
        // already closed
      }
    }
    this._failPending(new ChatError('closed', 'the client was closed'));
    for (const waiter of this._waiters.splice(0)) waiter.reject(new ChatError('closed', 'the client was closed'));
  }

  async _open() {
    // One connection at a time: an `online` event while a socket is being
    // opened must not open a second one.
    if (this.state === 'closed' || this._ws || this._opening) return;
    this._setState(this._attempt === 0 && !this.user ? 'connecting' : 'reconnecting');
    let token;
    this._opening = true;
    try {
      token = await this._currentToken();
    } catch (err) {
      this._emit('error', { code: 'unauthorized', message: `getting a token failed: ${err.message}` });
      this._scheduleReconnect();
      return;
    } finally {
      this._opening = false;
    }
    if (this.state === 'closed' || this._ws) return;
    const url = new URL('/v1/ws', this.server);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    let ws;
    try {
      ws = new this._WebSocket(url.href);
    } catch (err) {
      this._emit('error', { code: 'disconnected', message: err.message });
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;
    // The token goes in the first frame rather than the URL, where proxies
    // and browser histories could keep it.
    ws.onopen = () => ws.send(JSON.stringify({ type: 'auth', data: { token } }));
    ws.onmessage = (event) => this._onFrame(ws, event.data);
    ws.onerror = () => {};
    ws.onclose = (event) => this._onClose(ws, event.code, event.reason);
  }

  async _currentToken() {
    if (typeof this.options.getToken === 'function') {
      const reason = this._authFailures > 0 ? 'rejected' : 'connect';
      const token = await this.options.getToken({ reason });
      if (token) this._token = token;
    }
    if (!this._token) throw new Error('no token');
    return this._token;
  }

  _onClose(ws, code, reason) {
    if (ws !== this._ws) return;
    this._ws = null;
    clearInterval(this._heartbeat);
    clearTimeout(this._stable);
    this._failPending(new ChatError('disconnected', `the connection closed (${code})`));
    for (const room of this._rooms.values()) {
      room.joined = false;
      this._clearTyping(room);
    }
    for (const entry of this._outbox) entry.ref = null;
    if (this.state === 'closed') return;
    this._emit('disconnected', { code, reason });
    if (code === 4401) {
      this._authFailures += 1;
      // A token that was refused once is asked for again (getToken can
      // refresh it); refused twice in a row, the client stops.
      if (typeof this.options.getToken !== 'function' || this._authFailures > 1) {
        this._setState('closed');
        this._emit('auth-failed', { code, reason: reason || 'authentication failed' });
        return;
      }
      this._setState('reconnecting');
      this._reconnectNow();
      return;
    }
    if (code === 4400) {
      this._setState('closed');
      this._emit('error', { code: 'invalid', message: `the server closed the connection: ${reason}` });
      return;
    }
    this._scheduleReconnect();
  }

  _scheduleReconnect() {
    if (this.state === 'closed') return;
    this._setState('reconnecting');
    const { minBackoffMs, maxBackoffMs } = this.options;
    const ceiling = Math.min(maxBackoffMs, minBackoffMs * 2 ** this._attempt);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this._attempt += 1;
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._open(), delay);
    this._emit('reconnecting', { attempt: this._attempt, delay_ms: Math.round(delay) });
  }

  _reconnectNow() {
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._open(), 0);
  }

  _onFrame(ws, text) {
    if (ws !== this._ws) return;
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    switch (frame.type) {
      case 'ready':
        this._onReady(frame.data);
        break;
      case 'reply':
        this._onReply(frame);
        break;
      case 'error':
        this._onErrorFrame(frame.error || {});
        break;
      default:
        this._onEvent(frame.type, frame.data || {});
    }
  }

  _onReady(data) {
    const resumed = this.user !== null;
    // The backoff starts over only once a connection has lasted: a server
    // that accepts and then closes at once (4429, say) is not hammered.
    clearTimeout(this._stable);
    this._stable = setTimeout(() => {
      this._attempt = 0;
    }, 10000);
    this._authFailures = 0;
    this.user = data.user;
    this.sessionId = data.session_id;
    this.rooms = new Map(data.rooms.map((room) => [room.id, room]));
    this._setState('open');
    this._startHeartbeat();
    // Rooms joined before a disconnect are joined again from their
    // watermark; the server replays what was missed, the dedup drops the rest.
    for (const room of this._rooms.values()) {
      if (room.wanted) this._rejoin(room);
    }
    this._pumpOutbox();
    this._emit('ready', { ...data, resumed });
    for (const waiter of this._waiters.splice(0)) waiter.resolve();
  }

  /** Joins a followed room again after a reconnect. A passing failure is
   * retried; a refusal (the room is gone, or the user is no longer allowed
   * in) stops following it, and its unsent messages fail. */
  _rejoin(room, attempt = 0) {
    this._join(room).catch((err) => {
      if (!room.wanted || this.state !== 'open') return;
      if (RETRYABLE.has(err.code) || err.code === 'internal') {
        const delay = Math.min(this.options.maxBackoffMs, this.options.minBackoffMs * 2 ** attempt);
        setTimeout(() => {
          if (room.wanted && !room.joined && this.state === 'open') this._rejoin(room, attempt + 1);
        }, delay);
        return;
      }
      room.wanted = false;
      this._emit('error', { code: err.code, message: `room ${room.id}: ${err.message}`, room_id: room.id });
      this._pumpOutbox();
    });
  }

  _onReply(frame) {
    const pending = this._pending.get(String(frame.ref));
    if (!pending) return;
    this._pending.delete(String(frame.ref));
    clearTimeout(pending.timer);
    if (frame.ok) pending.resolve(frame.data || {});
    else pending.reject(new ChatError(frame.error.code, frame.error.message));
  }

  _onErrorFrame(error) {
    this._emit('error', error);
    // A replay that failed leaves the room's stream (see docs/protocol.md,
    // Resuming): join the rooms again, which is harmless for the others.
    if (error.code === 'unavailable' && this.state === 'open') {
      setTimeout(() => {
        for (const room of this._rooms.values()) {
          if (room.wanted) this._rejoin(room);
        }
      }, 1000);
    }
  }

  _onEvent(type, data) {
    switch (type) {
      case 'message:new':
        this._acceptMessage(data.message);
        return;
      case 'message:status': {
        const room = this._room(data.room_id);
        const cursor = room.receipts.get(data.user_id) || { delivered_seq: 0, read_seq: 0 };
        const key = data.status === 'read' ? 'read_seq' : 'delivered_seq';
        cursor[key] = Math.max(cursor[key], data.up_to_seq);
        if (data.status === 'read') cursor.delivered_seq = Math.max(cursor.delivered_seq, data.up_to_seq);
        room.receipts.set(data.user_id, cursor);
        break;
      }
      case 'typing:user': {
        const room = this._room(data.room_id);
        this._setTyping(room, data.user_id, data.typing);
        break;
      }
      case 'presence:changed':
        this._presence.set(data.user_id, data.status);
        break;
      case 'room:added':
        if (!this.rooms.has(data.room.id)) this.rooms.set(data.room.id, { ...data.room, unread: 0, read_seq: 0 });
        break;
      case 'room:removed': {
        // The user left the room (maybe in another tab or on another
        // device): it is not followed or listed any more.
        const room = this._rooms.get(data.room_id);
        if (room) room.wanted = false;
        this._rooms.delete(data.room_id);
        this.rooms.delete(data.room_id);
        break;
      }
      case 'room:updated':
        this._updateRoom(data.room);
        break;
      case 'room:member_updated':
        this._room(data.room_id).roles.set(data.user_id, data.role);
        break;
      case 'user:joined':
        this._room(data.room_id).roles.set(data.user.id, 'member');
        break;
      case 'user:left':
        this._room(data.room_id).roles.delete(data.user_id);
        break;
      case 'room:muted':
        this._setMuted(data.room_id, data.muted, data.muted_until);
        break;
      case 'message:updated':
        resolveMessage(this.server, data.message);
        break;
      default:
        break;
    }
    this._emit(type, data);
  }

  _updateRoom(room) {
    const known = this.rooms.get(room.id);
    if (!known) return;
    // Fields a room may drop (a cleared name or topic) must not linger.
    const { name: _name, topic: _topic, ...rest } = known;
    this.rooms.set(room.id, { ...rest, ...room, last_seq: Math.max(known.last_seq, room.last_seq) });
  }

  _setMuted(roomId, muted, mutedUntil) {
    const known = this.rooms.get(roomId);
    if (!known) return;
    const { muted_until: _until, ...rest } = known;
    this.rooms.set(roomId, muted ? { ...rest, muted: true, ...(mutedUntil ? { muted_until: mutedUntil } : {}) } : { ...rest, muted: false });
  }

  _startHeartbeat() {
    clearInterval(this._heartbeat);
    if (!this.options.heartbeatMs) return;
    // Browsers answer the server's pings but cannot see them; a lost network
    // shows only when a command gets no answer.
    this._heartbeat = setInterval(() => {
      const ws = this._ws;
      this.request('ping', {}, { timeoutMs: Math.min(10000, this.options.heartbeatMs) }).catch((err) => {
        if (err.code === 'timeout' && ws && ws === this._ws) {
          try {
            ws.close(4000, 'heartbeat timeout');
          } catch {
            // closing anyway
          }
          this._onClose(ws, 1006, 'heartbeat timeout');
        }
      });
    }, this.options.heartbeatMs);
  }

  // ---- commands -----------------------------------------------------------

  /** Resolves once the connection is open (at once when it is). */
  whenOpen(timeoutMs = this.options.requestTimeoutMs) {
    if (this.state === 'open') return Promise.resolve();
    if (this.state === 'closed') return Promise.reject(new ChatError('closed', 'the client was closed'));
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject };
      this._waiters.push(waiter);
      setTimeout(() => {
        const i = this._waiters.indexOf(waiter);
        if (i >= 0) {
          this._waiters.splice(i, 1);
          reject(new ChatError('timeout', 'not connected'));
        }
      }, timeoutMs);
    });
  }

  /** Sends any command; resolves with the reply's data or rejects with a
   * ChatError. Waits for the connection when it is down; a command whose
   * connection drops before its reply fails with `disconnected` (it may or
   * may not have been applied). Sends should go through `send()` instead. */
  async request(type, data = {}, { timeoutMs = this.options.requestTimeoutMs } = {}) {
    await this.whenOpen(timeoutMs);
    return this._sendFrame(type, data, timeoutMs);
  }

  _sendFrame(type, data, timeoutMs = this.options.requestTimeoutMs) {
    const ws = this._ws;
    if (!ws || this.state !== 'open') return Promise.reject(new ChatError('disconnected', 'not connected'));
    const ref = this._nextRef++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(String(ref));
        reject(new ChatError('timeout', `no reply to ${type} within ${timeoutMs} ms`));
      }, timeoutMs);
      this._pending.set(String(ref), { resolve, reject, timer, type });
      try {
        ws.send(JSON.stringify({ type, ref, data }));
      } catch (err) {
        clearTimeout(timer);
        this._pending.delete(String(ref));
        reject(new ChatError('disconnected', err.message));
      }
    });
  }

  _failPending(error) {
    const pending = [...this._pending.values()];
    this._pending.clear();
    for (const p of pending) {
      clearTimeout(p.timer);
      p.reject(error);
    }
  }

  // ---- rooms --------------------------------------------------------------

  _room(id) {
    let room = this._rooms.get(id);
    if (!room) {
      room = new RoomTrack(id);
      this._rooms.set(id, room);
    }
    return room;
  }

  /** Subscribes to a room's events and keeps it subscribed across
   * reconnects. The first join starts at the room's newest message (page
   * older ones with `history`); later ones resume where the client was, unless
   * `sinceSeq` says otherwise (0 replays the whole room as `message` events). */
  async join(roomId, { sinceSeq } = {}) {
    const room = this._room(roomId);
    room.wanted = true;
    if (sinceSeq !== undefined) {
      room.watermark = null;
      room.start = sinceSeq;
    }
    await this.whenOpen();
    return this._join(room);
  }

  async _join(room) {
    const since = room.watermark !== null ? room.watermark : (room.start ?? LIVE_ONLY);
    let reply;
    try {
      reply = await this._sendFrame('room:join', { room_id: room.id, since_seq: since });
    } catch (err) {
      // Sends to the room must not wait for a replay that will not come.
      room.catchUpTo = 0;
      room.joined = false;
      this._pumpOutbox();
      throw err;
    }
    room.joined = true;
    if (room.watermark === null) {
      room.watermark = Math.min(since, reply.last_seq);
      room.advance();
    }
    room.catchUpTo = reply.last_seq;
    clearTimeout(room.catchUpTimer);
    if (!room.caughtUp) {
      // A replay that stalls (the store failing, say) holds sends back for a
      // few seconds at most.
      room.catchUpTimer = setTimeout(() => {
        room.catchUpTo = 0;
        this._pumpOutbox();
      }, 5000);
    }
    if (reply.roles) room.roles = new Map(Object.entries(reply.roles));
    for (const r of reply.receipts || []) {
      const cursor = room.receipts.get(r.user_id) || { delivered_seq: 0, read_seq: 0 };
      cursor.delivered_seq = Math.max(cursor.delivered_seq, r.delivered_seq);
      cursor.read_seq = Math.max(cursor.read_seq, r.read_seq);
      room.receipts.set(r.user_id, cursor);
    }
    if (this.user) {
      const mine = room.receipts.get(this.user.id);
      if (mine) {
        room.readSent = Math.max(room.readSent, mine.read_seq);
        room.deliveredSent = Math.max(room.deliveredSent, mine.delivered_seq);
      }
    }
    room.readSent = Math.max(room.readSent, reply.read_seq || 0);
    const summary = this.rooms.get(room.id);
    this.rooms.set(room.id, {
      ...(summary || {}),
      ...reply.room,
      read_seq: Math.max(reply.read_seq || 0, summary ? summary.read_seq || 0 : 0),
      unread: Math.max(0, reply.last_seq - Math.max(reply.read_seq || 0, room.readSent)),
    });
    this._emit('joined', reply);
    this._emit('receipts', { room_id: room.id });
    this._pumpOutbox();
    return reply;
  }

  /** Leaves a room (ends the membership) and stops following it. */
  async leave(roomId) {
    const room = this._room(roomId);
    room.wanted = false;
    await this.request('room:leave', { room_id: roomId });
    this._rooms.delete(roomId);
    this.rooms.delete(roomId);
  }

  /** Stops following a room's events after the next reconnect, without
   * leaving it. */
  unfollow(roomId) {
    const room = this._rooms.get(roomId);
    if (room) room.wanted = false;
  }

  /** Creates a room: `{kind, name?, visibility?, members?}`; resolves with the room. */
  async createRoom(spec) {
    const { room } = await this.request('room:create', spec);
    if (!this.rooms.has(room.id)) this.rooms.set(room.id, { ...room, unread: 0, read_seq: 0 });
    return room;
  }

  /** The direct room with one other user (made once per pair). */
  directRoom(userId) {
    return this.createRoom({ kind: 'direct', members: [userId] });
  }

  invite(roomId, userId) {
    return this.request('room:invite', { room_id: roomId, user_id: userId });
  }

  /** A member's role in a joined room: 'owner', 'admin' or 'member'
   * (undefined when not known). */
  roleOf(roomId, userId) {
    const room = this._rooms.get(roomId);
    return room ? room.roles.get(userId) : undefined;
  }

  /** Whether the signed-in user may moderate a joined room (owner or admin
   * of a group room); the server checks again. */
  canModerate(roomId) {
    const summary = this.rooms.get(roomId);
    const role = this.user ? this.roleOf(roomId, this.user.id) : undefined;
    return !!summary && summary.kind === 'group' && (role === 'owner' || role === 'admin');
  }

  /** Changes a room's `name` and/or `topic` (owner or admin); an empty
   * string clears one. Resolves with the room. */
  async updateRoom(roomId, { name, topic } = {}) {
    const data = { room_id: roomId };
    if (name !== undefined) data.name = name;
    if (topic !== undefined) data.topic = topic;
    const { room } = await this.request('room:update', data);
    this._updateRoom(room);
    return room;
  }

  /** Removes a member (owner or admin); with `ban`, they cannot come back
   * until `unban`. */
  removeMember(roomId, userId, { ban = false } = {}) {
    return this.request('room:remove', { room_id: roomId, user_id: userId, ban });
  }

  unban(roomId, userId) {
    return this.request('room:unban', { room_id: roomId, user_id: userId });
  }

  /** The room's bans, newest first: `[{user, banned_by, banned_at}]`. */
  async bans(roomId) {
    const { bans } = await this.request('room:bans', { room_id: roomId });
    return bans;
  }

  /** Makes a member an admin or a member again (the owner only). */
  async setRole(roomId, userId, role) {
    await this.request('room:set_role', { room_id: roomId, user_id: userId, role });
    this._room(roomId).roles.set(userId, role);
  }

  /** Mutes a room for this user (no push for it) until `until` (a Date or
   * RFC 3339 text), or until `unmute` when it is not given. */
  async mute(roomId, { until } = {}) {
    const data = { room_id: roomId };
    if (until !== undefined && until !== null) data.until = until instanceof Date ? until.toISOString() : until;
    await this.request('room:mute', data);
    this._setMuted(roomId, true, data.until);
  }

  async unmute(roomId) {
    await this.request('room:unmute', { room_id: roomId });
    this._setMuted(roomId, false);
  }

  /** One page of history, ascending; messages of it are also recorded as
   * seen, so a later replay does not hand them out again. */
  async history(roomId, { beforeSeq, afterSeq, limit } = {}) {
    const data = { room_id: roomId };
    if (beforeSeq !== undefined) data.before_seq = beforeSeq;
    if (afterSeq !== undefined) data.after_seq = afterSeq;
    if (limit !== undefined) data.limit = limit;
    const page = await this.request('room:history', data);
    for (const m of page.messages) resolveMessage(this.server, m);
    const room = this._rooms.get(roomId);
    if (room && room.watermark !== null) {
      for (const m of page.messages) if (m.seq > room.watermark) room.admit(m.seq);
    }
    return page;
  }

  // ---- messages -----------------------------------------------------------

  _acceptMessage(message) {
    resolveMessage(this.server, message);
    const room = this._room(message.room_id);
    if (!room.admit(message.seq)) return false;
    const mine = Boolean(this.user && message.sender_id === this.user.id);
    if (mine) this._settleOutbox(message);
    this._clearTypingOf(room, message.sender_id);
    const summary = this.rooms.get(message.room_id);
    if (summary) {
      summary.last_seq = Math.max(summary.last_seq || 0, message.seq);
      if (mine) summary.read_seq = Math.max(summary.read_seq || 0, message.seq);
      summary.unread = Math.max(0, summary.last_seq - Math.max(summary.read_seq || 0, room.readSent));
    }
    if (mine) {
      room.readSent = Math.max(room.readSent, message.seq);
      room.deliveredSent = Math.max(room.deliveredSent, message.seq);
    } else if (this.options.autoDelivered && room.joined) {
      this._scheduleDelivered(room, message.seq);
    }
    this._emit('message', { message, mine });
    if (room.catchUpTo && room.caughtUp) {
      clearTimeout(room.catchUpTimer);
      // After the listeners' own commands (a markRead of this message) have
      // gone out, which takes a few promise turns.
      setTimeout(() => this._pumpOutbox(), 0);
    }
    return true;
  }

  _scheduleDelivered(room, seq) {
    if (seq <= room.deliveredSent) return;
    room.deliverTarget = Math.max(room.deliverTarget || 0, seq);
    if (room.deliverTimer) return;
    room.deliverTimer = setTimeout(() => {
      room.deliverTimer = null;
      const upTo = room.deliverTarget;
      if (upTo <= room.deliveredSent || this.state !== 'open') return;
      room.deliveredSent = upTo;
      this._sendFrame('message:delivered', { room_id: room.id, up_to_seq: upTo }).catch(() => {
        room.deliveredSent = 0;
      });
    }, 200);
  }

  /** Sends a message through the outbox: it is kept until the server has
   * stored it, across reconnects, and resent with the same client_msg_id.
   * `attachments` are uploaded files (Attachments from `upload`, or their
   * ids); with some, `body` may be empty. Resolves with the stored message;
   * rejects only when the server refuses it for good (`invalid`,
   * `too_large`, `forbidden`, `not_member`, `conflict` for a file posted
   * already…). */
  send(roomId, body, { replyTo, clientMsgId, attachments } = {}) {
    return new Promise((resolve, reject) => {
      const entry = {
        room_id: roomId,
        client_msg_id: clientMsgId || randomId(),
        body,
        reply_to: replyTo,
        created_at: new Date().toISOString(),
        ref: null,
        waiters: [{ resolve, reject }],
      };
      // Kept whole (name, size) for the Sending… bubbles; only ids go out.
      const files = (attachments || [])
        .filter((file) => attachmentId(file))
        .map((file) => (typeof file === 'string' ? { id: file } : { ...file }));
      if (files.length) entry.attachments = files;
      this._outbox.push(entry);
      this._saveOutbox();
      this._emit('outbox', { entries: this.outbox });
      this.stopTyping(roomId);
      this._pumpOutbox();
    });
  }

  /** Messages sent but not yet stored, oldest first. */
  get outbox() {
    return this._outbox.map(({ room_id, client_msg_id, body, reply_to, created_at, attachments }) => ({
      room_id,
      client_msg_id,
      body,
      reply_to,
      created_at,
      ...(attachments ? { attachments } : {}),
    }));
  }

  _pumpOutbox() {
    if (this.state !== 'open') return;
    // All unsent entries go out at once, in order: the server stores sends
    // in the order it receives them. Entries of a followed room wait until
    // its replay after a reconnect is complete, so that the reader's
    // message:read of what they missed goes out before their own send (which
    // moves their read cursor without telling the others).
    for (const entry of this._outbox) {
      if (entry.ref !== null) continue;
      const room = this._rooms.get(entry.room_id);
      if (room && room.wanted && !room.caughtUp) continue;
      const data = { room_id: entry.room_id, client_msg_id: entry.client_msg_id, body: entry.body };
      if (entry.reply_to) data.reply_to = entry.reply_to;
      if (entry.attachments) data.attachments = entry.attachments.map(attachmentId);
      entry.ref = 'pending';
      this._sendFrame('message:send', data)
        .then(({ message }) => {
          this._acceptMessage(message);
          this._settleOutbox(message);
        })
        .catch((err) => {
          if (!this._outbox.includes(entry)) return;
          entry.ref = null;
          entry.attempts = (entry.attempts || 0) + 1;
          // A server bug (`internal`) may be passing; a few tries are harmless
          // since the server stores one client_msg_id once.
          if (RETRYABLE.has(err.code) || (err.code === 'internal' && entry.attempts < 4)) {
            if (err.code !== 'disconnected') setTimeout(() => this._pumpOutbox(), 1000);
            return;
          }
          this._outbox.splice(this._outbox.indexOf(entry), 1);
          this._saveOutbox();
          this._emit('outbox', { entries: this.outbox });
          this._emit('send-failed', { entry: { ...entry, waiters: undefined }, error: err });
          for (const w of entry.waiters) w.reject(err);
        });
    }
  }

  _settleOutbox(message) {
    const i = this._outbox.findIndex(
      (e) => e.room_id === message.room_id && e.client_msg_id === message.client_msg_id,
    );
    if (i < 0) return;
    const [entry] = this._outbox.splice(i, 1);
    this._saveOutbox();
    this._emit('outbox', { entries: this.outbox });
    for (const w of entry.waiters) w.resolve(message);
  }

  _loadOutbox() {
    const { storage, storageKey } = this.options;
    if (!storage || !storageKey) return;
    try {
      const saved = JSON.parse(storage.getItem(`${storageKey}:outbox`) || '[]');
      for (const e of saved) {
        if (e && typeof e.room_id === 'string' && typeof e.client_msg_id === 'string' && typeof e.body === 'string') {
          const entry = { ...e, ref: null, waiters: [] };
          if (!Array.isArray(entry.attachments) || !entry.attachments.every((f) => f && typeof f.id === 'string')) {
            delete entry.attachments;
          }
          this._outbox.push(entry);
        }
      }
    } catch {
      // A corrupt saved outbox is dropped.
    }
  }

  _saveOutbox() {
    const { storage, storageKey } = this.options;
    if (!storage || !storageKey) return;
    try {
      storage.setItem(`${storageKey}:outbox`, JSON.stringify(this.outbox));
    } catch {
      // Storage full or denied: the outbox still lives in memory.
    }
  }

  edit(roomId, messageId, body) {
    return this.request('message:edit', { room_id: roomId, message_id: messageId, body }).then((d) =>
      resolveMessage(this.server, d.message),
    );
  }

  delete(roomId, messageId) {
    return this.request('message:delete', { room_id: roomId, message_id: messageId });
  }

  /** Marks the room read up to `seq` (only ever forward). */
  async markRead(roomId, seq) {
    const room = this._room(roomId);
    const summary = this.rooms.get(roomId);
    if (summary) {
      summary.read_seq = Math.max(summary.read_seq || 0, seq);
      summary.unread = Math.max(0, (summary.last_seq || 0) - summary.read_seq);
    }
    if (seq <= room.readSent) return;
    room.readSent = seq;
    room.deliveredSent = Math.max(room.deliveredSent, seq);
    try {
      await this.request('message:read', { room_id: roomId, up_to_seq: seq });
    } catch (err) {
      room.readSent = 0;
      throw err;
    }
  }

  /** Each member's cursors in a room: Map user id → {delivered_seq, read_seq}. */
  receipts(roomId) {
    return new Map(this._room(roomId).receipts);
  }

  /** The tick of one of your messages: `read` once another member read it,
   * `delivered` once another member's client received it, else `sent`. */
  statusOf(roomId, seq) {
    let status = 'sent';
    for (const [userId, cursor] of this._room(roomId).receipts) {
      if (this.user && userId === this.user.id) continue;
      if (cursor.read_seq >= seq) return 'read';
      if (cursor.delivered_seq >= seq) status = 'delivered';
    }
    return status;
  }

  // ---- typing -------------------------------------------------------------

  /** Call on every keystroke: sends typing:start at most every 3 s. */
  typing(roomId) {
    const room = this._room(roomId);
    const now = Date.now();
    if (this.state !== 'open' || now - room.typingSentAt < TYPING_REFRESH_MS) return;
    room.typingSentAt = now;
    this._sendFrame('typing:start', { room_id: roomId }).catch(() => {
      room.typingSentAt = 0;
    });
  }

  /** Ends your typing indicator (sending a message ends it too). */
  stopTyping(roomId) {
    const room = this._room(roomId);
    if (!room.typingSentAt) return;
    room.typingSentAt = 0;
    if (this.state === 'open') this._sendFrame('typing:stop', { room_id: roomId }).catch(() => {});
  }

  /** The ids of users typing in a room now. */
  typingUsers(roomId) {
    return [...this._room(roomId).typing.keys()];
  }

  _setTyping(room, userId, typing) {
    clearTimeout(room.typing.get(userId));
    if (typing) {
      room.typing.set(
        userId,
        setTimeout(() => {
          room.typing.delete(userId);
          this._emit('typing', { room_id: room.id, users: this.typingUsers(room.id) });
        }, TYPING_EXPIRY_MS),
      );
    } else {
      room.typing.delete(userId);
    }
    this._emit('typing', { room_id: room.id, users: this.typingUsers(room.id) });
  }

  _clearTypingOf(room, userId) {
    if (room.typing.has(userId)) this._setTyping(room, userId, false);
  }

  _clearTyping(room) {
    if (!room.typing.size) return;
    for (const timer of room.typing.values()) clearTimeout(timer);
    room.typing.clear();
    this._emit('typing', { room_id: room.id, users: [] });
  }

  // ---- calls --------------------------------------------------------------

  /** Places a call in a room: `media` is 'audio' or 'video'; `to` names the
   * callee in a room of more than two members. Resolves to
   * `{call_id, ice_servers, glare?}` (with `glare`, the other user was
   * calling you at the same moment: this invite answered their call, and you
   * are its callee). */
  inviteCall(roomId, media, { to } = {}) {
    const data = { room_id: roomId, media };
    if (to !== undefined) data.to = to;
    return this.request('call:invite', data);
  }

  /** Answers a ringing call on this session; the first session to answer wins. */
  acceptCall(callId) {
    return this.request('call:accept', { call_id: callId });
  }

  /** Declines a ringing call. */
  rejectCall(callId) {
    return this.request('call:reject', { call_id: callId });
  }

  /** Hangs up (or, while it rings and you are called, declines). */
  endCall(callId) {
    return this.request('call:end', { call_id: callId });
  }

  /** Sends SDP or ICE to the other participant's session in the call. */
  signalCall(callId, to, payload) {
    return this.request('call:signal', { call_id: callId, to, payload });
  }

  /** Takes your side of a live call over on this session (after a reconnect,
   * within the server's grace): `{call_id, room_id, media, state, peer,
   * caller, ice_servers}`. */
  rejoinCall(callId) {
    return this.request('call:rejoin', { call_id: callId });
  }

  /** `GET /v1/calls/ice-servers`: the RTCIceServer objects for your calls. */
  async iceServers() {
    const token = await this._currentToken();
    const { ice_servers: servers } = await httpJson(this.server, '/v1/calls/ice-servers', { token });
    return servers;
  }

  // ---- push notifications -------------------------------------------------

  /** `POST /v1/push/subscriptions`: this browser's Web Push subscription
   * (a PushSubscription, or its `toJSON()`) for the signed-in user, who then
   * gets a push for what happens while they have no open session. Posting
   * the same endpoint again is harmless (the server keeps one per endpoint),
   * so a page re-posts its subscription at each sign-in in case the server
   * lost it. Rejects with `not_found` when the server offers no push. Needs
   * only a token, not an open connection. */
  async subscribePush(subscription) {
    const json = subscription && typeof subscription.toJSON === 'function' ? subscription.toJSON() : subscription;
    const { endpoint, keys } = json || {};
    if (typeof endpoint !== 'string' || !keys || typeof keys.p256dh !== 'string' || typeof keys.auth !== 'string') {
      throw new ChatError('invalid', 'a push subscription needs an endpoint and its p256dh and auth keys');
    }
    const token = this._token || (await this._currentToken());
    const body = { endpoint, keys: { p256dh: keys.p256dh, auth: keys.auth } };
    await httpJson(this.server, '/v1/push/subscriptions', { method: 'POST', token, body });
  }

  /** `DELETE /v1/push/subscriptions`: no more pushes to `endpoint` (a
   * subscription's endpoint URL) for this user. Deleting an endpoint the
   * server does not know succeeds. */
  async unsubscribePush(endpoint) {
    if (typeof endpoint !== 'string' || !endpoint) throw new ChatError('invalid', 'give the endpoint to unsubscribe');
    const token = this._token || (await this._currentToken());
    await httpJson(this.server, '/v1/push/subscriptions', { method: 'DELETE', token, body: { endpoint } });
  }

  // ---- users and presence -------------------------------------------------

  /** Sets your status on all your sessions: online, away, busy or invisible. */
  setStatus(status) {
    return this.request('presence:update', { status });
  }

  /** The last known status of a user (`undefined` when none was seen). */
  presenceOf(userId) {
    return this._presence.get(userId);
  }

  /** Users connected to the server: [{user, status}]. */
  async onlineUsers() {
    const { users } = await this.request('users:online');
    for (const { user, status } of users) this._presence.set(user.id, status);
    return users;
  }

  /** Users whose id or name contains `q`. */
  async searchUsers(q, { limit } = {}) {
    const data = { q };
    if (limit !== undefined) data.limit = limit;
    const { users } = await this.request('users:search', data);
    return users;
  }

  /** Messages holding every word of `q` (whole words, case and accents
   * folded) in the user's rooms, or in `roomId` only, newest first:
   * `{results: [{message, room}], next?}`; pass `next` as `before` for the
   * page after. */
  async searchMessages(q, { roomId, limit, before } = {}) {
    const data = { q };
    if (roomId !== undefined) data.room_id = roomId;
    if (limit !== undefined) data.limit = limit;
    if (before !== undefined) data.before = before;
    const page = await this.request('messages:search', data);
    for (const hit of page.results || []) resolveMessage(this.server, hit.message);
    return page;
  }

  // ---- attachments ----------------------------------------------------------

  /** Uploads a file (a File or Blob) with `POST /v1/attachments`, for a
   * later `send(roomId, body, {attachments})`. Resolves with the
   * Attachment, its `url` and `thumbnail_url` absolute.
   *
   * `onProgress({loaded, total})` is called as the request body goes out
   * (it counts the multipart body: the file plus a few hundred bytes), and
   * once more with `loaded === total` when it is all sent. `signal`, an
   * AbortSignal, cancels the upload: the promise then rejects with
   * `aborted`. Failures reject with a ChatError: the server's code and
   * message (`too_large` for a file over the server's limit or past the
   * user's storage quota, the message says which; `invalid`;
   * `unauthorized`), or `disconnected` when the server could not be reached.
   * Uploads use XMLHttpRequest, which, unlike fetch, reports upload
   * progress; they need no open connection, only a token. */
  async upload(file, { onProgress, signal, name } = {}) {
    if (signal && signal.aborted) throw new ChatError('aborted', 'the upload was cancelled');
    const XHR = this.options.XMLHttpRequest || globalThis.XMLHttpRequest;
    if (typeof XHR !== 'function') throw new ChatError('invalid', 'uploads need XMLHttpRequest');
    const token = this._token || (await this._currentToken());
    if (signal && signal.aborted) throw new ChatError('aborted', 'the upload was cancelled');
    const form = new FormData();
    const fileName = name || (file && file.name) || 'file';
    form.append('file', file, fileName);
    return new Promise((resolve, reject) => {
      const xhr = new XHR();
      let settled = false;
      const finish = (fn, value) => {
        if (settled) return;
        settled = true;
        if (signal) signal.removeEventListener('abort', onAbort);
        fn(value);
      };
      const onAbort = () => {
        xhr.abort();
        finish(reject, new ChatError('aborted', 'the upload was cancelled'));
      };
      if (signal) signal.addEventListener('abort', onAbort);
      xhr.open('POST', `${this.server}/v1/attachments`);
      xhr.setRequestHeader('authorization', `Bearer ${token}`);
      xhr.responseType = 'text';
      if (typeof onProgress === 'function' && xhr.upload) {
        const report = (loaded, total) => {
          try {
            onProgress({ loaded, total });
          } catch (err) {
            setTimeout(() => {
              throw err;
            });
          }
        };
        xhr.upload.onprogress = (event) => {
          if (event.lengthComputable) report(event.loaded, event.total);
        };
        xhr.upload.onload = (event) => {
          const total = event.lengthComputable ? event.total : event.loaded;
          report(total, total);
        };
      }
      xhr.onload = () => {
        let data = null;
        try {
          data = JSON.parse(xhr.responseText);
        } catch {
          data = null;
        }
        if (xhr.status >= 200 && xhr.status < 300 && data && typeof data.id === 'string') {
          finish(resolve, resolveAttachment(this.server, data));
          return;
        }
        const error = (data && data.error) || {};
        const code = error.code || (xhr.status === 413 ? 'too_large' : `http_${xhr.status}`);
        finish(reject, new ChatError(code, error.message || xhr.statusText || `the upload failed (${xhr.status})`));
      };
      xhr.onerror = () =>
        finish(reject, new ChatError('disconnected', 'the upload failed: the chat server could not be reached'));
      xhr.ontimeout = () => finish(reject, new ChatError('timeout', 'the upload took too long'));
      xhr.onabort = () => finish(reject, new ChatError('aborted', 'the upload was cancelled'));
      xhr.send(form);
    });
  }
}

/** One side of a call's `RTCPeerConnection`, signalled through a
 * {@link ChatClient}: offers, answers and ICE candidates travel as
 * `call:signal` payloads (`{type:'offer'|'answer', sdp}` and
 * `{candidate}`), to the other participant's session only. The caller makes
 * the offer once the call is accepted (`offer()`); the callee answers. Media
 * come from `stream`; the other side's arrive through `onTrack`. */
export class CallConnection {
  /**
   * @param {ChatClient} client
   * @param {{callId: string, peer: string, iceServers?: object[], stream?: MediaStream,
   *   onTrack?: (stream: MediaStream) => void, onState?: (state: string) => void,
   *   RTCPeerConnection?: typeof RTCPeerConnection}} options
   */
  constructor(client, options) {
    this.client = client;
    this.callId = options.callId;
    this.peer = options.peer;
    this.options = options;
    const Peer = options.RTCPeerConnection || globalThis.RTCPeerConnection;
    this.pc = new Peer({ iceServers: options.iceServers || [] });
    this.remote = null;
    this._pendingCandidates = [];
    if (options.stream) {
      for (const track of options.stream.getTracks()) this.pc.addTrack(track, options.stream);
    }
    this.pc.addEventListener('icecandidate', (event) => {
      if (event.candidate) this._signal({ candidate: event.candidate.toJSON() });
    });
    this.pc.addEventListener('track', (event) => {
      this.remote = event.streams[0] || new MediaStream([event.track]);
      if (options.onTrack) options.onTrack(this.remote);
    });
    this.pc.addEventListener('connectionstatechange', () => {
      if (options.onState) options.onState(this.pc.connectionState);
    });
    this._off = client.on('call:signal', (data) => {
      if (data.call_id === this.callId) this._receive(data.payload);
    });
  }

  /** Makes and sends the offer (the caller, once the call is accepted, or
   * either side after a `call:rejoined`, with `iceRestart`). */
  async offer({ iceRestart = false } = {}) {
    const offer = await this.pc.createOffer({ iceRestart });
    await this.pc.setLocalDescription(offer);
    await this._signal({ type: offer.type, sdp: offer.sdp });
  }

  async _receive(payload) {
    try {
      if (payload && (payload.type === 'offer' || payload.type === 'answer')) {
        await this.pc.setRemoteDescription({ type: payload.type, sdp: payload.sdp });
        for (const candidate of this._pendingCandidates.splice(0)) await this.pc.addIceCandidate(candidate);
        if (payload.type === 'offer') {
          const answer = await this.pc.createAnswer();
          await this.pc.setLocalDescription(answer);
          await this._signal({ type: answer.type, sdp: answer.sdp });
        }
      } else if (payload && payload.candidate) {
        // Candidates may come before the description they belong to.
        if (this.pc.remoteDescription) await this.pc.addIceCandidate(payload.candidate);
        else this._pendingCandidates.push(payload.candidate);
      }
    } catch (err) {
      if (this.options.onState) this.options.onState(`error: ${err.message}`);
    }
  }

  async _signal(payload) {
    try {
      await this.client.signalCall(this.callId, this.peer, payload);
    } catch {
      // The call ended meanwhile, or the connection dropped; call:ended says which.
    }
  }

  /** Stops listening and closes the peer connection (not the local stream). */
  close() {
    this._off();
    this.pc.close();
  }
}
