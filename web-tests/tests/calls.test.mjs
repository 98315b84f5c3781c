// A video call placed through the chat page between two browser contexts:
// fake camera and microphone, no STUN server (host candidates on loopback,
// mDNS hiding off), the incoming-call dialog, accept, both
// RTCPeerConnections reaching `connected`, mute and camera toggles, hang up,
// and the call's line in both histories; and a call that outlives a server
// restart, taken over by both pages' new sessions.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ChatServer, launchBrowser, newPage, screenshot, signIn } from '../lib/harness.mjs';

describe('calls on the chat page', () => {
  let server;
  let browser;

  before(async () => {
    server = await ChatServer.start();
    browser = await launchBrowser({
      args: [
        '--use-fake-device-for-media-stream',
        '--use-fake-ui-for-media-stream',
        '--disable-features=WebRtcHideLocalIpsWithMdns',
        '--autoplay-policy=no-user-gesture-required',
      ],
    });
  });

  after(async () => {
    await browser?.close();
    await server?.close();
  });

  test('a video call connects both peers, and leaves its line in the history', async () => {
    const permissions = { permissions: ['camera', 'microphone'] };
    const bob = await newPage(browser, permissions);
    await signIn(bob, server, await server.token('bob', { name: 'Bob' }));
    const ada = await newPage(browser, permissions);
    await signIn(ada, server, await server.token('ada', { name: 'Ada' }));

    await ada.locator('#search').fill('bo');
    await ada.locator('#results label', { hasText: 'Bob' }).locator('input').check();
    await ada.locator('#start-direct').click();
    await ada.locator('#room-title', { hasText: 'Bob' }).waitFor();
    const bobsRoom = bob.locator('#rooms button', { hasText: 'Ada' });
    await bobsRoom.waitFor();
    await bobsRoom.click();

    // Ada calls; Bob's page rings.
    await ada.locator('#call-buttons').waitFor();
    await ada.locator('#call-video').click();
    await ada.locator('#call-status', { hasText: 'Calling' }).waitFor();
    const dialog = bob.getByRole('alertdialog');
    await dialog.waitFor();
    assert.match(await dialog.textContent(), /Ada is calling you \(video\)/);
    await screenshot(bob, 'call-incoming');
    await bob.locator('#incoming-accept').click();
    await dialog.waitFor({ state: 'hidden' });

    // Both peer connections connect over loopback, with no STUN or TURN.
    for (const page of [ada, bob]) {
      await page.locator('#call[data-connection="connected"]').waitFor({ timeout: 20000 });
      await page.locator('#call-status', { hasText: 'Video call with' }).waitFor();
      await page.locator('#call-timer', { hasText: /^0:0\d$/ }).waitFor();
    }
    // The remote video plays the other side's fake camera.
    for (const page of [ada, bob]) {
      await page.waitForFunction(() => {
        const video = document.querySelector('#remote-video');
        return video && video.srcObject && video.videoWidth > 0;
      });
    }
    await screenshot(ada, 'call-connected', { doc: true });

    // Mute and camera off switch the local tracks, and say so.
    await ada.locator('#call-mute').click();
    assert.equal(await ada.locator('#call-mute').getAttribute('aria-pressed'), 'true');
    assert.equal(await ada.evaluate(() => document.querySelector('#local-video').srcObject.getAudioTracks()[0].enabled), false);
    await ada.locator('#call-camera').click();
    assert.equal(await ada.locator('#call-camera').getAttribute('aria-pressed'), 'true');
    await ada.locator('#call-camera').click();
    assert.equal(await ada.locator('#call-camera').getAttribute('aria-pressed'), 'false');

    await ada.waitForTimeout(1100);
    await bob.locator('#call-hangup').click();
    await ada.locator('#call').waitFor({ state: 'hidden' });
    await ada.locator('#call-error', { hasText: 'Call ended' }).waitFor();

    // The call's line, in both rooms' histories: sent by Ada, with its duration.
    for (const page of [ada, bob]) {
      const line = page.locator('#messages .msg.call-line');
      await line.waitFor();
      assert.equal(await line.getAttribute('data-outcome'), 'ended');
      assert.match(await line.locator('.text').textContent(), /^Video call, 0:0[1-9]$/);
    }
    assert.equal(await ada.locator('#messages .msg.call-line .who').textContent(), 'You');
    assert.equal(await bob.locator('#messages .msg.call-line .who').textContent(), 'Ada');

    // A call Bob declines leaves a "declined" line.
    await ada.locator('#call-audio').click();
    await dialog.waitFor();
    await bob.locator('#incoming-decline').click();
    await ada.locator('#call-error', { hasText: 'Call declined' }).waitFor();
    await ada.locator('#messages .msg.call-line[data-outcome="rejected"]').waitFor();
    assert.deepEqual(ada.errors, []);
    assert.deepEqual(bob.errors, []);
    await ada.context().close();
    await bob.context().close();
  });

  test('a call outlives a server restart: both pages take it over on their new sessions', async () => {
    const permissions = { permissions: ['camera', 'microphone'] };
    const cat = await newPage(browser, permissions);
    await signIn(cat, server, await server.token('cat', { name: 'Cat' }));
    const dan = await newPage(browser, permissions);
    await signIn(dan, server, await server.token('dan', { name: 'Dan' }));
    await dan.locator('#search').fill('ca');
    await dan.locator('#results label', { hasText: 'Cat' }).locator('input').check();
    await dan.locator('#start-direct').click();
    await dan.locator('#room-title', { hasText: 'Cat' }).waitFor();
    await dan.locator('#call-audio').click();
    await cat.locator('#incoming-accept').click();
    for (const page of [cat, dan]) await page.locator('#call[data-connection="connected"]').waitFor({ timeout: 20000 });

    // The server restarts: every session closes (1001), the pages reconnect
    // on new sessions and send call:rejoin within the 10 s grace.
    await server.restart();
    for (const page of [cat, dan]) await page.locator('body[data-connection="open"]').waitFor({ timeout: 20000 });
    await dan.waitForTimeout(12000);
    for (const page of [cat, dan]) {
      assert.equal(await page.locator('#call').isVisible(), true, 'the call goes on past the grace');
      assert.equal(await page.locator('#call-error').textContent(), '');
    }
    await dan.locator('#call-hangup').click();
    await cat.locator('#call-error', { hasText: 'Call ended' }).waitFor();
    const line = cat.locator('#messages .msg.call-line');
    await line.waitFor();
    assert.equal(await line.getAttribute('data-outcome'), 'ended');
    assert.deepEqual(cat.errors, []);
    assert.deepEqual(dan.errors, []);
  });
});
