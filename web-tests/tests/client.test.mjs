// chat-client.js alone, in Node, against a scripted WebSocket: the orderings
// a real server produces only by chance (a reply after a later message:new,
// a close between a send and its ack, a replay that overlaps what was seen)
// are played here on purpose.

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ROOT } from '../lib/harness.mjs';

const { ChatClient, ChatError, vapidKey } = await import(
  pathToFileURL(join(ROOT, 'chat-transport-ws', 'web', 'chat-client.js')).href
);

const ROOM = '01a20000-0000-7000-8000-000000000001';

/** A WebSocket the test drives: it records what the client sends. */
class FakeSocket {
  static all = [];

  constructor(url) {
    this.url = url;
    this.sent = [];
    this.closed = null;
    FakeSocket.all.push(this);
  }

  send(text) {
    this.sent.push(JSON.parse(text));
  }

  close(code, reason) {
    this.closed = { code, reason };
  }

  // ---- what the server does ----
  open() {
    this.onopen();
  }

  push(frame) {
    this.onmessage({ data: JSON.stringify(frame) });
  }

  drop(code = 1006, reason = '') {
    this.onclose({ code, reason });
  }

  /** The last frame sent of a type, or undefined. */
  last(type) {
    return this.sent.filter((f) => f.type === type).at(-1);
  }

  reply(frame, data) {
    this.push({ type: 'reply', ref: frame.ref, ok: true, data });
  }

  fail(frame, code, message = code) {
    this.push({ type: 'reply', ref: frame.ref, ok: false, error: { code, message } });
  }
}

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));

async function until(fn, what, timeoutMs = 1000) {
  for (let i = 0; i < timeoutMs / 5; i += 1) {
    const value = fn();
    if (value) return value;
    await tick(5);
  }
  throw new Error(`timed out waiting for ${what}`);
}

function message(seq, sender = 'bob', extra = {}) {
  return {
    id: `m${seq}`,
    room_id: ROOM,
    seq,
    sender_id: sender,
    client_msg_id: `c${seq}`,
    body: `body ${seq}`,
    attachments: [],
    created_at: '2026-11-24T08:00:00.000Z',
    deleted: false,
    ...extra,
  };
}

const ready = (user = 'ada') => ({
  type: 'ready',
  data: { session_id: 's', user: { id: user, name: user, roles: [] }, rooms: [], server_time: 'now' },
});

const joined = (lastSeq, receipts = []) => ({
  room: { id: ROOM, kind: 'group', visibility: 'private', created_by: 'ada', created_at: 'x', last_seq: lastSeq },
  members: [],
  last_seq: lastSeq,
  read_seq: 0,
  receipts,
});

/** A client connected through a fresh FakeSocket, with every event recorded. */
async function connected(options = {}) {
  FakeSocket.all = [];
  const client = new ChatClient({
    server: 'http://127.0.0.1:9',
    token: 't1',
    WebSocket: FakeSocket,
    minBackoffMs: 1,
    maxBackoffMs: 4,
    heartbeatMs: 0,
    autoDelivered: false,
    ...options,
  });
  const events = [];
  client.on('message', ({ message: m, mine }) => events.push({ seq: m.seq, mine }));
  const connecting = client.connect();
  const ws = await until(() => FakeSocket.all[0], 'a socket');
  assert.equal(ws.url, 'ws://127.0.0.1:9/v1/ws');
  ws.open();
  ws.push(ready());
  await connecting;
  return { client, ws, events };
}

async function joinedRoom(ws, client, lastSeq) {
  const joining = client.join(ROOM);
  const frame = await until(() => ws.last('room:join'), 'room:join');
  ws.reply(frame, joined(lastSeq));
  await joining;
  return frame;
}

describe('chat-client.js', () => {
  test('room:removed (a leave in another tab or process) stops following the room, also after a reconnect', async () => {
    const { client, ws } = await connected();
    await joinedRoom(ws, client, 3);
    ws.push({ type: 'room:added', data: { room: joined(3).room } });
    assert.ok(client.rooms.has(ROOM));
    const removed = [];
    client.on('room:removed', (data) => removed.push(data.room_id));
    ws.push({ type: 'room:removed', data: { room_id: ROOM } });
    assert.deepEqual(removed, [ROOM]);
    assert.ok(!client.rooms.has(ROOM), 'no longer listed');
    ws.drop();
    const again = await until(() => FakeSocket.all[1], 'a new socket');
    again.open();
    again.push(ready());
    await tick(20);
    assert.equal(again.last('room:join'), undefined, 'a room left elsewhere is not joined again');
    client.close();
  });

  test('the token goes in the first frame, not the URL', async () => {
    const { client, ws } = await connected();
    assert.deepEqual(ws.sent[0], { type: 'auth', data: { token: 't1' } });
    assert.ok(!ws.url.includes('t1'));
    client.close();
  });

  test('a first join asks for live messages only; each message is handed out once', async () => {
    const { client, ws, events } = await connected();
    const join = await joinedRoom(ws, client, 5);
    assert.equal(join.data.since_seq, Number.MAX_SAFE_INTEGER);
    ws.push({ type: 'message:new', data: { message: message(6) } });
    ws.push({ type: 'message:new', data: { message: message(6) } });
    ws.push({ type: 'message:new', data: { message: message(5) } });
    // Ada's own send is answered after a later message of Bob's arrived.
    const sending = client.send(ROOM, 'mine');
    const send = await until(() => ws.last('message:send'), 'message:send');
    ws.push({ type: 'message:new', data: { message: message(8) } });
    // A copy of 8 while 7 is still missing (a replay overlapping live messages).
    ws.push({ type: 'message:new', data: { message: message(8) } });
    ws.reply(send, { message: message(7, 'ada', { client_msg_id: send.data.client_msg_id }) });
    const stored = await sending;
    assert.equal(stored.seq, 7);
    ws.push({ type: 'message:new', data: { message: message(8) } });
    assert.deepEqual(events, [
      { seq: 6, mine: false },
      { seq: 8, mine: false },
      { seq: 7, mine: true },
    ]);
    assert.deepEqual(client.outbox, []);
    client.close();
  });

  test('after a drop the client resumes from the highest seq with nothing missing below it', async () => {
    const { client, ws, events } = await connected();
    await joinedRoom(ws, client, 2);
    ws.push({ type: 'message:new', data: { message: message(3) } });
    // 4 is not seen yet (an own send in flight, say); 5 is.
    ws.push({ type: 'message:new', data: { message: message(5) } });
    ws.drop(1001, 'server shutting down');
    const ws2 = await until(() => FakeSocket.all[1], 'a new socket');
    ws2.open();
    assert.deepEqual(ws2.sent[0], { type: 'auth', data: { token: 't1' } });
    ws2.push(ready());
    const rejoin = await until(() => ws2.last('room:join'), 'the re-join');
    assert.equal(rejoin.data.since_seq, 3);
    ws2.reply(rejoin, joined(6));
    for (const seq of [4, 5, 6]) ws2.push({ type: 'message:new', data: { message: message(seq) } });
    assert.deepEqual(
      events.map((e) => e.seq),
      [3, 5, 4, 6],
    );
    client.close();
  });

  test('the outbox resends an unacknowledged message with the same client_msg_id, after the replay', async () => {
    const { client, ws } = await connected();
    await joinedRoom(ws, client, 1);
    const sending = client.send(ROOM, 'hello');
    const first = await until(() => ws.last('message:send'), 'the send');
    assert.equal(client.outbox.length, 1);
    ws.drop();
    // Written while offline: kept, not sent.
    const second = client.send(ROOM, 'written offline');
    const ws2 = await until(() => FakeSocket.all[1], 'a new socket');
    ws2.open();
    ws2.push(ready());
    const rejoin = await until(() => ws2.last('room:join'), 'the re-join');
    assert.equal(ws2.last('message:send'), undefined, 'nothing is sent before the join');
    ws2.reply(rejoin, joined(3));
    await tick(10);
    assert.equal(ws2.last('message:send'), undefined, 'sends wait for the replay of 2 and 3');
    ws2.push({ type: 'message:new', data: { message: message(2) } });
    ws2.push({ type: 'message:new', data: { message: message(3) } });
    await until(() => ws2.sent.filter((f) => f.type === 'message:send').length === 2, 'both sends');
    const [again, later] = ws2.sent.filter((f) => f.type === 'message:send');
    assert.equal(again.data.client_msg_id, first.data.client_msg_id);
    assert.equal(again.data.body, 'hello');
    assert.equal(later.data.body, 'written offline');
    ws2.reply(again, { message: message(4, 'ada', { client_msg_id: again.data.client_msg_id, body: 'hello' }) });
    ws2.reply(later, { message: message(5, 'ada', { client_msg_id: later.data.client_msg_id }) });
    assert.equal((await sending).seq, 4);
    assert.equal((await second).seq, 5);
    assert.deepEqual(client.outbox, []);
    client.close();
  });

  test('a refused send leaves the outbox and rejects; a passing failure is retried', async () => {
    const { client, ws } = await connected();
    await joinedRoom(ws, client, 0);
    const failed = [];
    client.on('send-failed', ({ error }) => failed.push(error.code));
    const tooBig = client.send(ROOM, 'x'.repeat(10));
    ws.fail(await until(() => ws.last('message:send'), 'the send'), 'too_large');
    await assert.rejects(tooBig, (err) => err instanceof ChatError && err.code === 'too_large');
    assert.deepEqual(failed, ['too_large']);
    assert.deepEqual(client.outbox, []);

    const later = client.send(ROOM, 'busy server');
    const firstTry = await until(() => ws.sent.filter((f) => f.type === 'message:send')[1], 'the second send');
    ws.fail(firstTry, 'unavailable');
    const retry = await until(() => ws.sent.filter((f) => f.type === 'message:send')[2], 'a retry', 2000);
    assert.equal(retry.data.client_msg_id, firstTry.data.client_msg_id);
    ws.reply(retry, { message: message(1, 'ada', { client_msg_id: retry.data.client_msg_id }) });
    assert.equal((await later).seq, 1);
    client.close();
  });

  test('a refused token is asked for again once; refused twice, the client stops', async () => {
    FakeSocket.all = [];
    const asked = [];
    const client = new ChatClient({
      server: 'http://127.0.0.1:9',
      getToken: ({ reason }) => {
        asked.push(reason);
        return `token-${asked.length}`;
      },
      WebSocket: FakeSocket,
      minBackoffMs: 1,
      heartbeatMs: 0,
    });
    const connecting = client.connect();
    (await until(() => FakeSocket.all[0], 'a socket')).drop(4401, 'token expired');
    const ws2 = await until(() => FakeSocket.all[1], 'a second socket');
    ws2.open();
    assert.deepEqual(ws2.sent[0], { type: 'auth', data: { token: 'token-2' } });
    ws2.drop(4401, 'token expired');
    await assert.rejects(connecting, (err) => err.code === 'unauthorized');
    assert.deepEqual(asked, ['connect', 'rejected']);
    assert.equal(client.state, 'closed');
    await tick(20);
    assert.equal(FakeSocket.all.length, 2, 'no third try');
  });

  test('commands are promises matched by ref; a drop fails the ones in flight', async () => {
    const { client, ws } = await connected();
    const a = client.request('ping');
    const b = client.request('users:search', { q: 'x' });
    await tick();
    const [pa, pb] = ws.sent.slice(1);
    assert.deepEqual([pa.type, pb.type], ['ping', 'users:search']);
    assert.notEqual(pa.ref, pb.ref);
    ws.reply(pb, { users: [] });
    assert.deepEqual(await b, { users: [] });
    ws.drop();
    await assert.rejects(a, (err) => err.code === 'disconnected');
    client.close();
    await assert.rejects(client.request('ping'), (err) => err.code === 'closed');
  });

  test('a connection that stops answering is noticed by the heartbeat and replaced', async () => {
    const { client, ws } = await connected({ heartbeatMs: 40 });
    const ping = await until(() => ws.last('ping'), 'a heartbeat ping');
    ws.reply(ping, { server_time: 'now' });
    // The network hangs: pings go unanswered, nothing closes by itself.
    const ws2 = await until(() => FakeSocket.all[1], 'a new socket after the missing answer', 3000);
    assert.equal(ws.closed?.code, 4000);
    assert.equal(client.state, 'reconnecting');
    ws2.open();
    ws2.push(ready());
    await until(() => client.state === 'open', 'open again');
    client.close();
  });

  test('ticks come from the join receipts and message:status', async () => {
    const { client, ws } = await connected();
    const joining = client.join(ROOM);
    ws.reply(
      await until(() => ws.last('room:join'), 'join'),
      joined(9, [
        { user_id: 'ada', delivered_seq: 9, read_seq: 9 },
        { user_id: 'bob', delivered_seq: 7, read_seq: 4 },
      ]),
    );
    await joining;
    assert.deepEqual([4, 5, 8].map((seq) => client.statusOf(ROOM, seq)), ['read', 'delivered', 'sent']);
    ws.push({ type: 'message:status', data: { room_id: ROOM, user_id: 'bob', status: 'read', up_to_seq: 8 } });
    assert.deepEqual([5, 8, 9].map((seq) => client.statusOf(ROOM, seq)), ['read', 'read', 'sent']);
    client.close();
  });

  test('typing indicators follow typing:user and end with the sender\'s message', async () => {
    const { client, ws } = await connected();
    await joinedRoom(ws, client, 0);
    const seen = [];
    client.on('typing', ({ users }) => seen.push(users.join(',')));
    ws.push({ type: 'typing:user', data: { room_id: ROOM, user_id: 'bob', typing: true } });
    assert.deepEqual(client.typingUsers(ROOM), ['bob']);
    ws.push({ type: 'message:new', data: { message: message(1) } });
    assert.deepEqual(client.typingUsers(ROOM), []);
    assert.deepEqual(seen, ['bob', '']);
    client.typing(ROOM);
    client.typing(ROOM);
    assert.equal(ws.sent.filter((f) => f.type === 'typing:start').length, 1, 'at most one start per 3 s');
    client.close();
  });
});

/** An XMLHttpRequest the test drives: it records the request, and the test
 * plays the upload's progress and the server's answer. */
class FakeXHR {
  static all = [];

  constructor() {
    this.headers = {};
    this.upload = {};
    this.aborted = false;
    FakeXHR.all.push(this);
  }

  open(method, url) {
    this.method = method;
    this.url = url;
  }

  setRequestHeader(name, value) {
    this.headers[name.toLowerCase()] = value;
  }

  send(body) {
    this.body = body;
  }

  abort() {
    this.aborted = true;
    this.onabort?.();
  }

  // ---- what the network and the server do ----
  progress(loaded, total) {
    this.upload.onprogress?.({ lengthComputable: true, loaded, total });
  }

  answer(status, json) {
    if (this.upload.onload) this.upload.onload({ lengthComputable: true, loaded: 1000, total: 1000 });
    this.status = status;
    this.statusText = '';
    this.responseText = JSON.stringify(json);
    this.onload();
  }
}

describe('chat-client.js attachments', () => {
  const file = () => new File([new Uint8Array(900)], 'shot.png', { type: 'image/png' });
  const uploaded = {
    id: 'att1',
    name: 'shot.png',
    content_type: 'image/png',
    size: 900,
    url: '/v1/attachments/att1?exp=9&sig=a',
    thumbnail_url: '/v1/attachments/att1/thumbnail?exp=9&sig=b',
    width: 640,
    height: 480,
  };

  test('upload posts one multipart field with the token, reports progress, and resolves URLs against the server', async () => {
    FakeXHR.all = [];
    const { client } = await connected({ XMLHttpRequest: FakeXHR });
    const progress = [];
    const uploading = client.upload(file(), { onProgress: (p) => progress.push(`${p.loaded}/${p.total}`) });
    const xhr = await until(() => FakeXHR.all[0], 'a request');
    assert.equal(xhr.method, 'POST');
    assert.equal(xhr.url, 'http://127.0.0.1:9/v1/attachments');
    assert.equal(xhr.headers.authorization, 'Bearer t1');
    assert.deepEqual([...xhr.body.keys()], ['file']);
    assert.equal(xhr.body.get('file').name, 'shot.png');
    xhr.progress(400, 1000);
    xhr.answer(201, uploaded);
    const attachment = await uploading;
    assert.deepEqual(progress, ['400/1000', '1000/1000']);
    assert.equal(attachment.url, 'http://127.0.0.1:9/v1/attachments/att1?exp=9&sig=a');
    assert.equal(attachment.thumbnail_url, 'http://127.0.0.1:9/v1/attachments/att1/thumbnail?exp=9&sig=b');
    client.close();
  });

  test('the server\'s refusal keeps its code and message; an abort rejects with aborted', async () => {
    FakeXHR.all = [];
    const { client } = await connected({ XMLHttpRequest: FakeXHR });
    const big = client.upload(file());
    const xhr = await until(() => FakeXHR.all[0], 'a request');
    xhr.answer(413, { error: { code: 'too_large', message: 'the file is over the 1 MiB limit' } });
    await assert.rejects(big, (err) => err instanceof ChatError && err.code === 'too_large' && /1 MiB/.test(err.message));

    const controller = new AbortController();
    const cancelled = client.upload(file(), { signal: controller.signal });
    const second = await until(() => FakeXHR.all[1], 'a second request');
    controller.abort();
    await assert.rejects(cancelled, (err) => err.code === 'aborted');
    assert.equal(second.aborted, true);
    await assert.rejects(client.upload(file(), { signal: controller.signal }), (err) => err.code === 'aborted');
    assert.equal(FakeXHR.all.length, 2, 'an aborted signal sends nothing');
    client.close();
  });

  test('send carries attachment ids; messages anywhere get absolute URLs', async () => {
    const { client, ws } = await connected();
    await joinedRoom(ws, client, 0);
    const sending = client.send(ROOM, '', { attachments: [{ ...uploaded }, 'att2'] });
    const frame = await until(() => ws.last('message:send'), 'message:send');
    assert.deepEqual(frame.data.attachments, ['att1', 'att2']);
    assert.equal(frame.data.body, '');
    assert.deepEqual(client.outbox[0].attachments.map((f) => f.id), ['att1', 'att2']);
    ws.reply(frame, { message: message(1, 'ada', { client_msg_id: frame.data.client_msg_id, body: '', attachments: [{ ...uploaded }] }) });
    const stored = await sending;
    assert.equal(stored.attachments[0].url, 'http://127.0.0.1:9/v1/attachments/att1?exp=9&sig=a');

    const live = [];
    client.on('message', ({ message: m }) => live.push(m));
    const absolute = { ...uploaded, url: 'https://files.example/v1/attachments/att1?exp=9&sig=a', thumbnail_url: undefined };
    ws.push({ type: 'message:new', data: { message: message(2, 'bob', { attachments: [{ ...uploaded }, absolute] }) } });
    assert.equal(live[0].attachments[0].thumbnail_url, 'http://127.0.0.1:9/v1/attachments/att1/thumbnail?exp=9&sig=b');
    assert.equal(live[0].attachments[1].url, absolute.url, 'an absolute URL (CHAT_PUBLIC_URL) stays as it is');

    const paging = client.history(ROOM, { beforeSeq: 3 });
    ws.reply(await until(() => ws.last('room:history'), 'history'), {
      messages: [message(1, 'ada', { attachments: [{ ...uploaded }] })],
      has_more: false,
    });
    const page = await paging;
    assert.equal(page.messages[0].attachments[0].url, 'http://127.0.0.1:9/v1/attachments/att1?exp=9&sig=a');
    client.close();
  });
});

describe('chat-client.js push helpers', () => {
  // fetch answering from a table of `METHOD path` → [status, body], recording the requests.
  async function withFetch(answers, run) {
    const requests = [];
    const original = globalThis.fetch;
    globalThis.fetch = async (url, init = {}) => {
      const path = new URL(url).pathname;
      const method = init.method || 'GET';
      requests.push({ method, url, headers: init.headers || {}, body: init.body ? JSON.parse(init.body) : undefined });
      const [status, body] = answers[`${method} ${path}`] || [404, { error: { code: 'not_found', message: 'no route' } }];
      return new Response(body === undefined ? null : JSON.stringify(body), { status });
    };
    try {
      await run(requests);
    } finally {
      globalThis.fetch = original;
    }
  }

  const keys = { p256dh: 'BNcR', auth: 'tBHI' };

  test('vapidKey gives the key, or null when the server offers no push', async () => {
    await withFetch({ 'GET /v1/push/vapid-public-key': [200, { key: 'BEl6' }] }, async (requests) => {
      assert.equal(await vapidKey('http://127.0.0.1:9'), 'BEl6');
      assert.equal(requests[0].url, 'http://127.0.0.1:9/v1/push/vapid-public-key');
      assert.equal(requests[0].headers.authorization, undefined, 'the key is public');
    });
    await withFetch({}, async () => assert.equal(await vapidKey('http://127.0.0.1:9'), null));
    await withFetch({ 'GET /v1/push/vapid-public-key': [503, { error: { code: 'unavailable', message: 'down' } }] }, () =>
      assert.rejects(vapidKey('http://127.0.0.1:9'), (err) => err.code === 'unavailable'),
    );
  });

  test('subscribePush posts what toJSON gives with the token; unsubscribePush deletes by endpoint', async () => {
    const client = new ChatClient({ server: 'http://127.0.0.1:9', token: 't1', WebSocket: FakeSocket });
    const answers = { 'POST /v1/push/subscriptions': [201, undefined], 'DELETE /v1/push/subscriptions': [204, undefined] };
    await withFetch(answers, async (requests) => {
      const endpoint = 'http://127.0.0.1:7/push/1';
      // A PushSubscription, whose toJSON also names expirationTime.
      await client.subscribePush({ endpoint, toJSON: () => ({ endpoint, expirationTime: null, keys }) });
      await client.subscribePush({ endpoint, keys });
      await client.unsubscribePush(endpoint);
      assert.deepEqual(
        requests.map((r) => [r.method, r.headers.authorization, r.body]),
        [
          ['POST', 'Bearer t1', { endpoint, keys }],
          ['POST', 'Bearer t1', { endpoint, keys }],
          ['DELETE', 'Bearer t1', { endpoint }],
        ],
      );
      await assert.rejects(client.subscribePush({ endpoint }), (err) => err.code === 'invalid');
      assert.equal(requests.length, 3, 'a subscription without keys is not sent');
    });
    await withFetch({}, () =>
      assert.rejects(client.subscribePush({ endpoint: 'http://127.0.0.1:7/push/2', keys }), (err) => err.code === 'not_found'),
    );
    client.close();
  });
});
