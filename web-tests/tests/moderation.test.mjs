// Room settings and moderation on the chat page (protocol section 4): the
// owner renames a room and sets its topic, makes a member an admin, the
// admin bans a troll (whose page loses the room at once), the owner lifts
// the ban, and a member mutes the room for themselves.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ChatServer, eventually, launchBrowser, newPage, screenshot, signIn } from '../lib/harness.mjs';

describe('room settings and moderation', () => {
  let server;
  let browser;

  before(async () => {
    server = await ChatServer.start();
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await server?.close();
  });

  // Runs one chat-client call as the page's signed-in user, beside the
  // page's own client (no eval: the page's CSP forbids it).
  const asUser = (page, action, arg) =>
    page.evaluate(
      async ([what, value]) => {
        const { ChatClient } = await import('/chat-client.js');
        const client = new ChatClient({ token: localStorage.getItem('chat-page:token') });
        await client.connect();
        try {
          if (what === 'create') return (await client.createRoom(value)).id;
          if (what === 'join') return await client.join(value).then(() => 'joined', (err) => err.code);
          throw new Error(`unknown action ${what}`);
        } finally {
          client.close();
        }
      },
      [action, arg],
    );

  test('the owner and an admin moderate; a member mutes', async () => {
    const pages = {};
    for (const [id, name] of [
      ['pat', 'Pat'],
      ['troll', 'Troll'],
      ['olga', 'Olga'],
    ]) {
      pages[id] = await newPage(browser);
      await signIn(pages[id], server, await server.token(id, { name }));
    }
    const { olga, pat, troll } = pages;
    const roomId = await asUser(olga, 'create', {
      kind: 'group',
      name: 'Book club',
      visibility: 'public',
      members: ['pat', 'troll'],
    });
    for (const page of [olga, pat, troll]) {
      await page.locator(`#rooms button[data-room="${roomId}"]`).click();
      await page.locator('#room-members', { hasText: '3 members' }).waitFor();
    }

    // A plain member sees the members and the mute, not the settings form.
    await pat.locator('#room-settings-toggle').click();
    await pat.locator('#room-member-list li[data-user="olga"] .role', { hasText: 'owner' }).waitFor();
    assert.equal(await pat.locator('#room-settings-form').isHidden(), true);
    assert.equal(await pat.locator('#room-member-list button').count(), 0, 'no moderation buttons for a member');

    // The owner renames the room and sets a topic; everyone's page follows.
    await olga.locator('#room-settings-toggle').click();
    await olga.locator('#room-name-input').fill('Book club <fiction>');
    await olga.locator('#room-topic-input').fill('This month: Middlemarch');
    await olga.locator('#room-settings-form button[type="submit"]').click();
    for (const page of [olga, pat, troll]) {
      await page.locator('#room-title', { hasText: 'Book club <fiction>' }).waitFor();
      await page.locator('#room-topic', { hasText: 'This month: Middlemarch' }).waitFor();
      await page.locator('#rooms button', { hasText: 'Book club <fiction>' }).waitFor();
    }

    // The owner makes Pat an admin: Pat's page offers the settings and the
    // buttons to remove or ban the troll, but none against the owner.
    await olga.locator('#room-member-list li[data-user="pat"]').getByRole('button', { name: 'Make Pat an admin' }).click();
    await olga.locator('#room-member-list li[data-user="pat"] .role', { hasText: 'admin' }).waitFor();
    await pat.locator('#room-member-list li[data-user="pat"] .role', { hasText: 'admin' }).waitFor();
    await pat.locator('#room-settings-form').waitFor();
    assert.equal(await pat.locator('#room-member-list li[data-user="olga"] button').count(), 0);

    // Pat bans the troll: the troll's page loses the room at once, the
    // others see them go, and the owner sees the ban.
    await pat.getByRole('button', { name: 'Ban Troll' }).click();
    await troll.locator(`#rooms button[data-room="${roomId}"]`).waitFor({ state: 'detached' });
    assert.equal(await troll.locator('#room-title').textContent(), 'Pick a conversation');
    await olga.locator('#room-members', { hasText: '2 members' }).waitFor();
    await pat.locator('#room-bans li[data-user="troll"]').waitFor();
    const refused = await asUser(troll, 'join', roomId);
    assert.equal(refused, 'forbidden', 'a banned user cannot join the public room');
    await olga.locator('#room-settings-toggle').click();
    await olga.locator('#room-settings-toggle').click();
    await olga.getByRole('button', { name: 'Unban Troll' }).click();
    await olga.locator('#room-bans-empty').waitFor();
    const back = await asUser(troll, 'join', roomId);
    assert.equal(back, 'joined', 'unbanned, the troll may join again');
    await olga.locator('#room-members', { hasText: '3 members' }).waitFor();

    // Pat mutes the room for an hour: only Pat's list shows it muted.
    await pat.locator('#room-mute').selectOption('1h');
    await pat.locator(`#rooms button[data-room="${roomId}"] .muted-icon`).waitFor();
    await eventually(async () => /Muted until/.test(await pat.locator('#room-mute option:checked').textContent()), {
      message: 'the picker shows when the mute ends',
    });
    assert.equal(await olga.locator(`#rooms button[data-room="${roomId}"] .muted-icon`).count(), 0);
    await screenshot(pat, 'chat-page-moderation');
    await pat.locator('#room-mute').selectOption('');
    await pat.locator(`#rooms button[data-room="${roomId}"] .muted-icon`).waitFor({ state: 'detached' });

    // A mistake is shown, not swallowed: a name too long for the server.
    await olga.locator('#room-name-input').evaluate((input) => input.removeAttribute('maxlength'));
    await olga.locator('#room-name-input').fill('x'.repeat(101));
    await olga.locator('#room-settings-form button[type="submit"]').click();
    await olga.locator('#room-panel-error', { hasText: 'Not done' }).waitFor();
    for (const page of [olga, pat, troll]) await page.context().close();
  });
});
