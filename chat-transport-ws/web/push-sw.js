// push-sw.js — the chat page's service worker, served at `/push-sw.js` with
// the scope `/`. It does one thing: Web Push (protocol section 8). The
// server pushes a user who has no open session; this worker turns each push
// into a notification, and a click on one into the chat page showing that
// room. It caches nothing: the page works as it did without it.
//
// Every user text (room names, sender names, previews) goes into
// notification fields, which browsers show as plain text.

const MEDIA_TEXT = { audio: 'audio', video: 'video' };

/** The notification for a push's payload: `{title, options}`. A payload
 * this worker does not understand still shows something: a push that shows
 * no notification makes the browser show its own ("This site has been
 * updated in the background") and, repeated, may cost the subscription. */
function notificationFor(payload) {
  const data = payload && typeof payload === 'object' ? payload : {};
  const name = (user) => (user && typeof user.name === 'string' && user.name) || (user && user.id) || 'Someone';
  if (data.type === 'call') {
    const media = MEDIA_TEXT[data.media] || 'audio';
    const from = name(data.from);
    return {
      title: `Incoming ${media} call from ${from}`,
      options: {
        body: `Incoming ${media} call from ${from}. Open the chat to answer.`,
        // A call's notification is its own; a message of the same room does
        // not replace it.
        tag: `call:${data.call_id || data.room_id || ''}`,
        requireInteraction: true,
        data: { room_id: data.room_id, call_id: data.call_id },
      },
    };
  }
  if (data.type === 'message') {
    const sender = name(data.sender);
    const count = Number.isInteger(data.count) && data.count > 1 ? data.count : 1;
    const preview = typeof data.preview === 'string' ? data.preview : '';
    const said = preview ? `${sender}: ${preview}` : `${sender} sent a message`;
    return {
      title: (typeof data.room_name === 'string' && data.room_name) || sender,
      options: {
        body: count > 1 ? `${said} (+${count - 1} more)` : said,
        // One notification per room: a newer push replaces the older one
        // (and, with renotify, alerts again).
        tag: data.room_id || 'chat',
        renotify: true,
        data: { room_id: data.room_id },
      },
    };
  }
  return { title: 'Chat', options: { body: 'Something new happened in the chat.', tag: 'chat', data: {} } };
}

/** The windows of the chat page (not other pages of this origin), top-level ones first. */
async function chatWindows() {
  const windows = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
  const page = windows.filter((client) => new URL(client.url).pathname === '/');
  return [...page.filter((c) => c.frameType !== 'nested'), ...page.filter((c) => c.frameType === 'nested')];
}

async function showPush(data) {
  let payload = null;
  try {
    payload = data ? data.json() : null;
  } catch {
    payload = null;
  }
  // The server pushes only users with no open session, so a chat page in
  // front of the user is rare (a page still connecting): it shows the
  // message itself, and a notification would say it twice.
  const windows = await chatWindows();
  if (payload && payload.type === 'message' && windows.some((c) => c.focused && c.visibilityState === 'visible')) {
    return;
  }
  const { title, options } = notificationFor(payload);
  await self.registration.showNotification(title, options);
}

/** Brings the chat page to the front showing `roomId`: an open page is
 * focused and told to open the room; without one, a new window opens the
 * page's deep link (`/#room=<id>`), which the page follows once signed in. */
async function openRoom(roomId) {
  const [page] = await chatWindows();
  if (page) {
    // Focusing is allowed only while the click is being handled; a page
    // that could not be focused is still told which room to show.
    const focused = await page.focus().catch(() => page);
    if (roomId) (focused || page).postMessage({ type: 'open-room', room_id: roomId });
    return;
  }
  const url = roomId ? `/#room=${encodeURIComponent(roomId)}` : '/';
  await self.clients.openWindow(url);
}

/** The notification's click: closes it and opens its room. */
function onNotificationClick(event) {
  event.notification.close();
  const data = event.notification.data || {};
  event.waitUntil(openRoom(typeof data.room_id === 'string' ? data.room_id : null));
}

self.addEventListener('install', () => {
  // A new version takes over at once: it holds no state to migrate.
  self.skipWaiting();
});

self.addEventListener('activate', (event) => {
  event.waitUntil(self.clients.claim());
});

self.addEventListener('push', (event) => {
  // waitUntil always gets a promise, and one that does not reject: a push
  // that fails here is still a push the browser counts.
  event.waitUntil(
    showPush(event.data).catch(() => self.registration.showNotification('Chat', notificationFor(null).options)),
  );
});

self.addEventListener('notificationclick', onNotificationClick);
