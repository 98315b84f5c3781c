// A network loss between the widget and a server that keeps running: the
// widget's connection drops with no goodbye, the agent goes on writing, the
// visitor goes on typing. When the network is back the widget reconnects by
// itself, resumes from the last seq it had (the server replays what it
// missed), and sends what was typed offline: every message once, in order.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ChatServer,
  eventually,
  hostSite,
  launchBrowser,
  newPage,
  pageBodies,
  shopPage,
  signIn,
  tcpProxy,
  widgetBodies,
} from '../lib/harness.mjs';

describe('network loss', () => {
  let server;
  let proxy;
  let shop;
  let browser;

  before(async () => {
    const pages = {};
    shop = await hostSite(pages);
    server = await ChatServer.start({ env: { CHAT_ALLOWED_ORIGINS: shop.origin } });
    proxy = await tcpProxy(server.port);
    // The visitor reaches the server through the proxy; the agent directly.
    pages['/'] = () => shopPage({ url: proxy.url });
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await proxy?.close();
    await shop?.close();
    await server?.close();
  });

  test('the widget resumes after the network comes back, losing and doubling nothing', async () => {
    const agentToken = await server.token('alice', { name: 'Alice', roles: ['support'] });
    const agent = await newPage(browser);
    await signIn(agent, server, agentToken);
    const visitor = await newPage(browser);
    await visitor.goto(`${shop.origin}/`);
    await visitor.locator('.launcher').click();
    await visitor.locator('textarea').fill('Is anyone there?');
    await visitor.locator('textarea').press('Enter');
    await agent.locator('#rooms button', { hasText: 'Support:' }).click();
    await agent.locator('#messages .msg .text', { hasText: 'Is anyone there?' }).waitFor();
    await agent.locator('#input').fill('Yes, hello!');
    await agent.locator('#input').press('Enter');
    await visitor.locator('.log .msg .text', { hasText: 'Yes, hello!' }).waitFor();

    proxy.cut();
    await visitor.locator('.root[data-state="reconnecting"]').waitFor();
    // The agent's side is fine and goes on; the visitor cannot hear it.
    for (const body of ['Missed one', 'Missed two', 'Missed three']) {
      await agent.locator('#input').fill(body);
      await agent.locator('#input').press('Enter');
      await agent.locator('#messages .msg.mine:not(.pending) .text', { hasText: body }).waitFor();
    }
    await visitor.locator('textarea').fill('Typed while offline');
    await visitor.locator('textarea').press('Enter');
    await visitor.locator('.log .msg.pending', { hasText: 'Typed while offline' }).waitFor();
    assert.deepEqual(await widgetBodies(visitor), ['Is anyone there?', 'Yes, hello!']);

    proxy.restore();
    await visitor.locator('.root[data-state="open"]').waitFor({ timeout: 20000 });
    const expected = ['Is anyone there?', 'Yes, hello!', 'Missed one', 'Missed two', 'Missed three', 'Typed while offline'];
    await eventually(
      async () =>
        JSON.stringify(await widgetBodies(visitor)) === JSON.stringify(expected) &&
        JSON.stringify(await pageBodies(agent)) === JSON.stringify(expected) &&
        (await visitor.locator('.log .msg.pending').count()) === 0,
      {
        message: 'both sides to show every message once',
        describe: async () =>
          JSON.stringify({
            widget: await widgetBodies(visitor),
            page: await pageBodies(agent),
            state: await visitor.locator('.root').getAttribute('data-state'),
            pending: await visitor.locator('.log .msg.pending').count(),
            error: await visitor.locator('.error').textContent(),
          }),
      },
    );
    const roomId = await agent.evaluate(() => document.querySelector('#rooms button[aria-current="true"]').dataset.room);
    const { body } = await server.get(`/v1/rooms/${roomId}/messages`, agentToken);
    assert.deepEqual(
      body.messages.map((m) => m.body),
      expected,
    );
    // The replayed messages were read with the panel open: the agent sees read ticks.
    await agent.locator('#messages .msg.mine', { hasText: 'Missed three' }).locator('.tick[data-status="read"]').waitFor();
    assert.deepEqual(visitor.errors, []);
  });
});
