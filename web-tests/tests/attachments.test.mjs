// Attachments in both pages (protocol section 6): files dropped on the
// conversation and pasted into the text box, each with a progress bar that
// fills; the message reaches a second client with the image's thumbnail
// (loaded, from the signed URL) and the other file as a download link whose
// bytes are the ones sent; a file over the server's limit shows its error.
// The widget runs on another origin, so its images and uploads cross origins.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ChatServer,
  eventually,
  hostSite,
  launchBrowser,
  newPage,
  screenshot,
  shopPage,
  signIn,
} from '../lib/harness.mjs';

// Small, so that a too-large file is quick to make; the test files fit.
const MAX_BYTES = 256 * 1024;

// The bytes of a test file: the same sequence here and in the page (deliver).
function testBytes(size, seed) {
  const bytes = new Uint8Array(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i += 1) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    bytes[i] = x & 0xff;
  }
  return bytes;
}

/**
 * Builds files in the page and hands them to the element `target` locates,
 * as a user would: `drop` fires dragenter, dragover and drop with a real
 * DataTransfer; `paste` fires a ClipboardEvent carrying the files. Specs are
 * `{kind: 'image', name, width, height}` (a PNG drawn on a canvas) or
 * `{kind: 'bytes', name, size, seed}`. Records every value the upload
 * progress bars take (`window.progressSeen`, per file name).
 */
function deliver(target, how, specs) {
  return target.evaluate(
    async (el, { how: action, specs: wanted }) => {
      // testBytes again: the chat page's policy allows no eval to bring it.
      const makeBytes = (size, seed) => {
        const bytes = new Uint8Array(size);
        let x = seed >>> 0 || 1;
        for (let i = 0; i < size; i += 1) {
          x ^= x << 13;
          x >>>= 0;
          x ^= x >>> 17;
          x ^= x << 5;
          x >>>= 0;
          bytes[i] = x & 0xff;
        }
        return bytes;
      };
      const files = [];
      for (const spec of wanted) {
        if (spec.kind === 'image') {
          const canvas = document.createElement('canvas');
          canvas.width = spec.width;
          canvas.height = spec.height;
          const g = canvas.getContext('2d');
          // Flat colours: a PNG of a few kilobytes, well under the limit.
          g.fillStyle = '#2563eb';
          g.fillRect(0, 0, spec.width, spec.height);
          g.fillStyle = '#f59e0b';
          g.fillRect(spec.width / 4, spec.height / 4, spec.width / 2, spec.height / 2);
          const blob = await new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));
          files.push(new File([blob], spec.name, { type: 'image/png' }));
        } else {
          files.push(new File([makeBytes(spec.size, spec.seed)], spec.name, { type: 'application/octet-stream' }));
        }
      }
      // Every state of every progress bar, from the first one on.
      const root = el.getRootNode();
      window.progressSeen = window.progressSeen || {};
      if (!window.progressObserver) {
        const record = () => {
          for (const li of root.querySelectorAll('[data-upload]')) {
            const bar = li.querySelector('progress');
            const name = li.querySelector('.file-name').textContent;
            if (!bar) continue;
            const seen = (window.progressSeen[name] = window.progressSeen[name] || []);
            const state = `${bar.value}/${bar.max}`;
            if (seen.at(-1) !== state) seen.push(state);
          }
        };
        window.progressObserver = new MutationObserver(record);
        window.progressObserver.observe(root, { subtree: true, childList: true, attributes: true });
      }
      const data = new DataTransfer();
      for (const file of files) data.items.add(file);
      const init = { bubbles: true, cancelable: true, composed: true };
      if (action === 'drop') {
        for (const type of ['dragenter', 'dragover', 'drop']) {
          el.dispatchEvent(new DragEvent(type, { ...init, dataTransfer: data }));
        }
      } else {
        el.focus();
        el.dispatchEvent(new ClipboardEvent('paste', { ...init, clipboardData: data }));
      }
      return files.map((f) => ({ name: f.name, size: f.size }));
    },
    { how, specs },
  );
}

/** A group room made by the page's signed-in user, with `members`. */
function createRoom(page, name, members = []) {
  return page.evaluate(
    async ([roomName, others]) => {
      const { ChatClient } = await import('/chat-client.js');
      const client = new ChatClient({ token: localStorage.getItem('chat-page:token') });
      await client.connect();
      const room = await client.createRoom({ kind: 'group', name: roomName, members: others });
      client.close();
      return room.id;
    },
    [name, members],
  );
}

/** The bytes behind a download link, fetched by the page that shows it. */
function linkBytes(link) {
  return link.evaluate(async (a) => {
    const response = await fetch(a.href);
    return { status: response.status, bytes: [...new Uint8Array(await response.arrayBuffer())] };
  });
}

/** Whether an <img> has loaded a picture, and what it shows. */
function imageState(img) {
  return img.evaluate(async (el) => {
    if (!el.complete) await new Promise((r) => el.addEventListener('load', r, { once: true }));
    return {
      src: el.getAttribute('src'),
      naturalWidth: el.naturalWidth,
      width: el.getAttribute('width'),
      height: el.getAttribute('height'),
      href: el.closest('a')?.href,
    };
  });
}

// Sends uploads 64 KiB/s slower than the loopback, so that a progress bar
// can be seen between empty and full.
async function slowUploads(page) {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Network.enable');
  await cdp.send('Network.emulateNetworkConditions', {
    offline: false,
    latency: 0,
    downloadThroughput: -1,
    uploadThroughput: 64 * 1024,
  });
  return cdp;
}

async function fullSpeed(cdp) {
  await cdp.send('Network.emulateNetworkConditions', {
    offline: false,
    latency: 0,
    downloadThroughput: -1,
    uploadThroughput: -1,
  });
}

const PICTURE = { kind: 'image', name: 'photo.png', width: 800, height: 600 };
const DATA = { kind: 'bytes', name: 'data.bin', size: 150 * 1000, seed: 7 };
const TOO_BIG = { kind: 'bytes', name: 'huge.bin', size: MAX_BYTES + 50 * 1024, seed: 9 };

/** Waits until the tray `tray` locates holds `count` uploaded files. */
async function uploaded(tray, count) {
  await eventually(async () => (await tray.locator('li[data-state="done"]').count()) === count, {
    timeout: 30000,
    message: `${count} files uploaded`,
    describe: () => tray.evaluate((el) => el.innerHTML),
  });
}

/** Checks the progress bars of `names` ended full, and those of `partly`
 * (large enough to take a while) were seen in between. */
async function assertProgress(page, names, partly) {
  const seen = await page.evaluate(() => window.progressSeen);
  for (const name of names) {
    const states = seen[name] || [];
    assert.ok(states.length > 0, `a progress bar for ${name}`);
    const [value, max] = states.at(-1).split('/').map(Number);
    assert.ok(max > 0 && value === max, `${name}'s bar ends full: ${states.join(' ')}`);
    const partial = states.some((s) => {
      const [v, m] = s.split('/').map(Number);
      return v > 0 && v < m;
    });
    if (partly.includes(name)) assert.ok(partial, `${name}'s bar was seen partly full: ${states.join(' ')}`);
  }
}

describe('attachments', () => {
  let server;
  let shop;
  let browser;

  before(async () => {
    const pages = {};
    shop = await hostSite(pages);
    server = await ChatServer.start({
      env: { CHAT_ALLOWED_ORIGINS: shop.origin, CHAT_MAX_ATTACHMENT_BYTES: String(MAX_BYTES) },
    });
    pages['/'] = () => shopPage(server);
    // Sites with a policy of their own: one that allows the chat server's
    // images, one that does not.
    const strict = (images) => ({
      html: shopPage(server).replace(/<style>[\s\S]*<\/style>/, ''),
      headers: {
        'content-security-policy':
          `default-src 'self'; script-src 'self' ${server.url}; style-src 'self'; ` +
          `connect-src ${server.url} ${server.url.replace('http', 'ws')}` +
          (images ? `; img-src 'self' ${server.url}` : ''),
      },
    });
    pages['/strict-images'] = () => strict(true);
    pages['/fr'] = () => shopPage(server, 'data-lang="fr"');
    pages['/strict'] = () => strict(false);
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await shop?.close();
    await server?.close();
  });

  test('the chat page: drop and paste, progress, a preview and a download at the other end', async () => {
    const ada = await newPage(browser);
    await signIn(ada, server, await server.token('ada', { name: 'Ada' }));
    const bob = await newPage(browser);
    await signIn(bob, server, await server.token('bob', { name: 'Bob' }));
    const roomId = await createRoom(ada, 'Files', ['bob']);
    for (const page of [ada, bob]) {
      await page.locator(`#rooms button[data-room="${roomId}"]`).click();
      await page.locator('#room-title', { hasText: 'Files' }).waitFor();
    }
    // The attach button is labelled, and opens a file picker.
    const chooser = ada.waitForEvent('filechooser');
    await ada.getByRole('button', { name: 'Attach files' }).click();
    assert.equal((await chooser).isMultiple(), true);

    // Two files dropped on the conversation, uploaded slowly: each gets a
    // bar that fills.
    const cdp = await slowUploads(ada);
    await deliver(ada.locator('#messages'), 'drop', [PICTURE, DATA]);
    await ada.locator('#tray li[data-upload]').nth(1).waitFor();
    await ada.locator('#tray progress').first().waitFor();
    await uploaded(ada.locator('#tray'), 2);
    await fullSpeed(cdp);
    await assertProgress(ada, ['photo.png', 'data.bin'], ['data.bin']);
    await screenshot(ada, 'chat-page-attachments-tray');

    await ada.locator('#input').fill('Here are the files');
    await ada.locator('#input').press('Enter');
    await ada.locator('#tray').waitFor({ state: 'hidden' });

    // Bob gets the message: the picture as its thumbnail, loaded, sized
    // before it loads, linking to the full file; the data as a download.
    const message = bob.locator('#messages .msg', { hasText: 'Here are the files' });
    await message.waitFor();
    const img = message.locator('.files img');
    const shown = await imageState(img);
    assert.match(shown.src, /\/v1\/attachments\/[^/?]+\/thumbnail\?/, 'the thumbnail URL');
    assert.ok(shown.naturalWidth > 0, 'the thumbnail loaded');
    assert.equal(shown.naturalWidth, 320, 'the thumbnail is 320 px on its longest side');
    assert.deepEqual([shown.width, shown.height], ['320', '240']);
    assert.match(shown.href, /\/v1\/attachments\/[^/?]+\?exp=/, 'the preview links to the whole file');
    assert.equal(await img.getAttribute('alt'), 'photo.png');
    const link = message.locator('.files a.file-link');
    assert.match(await link.textContent(), /data\.bin.*150 kB/);
    const fetched = await linkBytes(link);
    assert.equal(fetched.status, 200);
    assert.deepEqual(fetched.bytes, [...testBytes(DATA.size, DATA.seed)], 'the bytes that were sent');
    // Ada's own copy shows the same.
    const own = ada.locator('#messages .msg.mine', { hasText: 'Here are the files' });
    assert.ok((await imageState(own.locator('.files img'))).naturalWidth > 0);

    // A screenshot pasted into the text box, sent without text.
    await deliver(ada.locator('#input'), 'paste', [{ kind: 'image', name: 'image.png', width: 200, height: 400 }]);
    const pasted = ada.locator('#tray li[data-state="done"] .file-name');
    await pasted.waitFor();
    assert.match(await pasted.textContent(), /^pasted-\d{8}-\d{6}\.png$/);
    await ada.locator('#input').press('Enter');
    const filesOnly = bob.locator('#messages .msg').filter({ has: bob.locator('.files img') }).nth(1);
    await filesOnly.waitFor();
    assert.equal(await filesOnly.locator('.text').count(), 0, 'no empty text line');
    const small = await imageState(filesOnly.locator('img'));
    assert.ok(small.naturalWidth > 0);
    assert.deepEqual([small.width, small.height], ['160', '320']);

    // Over the server's limit: the file is marked, the error says why, and
    // nothing is sent.
    const before = await bob.locator('#messages .msg').count();
    await deliver(ada.locator('#messages'), 'drop', [TOO_BIG]);
    await ada.locator('#tray li[data-state="failed"]').waitFor();
    await ada.locator('#send-error', { hasText: 'huge.bin was not attached' }).waitFor();
    // The server's limit, in a size people read.
    assert.match(await ada.locator('#send-error').textContent(), /at most 262 kB/);
    await ada.locator('#input').press('Enter');
    await ada.getByRole('button', { name: 'Remove huge.bin' }).click();
    await ada.locator('#tray').waitFor({ state: 'hidden' });
    assert.equal(await bob.locator('#messages .msg').count(), before);
    await screenshot(bob, 'chat-page-attachments');

    assert.deepEqual(ada.errors, []);
    assert.deepEqual(bob.errors, []);
    await ada.context().close();
    await bob.context().close();
  });

  test('the widget on another origin: drop and paste, previews on both sides, the error', async () => {
    const agent = await newPage(browser);
    await signIn(agent, server, await server.token('alice', { name: 'Alice', roles: ['support'] }));
    const visitor = await newPage(browser);
    await visitor.goto(`${shop.origin}/`);
    await visitor.locator('.launcher').click();
    await visitor.locator('.panel').waitFor({ state: 'visible' });
    await visitor.getByRole('button', { name: 'Attach files' }).waitFor();

    const cdp = await slowUploads(visitor);
    await deliver(visitor.locator('.log'), 'drop', [PICTURE, DATA]);
    await visitor.locator('.tray li[data-upload]').nth(1).waitFor();
    await uploaded(visitor.locator('.tray'), 2);
    await fullSpeed(cdp);
    await assertProgress(visitor, ['photo.png', 'data.bin'], ['data.bin']);
    await visitor.locator('textarea').fill('My invoice and a photo');
    await visitor.locator('textarea').press('Enter');

    // The visitor's own message, on the shop's origin: the thumbnail comes
    // from the chat server and loads.
    const mine = visitor.locator('.log .msg.mine', { hasText: 'My invoice and a photo' });
    await mine.locator('.files img').waitFor();
    const own = await imageState(mine.locator('.files img'));
    assert.ok(own.src.startsWith(`${server.url}/v1/attachments/`), `resolved against the chat server: ${own.src}`);
    assert.ok(own.naturalWidth > 0, 'the thumbnail loaded on the other origin');

    // The agent gets both files.
    const room = agent.locator('#rooms button', { hasText: 'Support: Visitor' });
    await room.waitFor();
    await room.click();
    const message = agent.locator('#messages .msg', { hasText: 'My invoice and a photo' });
    await message.waitFor();
    const shown = await imageState(message.locator('.files img'));
    assert.match(shown.src, /\/thumbnail\?/);
    assert.ok(shown.naturalWidth > 0);
    const fetched = await linkBytes(message.locator('.files a.file-link'));
    assert.deepEqual(fetched.bytes, [...testBytes(DATA.size, DATA.seed)]);

    // A pasted screenshot, alone.
    const screenshotFile = { kind: 'image', name: 'image.png', width: 300, height: 300 };
    await deliver(visitor.locator('textarea'), 'paste', [screenshotFile]);
    await visitor.locator('.tray li[data-state="done"]').waitFor();
    await visitor.locator('textarea').press('Enter');
    const pasted = agent.locator('#messages .msg').filter({ has: agent.locator('.files img') }).nth(1);
    await pasted.waitFor();
    assert.ok((await imageState(pasted.locator('img'))).naturalWidth > 0);

    // And the agent's answer with a file reaches the widget as a link.
    // (The agent's page drops it; the visitor sees it on the shop's page.)
    await deliver(agent.locator('#messages'), 'drop', [{ kind: 'bytes', name: 'label.bin', size: 2000, seed: 3 }]);
    await agent.locator('#tray li[data-state="done"]').waitFor();
    await agent.locator('#input').fill('Your return label');
    await agent.locator('#input').press('Enter');
    const answer = visitor.locator('.log .msg:not(.mine)', { hasText: 'Your return label' });
    await answer.locator('a.file-link', { hasText: 'label.bin' }).waitFor();

    // Too large: the error line says so, nothing is sent.
    await deliver(visitor.locator('.log'), 'drop', [TOO_BIG]);
    await visitor.locator('.tray li[data-state="failed"]').waitFor();
    await visitor.locator('.error', { hasText: 'huge.bin was not attached: a file may have at most 262 kB' }).waitFor();
    await screenshot(visitor, 'widget-attachments');
    await visitor.getByRole('button', { name: 'Remove huge.bin' }).click();
    await visitor.locator('.tray').waitFor({ state: 'hidden' });

    assert.deepEqual(visitor.errors, []);
    assert.deepEqual(agent.errors, []);
    await visitor.context().close();
    await agent.context().close();
  });

  test('the widget on a site with a Content-Security-Policy: previews where img-src allows them', async () => {
    for (const [path, previews] of [['/strict-images', true], ['/strict', false]]) {
      const visitor = await newPage(browser);
      await visitor.goto(`${shop.origin}${path}`);
      await visitor.locator('.launcher').click();
      await visitor.getByRole('button', { name: 'Attach files' }).waitFor();
      await deliver(visitor.locator('.log'), 'drop', [{ ...PICTURE, name: `shot-${previews}.png` }]);
      await uploaded(visitor.locator('.tray'), 1);
      await visitor.locator('textarea').press('Enter');
      const mine = visitor.locator('.log .msg.mine').filter({ has: visitor.locator('.files') }).last();
      await mine.waitFor();
      if (previews) {
        assert.ok((await imageState(mine.locator('img'))).naturalWidth > 0, 'the thumbnail loaded');
        assert.deepEqual(visitor.errors, []);
      } else {
        // Refused by the site's policy: offered as a download instead.
        await mine.locator('a.file-link', { hasText: 'shot-false.png' }).waitFor();
        assert.equal(await mine.locator('img').count(), 0);
      }
      await visitor.context().close();
    }
  });

  test('the widget in French words the server\'s refusal in French', async () => {
    const visitor = await newPage(browser);
    await visitor.goto(`${shop.origin}/fr`);
    await visitor.locator('.launcher').click();
    await visitor.getByRole('button', { name: 'Joindre des fichiers' }).waitFor();
    await deliver(visitor.locator('.log'), 'drop', [TOO_BIG]);
    await visitor.locator('.error', { hasText: "huge.bin n'a pas été joint : le fichier est trop volumineux (" }).waitFor();
    assert.equal(await visitor.getByRole('button', { name: 'Retirer huge.bin' }).count(), 1);
    await visitor.context().close();
  });

  test('at most ten files per message', async () => {
    const ada = await newPage(browser);
    await signIn(ada, server, await server.token('ada', { name: 'Ada' }));
    const roomId = await createRoom(ada, 'Many files');
    await ada.locator(`#rooms button[data-room="${roomId}"]`).click();
    const eleven = Array.from({ length: 11 }, (_, i) => ({ kind: 'bytes', name: `n${i + 1}.bin`, size: 10, seed: i }));
    await deliver(ada.locator('#messages'), 'drop', eleven);
    await uploaded(ada.locator('#tray'), 10);
    await ada.locator('#send-error', { hasText: 'At most 10 files per message: n11.bin not added.' }).waitFor();
    await ada.locator('#input').press('Enter');
    const sent = ada.locator('#messages .msg.mine').filter({ has: ada.locator('a.file-link', { hasText: 'n10.bin' }) });
    await sent.waitFor();
    assert.equal(await sent.locator('a.file-link').count(), 10);
    await ada.locator('#tray').waitFor({ state: 'hidden' });
    assert.deepEqual(ada.errors, []);
    await ada.context().close();
  });

  test('past the storage quota, the error line says so', async () => {
    // Each file counts at least 64 KiB: three fit in 200 KiB, a fourth does not.
    const small = await ChatServer.start({ env: { CHAT_ATTACHMENT_QUOTA_BYTES: String(200 * 1024) } });
    try {
      const ada = await newPage(browser);
      await signIn(ada, small, await small.token('ada', { name: 'Ada' }));
      const roomId = await createRoom(ada, 'Quota');
      await ada.locator(`#rooms button[data-room="${roomId}"]`).click();
      const files = [1, 2, 3].map((seed) => ({ kind: 'bytes', name: `part${seed}.bin`, size: 1000, seed }));
      await deliver(ada.locator('#messages'), 'drop', files);
      await uploaded(ada.locator('#tray'), 3);
      await deliver(ada.locator('#messages'), 'drop', [{ kind: 'bytes', name: 'one-more.bin', size: 1000, seed: 4 }]);
      await ada.locator('#tray li[data-state="failed"]', { hasText: 'one-more.bin' }).waitFor();
      await ada.locator('#send-error', { hasText: 'one-more.bin was not attached' }).waitFor();
      assert.match(await ada.locator('#send-error').textContent(), /quota of 205 kB/);
      // The three that fit still go.
      await ada.locator('#input').fill('Three parts');
      await ada.locator('#input').press('Enter');
      // The acknowledged message, not the pending copy shown while it is
      // sent (which lists the files by name, without links).
      const sent = ada.locator('#messages .msg.mine:not(.pending)', { hasText: 'Three parts' });
      await sent.waitFor();
      assert.equal(await sent.locator('a.file-link').count(), 3);
      await ada.locator('#tray li[data-state="failed"]').waitFor();
      assert.deepEqual(ada.errors, []);
      await ada.context().close();
    } finally {
      await small.close();
    }
  });

  test('a page open past its links\' expiry fetches fresh ones before it opens a file', async () => {
    // Signed links last an hour or two: rather than wait, the page is told
    // it is three hours later (the server, which still takes the old link,
    // answers the same link again: it rounds expiries so that every process
    // signs alike). What matters here is that the page asks for the message
    // again before it opens an old link.
    const ada = await newPage(browser);
    const asked = [];
    ada.on('websocket', (ws) =>
      ws.on('framesent', ({ payload }) => {
        if (String(payload).includes('"room:history"')) asked.push(JSON.parse(payload).data);
      }),
    );
    await signIn(ada, server, await server.token('ada', { name: 'Ada' }));
    const roomId = await createRoom(ada, 'Old links');
    await ada.locator(`#rooms button[data-room="${roomId}"]`).click();
    const file = { kind: 'bytes', name: 'notes.bin', size: 3000, seed: 5 };
    await deliver(ada.locator('#messages'), 'drop', [file]);
    await ada.locator('#tray li[data-state="done"]').waitFor();
    await ada.locator('#input').press('Enter');
    const link = ada.locator('#messages .msg.mine a.file-link');
    await link.waitFor();
    const seq = Number(await ada.locator('#messages .msg.mine').last().getAttribute('data-seq'));
    asked.length = 0;

    await ada.evaluate(() => {
      const realNow = Date.now.bind(Date);
      Date.now = () => realNow() + 3 * 3600 * 1000;
    });
    const opened = ada.context().waitForEvent('request', (r) => r.url().includes('/v1/attachments/'));
    await link.click();
    const request = await opened;
    assert.deepEqual(asked, [{ room_id: roomId, after_seq: seq - 1, limit: 1 }], 'the message was fetched again');
    assert.match(request.url(), /\/v1\/attachments\/[^/?]+\?exp=\d+&sig=/);
    const fetched = await linkBytes(link);
    assert.equal(fetched.status, 200);
    assert.deepEqual(fetched.bytes, [...testBytes(file.size, file.seed)]);
    assert.deepEqual(ada.errors, []);
    await ada.context().close();
  });
});
