// A server restart in the middle of a conversation between the widget and
// the chat page: both notice, show it, keep what is typed meanwhile in their
// outboxes, reconnect by themselves, resume, and end up with every message
// exactly once, in the order the server stored them.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ChatServer,
  eventually,
  hostSite,
  launchBrowser,
  newPage,
  pageBodies,
  screenshot,
  shopPage,
  signIn,
  widgetBodies,
} from '../lib/harness.mjs';

describe('server restart', () => {
  let server;
  let shop;
  let browser;
  let agent;
  let visitor;
  let agentToken;
  let roomId;

  before(async () => {
    const pages = {};
    shop = await hostSite(pages);
    server = await ChatServer.start({ env: { CHAT_ALLOWED_ORIGINS: shop.origin } });
    pages['/'] = () => shopPage(server);
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await shop?.close();
    await server?.close();
  });

  /** The bodies the server stored in the room, by seq; asserts the seqs have no gap. */
  async function stored() {
    const { status, body } = await server.get(`/v1/rooms/${roomId}/messages?limit=100`, agentToken);
    assert.equal(status, 200, JSON.stringify(body));
    body.messages.forEach((m, i) => assert.equal(m.seq, i + 1));
    return body.messages.map((m) => m.body);
  }

  async function sendFromPage(body) {
    await agent.locator('#input').fill(body);
    await agent.locator('#input').press('Enter');
  }

  async function sendFromWidget(body) {
    await visitor.locator('textarea').fill(body);
    await visitor.locator('textarea').press('Enter');
  }

  async function bothShow(expected) {
    await eventually(
      async () =>
        JSON.stringify(await pageBodies(agent)) === JSON.stringify(expected) &&
        JSON.stringify(await widgetBodies(visitor)) === JSON.stringify(expected) &&
        (await agent.locator('#messages .msg.pending').count()) === 0 &&
        (await visitor.locator('.log .msg.pending').count()) === 0,
      {
        timeout: 30000,
        message: `both pages to show ${JSON.stringify(expected)}; page ${JSON.stringify(
          await pageBodies(agent),
        )}, widget ${JSON.stringify(await widgetBodies(visitor))}`,
      },
    );
  }

  test('a conversation before the restart', async () => {
    agentToken = await server.token('alice', { name: 'Alice', roles: ['support'] });
    agent = await newPage(browser);
    await signIn(agent, server, agentToken);
    visitor = await newPage(browser);
    await visitor.goto(`${shop.origin}/`);
    await visitor.locator('.launcher').click();
    await sendFromWidget('before 1');
    await agent.locator('#rooms button', { hasText: 'Support:' }).click();
    await agent.locator('#messages .msg .text', { hasText: 'before 1' }).waitFor();
    roomId = await agent.evaluate(() => document.querySelector('#rooms button[aria-current="true"]').dataset.room);
    await sendFromPage('before 2');
    await bothShow(['before 1', 'before 2']);
  });

  test('a graceful restart: sends in flight and sends made while it is down arrive once', async () => {
    // A burst from the agent, and the server told to stop while it is on its way.
    for (let i = 1; i <= 5; i += 1) await sendFromPage(`burst ${i}`);
    const exit = await server.stop();
    assert.equal(exit.code, 0, `graceful exit: ${JSON.stringify(exit)}\n${server.logs()}`);

    // Both pages see the connection go, and keep what is typed meanwhile.
    await agent.locator('body[data-connection="reconnecting"]').waitFor();
    await visitor.locator('.root[data-state="reconnecting"]').waitFor();
    await visitor.locator('.conn', { hasText: 'Reconnecting' }).waitFor();
    await sendFromWidget('while down 1');
    await sendFromPage('while down 2');
    await visitor.locator('.log .msg.pending', { hasText: 'while down 1' }).waitFor();
    await agent.locator('#messages .msg.pending', { hasText: 'while down 2' }).waitFor();
    await screenshot(visitor, 'widget-reconnecting');

    await server.spawn();
    await agent.locator('body[data-connection="open"]').waitFor({ timeout: 20000 });
    await visitor.locator('.root[data-state="open"]').waitFor({ timeout: 20000 });
    await sendFromWidget('after 1');
    await sendFromPage('after 2');

    await eventually(async () => (await stored()).length === 11, {
      message: '11 stored messages',
      describe: async () =>
        JSON.stringify({
          stored: await stored(),
          pageError: await agent.locator('#send-error').textContent(),
          widgetError: await visitor.locator('.error').textContent(),
        }),
    });
    const truth = await stored();
    assert.deepEqual([...truth].sort(), [
      'after 1',
      'after 2',
      'before 1',
      'before 2',
      'burst 1',
      'burst 2',
      'burst 3',
      'burst 4',
      'burst 5',
      'while down 1',
      'while down 2',
    ]);
    assert.deepEqual(
      truth.filter((b) => b.startsWith('burst')),
      ['burst 1', 'burst 2', 'burst 3', 'burst 4', 'burst 5'],
      'one sender\'s messages keep their order',
    );
    await bothShow(truth);
  });

  test('a crash (SIGKILL): both pages recover and nothing is lost or doubled', async () => {
    await server.kill();
    await agent.locator('body[data-connection="reconnecting"]').waitFor({ timeout: 40000 });
    await visitor.locator('.root[data-state="reconnecting"]').waitFor({ timeout: 40000 });
    await sendFromWidget('after crash 1');
    await sendFromPage('after crash 2');
    await server.spawn();
    await eventually(async () => (await stored()).length === 13, {
      timeout: 30000,
      message: '13 stored messages',
      describe: async () => JSON.stringify(await stored()),
    });
    const truth = await stored();
    assert.equal(new Set(truth).size, 13, `no message stored twice: ${JSON.stringify(truth)}`);
    await bothShow(truth);
    await screenshot(agent, 'chat-page-after-restart');
    assert.deepEqual(agent.errors, []);
    assert.deepEqual(visitor.errors, []);
  });
});
