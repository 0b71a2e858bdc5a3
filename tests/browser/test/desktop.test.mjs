// An end user in the portal: log in, open the demo XTerm in its own tab,
// see it, type, clipboard both ways with accents, resize, reconnect after a
// dropped tunnel, the idle warning, stop.
import { after, before, beforeEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  ADMIN_PW,
  ROOT,
  canvasInfo,
  firstFrame,
  instanceHome,
  launch,
  login,
  missing,
  newContext,
  openApp,
  screenshotsOnFailure,
  sleep,
  startAppliance,
  stopAll,
  until,
} from '../lib/harness.mjs';

const skip = missing() || false;
if (skip) console.error(`SKIPPED browser tests: ${skip}`);

let app;
let browser;
const contexts = [];

before(async () => {
  if (skip) return;
  app = await startAppliance();
  browser = await launch();
});

beforeEach(async () => {
  if (app) await stopAll(app);
});

after(async () => {
  if (browser) await browser.close();
  if (app) await app.stop();
});

/** Uncaught errors of any page: a test ends with none. */
const pageErrors = [];

async function context(opts) {
  const c = await newContext(browser, app.url, opts);
  c.on('weberror', (e) => pageErrors.push(`${e.page() ? e.page().url() : ''}: ${e.error().stack || e.error()}`));
  contexts.push(c);
  return c;
}

const instanceIdOf = (tab) => new URL(tab.url()).pathname.split('/').pop();

/** Types a shell line into the xterm and presses Enter. */
async function typeLine(tab, text) {
  await tab.keyboard.type(text, { delay: 5 });
  await tab.keyboard.press('Enter');
}

test('log in, open XTerm, type, clipboard both ways, resize, stop', { skip }, () =>
  screenshotsOnFailure(
    'desktop-flow',
    () => contexts,
    async () => {
      const ctx = await context();
      const page = await ctx.newPage();
      await login(page, app.url, 'admin', ADMIN_PW);
      await page.getByText('XTerm').first().waitFor();

      // Open: a new tab with the desktop; the canvas shows it within 10 s.
      const tab = await openApp(page, 'XTerm');
      const first = await firstFrame(tab, 10000);
      assert.ok(first.distinct > 2, `varied pixels: ${JSON.stringify(first)}`);
      await tab.bringToFront();
      await until(
        () => tab.evaluate(() => document.title),
        (t) => t.startsWith('XTerm'),
        'the tab title',
      );
      const iid = instanceIdOf(tab);

      // Typing changes the picture.
      await tab.mouse.move(400, 300);
      await sleep(300);
      const before = await canvasInfo(tab);
      await typeLine(tab, 'echo typed-in-the-browser');
      await until(
        () => canvasInfo(tab),
        (c) => c.hash !== before.hash,
        'the canvas to change after typing',
      );

      // Clipboard out: the desktop copies "café-out" (xclip), the browser's clipboard gets it.
      await typeLine(tab, "printf 'caf\\303\\251-out' | xclip -selection clipboard -i");
      await until(
        () => tab.evaluate(() => navigator.clipboard.readText().catch((e) => `error: ${e}`)),
        (t) => t === 'café-out',
        'the browser clipboard to hold café-out',
      );

      // Clipboard in: the browser's clipboard holds "naïve-in ✓"; focusing the tab sends it.
      await tab.evaluate(() => navigator.clipboard.writeText('naïve-in ✓'));
      await tab.evaluate(() => window.dispatchEvent(new Event('focus')));
      await sleep(500);
      await typeLine(tab, 'xclip -selection clipboard -o > ~/clip-in.txt');
      const file = join(instanceHome(app, iid), 'clip-in.txt');
      await until(
        () => (existsSync(file) ? readFileSync(file, 'utf8') : null),
        (t) => t === 'naïve-in ✓',
        `${file} to hold the pasted text`,
      );

      if (process.env.UPDATE_SCREENSHOT) {
        // The README's picture: a desktop with the portal's menu open.
        await typeLine(tab, "clear; printf 'Hello from the DaaS portal \\342\\234\\223\\n'; ls -la ~");
        await sleep(800);
        await tab.getByRole('button', { name: 'Desktop menu' }).click();
        await sleep(300);
        mkdirSync(join(ROOT, 'docs/images'), { recursive: true });
        await tab.screenshot({ path: join(ROOT, 'docs/images/portal-desktop.png') });
        await tab.keyboard.press('Escape');
        await tab.mouse.move(400, 300);
      }

      // The remote desktop follows the window's size.
      await tab.setViewportSize({ width: 1024, height: 640 });
      await until(
        () => canvasInfo(tab),
        (c) => c.w === 1024 && c.h === 640,
        'the remote desktop to become 1024×640',
      );
      await tab.setViewportSize({ width: 1280, height: 800 });
      await until(
        () => canvasInfo(tab),
        (c) => c.w === 1280 && c.h === 800,
        'the remote desktop to become 1280×800 again',
      );

      // Stop from "My apps": the app is no longer running, the tab says so.
      await page.bringToFront();
      await page.getByRole('button', { name: 'Stop XTerm' }).click();
      await page.getByRole('button', { name: 'Open XTerm' }).waitFor({ timeout: 20000 });
      await until(
        () => page.locator('[data-app="XTerm"] .app-state').innerText(),
        (t) => /Not running|Stopped/.test(t),
        'XTerm to be stopped',
        20000,
      );
      await tab.getByText('This desktop was stopped.').waitFor({ timeout: 15000 });
      await tab.close();
      assert.deepEqual(pageErrors, [], 'no uncaught errors in the pages');
    },
  ),
);

test('a German keyboard: umlauts, ß and a dead key reach the desktop as typed', { skip }, () =>
  screenshotsOnFailure(
    'german-keyboard',
    () => contexts,
    async () => {
      const ctx = await context({ locale: 'de-DE' });
      const page = await ctx.newPage();
      await login(page, app.url, 'admin', ADMIN_PW);
      const tab = await openApp(page, 'XTerm');
      await firstFrame(tab);
      await tab.bringToFront();
      await tab.mouse.move(400, 300);
      const iid = instanceIdOf(tab);
      // What Chromium reports for keys of a German layout: the produced
      // character as the key, the US position as the code; a dead key first
      // reports "Dead", then the composed character.
      const cdp = await ctx.newCDPSession(tab);
      const key = async (k, code, vk, text) => {
        await cdp.send('Input.dispatchKeyEvent', {
          type: text ? 'keyDown' : 'rawKeyDown',
          key: k,
          code,
          windowsVirtualKeyCode: vk,
          text,
          unmodifiedText: text,
        });
        await cdp.send('Input.dispatchKeyEvent', { type: 'keyUp', key: k, code, windowsVirtualKeyCode: vk });
      };
      await tab.keyboard.type('echo ', { delay: 5 });
      await key('ü', 'BracketLeft', 186, 'ü');
      await key('ß', 'Minus', 219, 'ß');
      await key('Dead', 'Equal', 221);
      await key('é', 'KeyE', 69, 'é');
      await typeLine(tab, ' > ~/de.txt');
      const file = join(instanceHome(app, iid), 'de.txt');
      await until(
        () => (existsSync(file) ? readFileSync(file, 'utf8') : null),
        (t) => t === 'üßé\n',
        `${file} to hold üßé`,
      );
      await tab.close();
    },
  ),
);

test('a dropped tunnel reconnects to the same desktop', { skip }, () =>
  screenshotsOnFailure(
    'reconnect',
    () => contexts,
    async () => {
      const ctx = await context();
      // Keep a handle on every WebSocket, to drop the tunnel as a network would.
      await ctx.addInitScript(() => {
        const Orig = window.WebSocket;
        window.__sockets = [];
        window.WebSocket = class extends Orig {
          constructor(...a) {
            super(...a);
            window.__sockets.push(this);
          }
        };
      });
      const page = await ctx.newPage();
      await login(page, app.url, 'admin', ADMIN_PW);
      const tab = await openApp(page, 'XTerm');
      await firstFrame(tab);
      await tab.bringToFront();
      const iid = instanceIdOf(tab);
      await tab.mouse.move(400, 300);
      await typeLine(tab, 'echo before-the-drop');
      await sleep(500);
      assert.equal(await tab.evaluate(() => window.daasDesktop.connects), 1);

      await tab.evaluate(() => window.__sockets.filter((s) => s.protocol === 'guacamole').forEach((s) => s.close()));
      await until(
        () => tab.evaluate(() => window.daasDesktop.connects),
        (n) => n === 2,
        'a second connection',
        15000,
      );
      await until(
        () => tab.locator('.desktop-page').getAttribute('data-phase'),
        (p) => p === 'connected',
        'connected again',
      );
      assert.equal(instanceIdOf(tab), iid, 'the same instance');
      // The session is the same: the shell still has its history.
      const shown = await firstFrame(tab);
      assert.ok(shown.distinct > 2);
      await typeLine(tab, 'echo after-the-drop > ~/after.txt');
      const file = join(instanceHome(app, iid), 'after.txt');
      await until(() => existsSync(file), Boolean, 'the shell to answer after reconnecting');
      await tab.close();
      await page.getByRole('button', { name: 'Stop XTerm' }).click();
      await page.getByRole('button', { name: 'Open XTerm' }).waitFor({ timeout: 20000 });
    },
  ),
);

test('a stalled connection shows "unstable", which goes away when data flows again', { skip }, () =>
  screenshotsOnFailure(
    'unstable',
    () => contexts,
    async () => {
      const ctx = await context();
      const page = await ctx.newPage();
      await login(page, app.url, 'admin', ADMIN_PW);
      const tab = await openApp(page, 'XTerm');
      await firstFrame(tab);
      const banner = tab.getByRole('status').filter({ hasText: 'Unstable connection' });
      // Freeze the appliance: nothing arrives for longer than the 1.5 s guacamole-common-js allows.
      process.kill(app.child.pid, 'SIGSTOP');
      try {
        await banner.waitFor({ timeout: 6000 });
      } finally {
        process.kill(app.child.pid, 'SIGCONT');
      }
      await banner.waitFor({ state: 'hidden', timeout: 10000 });
      assert.equal(await tab.locator('.desktop-page').getAttribute('data-phase'), 'connected');
      assert.equal(await tab.evaluate(() => window.daasDesktop.connects), 1, 'the same connection, not a new one');
      await tab.close();
    },
  ),
);

test('the idle warning counts down, input resets it, then the tab disconnects', { skip }, () =>
  screenshotsOnFailure(
    'idle',
    () => contexts,
    async () => {
      const ctx = await context();
      const page = await ctx.newPage();
      await login(page, app.url, 'admin', ADMIN_PW);
      const apps = await page.evaluate(() => fetch('/api/v1/apps').then((r) => r.json()));
      const xterm = apps.items.find((a) => a.name === 'XTerm');
      // A short idle policy for the test (?idle=SECONDS): the warning comes at half of it.
      await page.goto(`${app.url}/open/apps/${xterm.id}?idle=8`);
      await firstFrame(page);
      const banner = page.getByRole('alert').filter({ hasText: 'disconnects in' });
      await banner.waitFor({ timeout: 8000 });
      assert.match(await banner.innerText(), /disconnects in\s+\d+ s/);
      await page.keyboard.press('Shift');
      await banner.waitFor({ state: 'hidden', timeout: 3000 });
      await page.getByRole('heading', { name: 'Disconnected' }).waitFor({ timeout: 15000 });
      await page.getByText('without input').waitFor();
      await page.getByRole('button', { name: 'Reconnect' }).click();
      await until(
        () => page.locator('.desktop-page').getAttribute('data-phase'),
        (p) => p === 'connected',
        'connected again',
      );
      await firstFrame(page);
      // Stop it from the desktop's own menu (Ctrl+Alt+Shift).
      await page.keyboard.down('Control');
      await page.keyboard.down('Alt');
      await page.keyboard.down('Shift');
      await page.keyboard.up('Shift');
      await page.keyboard.up('Alt');
      await page.keyboard.up('Control');
      await page.getByRole('button', { name: 'Stop this desktop' }).click();
      await page.getByText('This desktop was stopped.').waitFor({ timeout: 15000 });
    },
  ),
);
