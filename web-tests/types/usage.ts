// Compiled with `tsc --strict --noEmit` by tests/types.test.mjs: a small UI
// written against chat-client.d.ts the way the docs show it, so that a
// declaration that drifts from the documented use fails the build.

import {
  CallConnection,
  ChatClient,
  ChatError,
  createVisitorSession,
  supportAvailability,
  vapidKey,
  type Message,
  type PushPayload,
  type Ready,
} from '../../chat-transport-ws/web/chat-client.js';

export async function demo(server: string): Promise<string[]> {
  const { token } = await createVisitorSession(server, { name: 'Ada' });
  const client = new ChatClient({ server, getToken: async () => token, heartbeatMs: 0 });
  const seen: Message[] = [];
  const stop = client.on('message', ({ message, mine }) => {
    if (!mine) seen.push(message);
  });
  client.on('typing', ({ room_id, users }) => console.log(room_id, users.join(', ')));
  client.on('state', ({ state }) => console.log(state === 'reconnecting' ? 'offline' : state));
  const ready: Ready = await client.connect();
  const room = ready.rooms.find((r) => r.kind === 'support') ?? (await client.createRoom({ kind: 'support' }));
  const joined = await client.join(room.id);
  const page = await client.history(room.id, { beforeSeq: joined.last_seq + 1, limit: 20 });
  try {
    const sent = await client.send(room.id, 'hello');
    await client.markRead(room.id, sent.seq);
    const tick: 'sent' | 'delivered' | 'read' = client.statusOf(room.id, sent.seq);
    console.log(tick, client.receipts(room.id).get(client.user?.id ?? '')?.read_seq);
  } catch (err) {
    if (err instanceof ChatError && err.code === 'too_large') console.log('shorter, please');
  }
  const controller = new AbortController();
  const file = new Blob(['log line'], { type: 'text/plain' });
  try {
    const attachment = await client.upload(file, {
      name: 'app.log',
      signal: controller.signal,
      onProgress: ({ loaded, total }) => console.log(`${Math.round((100 * loaded) / total)}%`),
    });
    const withFile = await client.send(room.id, '', { attachments: [attachment] });
    const preview: string | undefined = withFile.attachments[0]?.thumbnail_url;
    console.log(preview ?? attachment.url, attachment.width ?? 0);
  } catch (err) {
    if (err instanceof ChatError && (err.code === 'too_large' || err.code === 'aborted')) console.log(err.message);
  }
  const { available } = await supportAvailability(server);
  await client.setStatus(available ? 'online' : 'away');
  stop();
  client.close();
  return page.messages.map((m) => m.body).concat(seen.map((m) => m.body));
}

// A call: ring, answer on this session, connect the media, show the line.
export function answerCalls(client: ChatClient, stream: MediaStream, show: (s: MediaStream) => void): () => void {
  let connection: CallConnection | null = null;
  const stopRing = client.on('call:incoming', async ({ call_id, from, media }) => {
    console.log(`${from.name} calls (${media})`);
    connection = new CallConnection(client, { callId: call_id, peer: from.id, stream, onTrack: show,
      iceServers: await client.iceServers() });
    await client.acceptCall(call_id);
  });
  const stopEnd = client.on('call:ended', ({ reason, duration_s }) => {
    console.log(reason === 'answered_elsewhere' ? 'elsewhere' : `${reason} after ${duration_s ?? 0} s`);
    connection?.close();
  });
  client.on('message', ({ message }) => {
    if (message.call) console.log(message.call.outcome, message.call.duration_s);
  });
  return () => {
    stopRing();
    stopEnd();
  };
}

export async function callSomeone(client: ChatClient, roomId: string, to: string): Promise<string> {
  const placed = await client.inviteCall(roomId, 'video', { to });
  client.on('call:accepted', async ({ call_id }) => {
    if (call_id !== placed.call_id || placed.glare) return;
    await new CallConnection(client, { callId: call_id, peer: to, iceServers: placed.ice_servers }).offer();
  });
  return placed.call_id;
}

// Web Push: subscribe this browser for the signed-in user, or say why not.
export async function turnOnPush(client: ChatClient, registration: ServiceWorkerRegistration): Promise<string> {
  const key = await vapidKey(client.server);
  if (key === null) return 'this server offers no push';
  const subscription = await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
  await client.subscribePush(subscription);
  await client.subscribePush({ endpoint: subscription.endpoint, keys: { p256dh: 'BP…', auth: 'aa…' } });
  return subscription.endpoint;
}

export function pushTitle(payload: PushPayload): string {
  if (payload.type === 'call') return `${payload.from.name} calls (${payload.media})`;
  const more = payload.count ? ` (+${payload.count - 1} more)` : '';
  return `${payload.room_name ?? payload.sender.name}: ${payload.preview}${more}`;
}

export async function turnOffPush(client: ChatClient, subscription: PushSubscription): Promise<void> {
  await client.unsubscribePush(subscription.endpoint);
  await subscription.unsubscribe();
}
