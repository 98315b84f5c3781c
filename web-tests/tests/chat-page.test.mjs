// The chat page (`/`) in two browser contexts: live chat with typing and
// read ticks, edits and deletes, groups, presence, history scroll-back,
// escaping and bidi isolation of user text, and a phone-sized viewport.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ChatServer,
  eventually,
  isIsolated,
  launchBrowser,
  newPage,
  pageBodies,
  screenshot,
  shownText,
  signIn,
  spoofingName,
} from '../lib/harness.mjs';

describe('chat page', () => {
  let server;
  let browser;
  let ada;
  let bob;
  let carol;

  before(async () => {
    server = await ChatServer.start();
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await server?.close();
  });

  test('two users chat live, with typing and read ticks', async () => {
    bob = await newPage(browser);
    await signIn(bob, server, await server.token('bob', { name: 'Bob' }));
    ada = await newPage(browser);
    await signIn(ada, server, await server.token('ada', { name: 'Ada' }));

    // Ada finds Bob and opens a direct conversation.
    await ada.locator('#search').fill('bo');
    await ada.locator('#results label', { hasText: 'Bob' }).locator('input').check();
    await ada.locator('#start-direct').click();
    await ada.locator('#room-title', { hasText: 'Bob' }).waitFor();

    // Bob is told of the new room and opens it.
    const bobsRoom = bob.locator('#rooms button', { hasText: 'Ada' });
    await bobsRoom.waitFor();
    await bobsRoom.click();
    await bob.locator('#room-title', { hasText: 'Ada' }).waitFor();

    // Ada types: Bob sees it; Ada sends with Enter: the indicator ends.
    await ada.locator('#input').pressSequentially('Hello Bob', { delay: 20 });
    await bob.locator('#typing', { hasText: 'Ada is typing…' }).waitFor();
    await ada.locator('#input').press('Enter');
    await bob.locator('#messages .msg .text', { hasText: 'Hello Bob' }).waitFor();
    await eventually(async () => (await bob.locator('#typing').textContent()) === '', { message: 'typing to end' });

    // Bob has the room open, so the message is read at once: Ada sees the read tick.
    const adasMessage = ada.locator('#messages .msg.mine', { hasText: 'Hello Bob' });
    await adasMessage.locator('.tick[data-status="read"]').waitFor();
    assert.equal(await adasMessage.locator('.tick').getAttribute('aria-label'), 'Read');

    // Shift+Enter breaks the line; Enter sends both lines as one message.
    await bob.locator('#input').focus();
    await bob.keyboard.type('Hi Ada');
    await bob.keyboard.press('Shift+Enter');
    await bob.keyboard.type('second line');
    await bob.keyboard.press('Enter');
    const reply = ada.locator('#messages .msg', { hasText: 'second line' }).locator('.text');
    await reply.waitFor();
    assert.equal(await reply.textContent(), 'Hi Ada\nsecond line');
    await bob.locator('#messages .msg.mine .tick[data-status="read"]').waitFor();

    assert.deepEqual(await pageBodies(ada), ['Hello Bob', 'Hi Ada\nsecond line']);
    assert.deepEqual(await pageBodies(bob), ['Hello Bob', 'Hi Ada\nsecond line']);
    await screenshot(ada, 'chat-page', { doc: true });
    assert.deepEqual(ada.errors, []);
    assert.deepEqual(bob.errors, []);
  });

  test('edits and deletes reach the other side', async () => {
    await ada.locator('#input').fill('A typo hre');
    await ada.locator('#input').press('Enter');
    await bob.locator('#messages .msg .text', { hasText: 'A typo hre' }).waitFor();

    const mine = ada.locator('#messages .msg.mine', { hasText: 'A typo hre' });
    await mine.getByRole('button', { name: 'Edit this message' }).click();
    const box = ada.locator('#messages textarea[aria-label="Edit message"]');
    await box.fill('A typo here, fixed');
    await box.press('Enter');
    const edited = bob.locator('#messages .msg', { hasText: 'A typo here, fixed' });
    await edited.locator('.edited').waitFor();

    const fixed = ada.locator('#messages .msg.mine', { hasText: 'A typo here, fixed' });
    await fixed.getByRole('button', { name: 'Delete this message' }).click();
    await fixed.getByRole('button', { name: 'Confirm: delete this message' }).click();
    await bob.locator('#messages .msg.deleted .text', { hasText: 'Message deleted' }).waitFor();
    assert.equal(await bob.locator('#messages .msg', { hasText: 'A typo here' }).count(), 0);
  });

  test('user text is shown as text, never as markup', async () => {
    const payload = '<img src=x onerror="window.__pwned=1"><b>bold?</b>';
    await ada.locator('#input').fill(payload);
    await ada.locator('#input').press('Enter');
    const shown = bob.locator('#messages .msg .text', { hasText: 'bold?' });
    await shown.waitFor();
    assert.equal(await shown.textContent(), payload);
    assert.equal(await bob.locator('#messages img, #messages b').count(), 0);
    assert.equal(await bob.evaluate(() => window.__pwned), undefined);
  });

  test('names and bodies are bidi-isolated, so an override cannot reorder what is around it', async () => {
    const { name, token } = await spoofingName(server, 'eve');
    const finn = await newPage(browser);
    await signIn(finn, server, await server.token('finn', { name: 'Finn' }));
    const eve = await newPage(browser);
    await signIn(eve, server, token);
    await eve.locator('#search').fill('fin');
    await eve.locator('#results label', { hasText: 'Finn' }).locator('input').check();
    await eve.locator('#start-direct').click();
    await eve.locator('#room-title', { hasText: 'Finn' }).waitFor();
    const room = finn.locator('#rooms button', { hasText: 'gnp.exe' }).or(finn.locator('#rooms button', { hasText: 'Eve' }));
    await room.first().waitFor();
    await room.first().click();
    await finn.locator('#room-members', { hasText: '2 members' }).waitFor();

    await eve.locator('#input').pressSequentially('Hi', { delay: 20 });
    await finn.locator('#typing', { hasText: 'is typing' }).waitFor();
    const body = 'Invoice \u202Eexe.fdp\u202C attached, 3 pages';
    await eve.locator('#input').fill(body);
    await eve.locator('#input').press('Enter');
    const text = finn.locator('#messages .msg .text', { hasText: 'Invoice' });
    await text.waitFor();
    assert.equal(await text.textContent(), body);

    const bodyShown = await shownText(finn.locator('#messages'), body);
    assert.equal(bodyShown.length, 1);
    assert.ok(isIsolated(bodyShown[0]) && bodyShown[0].dir === 'auto', `the body: ${JSON.stringify(bodyShown)}`);
    const places = [
      [finn, '#rooms', 'the rooms list'],
      [finn, '#room-title', 'the room title'],
      [finn, '#room-members', 'the member list'],
      [finn, '#messages', 'the sender of a message'],
      [eve, '#me', 'the top bar'],
    ];
    for (const [page, selector, where] of places) {
      const shown = await shownText(page.locator(selector), name);
      assert.ok(shown.length > 0 && shown.every(isIsolated), `the name in ${where}: ${JSON.stringify(shown)}`);
    }
    // The typing line, while it shows.
    await eve.locator('#input').pressSequentially('more', { delay: 20 });
    await finn.locator('#typing', { hasText: 'is typing' }).waitFor();
    const typing = await shownText(finn.locator('#typing'), name);
    assert.ok(typing.length === 1 && isIsolated(typing[0]), `the name in the typing line: ${JSON.stringify(typing)}`);
    await screenshot(finn, 'chat-page-bidi');
    assert.deepEqual(finn.errors, []);
    assert.deepEqual(eve.errors, []);
    await finn.context().close();
    await eve.context().close();
  });

  test('unread counts, presence with the status picker, and a group of several members', async () => {
    carol = await newPage(browser);
    await signIn(carol, server, await server.token('carol', { name: 'Carol' }));

    // Bob sets busy: Ada (who shares a room with him) sees it; invisible hides him.
    await ada.locator('#online li[data-user="bob"]').waitFor();
    await bob.locator('#status').selectOption('busy');
    await ada.locator('#online li[data-user="bob"] .dot[data-status="busy"]').waitFor();
    await bob.locator('#status').selectOption('invisible');
    await ada.locator('#online li[data-user="bob"]').waitFor({ state: 'detached' });
    await bob.locator('#status').selectOption('online');
    await ada.locator('#online li[data-user="bob"] .dot[data-status="online"]').waitFor();

    // Ada makes a group with Bob and Carol.
    await ada.locator('#search').fill('o');
    await ada.locator('#results label', { hasText: 'Bob' }).locator('input').check();
    await ada.locator('#results label', { hasText: 'Carol' }).locator('input').check();
    await ada.locator('#group-name').fill('Launch <team>');
    await ada.locator('#create-group').click();
    await ada.locator('#room-title', { hasText: 'Launch <team>' }).waitFor();
    await ada.locator('#room-members', { hasText: '3 members' }).waitFor();

    // Bob stays in the direct room; the group's messages count as unread for him.
    for (const body of ['one', 'two', 'three']) {
      await ada.locator('#input').fill(body);
      await ada.locator('#input').press('Enter');
      await ada.locator('#messages .msg.mine .text', { hasText: body }).waitFor();
    }
    const bobsGroup = bob.locator('#rooms button', { hasText: 'Launch <team>' });
    await bobsGroup.locator('.unread', { hasText: '3' }).waitFor();
    assert.equal(await bobsGroup.getAttribute('aria-label'), 'Launch <team>, 3 unread');

    // Carol reads: with one reader, Ada's ticks turn to read.
    await carol.locator('#rooms button', { hasText: 'Launch <team>' }).click();
    await carol.locator('#messages .msg .text', { hasText: 'three' }).waitFor();
    await ada.locator('#messages .msg.mine', { hasText: 'three' }).locator('.tick[data-status="read"]').waitFor();
    await bobsGroup.click();
    await bob.locator('#messages .msg .text', { hasText: 'three' }).waitFor();
    await bobsGroup.locator('.unread').filter({ hasText: /\d/ }).waitFor({ state: 'detached' });
    assert.deepEqual(await pageBodies(bob), ['one', 'two', 'three']);
  });

  test('scrolling up loads older history', async () => {
    // 130 messages written straight through the client library of Carol's page.
    const roomId = await ada.evaluate(() => document.querySelector('#rooms button[aria-current="true"]').dataset.room);
    await carol.evaluate(async (room) => {
      const { ChatClient } = await import('/chat-client.js');
      const token = localStorage.getItem('chat-page:token');
      const client = new ChatClient({ token });
      await client.connect();
      for (let i = 1; i <= 130; i += 1) {
        await client.send(room, `history ${i}`);
      }
      client.close();
    }, roomId);
    const fresh = await newPage(browser);
    await signIn(fresh, server, await server.token('bob', { name: 'Bob' }));
    await fresh.locator('#rooms button', { hasText: 'Launch <team>' }).click();
    await fresh.locator('#messages .msg .text', { hasText: 'history 130' }).waitFor();
    assert.equal(await fresh.locator('#messages .msg').count(), 50, 'the newest page first');
    for (let round = 0; round < 5; round += 1) {
      await fresh.locator('#messages').evaluate((list) => {
        list.scrollTop = 0;
      });
      await fresh.waitForTimeout(300);
    }
    await fresh.locator('#messages .msg .text', { hasText: /^one$/ }).waitFor();
    const bodies = await pageBodies(fresh);
    const expected = ['one', 'two', 'three', ...Array.from({ length: 130 }, (_, i) => `history ${i + 1}`)];
    assert.deepEqual(bodies, expected);
    assert.equal(await fresh.locator('.older').count(), 0, 'no more to load');
    await fresh.context().close();
  });

  test('search finds whole words, accents folded, and jumps to a message far back', async () => {
    const roomId = await ada.evaluate(() => document.querySelector('#rooms button[aria-current="true"]').dataset.room);
    await carol.evaluate(async (room) => {
      const { ChatClient } = await import('/chat-client.js');
      const client = new ChatClient({ token: localStorage.getItem('chat-page:token') });
      await client.connect();
      await client.send(room, 'Crème Brûlée tonight?');
      client.close();
    }, roomId);
    const page = await newPage(browser);
    await signIn(page, server, await server.token('bob', { name: 'Bob' }));
    await page.locator('#rooms button', { hasText: 'Launch <team>' }).waitFor();

    // Accents and case folded; the words found are marked.
    await page.locator('#msg-search').fill('creme BRULEE');
    await page.locator('#msg-search').press('Enter');
    const found = page.locator('#msg-results button');
    await found.first().waitFor();
    assert.equal(await found.count(), 1);
    assert.match(await found.textContent(), /^Launch <team> · (Carol|carol) · .*Crème Brûlée tonight\?$/);
    assert.deepEqual(await found.locator('mark').allTextContents(), ['Crème', 'Brûlée']);

    // Whole words: "history 7" is one message of 130, which the room's
    // first page (the newest 50) does not hold: the jump loads back to it.
    await page.locator('#msg-search').fill('history 7');
    await page.locator('#msg-search').press('Enter');
    await eventually(async () => (await found.count()) === 1 && /history 7$/.test(await found.textContent()), {
      message: 'one result, history 7',
    });
    await found.click();
    const target = page.locator('#messages .msg.found');
    await target.waitFor();
    assert.equal(await target.locator('.text').textContent(), 'history 7');
    await eventually(
      () =>
        target.evaluate((el) => {
          const box = el.getBoundingClientRect();
          const list = document.getElementById('messages').getBoundingClientRect();
          return box.top >= list.top && box.bottom <= list.bottom;
        }),
      { message: 'the message found to be scrolled into view' },
    );
    assert.equal(await page.locator('#room-title').textContent(), 'Launch <team>');

    // Nothing found says so; someone outside the room finds nothing of it.
    await page.locator('#msg-search').fill('zebra');
    await page.locator('#msg-search').press('Enter');
    await page.locator('#msg-none').waitFor();
    const outsider = await newPage(browser);
    await signIn(outsider, server, await server.token('dan', { name: 'Dan' }));
    await outsider.locator('#msg-search').fill('history');
    await outsider.locator('#msg-search').press('Enter');
    await outsider.locator('#msg-none').waitFor();
    assert.equal(await outsider.locator('#msg-results li').count(), 0);
    await screenshot(page, 'chat-page-search');
    await outsider.context().close();
    await page.context().close();
  });

  test('sign-in by name is offered only when the server has dev_login on', async () => {
    const page = await newPage(browser);
    await page.goto(`${server.url}/`);
    await page.locator('#token-form').waitFor();
    assert.equal(await page.locator('#dev-form').isVisible(), false);
    await page.context().close();

    const dev = await ChatServer.start({ env: { CHAT_DEV_LOGIN: 'true' } });
    try {
      const agentPage = await newPage(browser);
      await agentPage.goto(`${dev.url}/`);
      await agentPage.locator('#dev-name').fill('Grace Hopper');
      await agentPage.locator('#dev-agent').check();
      await agentPage.getByRole('button', { name: 'Sign in with this name' }).click();
      await agentPage.locator('body[data-connection="open"]').waitFor();
      assert.equal(await agentPage.locator('#me').textContent(), 'Grace Hopper');
      assert.equal(await agentPage.locator('#me').getAttribute('title'), 'grace-hopper');
      await agentPage.locator('#online li[data-user="grace-hopper"] .kind.support').waitFor();
      // The token is kept: a reload signs in again without asking.
      await agentPage.reload();
      await agentPage.locator('body[data-connection="open"]').waitFor();
      assert.equal(await agentPage.locator('#signin').isVisible(), false);
      await agentPage.getByRole('button', { name: 'Sign out' }).click();
      await agentPage.locator('#dev-form').waitFor();
      await agentPage.context().close();
    } finally {
      await dev.close();
    }
  });

  test('works on a phone-sized viewport', async () => {
    const phone = await newPage(browser, { viewport: { width: 390, height: 800 }, isMobile: true, hasTouch: true });
    await signIn(phone, server, await server.token('bob', { name: 'Bob' }));
    // One column: the list first, the conversation after a tap, and back.
    await phone.locator('#rooms button', { hasText: 'Ada' }).waitFor();
    assert.equal(await phone.locator('#conversation').isVisible(), false);
    await screenshot(phone, 'chat-page-phone-list');
    await phone.locator('#rooms button', { hasText: 'Ada' }).tap();
    await phone.locator('#messages .msg .text', { hasText: 'Hello Bob' }).waitFor();
    assert.equal(await phone.locator('#sidebar').isVisible(), false);
    const width = await phone.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 390, `no horizontal scrolling (${width}px wide)`);
    await phone.locator('#input').fill('from my phone');
    await phone.locator('#input').press('Enter');
    await ada.locator('#rooms button', { hasText: 'Bob' }).click();
    await ada.locator('#messages .msg .text', { hasText: 'from my phone' }).waitFor();
    await screenshot(phone, 'chat-page-phone', { doc: true });
    await phone.locator('#back').tap();
    await phone.locator('#sidebar').waitFor({ state: 'visible' });
    assert.deepEqual(phone.errors, []);
  });
});
