// app.js — the chat page served at `/`. Built on chat-client.js only; every
// piece of user text reaches the page through textContent or attribute
// values, never as HTML, and is shown bidi-isolated: names in <bdi> (never in
// one text node with other text), bodies in elements with dir="auto", so
// that right-to-left text or a direction override (U+202E) in one cannot
// reorder what is around it.

import { CallConnection, ChatClient, devLogin, devLoginEnabled, vapidKey } from '/chat-client.js';

const TOKEN_KEY = 'chat-page:token';
const $ = (id) => document.getElementById(id);

function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = value;
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// Keeps `container`'s children in step with `items` ({key, sig, make}),
// replacing only what changed: screen readers then announce new messages
// only, and an edit box being typed in survives other updates.
function reconcile(container, cache, items) {
  const wanted = new Set(items.map((i) => i.key));
  for (const [key, r] of cache) {
    if (!wanted.has(key)) {
      r.el.remove();
      cache.delete(key);
    }
  }
  let prev = null;
  for (const item of items) {
    let r = cache.get(item.key);
    if (!r || r.sig !== item.sig) {
      const el = item.make();
      if (r) r.el.replaceWith(el);
      r = { sig: item.sig, el };
      cache.set(item.key, r);
    }
    const expected = prev ? prev.nextSibling : container.firstChild;
    if (expected !== r.el) container.insertBefore(r.el, expected);
    prev = r.el;
  }
}

const STATUS_TEXT = { sent: 'Sent', delivered: 'Delivered', read: 'Read', sending: 'Sending…' };

let client = null;
let current = null;
// Per room: members (id → user), messages (seq → message), paging state.
const rooms = new Map();
const activity = new Map();
const messageNodes = new Map();
const roomNodes = new Map();
const online = new Map();
let editing = null;
let confirmingDelete = null;
let loadingOlder = false;

function roomState(id) {
  let state = rooms.get(id);
  if (!state) {
    state = { members: new Map(), messages: new Map(), loaded: false, hasMore: false, joined: false };
    rooms.set(id, state);
  }
  return state;
}

// A name (or another piece of user text shown inline) as its own bidi isolate.
const isolated = (text) => h('bdi', { text });

// `items` with `separator` between them, for replaceChildren/append.
function joined(items, separator) {
  return items.flatMap((item, i) => (i === 0 ? [item] : [separator, item]));
}

function userName(id, room) {
  const user = (room && rooms.get(room) && rooms.get(room).members.get(id)) || findUser(id);
  return user ? user.name : id;
}

function findUser(id) {
  for (const state of rooms.values()) {
    const user = state.members.get(id);
    if (user) return user;
  }
  const seen = online.get(id);
  return seen ? seen.user : null;
}

// A room's title as the words around it and the user text in it.
function roomTitleParts(summary) {
  const state = rooms.get(summary.id);
  if (summary.kind === 'direct') {
    const other = state ? [...state.members.values()].find((u) => u.id !== client.user.id) : null;
    return { prefix: '', name: other ? other.name : summary.name || 'Direct conversation' };
  }
  if (summary.kind === 'support') return { prefix: 'Support: ', name: userName(summary.created_by, summary.id) };
  return { prefix: '', name: summary.name || 'Group' };
}

function roomTitle(summary) {
  const { prefix, name } = roomTitleParts(summary);
  return prefix + name;
}

function roomTitleNodes(summary) {
  const { prefix, name } = roomTitleParts(summary);
  return prefix ? [prefix, isolated(name)] : [isolated(name)];
}

// ---- sign-in -----------------------------------------------------------------

async function showSignIn(error) {
  $('main').hidden = true;
  $('signin').hidden = false;
  $('signin-error').textContent = error || '';
  $('dev-form').hidden = !(await devLoginEnabled());
}

$('token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const token = $('token').value.trim();
  if (token) start({ token });
});

$('dev-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  try {
    const roles = $('dev-agent').checked ? ['support'] : [];
    const { token } = await devLogin(undefined, $('dev-name').value, { roles });
    start({ token });
  } catch (err) {
    $('signin-error').textContent = `Sign-in failed: ${err.message}`;
  }
});

$('signout').addEventListener('click', async () => {
  $('signout').disabled = true;
  // A shared computer must not keep getting this user's pushes: the
  // subscription goes (waited for a few seconds at most) before the page does.
  if (client && pushSupported()) {
    await Promise.race([dropPushSubscription(), new Promise((r) => setTimeout(r, 5000))]);
  }
  localStorage.removeItem(TOKEN_KEY);
  location.reload();
});

// ---- connection ----------------------------------------------------------------

// `auth` is `{token}` (typed in, or kept from last time) or, when the page
// is embedded in a product's page, `{getToken}`, which asks that page.
function start(auth) {
  client = new ChatClient(auth);
  client.on('state', ({ state }) => {
    const text = { connecting: 'Connecting…', reconnecting: 'Reconnecting…', open: '', closed: 'Offline' }[state];
    $('conn').textContent = text ?? '';
    document.body.dataset.connection = state;
  });
  client.on('auth-failed', ({ reason }) => {
    localStorage.removeItem(TOKEN_KEY);
    showSignIn(`The server refused this token: ${reason}`);
  });
  client.on('ready', onReady);
  client.on('joined', (reply) => {
    const state = roomState(reply.room.id);
    for (const user of reply.members) state.members.set(user.id, user);
    renderRooms();
    if (reply.room.id === current) renderHeader();
  });
  client.on('room:added', ({ room }) => {
    activity.set(room.id, Date.now());
    follow(room.id);
    renderRooms();
    openWantedRoom();
  });
  client.on('message', ({ message, mine }) => {
    const state = roomState(message.room_id);
    state.messages.set(message.seq, message);
    activity.set(message.room_id, Date.parse(message.created_at) || Date.now());
    if (message.room_id === current) {
      renderMessages(mine);
      if (!mine) markRead();
    }
    renderRooms();
  });
  client.on('message:updated', ({ message }) => {
    const state = roomState(message.room_id);
    if (state.messages.has(message.seq) || state.loaded) state.messages.set(message.seq, message);
    if (message.room_id === current) renderMessages();
  });
  client.on('message:deleted', ({ room_id, message_id }) => {
    const state = roomState(room_id);
    for (const m of state.messages.values()) {
      if (m.id === message_id) state.messages.set(m.seq, { ...m, deleted: true, body: '', attachments: [] });
    }
    if (room_id === current) renderMessages();
  });
  client.on('user:joined', ({ room_id, user }) => {
    roomState(room_id).members.set(user.id, user);
    renderRooms();
    if (room_id === current) renderHeader();
  });
  client.on('room:removed', ({ room_id }) => {
    roomState(room_id).joined = false;
    if (room_id === current) {
      current = null;
      $('main').classList.remove('in-room');
      $('composer').hidden = true;
      $('messages').replaceChildren();
      $('room-title').textContent = 'Pick a conversation';
      $('room-topic').hidden = true;
      $('room-members').replaceChildren();
      showPanel(false);
      $('room-settings-toggle').hidden = true;
      $('room-mute-toggle').hidden = true;
    }
    renderRooms();
  });
  client.on('room:updated', ({ room }) => {
    renderRooms();
    if (room.id === current) renderHeader();
  });
  client.on('room:member_updated', ({ room_id }) => {
    if (room_id === current) renderHeader();
  });
  client.on('room:muted', ({ room_id }) => {
    renderRooms();
    if (room_id === current) {
      renderMuteToggle();
      renderPanel();
    }
  });
  client.on('user:left', ({ room_id, user_id }) => {
    roomState(room_id).members.delete(user_id);
    if (room_id === current) renderHeader();
  });
  client.on('typing', ({ room_id }) => {
    if (room_id === current) renderTyping();
  });
  const ticks = ({ room_id }) => {
    if (room_id === current) renderMessages();
  };
  client.on('message:status', ticks);
  client.on('receipts', ticks);
  client.on('outbox', () => current && renderMessages(true));
  client.on('presence:changed', ({ user_id, status }) => {
    const known = online.get(user_id);
    if (status === 'offline') online.delete(user_id);
    else if (known) known.status = status;
    else refreshOnline();
    renderOnline();
  });
  client.on('send-failed', ({ error }) => {
    $('send-error').textContent = `Not sent: ${error.message}`;
  });
  client.on('call:incoming', onIncomingCall);
  client.on('call:accepted', onCallAccepted);
  client.on('call:ended', onCallEnded);
  client.on('call:rejoined', onCallRejoined);
  client.connect().then(
    () => {
      // An embedded page's token belongs to the embedding page, not here.
      if (auth.token) localStorage.setItem(TOKEN_KEY, auth.token);
    },
    () => {},
  );
}

function onReady({ user, rooms: summaries, resumed }) {
  $('signin').hidden = true;
  $('main').hidden = false;
  $('me').textContent = user.name;
  $('me').title = user.id;
  summaries.forEach((summary, i) => {
    if (!activity.has(summary.id)) activity.set(summary.id, -i);
  });
  // After a reconnect the client joins the rooms it followed by itself; rooms
  // added while the connection was down are new here.
  for (const summary of summaries) follow(summary.id);
  renderRooms();
  refreshOnline();
  openWantedRoom();
  if (!resumed) setupPush(user);
  // A reconnect is a new session: a call in progress must be taken over by
  // it within the server's grace, or the server ends it.
  if (resumed && call && call.id) rejoinCall();
}

function follow(roomId) {
  const state = roomState(roomId);
  if (state.joined) return;
  state.joined = true;
  client.join(roomId).catch((err) => {
    state.joined = false;
    console.warn('joining', roomId, err);
  });
}

// ---- rooms list ------------------------------------------------------------------

function renderRooms() {
  const list = [...client.rooms.values()].sort((a, b) => (activity.get(b.id) ?? 0) - (activity.get(a.id) ?? 0));
  $('rooms-empty').hidden = list.length > 0;
  const items = list.map((summary) => {
    const title = roomTitle(summary);
    const unread = summary.id === current ? 0 : summary.unread || 0;
    const muted = !!summary.muted;
    return {
      key: summary.id,
      sig: `${title}|${unread}|${summary.id === current}|${summary.kind}|${muted}`,
      make: () =>
        h(
          'li',
          {},
          h(
            'button',
            {
              type: 'button',
              'data-room': summary.id,
              'aria-current': summary.id === current ? 'true' : 'false',
              'aria-label': `${title}${unread ? `, ${unread} unread` : ''}${muted ? ', muted' : ''}`,
              onclick: () => openRoom(summary.id),
            },
            h('span', { class: 'room-name' }, ...roomTitleNodes(summary)),
            summary.kind === 'group' ? null : h('span', { class: `kind ${summary.kind}`, text: summary.kind }),
            muted ? h('span', { class: 'kind muted-icon', title: 'Notifications muted', text: 'muted' }) : null,
            h('span', { class: 'unread', 'aria-hidden': 'true', text: unread ? String(unread) : '' }),
          ),
        ),
    };
  });
  reconcile($('rooms'), roomNodes, items);
  if (current) $('room-title').replaceChildren(...roomTitleNodes(client.rooms.get(current) || { id: current }));
}

async function openRoom(id) {
  if (current !== id) showPanel(false);
  current = id;
  editing = null;
  messageNodes.clear();
  $('messages').replaceChildren();
  $('main').classList.add('in-room');
  $('composer').hidden = false;
  $('send-error').textContent = '';
  const state = roomState(id);
  follow(id);
  renderHeader();
  renderRooms();
  renderTyping();
  if (!state.loaded) {
    try {
      await client.whenOpen();
      const page = await client.history(id, { limit: 50 });
      for (const m of page.messages) state.messages.set(m.seq, m);
      state.hasMore = page.has_more;
      state.loaded = true;
    } catch (err) {
      $('send-error').textContent = `Could not load messages: ${err.message}`;
    }
  }
  if (current !== id) return;
  renderMessages(true);
  markRead();
  $('input').focus();
}

$('back').addEventListener('click', () => {
  $('main').classList.remove('in-room');
  const button = current && document.querySelector(`[data-room="${CSS.escape(current)}"]`);
  if (button) button.focus();
});

function renderHeader() {
  if (!current) return;
  const summary = client.rooms.get(current) || { id: current };
  $('room-title').replaceChildren(...roomTitleNodes(summary));
  $('room-topic').textContent = summary.topic || '';
  $('room-topic').hidden = !summary.topic;
  // Deleted users are listed only to name the messages they left.
  const members = [...roomState(current).members.values()].filter((u) => !u.deleted).map((u) => isolated(u.name));
  $('room-members').replaceChildren(
    ...(members.length ? [`${members.length} members: `, ...joined(members, ', ')] : []),
  );
  $('room-settings-toggle').hidden = false;
  renderMuteToggle();
  renderCallButtons();
  renderPanel();
}

// The bell beside the title: mutes the room for this user (no push for it)
// until they unmute it, or unmutes it; the panel's picker offers timed mutes.
// Another tab's or device's change arrives as room:muted.
let muteBusy = false;

function renderMuteToggle() {
  const button = $('room-mute-toggle');
  const summary = current ? client.rooms.get(current) : null;
  button.hidden = !summary;
  if (!summary) return;
  const muted = Boolean(summary.muted);
  const label = muted ? 'Unmute notifications' : 'Mute notifications';
  button.setAttribute('aria-pressed', String(muted));
  button.setAttribute('aria-label', label);
  const until = muted && summary.muted_until ? new Date(summary.muted_until) : null;
  button.title = until
    ? `${label} (muted until ${until.toLocaleString([], { dateStyle: 'short', timeStyle: 'short' })})`
    : label;
}

$('room-mute-toggle').addEventListener('click', async () => {
  const room = current;
  const summary = room ? client.rooms.get(room) : null;
  if (!summary || muteBusy) return;
  muteBusy = true;
  $('send-error').textContent = '';
  try {
    if (summary.muted) await client.unmute(room);
    else await client.mute(room);
  } catch (err) {
    $('send-error').textContent = `Not done: ${err.message}`;
  } finally {
    muteBusy = false;
  }
  renderRooms();
  if (room === current) {
    renderMuteToggle();
    renderPanel();
  }
});

// ---- room settings, members and moderation ---------------------------------------

let panelRoom = null;

function showPanel(open) {
  $('room-panel').hidden = !open;
  $('room-settings-toggle').setAttribute('aria-expanded', String(open));
  $('room-panel-error').textContent = '';
  panelRoom = open ? current : null;
  if (open) {
    const summary = client.rooms.get(current) || {};
    $('room-name-input').value = summary.name || '';
    $('room-topic-input').value = summary.topic || '';
    renderPanel();
    loadBans();
  }
}

$('room-settings-toggle').addEventListener('click', () => showPanel($('room-panel').hidden));

const ROLE_TEXT = { owner: 'owner', admin: 'admin' };

function renderPanel() {
  if (!current || $('room-panel').hidden) return;
  if (panelRoom !== current) {
    showPanel(false);
    return;
  }
  const summary = client.rooms.get(current) || { id: current };
  const moderator = client.canModerate(current);
  const iOwn = client.roleOf(current, client.user.id) === 'owner';
  $('room-settings-form').hidden = !moderator;
  $('room-bans-box').hidden = !moderator;
  renderMute(summary);
  const items = [...roomState(current).members.values()].map((user) => {
    const role = client.roleOf(current, user.id) || 'member';
    const actions = [];
    const mayRemove = moderator && user.id !== client.user.id && role !== 'owner' && (role !== 'admin' || iOwn);
    if (iOwn && role !== 'owner' && summary.kind === 'group') {
      const next = role === 'admin' ? 'member' : 'admin';
      actions.push(
        h('button', {
          type: 'button',
          class: 'link',
          'aria-label': next === 'admin' ? `Make ${user.name} an admin` : `Make ${user.name} a member`,
          text: next === 'admin' ? 'Make admin' : 'Remove admin',
          onclick: () => moderate(() => client.setRole(current, user.id, next)),
        }),
      );
    }
    if (mayRemove) {
      actions.push(
        h('button', {
          type: 'button',
          class: 'link',
          'aria-label': `Remove ${user.name}`,
          text: 'Remove',
          onclick: () => moderate(() => client.removeMember(current, user.id)),
        }),
        h('button', {
          type: 'button',
          class: 'link',
          'aria-label': `Ban ${user.name}`,
          text: 'Ban',
          onclick: () => moderate(() => client.removeMember(current, user.id, { ban: true })),
        }),
      );
    }
    return h(
      'li',
      { 'data-user': user.id },
      isolated(user.name),
      ROLE_TEXT[role] ? h('span', { class: 'role', text: ROLE_TEXT[role] }) : null,
      actions.length ? h('span', { class: 'actions' }, ...actions) : null,
    );
  });
  $('room-member-list').replaceChildren(...items);
}

function renderMute(summary) {
  const select = $('room-mute');
  for (const option of [...select.options]) if (option.value === 'until') option.remove();
  if (!summary.muted) select.value = '';
  else if (!summary.muted_until) select.value = 'forever';
  else {
    const until = new Date(summary.muted_until);
    const text = `Muted until ${until.toLocaleString([], { dateStyle: 'short', timeStyle: 'short' })}`;
    select.append(h('option', { value: 'until', text }));
    select.value = 'until';
  }
}

const MUTE_FOR = { '1h': 3600e3, '8h': 8 * 3600e3, '7d': 7 * 24 * 3600e3 };

$('room-mute').addEventListener('change', () => {
  const choice = $('room-mute').value;
  if (choice === 'until') return;
  moderate(() => {
    if (choice === '') return client.unmute(current);
    if (choice === 'forever') return client.mute(current);
    return client.mute(current, { until: new Date(Date.now() + MUTE_FOR[choice]) });
  });
});

$('room-settings-form').addEventListener('submit', (event) => {
  event.preventDefault();
  moderate(() => client.updateRoom(current, { name: $('room-name-input').value, topic: $('room-topic-input').value }));
});

// Runs a moderation or settings call, shows its failure, and redraws.
async function moderate(call) {
  const room = current;
  $('room-panel-error').textContent = '';
  try {
    await call();
  } catch (err) {
    $('room-panel-error').textContent = `Not done: ${err.message}`;
  }
  if (room !== current) return;
  renderRooms();
  renderHeader();
  loadBans();
}

async function loadBans() {
  const room = current;
  if (!room || $('room-panel').hidden || !client.canModerate(room)) return;
  let bans;
  try {
    bans = await client.bans(room);
  } catch (err) {
    $('room-panel-error').textContent = `Could not list bans: ${err.message}`;
    return;
  }
  if (room !== current) return;
  $('room-bans-empty').hidden = bans.length > 0;
  $('room-bans').replaceChildren(
    ...bans.map(({ user }) =>
      h(
        'li',
        { 'data-user': user.id },
        isolated(user.name),
        h(
          'span',
          { class: 'actions' },
          h('button', {
            type: 'button',
            class: 'link',
            'aria-label': `Unban ${user.name}`,
            text: 'Unban',
            onclick: () => moderate(() => client.unban(room, user.id)),
          }),
        ),
      ),
    ),
  );
}

function renderTyping() {
  const users = current ? client.typingUsers(current).filter((id) => id !== client.user.id) : [];
  const names = users.map((id) => isolated(userName(id, current)));
  $('typing').replaceChildren(
    ...(names.length === 0 ? [] : [...joined(names, ', '), names.length === 1 ? ' is typing…' : ' are typing…']),
  );
}

function markRead() {
  if (!current || document.visibilityState !== 'visible') return;
  const seqs = [...roomState(current).messages.keys()];
  const last = seqs.length ? Math.max(...seqs) : 0;
  if (last > 0) client.markRead(current, last).catch(() => {});
  renderRooms();
}

document.addEventListener('visibilitychange', markRead);

// ---- messages --------------------------------------------------------------------

function formatTime(iso) {
  const date = new Date(iso);
  const sameDay = date.toDateString() === new Date().toDateString();
  return sameDay
    ? date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    : date.toLocaleString([], { dateStyle: 'short', timeStyle: 'short' });
}

function messageItem(m) {
  const mine = m.sender_id === client.user.id;
  const status = mine ? client.statusOf(m.room_id, m.seq) : '';
  const isEditing = editing === m.id;
  const confirming = confirmingDelete === m.id;
  if (m.call) return callLineItem(m, mine);
  return {
    key: `m:${m.seq}`,
    sig: [m.body, m.deleted, m.edited_at, status, isEditing, confirming, userName(m.sender_id, m.room_id), fileKeys(m)]
      .join('|'),
    make: () => {
      const li = h('li', {
        class: `msg${mine ? ' mine' : ''}${m.deleted ? ' deleted' : ''}`,
        'data-seq': m.seq,
        'data-id': m.id,
      });
      li.append(h('div', { class: 'who' }, mine ? 'You' : isolated(userName(m.sender_id, m.room_id))));
      if (isEditing) {
        const box = h('textarea', { 'aria-label': 'Edit message', rows: 2, dir: 'auto' });
        box.value = m.body;
        const save = async () => {
          const body = box.value.trim();
          if (!body || body === m.body) {
            editing = null;
            renderMessages();
            return;
          }
          try {
            const updated = await client.edit(m.room_id, m.id, body);
            roomState(m.room_id).messages.set(updated.seq, updated);
            editing = null;
            renderMessages();
            $('input').focus();
          } catch (err) {
            $('send-error').textContent = `Not edited: ${err.message}`;
          }
        };
        box.addEventListener('keydown', (event) => {
          if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
            event.preventDefault();
            save();
          } else if (event.key === 'Escape') {
            editing = null;
            renderMessages();
            $('input').focus();
          }
        });
        li.append(
          box,
          h(
            'div',
            { class: 'meta' },
            h('button', { type: 'button', class: 'quiet', onclick: save, text: 'Save' }),
            h('button', {
              type: 'button',
              class: 'quiet',
              text: 'Cancel',
              onclick: () => {
                editing = null;
                renderMessages();
              },
            }),
          ),
        );
        queueMicrotask(() => box.focus());
        return li;
      }
      const files = m.deleted ? [] : m.attachments || [];
      // A message of files only has no text line.
      if (m.deleted || m.body || !files.length) {
        li.append(h('div', { class: 'text', dir: 'auto', text: m.deleted ? 'Message deleted' : m.body }));
      }
      if (files.length) li.append(fileList(files, (id) => refreshFile(m, id)));
      const meta = h('div', { class: 'meta' }, h('time', { datetime: m.created_at, text: formatTime(m.created_at) }));
      if (m.edited_at && !m.deleted) meta.append(h('span', { class: 'edited', text: 'edited' }));
      if (mine && !m.deleted) {
        meta.append(
          h('button', {
            type: 'button',
            class: 'quiet',
            text: 'Edit',
            'aria-label': 'Edit this message',
            onclick: () => {
              editing = m.id;
              renderMessages();
            },
          }),
          h('button', {
            type: 'button',
            class: 'quiet',
            text: confirming ? 'Really delete?' : 'Delete',
            'aria-label': confirming ? 'Confirm: delete this message' : 'Delete this message',
            onclick: async (event) => {
              if (!confirming) {
                confirmingDelete = m.id;
                renderMessages();
                const again = document.querySelector(`[data-id="${CSS.escape(m.id)}"] button:last-of-type`);
                if (again) again.focus();
                setTimeout(() => {
                  if (confirmingDelete === m.id) {
                    confirmingDelete = null;
                    renderMessages();
                  }
                }, 4000);
                return;
              }
              event.currentTarget.disabled = true;
              confirmingDelete = null;
              try {
                await client.delete(m.room_id, m.id);
                const state = roomState(m.room_id);
                state.messages.set(m.seq, { ...m, deleted: true, body: '', attachments: [] });
                renderMessages();
              } catch (err) {
                $('send-error').textContent = `Not deleted: ${err.message}`;
              }
            },
          }),
        );
      }
      if (mine) {
        meta.append(
          h('span', {
            class: 'tick',
            'data-status': status,
            'aria-label': STATUS_TEXT[status],
            title: STATUS_TEXT[status],
            text: status === 'sent' ? '✓' : '✓✓',
          }),
        );
      }
      li.append(meta);
      return li;
    },
  };
}

// ---- calls -------------------------------------------------------------------------
//
// One call at a time. The caller places it (call:invite), the callee's
// sessions ring (call:incoming, with a tone made by Web Audio), one of them
// accepts; then the caller offers and the two sessions exchange SDP and ICE
// through call:signal (CallConnection). Whoever hangs up, the server says
// call:ended to both, and the call leaves a line in the room's history.

const MEDIA_TEXT = { audio: 'Audio call', video: 'Video call' };
const ENDED_TEXT = {
  hangup: 'Call ended',
  rejected: 'Call declined',
  timeout: 'No answer',
  busy: 'Busy: they are in another call',
  disconnected: 'Call ended: the connection was lost',
  answered_elsewhere: 'Answered on another device',
};

// {id, roomId, peer, media, role, stream, conn, acceptedAt, timer}
let call = null;
// The call:incoming data of the call that rings here.
let ringing = null;
let ringer = null;

function duration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const hours = Math.floor(s / 3600);
  const mm = String(Math.floor((s % 3600) / 60)).padStart(hours ? 2 : 1, '0');
  const ss = String(s % 60).padStart(2, '0');
  return hours ? `${hours}:${mm}:${ss}` : `${mm}:${ss}`;
}

function callLineItem(m, mine) {
  const { media, outcome, duration_s: seconds } = m.call;
  const kind = MEDIA_TEXT[media] || 'Call';
  const what = {
    missed: mine ? `${kind}, not answered` : `Missed ${kind.toLowerCase()}`,
    rejected: `${kind}, declined`,
    busy: `${kind}, busy`,
    ended: `${kind}, ${duration(seconds || 0)}`,
  }[outcome] || kind;
  return {
    key: `m:${m.seq}`,
    sig: ['call', outcome, seconds, userName(m.sender_id, m.room_id)].join('|'),
    make: () =>
      h(
        'li',
        { class: 'msg call-line', 'data-seq': m.seq, 'data-id': m.id, 'data-outcome': outcome },
        h('div', { class: 'who' }, mine ? 'You' : isolated(userName(m.sender_id, m.room_id))),
        h('div', { class: 'text', text: what }),
        h('div', { class: 'meta' }, h('time', { datetime: m.created_at, text: formatTime(m.created_at) })),
      ),
  };
}

function otherMembers(roomId) {
  return [...roomState(roomId).members.values()].filter((u) => !u.deleted && u.id !== client.user.id);
}

function renderCallButtons() {
  const others = current ? otherMembers(current) : [];
  const summary = current ? client.rooms.get(current) : null;
  $('call-buttons').hidden = !current || others.length === 0 || Boolean(summary && summary.closed);
  const select = $('call-to');
  select.hidden = others.length < 2;
  if (others.length >= 2) {
    const chosen = select.value;
    select.replaceChildren(...others.map((u) => h('option', { value: u.id, text: u.name })));
    if (others.some((u) => u.id === chosen)) select.value = chosen;
  }
  $('call-audio').disabled = Boolean(call);
  $('call-video').disabled = Boolean(call);
}

// A ring made with Web Audio: the two-tone 440 + 480 Hz burst of a phone,
// two seconds on, four off, until answered, declined or ended.
function startRinging() {
  stopRinging();
  const Context = window.AudioContext || window.webkitAudioContext;
  if (!Context) return;
  const context = new Context();
  context.resume().catch(() => {});
  const burst = () => {
    const gain = context.createGain();
    gain.gain.value = 0.08;
    gain.connect(context.destination);
    const now = context.currentTime;
    for (const frequency of [440, 480]) {
      const tone = context.createOscillator();
      tone.frequency.value = frequency;
      tone.connect(gain);
      tone.start(now);
      tone.stop(now + 2);
    }
  };
  burst();
  ringer = { context, timer: setInterval(burst, 6000) };
}

function stopRinging() {
  if (!ringer) return;
  clearInterval(ringer.timer);
  ringer.context.close().catch(() => {});
  ringer = null;
}

async function localMedia(media) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error('this browser cannot reach a microphone or camera here (calls need https)');
  }
  return navigator.mediaDevices.getUserMedia({ audio: true, video: media === 'video' });
}

function showCall(status) {
  const panel = $('call');
  panel.hidden = false;
  panel.classList.toggle('audio-only', call.media !== 'video');
  $('call-status').replaceChildren(...status);
  $('local-video').srcObject = call.stream;
  const tracks = (kind) => (call.stream ? call.stream.getTracks().filter((t) => t.kind === kind) : []);
  $('call-camera').hidden = tracks('video').length === 0;
  $('call-mute').setAttribute('aria-pressed', String(tracks('audio').some((t) => !t.enabled)));
  $('call-mute').textContent = tracks('audio').some((t) => !t.enabled) ? 'Unmute' : 'Mute';
  $('call-camera').setAttribute('aria-pressed', String(tracks('video').some((t) => !t.enabled)));
  $('call-camera').textContent = tracks('video').some((t) => !t.enabled) ? 'Camera on' : 'Camera off';
  renderCallButtons();
}

function peerName() {
  return isolated(userName(call.peer, call.roomId));
}

function connect(iceServers) {
  call.conn = new CallConnection(client, {
    callId: call.id,
    peer: call.peer,
    iceServers,
    stream: call.stream,
    onTrack: (stream) => {
      $('remote-video').srcObject = stream;
    },
    onState: (state) => {
      $('call').dataset.connection = state;
    },
  });
}

function talking() {
  call.acceptedAt = Date.now();
  const tick = () => {
    $('call-timer').textContent = duration((Date.now() - call.acceptedAt) / 1000);
  };
  tick();
  call.timer = setInterval(tick, 1000);
  showCall([`${MEDIA_TEXT[call.media]} with `, peerName()]);
}

function endCallHere(message) {
  if (!call) return;
  if (call.conn) call.conn.close();
  if (call.stream) for (const track of call.stream.getTracks()) track.stop();
  clearInterval(call.timer);
  call = null;
  $('call').hidden = true;
  delete $('call').dataset.connection;
  $('remote-video').srcObject = null;
  $('local-video').srcObject = null;
  $('call-timer').textContent = '';
  $('call-error').textContent = message || '';
  if (message) {
    setTimeout(() => {
      if (!call && $('call-error').textContent === message) $('call-error').textContent = '';
    }, 6000);
  }
  renderCallButtons();
}

async function placeCall(media) {
  if (call || !current) return;
  const roomId = current;
  const others = otherMembers(roomId);
  const to = others.length > 1 ? $('call-to').value : undefined;
  const peer = to || (others[0] && others[0].id);
  if (!peer) return;
  $('call-error').textContent = '';
  let stream;
  try {
    stream = await localMedia(media);
  } catch (err) {
    $('call-error').textContent = `No call: ${err.message}`;
    return;
  }
  call = { id: null, roomId, peer, media, role: 'caller', stream, conn: null, acceptedAt: 0, timer: null };
  showCall(['Calling ', peerName(), '…']);
  try {
    const placed = await client.inviteCall(roomId, media, to ? { to } : {});
    if (!call) {
      // Hung up before the server answered.
      client.endCall(placed.call_id).catch(() => {});
      return;
    }
    call.id = placed.call_id;
    call.iceServers = placed.ice_servers;
    if (placed.glare) {
      // They called at the same moment: this answered their call.
      call.role = 'callee';
      connect(placed.ice_servers);
      talking();
    }
  } catch (err) {
    endCallHere(`No call: ${err.message}`);
  }
}

function onIncomingCall(data) {
  if (call || ringing) return;
  ringing = data;
  $('incoming-title').replaceChildren(isolated(data.from.name), ` is calling you (${data.media === 'video' ? 'video' : 'audio'})`);
  $('incoming').hidden = false;
  $('incoming-accept').focus();
  startRinging();
}

function hideIncoming() {
  ringing = null;
  $('incoming').hidden = true;
  stopRinging();
}

async function acceptIncoming() {
  const data = ringing;
  if (!data || call) return;
  hideIncoming();
  let stream;
  try {
    stream = await localMedia(data.media);
  } catch (err) {
    $('call-error').textContent = `Could not answer: ${err.message}`;
    client.rejectCall(data.call_id).catch(() => {});
    return;
  }
  call = { id: data.call_id, roomId: data.room_id, peer: data.from.id, media: data.media, role: 'callee', stream };
  showCall(['Connecting to ', peerName(), '…']);
  try {
    // Listening before answering: the offer follows the answer at once.
    connect(await client.iceServers().catch(() => []));
    await client.acceptCall(data.call_id);
    if (current !== data.room_id) openRoom(data.room_id);
  } catch (err) {
    endCallHere(`Could not answer: ${err.message}`);
  }
}

function onCallAccepted(data) {
  if (!call || data.call_id !== call.id) return;
  if (call.role === 'caller' && !call.conn) {
    connect(call.iceServers || []);
    call.conn.offer().catch((err) => endCallHere(`Call failed: ${err.message}`));
  }
  if (!call.acceptedAt) talking();
}

async function rejoinCall() {
  const id = call.id;
  try {
    const rejoined = await client.rejoinCall(id);
    if (!call || call.id !== id) return;
    call.iceServers = rejoined.ice_servers;
    // The media go peer to peer and often outlive a dropped signalling
    // connection; only a connection that suffered is restarted.
    if (call.conn && call.role === 'caller' && call.conn.pc.connectionState !== 'connected') {
      call.conn.offer({ iceRestart: true }).catch(() => {});
    }
  } catch (err) {
    if (call && call.id === id) endCallHere(`Call ended: ${err.message}`);
  }
}

function onCallRejoined(data) {
  // The other side came back on a new session; the caller restarts ICE if
  // the media did not survive.
  if (!call || data.call_id !== call.id || !call.conn) return;
  if (call.role === 'caller' && call.conn.pc.connectionState !== 'connected') {
    call.conn.offer({ iceRestart: true }).catch(() => {});
  }
}

function onCallEnded(data) {
  if (ringing && data.call_id === ringing.call_id) hideIncoming();
  if (call && data.call_id === call.id) endCallHere(ENDED_TEXT[data.reason] || 'Call ended');
}

$('call-audio').addEventListener('click', () => placeCall('audio'));
$('call-video').addEventListener('click', () => placeCall('video'));
$('incoming-accept').addEventListener('click', acceptIncoming);
$('incoming-decline').addEventListener('click', () => {
  const data = ringing;
  hideIncoming();
  if (data) client.rejectCall(data.call_id).catch(() => {});
});
$('call-hangup').addEventListener('click', () => {
  if (!call) return;
  const id = call.id;
  endCallHere('Call ended');
  if (id) client.endCall(id).catch(() => {});
});
$('call-mute').addEventListener('click', () => {
  if (!call || !call.stream) return;
  for (const track of call.stream.getAudioTracks()) track.enabled = !track.enabled;
  showCall([...$('call-status').childNodes]);
});
$('call-camera').addEventListener('click', () => {
  if (!call || !call.stream) return;
  for (const track of call.stream.getVideoTracks()) track.enabled = !track.enabled;
  showCall([...$('call-status').childNodes]);
});

function renderMessages(stickToBottom = false) {
  if (!current) return;
  const list = $('messages');
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 60;
  const state = roomState(current);
  const items = [];
  if (state.hasMore) {
    items.push({
      key: 'older',
      sig: String(loadingOlder),
      make: () =>
        h(
          'li',
          { class: 'older-row' },
          h('button', { type: 'button', class: 'older', onclick: loadOlder, text: 'Load older messages' }),
        ),
    });
  }
  for (const seq of [...state.messages.keys()].sort((a, b) => a - b)) items.push(messageItem(state.messages.get(seq)));
  for (const entry of client.outbox) {
    if (entry.room_id !== current) continue;
    items.push({
      key: `p:${entry.client_msg_id}`,
      sig: '',
      make: () =>
        h(
          'li',
          { class: 'msg mine pending', 'data-pending': entry.client_msg_id },
          h('div', { class: 'who', text: 'You' }),
          entry.body || !entry.attachments ? h('div', { class: 'text', dir: 'auto', text: entry.body }) : null,
          entry.attachments
            ? h(
                'ul',
                { class: 'files' },
                ...entry.attachments.map((file) =>
                  h(
                    'li',
                    { class: 'file' },
                    h('bdi', { class: 'file-name', text: file.name || 'file' }),
                    ' ',
                    h('span', { class: 'file-size', text: file.size ? humanSize(file.size) : '' }),
                  ),
                ),
              )
            : null,
          h('div', { class: 'meta' }, h('span', { class: 'tick', 'data-status': 'sending', text: 'Sending…' })),
        ),
    });
  }
  reconcile(list, messageNodes, items);
  if (atBottom || stickToBottom) list.scrollTop = list.scrollHeight;
}

async function loadOlder() {
  const id = current;
  const state = roomState(id);
  if (loadingOlder || !state.hasMore) return;
  loadingOlder = true;
  const list = $('messages');
  const fromBottom = list.scrollHeight - list.scrollTop;
  try {
    const first = Math.min(...state.messages.keys());
    const page = await client.history(id, { beforeSeq: first, limit: 50 });
    for (const m of page.messages) state.messages.set(m.seq, m);
    state.hasMore = page.has_more;
  } catch (err) {
    $('send-error').textContent = `Could not load older messages: ${err.message}`;
  } finally {
    loadingOlder = false;
  }
  if (current !== id) return;
  renderMessages();
  list.scrollTop = list.scrollHeight - fromBottom;
}

$('messages').addEventListener('scroll', () => {
  if ($('messages').scrollTop < 40) loadOlder();
});

// ---- composer --------------------------------------------------------------------

// Sends the typed text with the files of the tray that are uploaded or
// uploading: the message goes out once their uploads end, with those that
// succeeded (failed ones stay in the tray with their error).
async function sendCurrent() {
  const input = $('input');
  const body = input.value.trim();
  const files = uploads.filter((u) => !u.sending && u.state !== 'failed');
  if ((!body && !files.length) || !current) return;
  const room = current;
  input.value = '';
  $('send-error').textContent = '';
  for (const u of files) u.sending = true;
  renderTray();
  if (files.some((u) => u.state === 'uploading')) client.stopTyping(room);
  await Promise.all(files.map((u) => u.settled));
  const ready = files.filter((u) => u.state === 'done');
  for (const u of ready) forgetUpload(u);
  renderTray();
  if (!body && !ready.length) return;
  try {
    await client.send(room, body, { attachments: ready.map((u) => u.attachment) });
  } catch (err) {
    $('send-error').textContent = `Not sent: ${err.message}`;
    if (!input.value) input.value = body;
    // The files are still uploaded: they go back to the tray for another try.
    for (const u of ready) u.sending = false;
    uploads = [...ready, ...uploads];
    renderTray();
  }
}

// ---- attachments -------------------------------------------------------------------

// The server takes at most this many files in one message.
const MAX_FILES = 10;
// Files picked, dropped or pasted for the next message, in order:
// {key, file, name, state: 'uploading'|'done'|'failed', loaded, total,
//  attachment, error, controller, settled, sending, el}.
let uploads = [];
let uploadKeys = 0;

const SIZE_UNITS = ['byte', 'kilobyte', 'megabyte', 'gigabyte'];

/** A size for people: 2.4 MB, 812 kB, 12 bytes. */
function humanSize(bytes) {
  let value = Number(bytes) || 0;
  let unit = 0;
  while (value >= 1000 && unit < SIZE_UNITS.length - 1) {
    value /= 1000;
    unit += 1;
  }
  const format = new Intl.NumberFormat(undefined, {
    style: 'unit',
    unit: SIZE_UNITS[unit],
    unitDisplay: unit === 0 ? 'long' : 'short',
    maximumFractionDigits: unit === 0 || value >= 10 ? 0 : 1,
  });
  return format.format(value);
}

// A message's files as its bubble shows them: new links draw it again.
const fileKeys = (m) => (m.attachments || []).map((f) => `${f.id} ${f.url}`).join(',');

// Signed links expire an hour or two after the message was fetched. A page
// open for longer fetches the message again for fresh ones when an old one
// is clicked or an old thumbnail fails to load; once a minute at most.
function expiresSoon(url) {
  try {
    const exp = Number(new URL(url).searchParams.get('exp'));
    return exp > 0 && exp * 1000 < Date.now() + 30000;
  } catch {
    return false;
  }
}

const refreshing = new Map();

async function refreshFile(m, fileId) {
  let pending = refreshing.get(m.id);
  if (!pending) {
    pending = client
      .history(m.room_id, { afterSeq: m.seq - 1, limit: 1 })
      .then((page) => {
        const fresh = page.messages.find((x) => x.id === m.id);
        if (fresh) {
          roomState(m.room_id).messages.set(fresh.seq, fresh);
          if (m.room_id === current) renderMessages();
        }
        return fresh;
      })
      .catch(() => null);
    refreshing.set(m.id, pending);
    setTimeout(() => refreshing.delete(m.id), 60000);
  }
  const fresh = await pending;
  return (fresh && (fresh.attachments || []).find((f) => f.id === fileId)) || null;
}

// Opens a link through `refresh` when its signature is about to expire.
function keepFresh(link, file, refresh) {
  link.addEventListener('click', async (event) => {
    if (!expiresSoon(link.href)) return;
    event.preventDefault();
    const fresh = await refresh(file.id);
    if (fresh) window.open(fresh.url, '_blank', 'noopener');
  });
  return link;
}

// Types the server previews inline; others (SVG among them) are downloads.
const INLINE_IMAGES = new Set(['image/png', 'image/jpeg', 'image/gif', 'image/webp']);
const THUMBNAIL_SIDE = 320;

// What to show an image with: its thumbnail, else the file itself when it
// is small enough to be its own thumbnail; null for a download link.
function preview(file) {
  const src = file.thumbnail_url || (INLINE_IMAGES.has(file.content_type) && file.width ? file.url : null);
  if (!src) return null;
  const sized = {};
  if (file.width > 0 && file.height > 0) {
    const scale = Math.min(1, THUMBNAIL_SIDE / Math.max(file.width, file.height));
    sized.width = Math.max(1, Math.round(file.width * scale));
    sized.height = Math.max(1, Math.round(file.height * scale));
  }
  return { src, ...sized };
}

// A sheet of paper, drawn rather than an emoji: every system has it.
function fileIcon() {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('class', 'file-icon');
  const path = document.createElementNS(ns, 'path');
  path.setAttribute('d', 'M6 2h8l6 6v12a2 2 0 0 1-2 2H6a2 2 0 0 1-2-2V4a2 2 0 0 1 2-2zm7 1.5V9h5.5L13 3.5z');
  svg.append(path);
  return svg;
}

// The server words its limits in bytes; people read 262 kB better.
const readableSizes = (text) => text.replace(/\b(\d{4,}) bytes\b/g, (_, n) => humanSize(Number(n)));

function fileLink(file) {
  return h(
    'a',
    { class: 'file-link', href: file.url, download: file.name, rel: 'noopener noreferrer', target: '_blank' },
    fileIcon(),
    h('bdi', { class: 'file-name', text: file.name }),
    h('span', { class: 'file-size', text: humanSize(file.size) }),
  );
}

// The files of a message: images as thumbnails linking to the full file,
// sized from the Attachment so the list does not jump as they load; other
// files as download links with their name and size.
function fileList(files, refresh) {
  return h(
    'ul',
    { class: 'files', 'aria-label': files.length === 1 ? 'Attached file' : `${files.length} attached files` },
    ...files.map((file) => {
      const shown = preview(file);
      const key = { 'data-attachment': file.id };
      if (!shown) return h('li', { class: 'file', ...key }, keepFresh(fileLink(file), file, refresh));
      const { src, width, height } = shown;
      const img = h('img', { src, width, height, alt: file.name, decoding: 'async' });
      const title = `${file.name}, ${humanSize(file.size)}`;
      const link = h('a', { href: file.url, target: '_blank', rel: 'noopener noreferrer', title }, img);
      // An expired link is fetched again (the bubble is then drawn anew);
      // an image the browser cannot show otherwise (a blocked source) is
      // offered as a download instead.
      img.addEventListener(
        'error',
        () => {
          if (expiresSoon(src)) refresh(file.id);
          else link.replaceWith(keepFresh(fileLink(file), file, refresh));
        },
        { once: true },
      );
      return h('li', { class: 'file image', ...key }, keepFresh(link, file, refresh));
    }),
  );
}

// Clipboard images are all called image.png: give them a name of their own.
function pastedName(file) {
  if (!/^image\.\w+$/i.test(file.name || '')) return file;
  const stamp = new Date().toISOString().slice(0, 19).replace(/[-:]/g, '').replace('T', '-');
  const ext = file.name.split('.').pop();
  return new File([file], `pasted-${stamp}.${ext}`, { type: file.type, lastModified: file.lastModified });
}

function addFiles(files) {
  if (!current || !client) return;
  const refused = [];
  for (const file of files) {
    if (uploads.filter((u) => !u.sending).length >= MAX_FILES) {
      refused.push(file.name);
      continue;
    }
    startUpload(file);
  }
  if (refused.length) {
    $('send-error').textContent = `At most ${MAX_FILES} files per message: ${refused.join(', ')} not added.`;
  }
  renderTray();
}

function startUpload(file) {
  const controller = new AbortController();
  const upload = {
    key: `u${(uploadKeys += 1)}`,
    file,
    name: file.name || 'file',
    state: 'uploading',
    loaded: 0,
    total: file.size || 0,
    attachment: null,
    error: '',
    controller,
    sending: false,
    el: null,
  };
  upload.settled = client
    .upload(file, {
      signal: controller.signal,
      onProgress: ({ loaded, total }) => {
        upload.loaded = loaded;
        upload.total = total;
        showProgress(upload);
      },
    })
    .then(
      (attachment) => {
        upload.state = 'done';
        upload.attachment = attachment;
        upload.loaded = upload.total;
        renderTray();
      },
      (err) => {
        if (err.code === 'aborted') {
          forgetUpload(upload);
        } else {
          upload.state = 'failed';
          upload.error = uploadError(err);
          $('send-error').textContent = `${upload.name} was not attached: ${upload.error}`;
        }
        renderTray();
      },
    );
  uploads.push(upload);
}

function uploadError(err) {
  if (err.code === 'too_large') return readableSizes(err.message || 'the file is too large');
  if (err.code === 'disconnected') return 'the chat server could not be reached';
  return err.message || err.code;
}

function forgetUpload(upload) {
  uploads = uploads.filter((u) => u !== upload);
}

function cancelUpload(upload) {
  if (upload.state === 'uploading') upload.controller.abort();
  forgetUpload(upload);
  if (upload.state === 'failed' && !uploads.some((u) => u.state === 'failed')) $('send-error').textContent = '';
  renderTray();
  $('input').focus();
}

function showProgress(upload) {
  const bar = upload.el && upload.el.querySelector('progress');
  if (!bar) return;
  bar.max = upload.total || 1;
  bar.value = Math.min(upload.loaded, bar.max);
}

function renderTray() {
  // The tray takes room from the list: the newest message stays in view.
  const list = $('messages');
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 60;
  const tray = $('tray');
  tray.hidden = uploads.length === 0;
  const waiting = uploads.some((u) => u.sending && u.state === 'uploading');
  $('upload-status').textContent = waiting ? 'Sending when the files are uploaded…' : '';
  tray.replaceChildren(
    ...uploads.map((upload) => {
      const shown = upload.el && upload.el.dataset;
      const changed = !shown || shown.state !== upload.state || shown.sending !== String(upload.sending);
      if (changed) upload.el = trayItem(upload);
      return upload.el;
    }),
  );
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function trayItem(upload) {
  const { name, state } = upload;
  const li = h('li', { 'data-state': state, 'data-sending': String(upload.sending), 'data-upload': upload.key });
  li.append(
    h('bdi', { class: 'file-name', title: name, text: name }),
    h('span', { class: 'file-size', text: humanSize(upload.file.size) }),
  );
  if (state !== 'failed') {
    const bar = h('progress', { max: upload.total || 1, value: 0, 'aria-label': `Upload of ${name}` });
    bar.value = state === 'done' ? bar.max : Math.min(upload.loaded, bar.max);
    li.append(bar);
  } else {
    li.append(h('span', { class: 'upload-error', text: upload.error }));
  }
  let label = `Remove ${name}`;
  if (state === 'uploading') label = `Cancel the upload of ${name}`;
  const onclick = () => cancelUpload(upload);
  li.append(h('button', { type: 'button', class: 'quiet', 'aria-label': label, title: label, text: '×', onclick }));
  return li;
}

$('attach').addEventListener('click', () => $('file-input').click());
$('file-input').addEventListener('change', () => {
  addFiles([...$('file-input').files]);
  $('file-input').value = '';
  $('input').focus();
});

const carriesFiles = (event) => !!event.dataTransfer && [...event.dataTransfer.types].includes('Files');
let dragDepth = 0;

// Files dropped anywhere on the open conversation are attached; elsewhere
// on the page a dropped file must not make the browser navigate to it.
$('conversation').addEventListener('dragenter', (event) => {
  if (!current || !carriesFiles(event)) return;
  event.preventDefault();
  dragDepth += 1;
  $('conversation').classList.add('dropping');
});
$('conversation').addEventListener('dragover', (event) => {
  if (!current || !carriesFiles(event)) return;
  event.preventDefault();
  event.dataTransfer.dropEffect = 'copy';
});
$('conversation').addEventListener('dragleave', () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (dragDepth === 0) $('conversation').classList.remove('dropping');
});
$('conversation').addEventListener('drop', (event) => {
  dragDepth = 0;
  $('conversation').classList.remove('dropping');
  if (!current || !event.dataTransfer || event.dataTransfer.files.length === 0) return;
  event.preventDefault();
  addFiles([...event.dataTransfer.files]);
  $('input').focus();
});
for (const type of ['dragover', 'drop']) {
  window.addEventListener(type, (event) => {
    if (carriesFiles(event)) event.preventDefault();
  });
}

// Pasted files (a screenshot from the clipboard) are attached; pasted text
// is pasted as usual.
$('input').addEventListener('paste', (event) => {
  const data = event.clipboardData;
  const files = data ? [...data.files] : [];
  if (!files.length || !current) return;
  if (![...data.types].includes('text/plain')) event.preventDefault();
  addFiles(files.map(pastedName));
});

$('composer').addEventListener('submit', (event) => {
  event.preventDefault();
  sendCurrent();
});

$('input').addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    sendCurrent();
  }
});

$('input').addEventListener('input', () => {
  if (current && $('input').value) client.typing(current);
});

$('input').addEventListener('blur', () => {
  if (current) client.stopTyping(current);
});

// ---- presence --------------------------------------------------------------------

$('status').addEventListener('change', async () => {
  try {
    await client.setStatus($('status').value);
  } catch (err) {
    $('conn').textContent = `Status not changed: ${err.message}`;
  }
});

async function refreshOnline() {
  try {
    const users = await client.onlineUsers();
    online.clear();
    for (const entry of users) online.set(entry.user.id, entry);
    renderOnline();
    renderRooms();
  } catch {
    // Tried again on the next presence change.
  }
}

setInterval(() => {
  if (client && client.state === 'open') refreshOnline();
}, 30000);

function renderOnline() {
  const list = [...online.values()].sort((a, b) => a.user.name.localeCompare(b.user.name));
  $('online').replaceChildren(
    ...list.map(({ user, status }) =>
      h(
        'li',
        { 'data-user': user.id },
        h('span', { class: 'dot', 'data-status': status, 'aria-hidden': 'true' }),
        h('span', {}, isolated(user.name), user.id === client.user.id ? ' (you)' : null),
        h('span', { class: 'muted', text: status }),
        user.roles.includes('support') ? h('span', { class: 'kind support', text: 'support' }) : null,
      ),
    ),
  );
}

// ---- new conversations -----------------------------------------------------------

let searchTimer = null;
const selected = new Map();

$('search').addEventListener('input', () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(runSearch, 250);
});

$('search-form').addEventListener('submit', (event) => {
  event.preventDefault();
  clearTimeout(searchTimer);
  runSearch();
});

async function runSearch() {
  const q = $('search').value.trim();
  if (!q) {
    renderResults([]);
    return;
  }
  try {
    const users = await client.searchUsers(q, { limit: 20 });
    renderResults(users.filter((u) => u.id !== client.user.id));
  } catch (err) {
    $('create-error').textContent = `Search failed: ${err.message}`;
  }
}

function renderResults(users) {
  const shown = new Map(users.map((u) => [u.id, u]));
  for (const [id, user] of selected) if (!shown.has(id)) shown.set(id, user);
  $('results-box').hidden = shown.size === 0;
  $('create-form').hidden = shown.size === 0;
  $('results').replaceChildren(
    ...[...shown.values()].map((user) => {
      const box = h('input', { type: 'checkbox', value: user.id });
      box.checked = selected.has(user.id);
      box.addEventListener('change', () => {
        if (box.checked) selected.set(user.id, user);
        else selected.delete(user.id);
      });
      return h(
        'li',
        {},
        h('label', {}, box, isolated(user.name), h('bdi', { class: 'muted', text: user.id })),
      );
    }),
  );
}

$('start-direct').addEventListener('click', async () => {
  $('create-error').textContent = '';
  if (selected.size !== 1) {
    $('create-error').textContent = 'Pick exactly one person for a direct conversation.';
    return;
  }
  try {
    const [userId] = selected.keys();
    const room = await client.directRoom(userId);
    resetNewConversation();
    activity.set(room.id, Date.now());
    await openRoom(room.id);
  } catch (err) {
    $('create-error').textContent = `Could not start it: ${err.message}`;
  }
});

$('create-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  $('create-error').textContent = '';
  const name = $('group-name').value.trim();
  if (selected.size === 0 || !name) {
    $('create-error').textContent = 'A group needs a name and at least one other person.';
    return;
  }
  try {
    const room = await client.createRoom({ kind: 'group', name, visibility: 'private', members: [...selected.keys()] });
    resetNewConversation();
    activity.set(room.id, Date.now());
    await openRoom(room.id);
  } catch (err) {
    $('create-error').textContent = `Could not create it: ${err.message}`;
  }
});

function resetNewConversation() {
  selected.clear();
  $('search').value = '';
  $('group-name').value = '';
  renderResults([]);
}

// ---- message search ---------------------------------------------------------------

// Folds text as the server does for search: compatibility forms decomposed,
// accents dropped, lower case.
const fold = (text) => text.normalize('NFKD').replace(/\p{M}/gu, '').toLowerCase();
let messageSearch = { q: '', next: null, seen: 0 };

$('msg-search-form').addEventListener('submit', (event) => {
  event.preventDefault();
  searchMessages(false);
});
$('msg-more').addEventListener('click', () => searchMessages(true));

async function searchMessages(more) {
  const q = more ? messageSearch.q : $('msg-search').value.trim();
  $('msg-search-error').textContent = '';
  if (!q) {
    $('msg-results').replaceChildren();
    $('msg-more').hidden = true;
    $('msg-none').hidden = true;
    return;
  }
  try {
    const page = await client.searchMessages(q, { limit: 20, before: more ? messageSearch.next : undefined });
    if (!more) {
      messageSearch = { q, next: null, seen: 0 };
      $('msg-results').replaceChildren();
    }
    messageSearch.next = page.next ?? null;
    messageSearch.seen += page.results.length;
    const words = new Set((fold(q).match(/[\p{L}\p{N}]+/gu) || []));
    $('msg-results').append(...page.results.map((hit) => searchResult(hit, words)));
    $('msg-more').hidden = !page.next;
    $('msg-none').hidden = messageSearch.seen > 0;
  } catch (err) {
    $('msg-search-error').textContent = `Search failed: ${err.message}`;
  }
}

// One result: where and when, then the text with the words found marked.
function searchResult({ message, room }, words) {
  const summary = client.rooms.get(room.id) || room;
  const excerpt = h('span', { class: 'excerpt', dir: 'auto' });
  if (!message.body && message.attachments && message.attachments.length) {
    excerpt.textContent = message.attachments.map((file) => `📎 ${file.name}`).join(', ');
  }
  for (const part of message.body.split(/([\p{L}\p{N}]+)/u)) {
    if (!part) continue;
    excerpt.append(words.has(fold(part)) ? h('mark', { text: part }) : document.createTextNode(part));
  }
  const who = message.sender_id === client.user.id ? 'You' : userName(message.sender_id, room.id);
  return h(
    'li',
    {},
    h(
      'button',
      { type: 'button', 'data-message': message.id, onclick: () => jumpTo(room.id, message.seq) },
      h('span', { class: 'where' }, ...roomTitleNodes(summary), ' · ', isolated(who), ` · ${formatTime(message.created_at)}`),
      excerpt,
    ),
  );
}

// Most history loaded backwards to reach a message found by search.
const JUMP_PAGES = 20;

// Opens the message's room, loads history back to the message, and shows it.
async function jumpTo(roomId, seq) {
  await openRoom(roomId);
  if (current !== roomId) return;
  const state = roomState(roomId);
  try {
    for (let i = 0; i < JUMP_PAGES && !state.messages.has(seq) && state.hasMore; i++) {
      const first = Math.min(...state.messages.keys());
      const page = await client.history(roomId, { beforeSeq: first, limit: 100 });
      for (const m of page.messages) state.messages.set(m.seq, m);
      state.hasMore = page.has_more;
    }
  } catch (err) {
    $('send-error').textContent = `Could not load the message: ${err.message}`;
    return;
  }
  if (current !== roomId) return;
  renderMessages();
  const item = $('messages').querySelector(`[data-seq="${seq}"]`);
  if (!item) {
    $('send-error').textContent = 'That message is further back than the page loads at once; load older messages to reach it.';
    return;
  }
  for (const old of $('messages').querySelectorAll('.msg.found')) old.classList.remove('found');
  item.classList.add('found');
  item.tabIndex = -1;
  item.scrollIntoView({ block: 'center' });
  item.focus({ preventScroll: true });
}

// ---- push notifications ------------------------------------------------------------
//
// *Turn on notifications* (never asked on load) asks for the permission from
// the click, registers the service worker /push-sw.js, subscribes with the
// server's VAPID key and posts the subscription; a second click deletes it
// and unsubscribes. A subscription belongs to the user who turned it on
// (PUSH_OWNER_KEY): at sign-in, with the permission still granted, it is
// posted again (the server may have lost or replaced it), one of another user
// is dropped, and signing out deletes it. The service worker shows pushes as
// notifications; a click on one opens its room here, through `open-room`
// messages to an open page or the `#room=<id>` deep link of a new one.

const PUSH_OWNER_KEY = 'chat-page:push-user';
const PUSH_WORKER = '/push-sw.js';
// off | on | busy | blocked | unsupported | unavailable (the server offers no push)
let pushState = 'unavailable';
let pushKey = null;
const PUSH_NOTES = {
  blocked: 'Notifications are blocked for this site in the browser\'s settings',
  unsupported: 'Notifications are not supported in this browser',
};

// Push needs a secure context and the APIs; an embedded page leaves
// notifications to the product around it.
function pushSupported() {
  return (
    window.isSecureContext &&
    !framed &&
    'serviceWorker' in navigator &&
    'PushManager' in window &&
    'Notification' in window
  );
}

function renderPush(state, note = '') {
  pushState = state;
  const button = $('push-toggle');
  button.hidden = !['off', 'on', 'busy'].includes(state);
  button.setAttribute('aria-disabled', String(state === 'busy'));
  button.dataset.state = state;
  if (state === 'on' || state === 'off') {
    $('push-label').textContent = state === 'on' ? 'Turn off notifications' : 'Turn on notifications';
    button.title = state === 'on' ? 'Notifications are on: turn them off' : 'Notifications are off: turn them on';
  }
  $('push-status').textContent = note || PUSH_NOTES[state] || '';
}

const base64Url = (buffer) =>
  btoa(String.fromCharCode(...new Uint8Array(buffer)))
    .replace(/\+/g, '-')
    .replace(/\//g, '_')
    .replace(/=+$/, '');

function fromBase64Url(text) {
  const plain = text.replace(/-/g, '+').replace(/_/g, '/');
  const binary = atob(plain.padEnd(Math.ceil(plain.length / 4) * 4, '='));
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

async function currentSubscription() {
  const registration = await navigator.serviceWorker.getRegistration('/');
  return registration ? registration.pushManager.getSubscription() : null;
}

// Whether a subscription was made with the server's current key: one made
// with an older key cannot carry the server's pushes.
function madeWithKey(subscription, key) {
  const own = subscription.options && subscription.options.applicationServerKey;
  return !own || base64Url(own) === key.replace(/=+$/, '');
}

async function subscribeHere() {
  await navigator.serviceWorker.register(PUSH_WORKER, { scope: '/', updateViaCache: 'none' });
  const registration = await navigator.serviceWorker.ready;
  const subscription = await registration.pushManager.subscribe({
    userVisibleOnly: true,
    applicationServerKey: fromBase64Url(pushKey),
  });
  localStorage.setItem(PUSH_OWNER_KEY, client.user.id);
  await client.subscribePush(subscription);
}

// At sign-in: what the server offers, what the browser allows, and the
// subscription this browser already has.
async function setupPush(user) {
  if (!pushSupported()) {
    renderPush(framed ? 'unavailable' : 'unsupported');
    return;
  }
  try {
    pushKey = await vapidKey(client.server);
  } catch {
    pushKey = null;
  }
  if (!pushKey) {
    renderPush('unavailable');
    return;
  }
  if (Notification.permission === 'denied') {
    renderPush('blocked');
    return;
  }
  let subscription = null;
  try {
    subscription = await currentSubscription();
    if (subscription && localStorage.getItem(PUSH_OWNER_KEY) !== user.id) {
      // Someone else's: this user never asked for notifications here.
      await subscription.unsubscribe();
      subscription = null;
    }
  } catch {
    subscription = null;
  }
  if (!subscription || Notification.permission !== 'granted') {
    renderPush('off');
    return;
  }
  renderPush('busy');
  try {
    if (madeWithKey(subscription, pushKey)) await client.subscribePush(subscription);
    else {
      await subscription.unsubscribe();
      await subscribeHere();
    }
    renderPush('on');
  } catch (err) {
    if (err.code === 'not_found') renderPush('unavailable');
    else renderPush('off', `Notifications could not be renewed: ${err.message}`);
  }
}

async function turnPushOn() {
  // Asked within the click: browsers refuse or hide a prompt that does not follow one.
  const asked = Notification.requestPermission();
  renderPush('busy', 'Turning on notifications…');
  let permission;
  try {
    permission = await asked;
  } catch {
    permission = Notification.permission;
  }
  if (permission === 'denied') {
    renderPush('blocked');
    return;
  }
  if (permission !== 'granted') {
    renderPush('off', 'Notifications need your permission');
    return;
  }
  try {
    await subscribeHere();
    renderPush('on');
  } catch (err) {
    if (err.code === 'not_found') renderPush('unavailable');
    else renderPush('off', `Notifications could not be turned on: ${err.message}`);
  }
}

// Deletes this browser's subscription on the server and unsubscribes it;
// resolves with what went wrong, or ''.
async function dropPushSubscription() {
  let subscription = null;
  try {
    subscription = await currentSubscription();
  } catch {
    subscription = null;
  }
  localStorage.removeItem(PUSH_OWNER_KEY);
  if (!subscription) return '';
  let note = '';
  try {
    await client.unsubscribePush(subscription.endpoint);
  } catch (err) {
    note = `The server could not be told: ${err.message}`;
  }
  // Unsubscribed even when the server was not told: the push service then
  // refuses the endpoint, and the server forgets it at its next push.
  await subscription.unsubscribe().catch(() => {});
  return note;
}

$('push-toggle').addEventListener('click', async () => {
  if (pushState === 'off') await turnPushOn();
  else if (pushState === 'on') {
    renderPush('busy', 'Turning off notifications…');
    renderPush('off', await dropPushSubscription());
  }
});

// The room a notification's click (or a link) asks for, opened once the
// page is signed in and the room is known.
let wantedRoom = null;

function roomFromFragment() {
  const match = /(?:^|&)room=([^&]+)/.exec(location.hash.slice(1));
  if (!match) return null;
  try {
    return decodeURIComponent(match[1]);
  } catch {
    return null;
  }
}

function openWantedRoom() {
  if (!wantedRoom || !client || !client.user || !client.rooms.has(wantedRoom)) return;
  const id = wantedRoom;
  wantedRoom = null;
  if (roomFromFragment()) history.replaceState(null, '', location.pathname + location.search);
  openRoom(id);
}

function askForRoom(id) {
  wantedRoom = id;
  openWantedRoom();
}

window.addEventListener('hashchange', () => {
  const id = roomFromFragment();
  if (id) askForRoom(id);
});

if ('serviceWorker' in navigator) {
  navigator.serviceWorker.addEventListener('message', (event) => {
    const data = event.data;
    if (data && data.type === 'open-room' && typeof data.room_id === 'string') askForRoom(data.room_id);
  });
  navigator.serviceWorker.startMessages();
}

// ---- start -----------------------------------------------------------------------

// ---- embedded in a product's page ---------------------------------------------------
//
// A product may show this page to its signed-in users in an <iframe> (its
// origin must be in CHAT_ALLOWED_ORIGINS, which the page's frame-ancestors
// follows). It gives the user's token in the URL's fragment
// (`/#token=<jwt>`, never sent to any server), or answers the page's
// `{type: 'chat:token-needed', reason}` message with
// `postMessage({type: 'chat:token', token}, chatOrigin)`; the page asks
// again whenever the server refuses the token it has (expired, revoked).

const framed = window.parent !== window;

function tokenFromFragment() {
  const match = /(?:^|&)token=([^&]+)/.exec(location.hash.slice(1));
  if (!match) return null;
  history.replaceState(null, '', location.pathname + location.search);
  try {
    return decodeURIComponent(match[1]);
  } catch {
    return null;
  }
}

function tokenFromParent(reason) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      window.removeEventListener('message', onMessage);
      reject(new Error('the embedding page gave no token'));
    }, 10000);
    function onMessage(event) {
      const data = event.data;
      if (event.source !== window.parent || !data || data.type !== 'chat:token' || typeof data.token !== 'string') return;
      clearTimeout(timer);
      window.removeEventListener('message', onMessage);
      resolve(data.token);
    }
    window.addEventListener('message', onMessage);
    window.parent.postMessage({ type: 'chat:token-needed', reason }, '*');
  });
}

wantedRoom = roomFromFragment();
const given = tokenFromFragment();
const saved = localStorage.getItem(TOKEN_KEY);
if (framed && (given || !saved)) {
  let token = given;
  start({
    getToken: async ({ reason }) => {
      if (!token || reason === 'rejected') token = await tokenFromParent(reason);
      return token;
    },
  });
} else if (given) start({ token: given });
else if (saved) start({ token: saved });
else showSignIn();
