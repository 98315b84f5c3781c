// What every browser test shares: the real chat-server binary on 127.0.0.1
// with a temporary SQLite database, tokens minted by `chat-server token`, a
// second origin serving a sample host page, Debian's Chromium driven by
// playwright-core, and screenshots kept in web-tests/artifacts/.

import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, mkdirSync, openSync, readFileSync, rmSync, copyFileSync, existsSync } from 'node:fs';
import { createServer } from 'node:http';
import { connect, createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const ROOT = resolve(here, '..', '..');
export const ARTIFACTS = join(ROOT, 'web-tests', 'artifacts');
const DOC_IMAGES = join(ROOT, 'docs', 'img');
export const SECRET = 'browser-test-secret-with-more-than-32-bytes';
const run = promisify(execFile);

/** The binary under test: $CHAT_SERVER_BIN, else the debug build. */
export function serverBinary() {
  const bin = process.env.CHAT_SERVER_BIN || join(ROOT, 'target', 'debug', 'chat-server');
  if (!existsSync(bin)) {
    throw new Error(`${bin} does not exist: build it with \`cargo build -p chat-server\` or set CHAT_SERVER_BIN`);
  }
  return bin;
}

/** A TCP port of 127.0.0.1 that was free a moment ago. */
export function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = createNetServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

function cleanEnv(extra) {
  const env = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!key.startsWith('CHAT_') && key !== 'RUST_LOG') env[key] = value;
  }
  return { ...env, ...extra };
}

/** A chat-server process on 127.0.0.1 with its own temporary database.
 * `restart()` stops it gracefully and starts it again on the same port and
 * database. */
export class ChatServer {
  static async start({ env = {} } = {}) {
    const dir = mkdtempSync(join(tmpdir(), 'chat-web-tests-'));
    const server = new ChatServer(dir, await freePort(), env);
    await server.spawn();
    return server;
  }

  constructor(dir, port, env) {
    this.dir = dir;
    this.port = port;
    this.url = `http://127.0.0.1:${port}`;
    this.env = cleanEnv({
      CHAT_LISTEN: `127.0.0.1:${port}`,
      CHAT_DATABASE_URL: `sqlite://${join(dir, 'chat.db')}`,
      CHAT_JWT_SECRET: SECRET,
      CHAT_VISITOR_SESSIONS_PER_MINUTE: '1000',
      RUST_LOG: 'info',
      ...env,
    });
    this.child = null;
    this.starts = 0;
  }

  async spawn() {
    this.starts += 1;
    const log = openSync(join(this.dir, `server-${this.starts}.log`), 'w');
    this.child = spawn(serverBinary(), ['serve'], { env: this.env, stdio: ['ignore', 'ignore', log] });
    this.exited = new Promise((resolveExit) => this.child.once('exit', (code, signal) => resolveExit({ code, signal })));
    const deadline = Date.now() + 15000;
    for (;;) {
      if (this.child.exitCode !== null) throw new Error(`chat-server exited early:\n${this.logs()}`);
      try {
        const response = await fetch(`${this.url}/health`);
        if (response.ok) return;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`chat-server did not become healthy:\n${this.logs()}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  logs() {
    const parts = [];
    for (let i = 1; i <= this.starts; i += 1) {
      try {
        parts.push(readFileSync(join(this.dir, `server-${i}.log`), 'utf8'));
      } catch {
        // no log yet
      }
    }
    return parts.join('\n--- restart ---\n');
  }

  /** SIGTERM (sessions are closed with 1001, accepted sends committed), then waits for the exit. */
  async stop() {
    if (!this.child || this.child.exitCode !== null) return;
    this.child.kill('SIGTERM');
    const result = await Promise.race([this.exited, new Promise((r) => setTimeout(() => r(null), 15000))]);
    if (result === null) {
      this.child.kill('SIGKILL');
      await this.exited;
      throw new Error('chat-server did not stop within 15 s of SIGTERM');
    }
    return result;
  }

  async restart() {
    const exit = await this.stop();
    await this.spawn();
    return exit;
  }

  /** SIGKILL: the process dies at once, like a crash or a pulled cable. */
  async kill() {
    if (!this.child || this.child.exitCode !== null) return;
    this.child.kill('SIGKILL');
    await this.exited;
  }

  /** A token minted by `chat-server token`, signed with this server's secret. */
  async token(user, { name, roles = [], ttl = '2h' } = {}) {
    const args = ['token', '--user', user, '--ttl', ttl];
    if (name) args.push('--name', name);
    for (const role of roles) args.push('--role', role);
    const { stdout } = await run(serverBinary(), args, { env: this.env });
    return stdout.trim();
  }

  /** GET a JSON route of this server. */
  async get(path, token) {
    const response = await fetch(this.url + path, { headers: token ? { authorization: `Bearer ${token}` } : {} });
    return { status: response.status, body: await response.json() };
  }

  async close() {
    try {
      await this.stop();
    } finally {
      if (!process.env.KEEP_TEST_DIRS) rmSync(this.dir, { recursive: true, force: true });
    }
  }
}

/** A plain HTTP server on another 127.0.0.1 port: another origin, like a
 * customer's website embedding the widget. `pages` maps paths to pages,
 * read at each request. */
export async function hostSite(pages) {
  const server = createServer((req, res) => {
    const page = pages[new URL(req.url, 'http://x').pathname];
    if (page === undefined) {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found');
      return;
    }
    // A page is HTML, or a function giving HTML or {html, headers}.
    const made = typeof page === 'function' ? page() : page;
    const { html, headers = {} } = typeof made === 'string' ? { html: made } : made;
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store', ...headers });
    res.end(html);
  });
  const port = await freePort();
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  return {
    origin: `http://127.0.0.1:${port}`,
    close: () => new Promise((r) => server.close(r)),
  };
}

/** A TCP proxy on 127.0.0.1 in front of a server, whose cable can be pulled:
 * `cut()` drops every connection through it and refuses new ones (the
 * browser sees the network go, not a server that says goodbye), `restore()`
 * lets connections through again. */
export async function tcpProxy(targetPort) {
  const pairs = new Set();
  let blocked = false;
  const server = createNetServer((client) => {
    if (blocked) {
      client.destroy();
      return;
    }
    const upstream = connect(targetPort, '127.0.0.1');
    const pair = [client, upstream];
    pairs.add(pair);
    const end = () => {
      client.destroy();
      upstream.destroy();
      pairs.delete(pair);
    };
    for (const socket of pair) {
      socket.on('error', end);
      socket.on('close', end);
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  const port = await freePort();
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${port}`,
    connections: () => pairs.size,
    cut() {
      blocked = true;
      for (const [client, upstream] of pairs) {
        client.resetAndDestroy();
        upstream.destroy();
      }
      pairs.clear();
    },
    restore() {
      blocked = false;
    },
    close() {
      this.cut();
      return new Promise((r) => server.close(r));
    },
  };
}

/** Debian's Chromium, headless. */
export function launchBrowser({ args = [] } = {}) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    // No sandbox (CI runs as root); nothing that phones home: this machine
    // reaches no network beyond 127.0.0.1 and its package registries.
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-dev-shm-usage',
      '--disable-quic',
      '--no-first-run',
      '--disable-component-update',
      '--disable-sync',
      ...args,
    ],
  });
}

/** A new page that fails the test on uncaught page errors, collected in `errors`. */
export async function newPage(browser, options = {}) {
  const context = await browser.newContext({ viewport: { width: 1180, height: 760 }, ...options });
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (err) => page.errors.push(err.message));
  page.on('console', (msg) => {
    if (msg.type() === 'error' && !/Failed to load resource|WebSocket connection/.test(msg.text())) {
      page.errors.push(msg.text());
    }
  });
  return page;
}

/** Saves a screenshot in web-tests/artifacts/ and, for the README's
 * pictures (`doc`) with WEB_TESTS_DOC_IMAGES=1, in docs/img/. */
export async function screenshot(page, name, { doc = false } = {}) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const path = join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path });
  if (doc && process.env.WEB_TESTS_DOC_IMAGES === '1') {
    mkdirSync(DOC_IMAGES, { recursive: true });
    copyFileSync(path, join(DOC_IMAGES, `${name}.png`));
  }
  return path;
}

/** Signs in on the chat page with a token, and waits for the app to show. */
export async function signIn(page, server, token) {
  await page.goto(`${server.url}/`);
  await page.locator('#token').fill(token);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page.locator('#main').waitFor({ state: 'visible' });
  await page.locator('body[data-connection="open"]').waitFor();
}

/** The bodies of the messages shown in a chat page's open room, in order. */
export function pageBodies(page) {
  return page.locator('#messages .msg:not(.pending) .text').allTextContents();
}

/** The bodies shown in the widget, in order (the greeting left out). */
export function widgetBodies(page) {
  return page.locator('.log .msg:not(.greeting):not(.pending) .text').allTextContents();
}

/** A display name made to reorder the text around it, and a token for
 * `user` that carries it: with a right-to-left override (U+202E) where the
 * server accepts one; a server that refuses bidirectional controls in names
 * gets right-to-left letters instead, which reorder the neutral text around
 * them just the same unless they are isolated. */
export async function spoofingName(server, user, { roles = [] } = {}) {
  const override = 'Eve \u202Egnp.exe';
  try {
    const token = await server.token(user, { name: override, roles });
    const answer = await fetch(`${server.url}/v1/users/online`, { headers: { authorization: `Bearer ${token}` } });
    if (answer.status === 200) return { name: override, token };
  } catch {
    // Refused when the token is made: the fallback below.
  }
  const rtl = '\u05D0\u05D1\u05D9 (Eve)';
  return { name: rtl, token: await server.token(user, { name: rtl, roles }) };
}

/** How `text` is shown under the element `root` locates (in a shadow root
 * too): for each text node that holds it, whether it holds nothing else,
 * and its element's tag, `dir` and computed `unicode-bidi`. */
export function shownText(root, text) {
  return root.evaluate((el, wanted) => {
    const found = [];
    const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      if (!node.data.includes(wanted)) continue;
      const parent = node.parentElement;
      found.push({
        alone: node.data === wanted,
        tag: parent.tagName.toLowerCase(),
        dir: parent.getAttribute('dir'),
        bidi: getComputedStyle(parent).unicodeBidi,
      });
    }
    return found;
  }, text);
}

/** Whether a `shownText` entry is a bidi isolate of its own: nothing around
 * it in its text node, and an element that isolates it. */
export function isIsolated(shown) {
  return shown.alone && ['isolate', 'isolate-override', 'plaintext'].includes(shown.bidi);
}

/** Polls `fn` until it returns a truthy value or `timeout` passes. */
export async function eventually(fn, { timeout = 15000, interval = 100, message = 'condition', describe } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      const state = describe ? await describe().catch((err) => `(${err.message})`) : last;
      throw new Error(`timed out waiting for ${message}; last: ${state}`);
    }
    await new Promise((r) => setTimeout(r, interval));
  }
}

/** A customer's page with loud styles of its own, embedding the widget. */
export function shopPage(server, attributes = '') {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Shop</title>
<style>
  body { font-family: Georgia, serif; background: #fffbeb; margin: 40px; }
  button { background: lime !important; color: red !important; font-size: 40px !important; }
  li { color: red; font-size: 30px; }
  .msg, .panel { display: none !important; }
</style></head>
<body>
  <h1>Totally Real Shop</h1>
  <p>Our products are great. Ask us anything.</p>
  <button id="buy">Buy</button>
  <script src="${server.url}/widget.js" data-server="${server.url}" ${attributes}></script>
</body></html>`;
}
