// A product's own signed-in users, on the product's origin: the support
// widget opened with their token (data-get-token) instead of a visitor
// session, and the chat page embedded in an <iframe>, which only origins in
// CHAT_ALLOWED_ORIGINS may do (frame-ancestors).

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ChatServer, eventually, hostSite, launchBrowser, newPage, signIn, widgetBodies } from '../lib/harness.mjs';

describe('embedding for signed-in users', () => {
  let server;
  let product;
  let stranger;
  let browser;
  const tokens = {};
  let tokenCalls = 0;

  before(async () => {
    const pages = {};
    const strangerPages = {};
    product = await hostSite(pages);
    stranger = await hostSite(strangerPages);
    server = await ChatServer.start({ env: { CHAT_ALLOWED_ORIGINS: product.origin } });
    tokens.sam = await server.token('sam', { name: 'Sam Product' });
    tokens.kim = await server.token('kim', { name: 'Kim Product' });
    // The product's backend: the first answer is a token the server refuses,
    // so the widget must ask again (reason "rejected").
    pages['/token'] = () => {
      tokenCalls += 1;
      return tokenCalls === 1 ? 'not-a-jwt' : tokens.sam;
    };
    pages['/'] = () => `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Product</title></head>
<body>
  <h1>Your account</h1>
  <script>
    window.reasons = [];
    window.chatToken = ({ reason }) => {
      window.reasons.push(reason);
      return fetch('/token').then((r) => r.text());
    };
  </script>
  <script src="${server.url}/widget.js" data-server="${server.url}" data-get-token="chatToken"></script>
</body></html>`;
    const framing = (src, extra = '') => `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Inbox</title></head>
<body>
  <h1>Messages</h1>
  <iframe id="chat" title="Chat" src="${src}" width="1000" height="640"></iframe>
  ${extra}
</body></html>`;
    pages['/inbox'] = () => framing(`${server.url}/#token=${encodeURIComponent(tokens.kim)}`);
    pages['/inbox-asked'] = () =>
      framing(
        `${server.url}/`,
        `<script>
          window.asked = [];
          addEventListener('message', (event) => {
            if (event.origin !== ${JSON.stringify(server.url)} || event.data?.type !== 'chat:token-needed') return;
            window.asked.push(event.data.reason);
            event.source.postMessage({ type: 'chat:token', token: ${JSON.stringify(tokens.kim)} }, event.origin);
          });
        </script>`,
      );
    strangerPages['/'] = () => framing(`${server.url}/#token=${encodeURIComponent(tokens.kim)}`);
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await product?.close();
    await stranger?.close();
    await server?.close();
  });

  test('the widget opens a signed-in user\'s own support conversation', async () => {
    const agent = await newPage(browser);
    await signIn(agent, server, await server.token('alice', { name: 'Alice', roles: ['support'] }));
    const page = await newPage(browser);
    const sessions = [];
    page.on('request', (request) => {
      if (request.url().includes('/v1/visitor-sessions')) sessions.push(request.url());
    });
    await page.goto(`${product.origin}/`);
    await page.locator('.launcher').click();
    await page.locator('textarea').fill('Invoice 42 is wrong');
    await page.locator('textarea').press('Enter');
    await page.locator('.log .msg.mine .tick[data-status]').first().waitFor();
    assert.deepEqual(sessions, [], 'no visitor session for a signed-in user');
    assert.deepEqual(await page.evaluate(() => window.reasons), ['connect', 'rejected']);

    // The agent sees the conversation under the user's own name, and answers.
    const room = agent.locator('#rooms button', { hasText: 'Support: Sam Product' });
    await room.waitFor();
    await room.click();
    await agent.locator('#messages .msg .text', { hasText: 'Invoice 42 is wrong' }).waitFor();
    await agent.locator('#input').fill('Fixed, sorry!');
    await agent.locator('#input').press('Enter');
    await page.locator('.log .msg:not(.mine) .text', { hasText: 'Fixed, sorry!' }).waitFor();

    // A reload finds the same conversation on the server; nothing of the
    // user's session is kept in the product's storage.
    await page.reload();
    await page.locator('.launcher').click();
    await page.locator('.log .msg .text', { hasText: 'Fixed, sorry!' }).waitFor();
    assert.deepEqual(await widgetBodies(page), ['Invoice 42 is wrong', 'Fixed, sorry!']);
    const kept = await page.evaluate(() => Object.keys(localStorage).filter((k) => k.startsWith('chat-widget:')));
    assert.ok(
      kept.every((k) => k.endsWith(':signed-in:outbox') || k.endsWith(':signed-in')),
      `only the outbox is kept: ${kept}`,
    );
    assert.deepEqual(page.errors, []);
    await page.context().close();
    await agent.context().close();
  });

  test('the chat page in an iframe of an allowed origin, with the token in the fragment', async () => {
    const page = await newPage(browser);
    await page.goto(`${product.origin}/inbox`);
    const frame = page.frameLocator('#chat');
    await frame.locator('#main').waitFor({ state: 'visible' });
    await frame.locator('#me', { hasText: 'Kim Product' }).waitFor();
    // The fragment is gone from the frame's address once read.
    const url = page.frames().find((f) => f.url().startsWith(server.url)).url();
    assert.ok(!url.includes('token='), url);
    await page.context().close();
  });

  test('the chat page in an iframe asks the embedding page for a token', async () => {
    const page = await newPage(browser);
    await page.goto(`${product.origin}/inbox-asked`);
    const frame = page.frameLocator('#chat');
    await frame.locator('#me', { hasText: 'Kim Product' }).waitFor();
    assert.deepEqual(await page.evaluate(() => window.asked), ['connect']);
    await page.context().close();
  });

  test('a site not in CHAT_ALLOWED_ORIGINS cannot frame the page', async () => {
    const page = await newPage(browser);
    const refused = [];
    page.on('console', (msg) => {
      if (/frame-ancestors|Refused to frame/i.test(msg.text())) refused.push(msg.text());
    });
    await page.goto(`${stranger.origin}/`);
    await eventually(() => refused.length > 0, { message: 'the browser to refuse the frame' });
    const framed = page.frames().find((f) => f !== page.mainFrame());
    const signedIn = await framed
      .evaluate(() => !!document.getElementById('main') && !document.getElementById('main').hidden)
      .catch(() => false);
    assert.equal(signedIn, false, 'nothing of the chat shows in a refused frame');
    await page.context().close();
  });
});
