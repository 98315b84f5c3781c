// Compiled with `tsc --strict --noEmit` by tests/types.test.mjs: a small UI
// written against chat-client.d.ts the way the docs show it, so that a
// declaration that drifts from the documented use fails the build.

import {
  ChatClient,
  ChatError,
  createVisitorSession,
  supportAvailability,
  type Message,
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
