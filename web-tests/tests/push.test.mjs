// Web Push on the chat page (protocol section 8): the *Turn on notifications*
// switch (no prompt on load; subscribe, post, post again at sign-in, delete
// on the second click and at sign-out), the service worker /push-sw.js
// turning pushes delivered through the DevTools protocol into notifications,
// a notification's click opening its room in an open page and in a new one,
// and the bell that mutes a room, seen from a second tab.
//
// Nothing leaves 127.0.0.1: the browser resolves no other host name, and the
// page's PushManager is a stand-in (see `standInPushManager`).

import { createECDH, createDecipheriv, hkdfSync } from 'node:crypto';
import { createServer } from 'node:http';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ChatServer, eventually, freePort, launchBrowser, newPage, screenshot, signIn } from '../lib/harness.mjs';

const SUBSCRIPTIONS = '/v1/push/subscriptions';

/** A push service of our own on 127.0.0.1: the endpoints of the stand-in
 * subscriptions point here, and it takes whatever the chat server sends. */
async function pushService() {
  const received = [];
  const server = createServer((req, res) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
      received.push({ url: `${service.url}${req.url}`, headers: req.headers, body: Buffer.concat(chunks) });
      res.writeHead(201);
      res.end();
    });
  });
  const port = await freePort();
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  const service = { url: `http://127.0.0.1:${port}`, received, close: () => new Promise((r) => server.close(r)) };
  return service;
}

/** What a browser does with a push it receives (RFC 8291, `aes128gcm`, one
 * record): the payload, decrypted with the subscription's private key and
 * auth secret. */
function decryptPush(body, subscription) {
  const b64 = (text) => Buffer.from(text, 'base64url');
  const salt = body.subarray(0, 16);
  const idLength = body[20];
  const serverKey = body.subarray(21, 21 + idLength);
  const record = body.subarray(21 + idLength);
  const ecdh = createECDH('prime256v1');
  ecdh.setPrivateKey(b64(subscription.privateKey.d));
  const shared = ecdh.computeSecret(serverKey);
  const ownKey = b64(subscription.keys.p256dh);
  const info = Buffer.concat([Buffer.from('WebPush: info\0'), ownKey, serverKey]);
  const ikm = Buffer.from(hkdfSync('sha256', shared, b64(subscription.keys.auth), info, 32));
  const cek = Buffer.from(hkdfSync('sha256', ikm, salt, Buffer.from('Content-Encoding: aes128gcm\0'), 16));
  const nonce = Buffer.from(hkdfSync('sha256', ikm, salt, Buffer.from('Content-Encoding: nonce\0'), 12));
  const decipher = createDecipheriv('aes-128-gcm', cek, nonce);
  decipher.setAuthTag(record.subarray(record.length - 16));
  const padded = Buffer.concat([decipher.update(record.subarray(0, record.length - 16)), decipher.final()]);
  // The last record ends with the delimiter 2, then zeros of padding.
  let end = padded.length - 1;
  while (end >= 0 && padded[end] === 0) end -= 1;
  assert.equal(padded[end], 2, 'the last record is delimited');
  return JSON.parse(padded.subarray(0, end).toString('utf8'));
}

// Runs in the page before its own scripts (addInitScript).
//
// Headless Chromium has no push service of its own. In a browser context
// like the ones these tests use (Playwright's, which Chromium treats as
// incognito) `pushManager.subscribe` rejects at once with "AbortError:
// Registration failed - permission denied" (and logs that the Push API is
// not supported in incognito); in a persistent profile it tries to register
// with Google's FCM and, with the network closed as here, never answers.
// Either way a test must not depend on it, and must send nothing beyond
// 127.0.0.1; so PushManager's `subscribe` and `getSubscription` are replaced
// by a stand-in that makes a subscription the way a browser does (a fresh
// P-256 key pair from WebCrypto for p256dh, 16 random bytes for auth), with
// an endpoint on the test's own push service. It is kept in localStorage so
// that it outlives a reload, like a real one. Everything else (the service
// worker, the permission, the page's calls to the server) is the real thing.
function standInPushManager(endpointBase) {
  const KEY = 'web-tests:push-subscription';
  const b64 = (buffer) =>
    btoa(String.fromCharCode(...new Uint8Array(buffer)))
      .replace(/\+/g, '-')
      .replace(/\//g, '_')
      .replace(/=+$/, '');
  const bytes = (text) =>
    Uint8Array.from(atob(text.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(text.length / 4) * 4, '=')), (c) =>
      c.charCodeAt(0),
    );
  const load = () => JSON.parse(localStorage.getItem(KEY) || 'null');
  const wrap = (saved) =>
    saved && {
      endpoint: saved.endpoint,
      expirationTime: null,
      options: { userVisibleOnly: true, applicationServerKey: bytes(saved.serverKey).buffer },
      toJSON: () => ({ endpoint: saved.endpoint, expirationTime: null, keys: { ...saved.keys } }),
      unsubscribe: async () => {
        const now = load();
        if (!now || now.endpoint !== saved.endpoint) return false;
        localStorage.removeItem(KEY);
        return true;
      },
    };
  PushManager.prototype.subscribe = async function subscribe(options) {
    if (Notification.permission !== 'granted') {
      throw new DOMException('Registration failed - permission denied', 'NotAllowedError');
    }
    if (!options || !options.userVisibleOnly || !options.applicationServerKey) {
      throw new DOMException('userVisibleOnly and applicationServerKey are required', 'NotSupportedError');
    }
    const serverKey = b64(options.applicationServerKey);
    const existing = load();
    if (existing && existing.serverKey === serverKey) return wrap(existing);
    if (existing) throw new DOMException('a subscription with another key exists', 'InvalidStateError');
    const pair = await crypto.subtle.generateKey({ name: 'ECDH', namedCurve: 'P-256' }, true, ['deriveBits']);
    const saved = {
      endpoint: `${endpointBase}/push/${crypto.randomUUID()}`,
      keys: {
        p256dh: b64(await crypto.subtle.exportKey('raw', pair.publicKey)),
        auth: b64(crypto.getRandomValues(new Uint8Array(16))),
      },
      serverKey,
      // Kept for the test, which decrypts what the server pushes as the
      // browser would.
      privateKey: await crypto.subtle.exportKey('jwk', pair.privateKey),
    };
    localStorage.setItem(KEY, JSON.stringify(saved));
    return wrap(saved);
  };
  PushManager.prototype.getSubscription = async function getSubscription() {
    return wrap(load());
  };
  // Counts permission requests, to show that none is made on load.
  const request = Notification.requestPermission.bind(Notification);
  Notification.requestPermission = (...args) => {
    window.permissionRequests = (window.permissionRequests || 0) + 1;
    return request(...args);
  };
}

describe('push notifications on the chat page', () => {
  let server;
  let browser;
  let service;
  const rooms = {};

  before(async () => {
    service = await pushService();
    // The stand-in endpoints are http on loopback, which the server accepts
    // only with this setting.
    server = await ChatServer.start({
      env: { CHAT_PUSH_ALLOW_PRIVATE_ENDPOINTS: 'true', CHAT_VAPID_SUBJECT: 'mailto:web-tests@example.com' },
    });
    browser = await launchBrowser({ args: ['--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1'] });
  });

  after(async () => {
    await browser?.close();
    await server?.close();
    await service?.close();
  });

  // A page of `user`'s with the stand-in PushManager; the notification
  // permission is granted only when `grant` says so.
  async function pushPage(user, name, { grant = true } = {}) {
    const page = await newPage(browser);
    if (grant) await page.context().grantPermissions(['notifications'], { origin: server.url });
    await page.addInitScript(standInPushManager, service.url);
    await signIn(page, server, await server.token(user, { name }));
    return page;
  }

  const subscriptionCall = (page, method) =>
    page.waitForResponse((r) => r.url() === `${server.url}${SUBSCRIPTIONS}` && r.request().method() === method);

  // Turns notifications on with the switch, as the user would.
  async function turnOn(page) {
    const posted = subscriptionCall(page, 'POST');
    await page.locator('#push-toggle[data-state="off"]').click();
    assert.equal((await posted).status(), 201);
    await page.locator('#push-toggle[data-state="on"]').waitFor();
  }

  const standIn = (page) => page.evaluate(() => JSON.parse(localStorage.getItem('web-tests:push-subscription')));

  // Runs one chat-client call as the page's user, beside the page's own
  // client (no eval: the page's CSP forbids it).
  const createRoom = (page, spec) =>
    page.evaluate(async (value) => {
      const { ChatClient } = await import('/chat-client.js');
      const client = new ChatClient({ token: localStorage.getItem('chat-page:token') });
      await client.connect();
      try {
        return (await client.createRoom(value)).id;
      } finally {
        client.close();
      }
    }, spec);

  // The page's push service worker, running (a push or a page starts it).
  const worker = (context) =>
    eventually(() => context.serviceWorkers().findLast((w) => w.url() === `${server.url}/push-sw.js`), {
      message: 'the push service worker',
    });

  // The notifications the service worker shows now.
  const shown = async (context) =>
    (await worker(context)).evaluate(async () =>
      (await self.registration.getNotifications()).map((n) => ({
        title: n.title,
        body: n.body,
        tag: n.tag,
        data: n.data,
        requireInteraction: n.requireInteraction,
      })),
    );

  // A push as the browser's push service would hand it over, through the
  // DevTools protocol, with `payload` as its decrypted data.
  async function deliver(page, payload) {
    const cdp = await page.context().newCDPSession(page);
    const registration = new Promise((resolve) => {
      cdp.on('ServiceWorker.workerRegistrationUpdated', ({ registrations }) => {
        const ours = registrations.find((r) => r.scopeURL === `${server.url}/` && !r.isDeleted);
        if (ours) resolve(ours);
      });
    });
    await cdp.send('ServiceWorker.enable');
    const { registrationId } = await registration;
    await cdp.send('ServiceWorker.deliverPushMessage', {
      origin: server.url,
      registrationId,
      data: JSON.stringify(payload),
    });
    await cdp.detach();
  }

  // A click on the notification tagged `tag`, through the service worker's
  // own handler. Headless Chromium shows notifications nowhere one could
  // click them, and the DevTools protocol has no way to; so the handler is
  // called with the real notification and an event that collects what it
  // waits for. Chromium lets a service worker focus a window or open one
  // only while it handles a real click: `focus` and `openWindow` are
  // replaced by stand-ins that record what the handler asked for (and, for
  // focus, answer as the real one does); the test then does what the
  // browser would (opens the page at the URL asked for).
  async function click(context, tag) {
    const sw = await worker(context);
    return sw.evaluate(async (wanted) => {
      const asked = { focused: [], opened: [] };
      WindowClient.prototype.focus = async function focus() {
        asked.focused.push(this.url);
        return this;
      };
      Clients.prototype.openWindow = async function openWindow(url) {
        asked.opened.push(new URL(url, self.location.origin).href);
        return null;
      };
      const [notification] = await self.registration.getNotifications({ tag: wanted });
      if (!notification) throw new Error(`no notification tagged ${wanted}`);
      const waited = [];
      self.onNotificationClick({ notification, waitUntil: (promise) => waited.push(promise) });
      await Promise.all(waited);
      asked.left = (await self.registration.getNotifications({ tag: wanted })).length;
      return asked;
    }, tag);
  }

  test('the switch asks for nothing on load, then subscribes, posts, and deletes', async () => {
    const bob = await pushPage('bob', 'Bob');
    const ada = await pushPage('ada', 'Ada', { grant: false });
    rooms.group = await createRoom(ada, { kind: 'group', name: 'Book club', members: ['bob'] });
    rooms.direct = await createRoom(ada, { kind: 'direct', members: ['bob'] });

    // Nothing asked on load: the switch waits for a click.
    const toggle = ada.getByRole('button', { name: /^Turn (on|off) notifications$/ });
    await ada.getByRole('button', { name: 'Turn on notifications' }).waitFor();
    assert.equal(await ada.evaluate(() => window.permissionRequests || 0), 0, 'no permission asked on load');
    assert.equal(await ada.evaluate(() => Notification.permission), 'default');
    assert.equal(await ada.evaluate(async () => (await navigator.serviceWorker.getRegistrations()).length), 0);

    // A click asks (the browser says yes), registers the worker, subscribes
    // and posts the subscription.
    await ada.context().grantPermissions(['notifications'], { origin: server.url });
    const posted = subscriptionCall(ada, 'POST');
    await toggle.click();
    const post = await posted;
    assert.equal(post.status(), 201);
    const subscription = await standIn(ada);
    assert.deepEqual(post.request().postDataJSON(), { endpoint: subscription.endpoint, keys: subscription.keys });
    assert.match(post.request().headers().authorization, /^Bearer /);
    assert.ok(subscription.endpoint.startsWith(`${service.url}/push/`));
    assert.equal(await ada.evaluate(() => window.permissionRequests), 1);
    await ada.locator('#push-toggle[data-state="on"]', { hasText: 'Turn off notifications' }).waitFor();
    const worker = await ada.evaluate(async () => {
      const registration = await navigator.serviceWorker.ready;
      return { scope: registration.scope, script: registration.active.scriptURL };
    });
    assert.deepEqual(worker, { scope: `${server.url}/`, script: `${server.url}/push-sw.js` });
    await screenshot(ada, 'push-on');

    // Signing in again with the permission granted posts it again (the
    // server keeps one per endpoint), with no question.
    const again = subscriptionCall(ada, 'POST');
    await ada.reload();
    const second = await again;
    assert.equal(second.status(), 201, 'a second POST of the same endpoint is accepted');
    assert.equal(second.request().postDataJSON().endpoint, subscription.endpoint);
    await ada.locator('#push-toggle[data-state="on"]').waitFor();
    assert.equal(await ada.evaluate(() => window.permissionRequests || 0), 0);

    // The second click deletes it on the server and unsubscribes.
    const deleted = subscriptionCall(ada, 'DELETE');
    await toggle.click();
    const del = await deleted;
    assert.equal(del.status(), 204);
    assert.deepEqual(del.request().postDataJSON(), { endpoint: subscription.endpoint });
    await ada.locator('#push-toggle[data-state="off"]', { hasText: 'Turn on notifications' }).waitFor();
    assert.equal(await standIn(ada), null);

    // On again (the worker is there already), then signing out deletes it:
    // the next user of this browser does not get Ada's pushes.
    const reposted = subscriptionCall(ada, 'POST');
    await toggle.click();
    assert.equal((await reposted).status(), 201);
    await ada.locator('#push-toggle[data-state="on"]').waitFor();
    const fresh = await standIn(ada);
    const signedOut = subscriptionCall(ada, 'DELETE');
    await ada.locator('#signout').click();
    assert.deepEqual((await signedOut).request().postDataJSON(), { endpoint: fresh.endpoint });
    await ada.locator('#signin').waitFor();
    assert.equal(await standIn(ada), null);

    // Ada signs in again: notifications are off until she turns them on.
    await signIn(ada, server, await server.token('ada', { name: 'Ada' }));
    await ada.locator('#push-toggle[data-state="off"]').waitFor();
    const on = subscriptionCall(ada, 'POST');
    await toggle.click();
    assert.equal((await on).status(), 201);
    await ada.locator('#push-toggle[data-state="on"]').waitFor();

    // Ada's token goes without a sign-out (it expired, say) and Bob signs in
    // in this browser: Ada's subscription is dropped, not carried over to Bob.
    await ada.evaluate(() => localStorage.removeItem('chat-page:token'));
    await signIn(ada, server, await server.token('bob', { name: 'Bob' }));
    await ada.locator('#push-toggle[data-state="off"]').waitFor();
    assert.equal(await standIn(ada), null);
    await bob.context().close();
    await ada.context().close();
  });

  test('a message to Ada while no page of hers is open reaches her service worker through the push service', async () => {
    const ada = await pushPage('ada', 'Ada');
    await turnOn(ada);
    const subscription = await standIn(ada);
    const bob = await pushPage('bob', 'Bob', { grant: false });
    await bob.locator(`#online li[data-user="ada"]`).waitFor();

    // Ada leaves: the server sees her last session end (Bob's page shows her gone).
    await ada.goto('about:blank');
    await bob.locator(`#online li[data-user="ada"]`).waitFor({ state: 'detached' });
    await bob.locator(`#rooms button[data-room="${rooms.group}"]`).click();
    await bob.locator('#input').fill('Shall we read Middlemarch next?');
    await bob.locator('#input').press('Enter');

    const push = await eventually(() => service.received.find((p) => p.url === subscription.endpoint), {
      message: 'a push at the endpoint of Ada\'s subscription',
    });
    assert.match(push.headers.authorization, /^vapid t=[\w-]+\.[\w-]+\.[\w-]+, k=[\w-]+$/);
    assert.equal(push.headers['content-encoding'], 'aes128gcm');
    assert.ok(Number(push.headers.ttl) > 0, `TTL ${push.headers.ttl}`);
    const payload = decryptPush(push.body, subscription);
    assert.equal(payload.type, 'message');
    assert.equal(payload.room_id, rooms.group);
    assert.equal(payload.room_name, 'Book club');
    assert.equal(payload.sender.id, 'bob');
    assert.equal(payload.sender.name, 'Bob');
    assert.equal(payload.preview, 'Shall we read Middlemarch next?');
    assert.equal(payload.count, undefined);

    // Handed to the browser as its push service would: the notification.
    await deliver(ada, payload);
    const shownNow = await eventually(async () => (await shown(ada.context())).find((n) => n.tag === rooms.group), {
      message: 'the notification',
    });
    assert.equal(shownNow.title, 'Book club');
    assert.equal(shownNow.body, 'Bob: Shall we read Middlemarch next?');
    await bob.context().close();
    await ada.context().close();
  });

  test('a browser that blocks notifications is said to, and offers no switch', async () => {
    const ada = await pushPage('ada', 'Ada', { grant: false });
    await ada.locator('#push-toggle[data-state="off"]').waitFor();
    // What a user's "Block" in the prompt or the site settings leaves. (The
    // browser drops the setting when the session that made it detaches.)
    const cdp = await ada.context().newCDPSession(ada);
    const { targetInfo } = await cdp.send('Target.getTargetInfo');
    const browserSession = await browser.newBrowserCDPSession();
    await browserSession.send('Browser.setPermission', {
      permission: { name: 'notifications' },
      setting: 'denied',
      origin: server.url,
      browserContextId: targetInfo.browserContextId,
    });
    await ada.reload();
    await ada.locator('#push-status', { hasText: "Notifications are blocked for this site in the browser's settings" }).waitFor();
    assert.equal(await ada.locator('#push-toggle').isHidden(), true);
    assert.equal(await ada.evaluate(() => window.permissionRequests || 0), 0);
    await browserSession.detach();
    await ada.context().close();
  });

  test('the service worker shows each push as a notification, one per room', async () => {
    const ada = await pushPage('ada', 'Ada');
    await turnOn(ada);
    const context = ada.context();
    // No page of Ada's is open, as when the server pushes.
    await ada.goto('about:blank');
    const bob = { id: 'bob', name: 'Bob' };

    await deliver(ada, {
      type: 'message',
      room_id: rooms.group,
      room_name: 'Book club',
      message_id: 'm1',
      seq: 1,
      sender: bob,
      preview: 'Chapter 3 tonight?',
    });
    const first = await eventually(async () => (await shown(context)).find((n) => n.tag === rooms.group), {
      message: 'the notification of the group',
    });
    assert.deepEqual(first, {
      title: 'Book club',
      body: 'Bob: Chapter 3 tonight?',
      tag: rooms.group,
      data: { room_id: rooms.group },
      requireInteraction: false,
    });

    // A folded push (three messages) replaces the room's notification.
    await deliver(ada, {
      type: 'message',
      room_id: rooms.group,
      room_name: 'Book club',
      message_id: 'm4',
      seq: 4,
      sender: bob,
      preview: 'Or tomorrow',
      count: 3,
    });
    await eventually(
      async () => {
        const group = (await shown(context)).filter((n) => n.tag === rooms.group);
        return group.length === 1 && group[0].body === 'Bob: Or tomorrow (+2 more)';
      },
      { message: 'the folded notification', describe: async () => JSON.stringify(await shown(context)) },
    );

    // A direct room has no name: the sender's is the title.
    await deliver(ada, {
      type: 'message',
      room_id: rooms.direct,
      message_id: 'm5',
      seq: 1,
      sender: bob,
      preview: 'Hi',
    });
    const direct = await eventually(async () => (await shown(context)).find((n) => n.tag === rooms.direct), {
      message: 'the notification of the direct room',
    });
    assert.equal(direct.title, 'Bob');
    assert.equal(direct.body, 'Bob: Hi');

    // A call says who calls, and stays until it is acted on.
    await deliver(ada, { type: 'call', call_id: 'c1', room_id: rooms.direct, from: bob, media: 'video' });
    const call = await eventually(async () => (await shown(context)).find((n) => n.tag === 'call:c1'), {
      message: 'the notification of the call',
    });
    assert.equal(call.title, 'Incoming video call from Bob');
    assert.match(call.body, /^Incoming video call from Bob/);
    assert.equal(call.requireInteraction, true);
    assert.deepEqual(call.data, { room_id: rooms.direct, call_id: 'c1' });
    await eventually(async () => (await shown(context)).length === 3, {
      message: 'one notification per room, and the call',
      describe: async () => JSON.stringify(await shown(context)),
    });
    await context.close();
  });

  test('a click on a notification opens its room, in the open page or a new one', async () => {
    const ada = await pushPage('ada', 'Ada');
    await turnOn(ada);
    const context = ada.context();
    await ada.goto('about:blank');
    const bob = { id: 'bob', name: 'Bob' };
    const push = (roomId, preview) =>
      deliver(ada, { type: 'message', room_id: roomId, message_id: preview, seq: 1, sender: bob, preview });

    // The page is open (showing no room) when the notification is clicked:
    // it is focused and told to open the room.
    await push(rooms.group, 'in the open page');
    await eventually(async () => (await shown(context)).some((n) => n.tag === rooms.group), { message: 'it shows' });
    await ada.goto(`${server.url}/`);
    await ada.locator('body[data-connection="open"]').waitFor();
    assert.equal(await ada.locator('#room-title').textContent(), 'Pick a conversation');
    const inPage = await click(context, rooms.group);
    assert.deepEqual(inPage, { focused: [`${server.url}/`], opened: [], left: 0 });
    await ada.locator('#room-title', { hasText: 'Book club' }).waitFor();
    await ada.locator(`#rooms button[data-room="${rooms.group}"][aria-current="true"]`).waitFor();

    // No page is open: a new window opens the room's deep link.
    await ada.goto('about:blank');
    await push(rooms.direct, 'in a new window');
    await eventually(async () => (await shown(context)).some((n) => n.tag === rooms.direct), { message: 'it shows' });
    const fresh = await click(context, rooms.direct);
    assert.deepEqual(fresh, {
      focused: [],
      opened: [`${server.url}/#room=${encodeURIComponent(rooms.direct)}`],
      left: 0,
    });
    const opened = await context.newPage();
    await opened.goto(fresh.opened[0]);
    await opened.locator('#room-title', { hasText: 'Bob' }).waitFor();
    await opened.locator(`#rooms button[data-room="${rooms.direct}"][aria-current="true"]`).waitFor();
    assert.equal(new URL(opened.url()).hash, '', 'the deep link is consumed');
    await context.close();
  });

  test('the bell mutes a room, and another tab follows', async () => {
    const ada = await pushPage('ada', 'Ada');
    const sent = [];
    ada.on('websocket', (ws) => ws.on('framesent', ({ payload }) => sent.push(String(payload))));
    await ada.reload();
    await ada.locator('body[data-connection="open"]').waitFor();
    const other = await ada.context().newPage();
    await other.goto(`${server.url}/`);
    await other.locator('body[data-connection="open"]').waitFor();
    for (const page of [ada, other]) {
      await page.locator(`#rooms button[data-room="${rooms.group}"]`).click();
      await page.locator('#room-title', { hasText: 'Book club' }).waitFor();
    }

    const bell = ada.getByRole('button', { name: 'Mute notifications' });
    assert.equal(await bell.getAttribute('aria-pressed'), 'false');
    await bell.focus();
    await ada.keyboard.press('Enter');
    const unmute = ada.getByRole('button', { name: 'Unmute notifications' });
    await unmute.waitFor();
    assert.equal(await unmute.getAttribute('aria-pressed'), 'true');
    const mute = sent.map((f) => JSON.parse(f)).find((f) => f.type === 'room:mute');
    assert.deepEqual(mute && mute.data, { room_id: rooms.group });
    await ada.locator(`#rooms button[data-room="${rooms.group}"] .muted-icon`).waitFor();
    assert.match(await ada.locator(`#rooms button[data-room="${rooms.group}"]`).getAttribute('aria-label'), /muted/);

    // The other tab hears of it (room:muted) and unmutes.
    const otherBell = other.locator('#room-mute-toggle');
    await other.locator('#room-mute-toggle[aria-pressed="true"][aria-label="Unmute notifications"]').waitFor();
    await other.locator(`#rooms button[data-room="${rooms.group}"] .muted-icon`).waitFor();
    await screenshot(other, 'push-room-muted');
    await otherBell.click();
    await other.locator('#room-mute-toggle[aria-pressed="false"][aria-label="Mute notifications"]').waitFor();
    await ada.locator('#room-mute-toggle[aria-pressed="false"][aria-label="Mute notifications"]').waitFor();
    await ada.locator(`#rooms button[data-room="${rooms.group}"] .muted-icon`).waitFor({ state: 'detached' });
    assert.ok(sent.some((f) => JSON.parse(f).type === 'room:mute'));
    assert.deepEqual(ada.errors, []);
    await ada.context().close();
  });
});
