// The support widget on a sample website served from another origin,
// answered by an agent on the chat page; its history across a reload; its
// isolation from the host page's styles; keyboard use; bidi isolation of
// names and bodies; and an origin the server does not allow.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ChatServer,
  eventually,
  hostSite,
  isIsolated,
  launchBrowser,
  newPage,
  pageBodies,
  screenshot,
  shopPage,
  shownText,
  signIn,
  spoofingName,
  widgetBodies,
} from '../lib/harness.mjs';

describe('support widget', () => {
  let server;
  let shop;
  let browser;
  let agent;
  let visitor;

  before(async () => {
    // The shop is another origin: its port must be allowed by the server.
    const pages = {};
    shop = await hostSite(pages);
    server = await ChatServer.start({ env: { CHAT_ALLOWED_ORIGINS: shop.origin } });
    pages['/'] = () => shopPage(server, 'data-color="#7c3aed" data-greeting="Welcome to the shop! Ask away."');
    pages['/fr'] = () => shopPage(server, 'data-lang="fr" data-position="left"');
    pages['/zed'] = () => shopPage(server, 'data-name="Zed"');
    // A site with a strict policy of its own: the chat server allowed for
    // scripts and connections, nothing inline.
    pages['/strict'] = () => ({
      html: shopPage(server).replace(/<style>[\s\S]*<\/style>/, ''),
      headers: {
        'content-security-policy':
          `default-src 'self'; script-src 'self' ${server.url}; ` +
          `connect-src ${server.url} ${server.url.replace('http', 'ws')}; style-src 'self'`,
      },
    });
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await shop?.close();
    await server?.close();
  });

  test('a visitor on another origin talks with an agent on the chat page', async () => {
    agent = await newPage(browser);
    await signIn(agent, server, await server.token('alice', { name: 'Alice', roles: ['support'] }));

    visitor = await newPage(browser);
    await visitor.goto(`${shop.origin}/`);
    const launcher = visitor.locator('.launcher');
    await launcher.waitFor();
    assert.equal(await launcher.getAttribute('aria-expanded'), 'false');
    await launcher.click();
    assert.equal(await launcher.getAttribute('aria-expanded'), 'true');
    await visitor.locator('.panel[role="dialog"]').waitFor({ state: 'visible' });
    await visitor.locator('.availability[data-available="true"]', { hasText: 'We are online' }).waitFor();
    await visitor.locator('.msg.greeting', { hasText: 'Welcome to the shop! Ask away.' }).waitFor();
    // The panel takes the focus to its text box.
    await eventually(() => visitor.evaluate(() => document.activeElement?.dataset.chatWidget !== undefined), {
      message: 'focus in the widget',
    });

    await visitor.keyboard.type('Hello, where is my order?');
    await visitor.keyboard.press('Enter');
    await visitor.locator('.log .msg.mine .tick[data-status]').first().waitFor();

    // The agent is brought into the support room and answers it.
    const supportRoom = agent.locator('#rooms button', { hasText: 'Support: Visitor' });
    await supportRoom.waitFor();
    await supportRoom.click();
    await agent.locator('#messages .msg .text', { hasText: 'Hello, where is my order?' }).waitFor();
    // The agent read it: the visitor's tick turns to read.
    await visitor.locator('.log .msg.mine .tick[data-status="read"]').waitFor();

    await agent.locator('#input').pressSequentially('Let me check', { delay: 20 });
    await visitor.locator('.typing', { hasText: 'Alice is typing…' }).waitFor();
    await agent.locator('#input').press('Enter');
    await visitor.locator('.log .msg:not(.mine) .text', { hasText: 'Let me check' }).waitFor();
    await visitor.locator('.log .msg:not(.mine) .who', { hasText: 'Alice' }).waitFor();
    await eventually(async () => (await visitor.locator('.typing').textContent()) === '', {
      message: 'typing to end',
    });
    // The visitor has the panel open: the agent's message is read at once.
    await agent.locator('#messages .msg.mine .tick[data-status="read"]').waitFor();

    assert.deepEqual(await widgetBodies(visitor), ['Hello, where is my order?', 'Let me check']);
    assert.deepEqual(await pageBodies(agent), ['Hello, where is my order?', 'Let me check']);
    await screenshot(visitor, 'widget', { doc: true });
    await screenshot(agent, 'chat-page-agent', { doc: true });
    assert.deepEqual(visitor.errors, []);
    assert.deepEqual(agent.errors, []);
  });

  test('styles do not cross the shadow boundary', async () => {
    // The shop hides .msg and .panel and paints buttons lime: none of it applies inside.
    const panelDisplay = await visitor.locator('.panel').evaluate((el) => getComputedStyle(el).display);
    assert.equal(panelDisplay, 'flex');
    const send = await visitor.locator('.send').evaluate((el) => {
      const style = getComputedStyle(el);
      return { background: style.backgroundColor, size: style.fontSize };
    });
    assert.equal(send.background, 'rgb(124, 58, 237)', 'data-color is the accent');
    assert.notEqual(send.size, '40px');
    // And the widget's styles do not reach the page.
    const buy = await visitor.locator('#buy').evaluate((el) => getComputedStyle(el).backgroundColor);
    assert.equal(buy, 'rgb(0, 255, 0)');
    const font = await visitor.evaluate(() => getComputedStyle(document.body).fontFamily);
    assert.match(font, /Georgia/);
  });

  test('a reload keeps the conversation and its history', async () => {
    const session = await visitor.evaluate(() => Object.keys(localStorage).filter((k) => k.startsWith('chat-widget:')));
    assert.ok(session.length >= 1, 'the session is kept in localStorage');
    await visitor.reload();
    await visitor.locator('.launcher').click();
    await visitor.locator('.log .msg .text', { hasText: 'Let me check' }).waitFor();
    assert.deepEqual(await widgetBodies(visitor), ['Hello, where is my order?', 'Let me check']);
    // The ticks of the visitor's own message are known again after the reload.
    await visitor.locator('.log .msg.mine .tick[data-status="read"]').waitFor();

    await visitor.locator('textarea').fill('Still there?');
    await visitor.locator('textarea').press('Enter');
    await agent.locator('#messages .msg .text', { hasText: 'Still there?' }).waitFor();
    assert.deepEqual(await pageBodies(agent), ['Hello, where is my order?', 'Let me check', 'Still there?']);
    // Still one conversation, not a second support room.
    assert.equal(await agent.locator('#rooms button', { hasText: 'Support:' }).count(), 1);
  });

  test('an agent who signs in later finds the waiting conversation', async () => {
    // Bob was not online when the visitor wrote, so nobody invited him: the
    // support queue in his room list is how he finds the conversation.
    const late = await newPage(browser);
    await signIn(late, server, await server.token('bob', { name: 'Bob', roles: ['support'] }));
    const waiting = late.locator('#rooms button', { hasText: 'Support: Visitor' });
    await waiting.waitFor();
    await waiting.click();
    await late.locator('#messages .msg .text', { hasText: 'Let me check' }).waitFor();
    const before = await widgetBodies(visitor);
    assert.ok(before.length >= 2, 'the conversation so far');
    await eventually(async () => JSON.stringify(await pageBodies(late)) === JSON.stringify(before), {
      message: 'the late agent to see the whole conversation',
    });
    await late.locator('#input').fill('Bob here, anything else?');
    await late.locator('#input').press('Enter');
    await visitor.locator('.log .msg:not(.mine) .text', { hasText: 'Bob here, anything else?' }).waitFor();
    assert.deepEqual(late.errors, []);
    await late.close();
  });

  test('keyboard: Escape closes the panel and gives the focus back to the button', async () => {
    await visitor.locator('textarea').focus();
    await visitor.keyboard.press('Escape');
    await visitor.locator('.panel').waitFor({ state: 'hidden' });
    const focused = await visitor.evaluate(
      () => document.querySelector('[data-chat-widget]').shadowRoot.activeElement?.className,
    );
    assert.equal(focused, 'launcher');
    // Closed, an answer shows as an unread badge on the button.
    await agent.locator('#input').fill('Yes, your parcel left today.');
    await agent.locator('#input').press('Enter');
    await visitor.locator('.badge', { hasText: '1' }).waitFor();
    assert.match(await visitor.locator('.launcher').getAttribute('aria-label'), /1 unread/);
    await visitor.keyboard.press('Enter');
    await visitor.locator('.panel').waitFor({ state: 'visible' });
    await visitor.locator('.badge').waitFor({ state: 'hidden' });
  });

  test('data attributes set the language and the side', async () => {
    const page = await newPage(browser);
    await page.goto(`${shop.origin}/fr`);
    const launcher = page.locator('.launcher');
    await launcher.waitFor();
    assert.equal(await launcher.getAttribute('aria-label'), 'Ouvrir le chat');
    const box = await launcher.boundingBox();
    assert.ok(box.x < 100, `on the left (x=${box.x})`);
    await launcher.click();
    await page.locator('.msg.greeting', { hasText: 'Comment pouvons-nous vous aider' }).waitFor();
    await page.locator('.availability', { hasText: 'Nous sommes en ligne' }).waitFor();
    await screenshot(page, 'widget-fr-left');
    await page.context().close();
  });

  test('works on a site with a strict Content-Security-Policy', async () => {
    const page = await newPage(browser);
    const violations = [];
    page.on('console', (msg) => {
      if (/Content Security Policy/i.test(msg.text())) violations.push(msg.text());
    });
    await page.goto(`${shop.origin}/strict`);
    await page.locator('.launcher').click();
    await page.locator('.availability', { hasText: 'We are online' }).waitFor();
    // Styled: the accent colour reached the button through the constructed style sheet.
    const background = await page.locator('.send').evaluate((el) => getComputedStyle(el).backgroundColor);
    assert.equal(background, 'rgb(37, 99, 235)');
    await page.locator('textarea').fill('Hello from a strict site');
    await page.locator('textarea').press('Enter');
    await page.locator('.log .msg.mine:not(.pending) .text', { hasText: 'Hello from a strict site' }).waitFor();
    assert.deepEqual(violations, []);
    assert.deepEqual(page.errors, []);
    await page.context().close();
  });

  test('a site whose origin the server does not allow gets no widget', async () => {
    const other = await hostSite({ '/': () => shopPage(server) });
    try {
      const page = await newPage(browser);
      const failures = [];
      page.on('console', (msg) => failures.push(msg.text()));
      await page.goto(`${other.origin}/`);
      await eventually(() => failures.some((t) => t.includes('CHAT_ALLOWED_ORIGINS')), {
        message: 'the widget to explain why it cannot load',
      });
      assert.equal(await page.locator('.launcher').count(), 0);
      // Nor can such a page open a WebSocket: the server answers the upgrade with 403.
      const outcome = await page.evaluate(
        (url) =>
          new Promise((resolve) => {
            const ws = new WebSocket(url);
            ws.onopen = () => resolve('open');
            ws.onerror = () => resolve('refused');
          }),
        `${server.url.replace('http', 'ws')}/v1/ws`,
      );
      assert.equal(outcome, 'refused');
      await page.context().close();
    } finally {
      await other.close();
    }
  });

  test("an agent's name and bodies are bidi-isolated in the widget", async () => {
    const { name, token } = await spoofingName(server, 'mallory', { roles: ['support'] });
    const spoofer = await newPage(browser);
    await signIn(spoofer, server, token);
    const page = await newPage(browser);
    await page.goto(`${shop.origin}/zed`);
    await page.locator('.launcher').click();
    await page.locator('textarea').fill('Is my refund on its way?');
    await page.locator('textarea').press('Enter');
    const room = spoofer.locator('#rooms button', { hasText: 'Support: Zed' });
    await room.waitFor();
    await room.click();
    await spoofer.locator('#messages .msg .text', { hasText: 'refund' }).waitFor();

    await spoofer.locator('#input').pressSequentially('Yes', { delay: 20 });
    await page.locator('.typing', { hasText: '…' }).waitFor();
    const typing = await shownText(page.locator('.typing'), name);
    assert.ok(typing.length === 1 && isIsolated(typing[0]), `the name in the typing line: ${JSON.stringify(typing)}`);
    const body = 'Refund of \u202E00.001$\u202C sent';
    await spoofer.locator('#input').fill(body);
    await spoofer.locator('#input').press('Enter');
    await page.locator('.log .msg:not(.mine) .text', { hasText: 'Refund of' }).waitFor();

    const bodyShown = await shownText(page.locator('.log'), body);
    assert.equal(bodyShown.length, 1);
    assert.ok(isIsolated(bodyShown[0]) && bodyShown[0].dir === 'auto', `the body: ${JSON.stringify(bodyShown)}`);
    const who = await shownText(page.locator('.log'), name);
    assert.ok(who.length > 0 && who.every(isIsolated), `the name of the sender: ${JSON.stringify(who)}`);
    assert.deepEqual(page.errors, []);
    assert.deepEqual(spoofer.errors, []);
    await page.context().close();
    await spoofer.context().close();
  });
});
