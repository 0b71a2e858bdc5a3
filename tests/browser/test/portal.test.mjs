// The portal's edges: wrong password, a session that ends mid-use (back to
// the login, no loop), the keyboard alone, a phone-sized screen, the
// files and headers it is served with.
import { after, before, beforeEach, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ADMIN_PW,
  firstFrame,
  launch,
  login,
  missing,
  newContext,
  screenshotsOnFailure,
  sleep,
  startAppliance,
  stopAll,
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

async function context(opts) {
  const c = await newContext(browser, app.url, opts);
  contexts.push(c);
  return c;
}

test('a wrong password is refused with a sentence', { skip }, () =>
  screenshotsOnFailure(
    'wrong-password',
    () => contexts,
    async () => {
      const page = await (await context()).newPage();
      await page.goto(`${app.url}/`);
      await page.getByLabel('User name').fill('admin');
      await page.getByLabel('Password').fill('not-the-password');
      await page.getByRole('button', { name: 'Log in' }).click();
      await page.getByRole('alert').getByText('Wrong user name or password.').waitFor();
      assert.equal(new URL(page.url()).pathname, '/login');
      await page.getByText('Log in to open your apps.').waitFor();
      await page.getByLabel('Password').fill(ADMIN_PW);
      await page.getByRole('button', { name: 'Log in' }).click();
      await page.getByRole('heading', { name: 'My apps' }).waitFor();
    },
  ),
);

test('a session that ends mid-use leads back to the login, once, and back after it', { skip }, () =>
  screenshotsOnFailure(
    'session-expiry',
    () => contexts,
    async () => {
      const ctx = await context();
      const page = await ctx.newPage();
      await login(page, app.url, 'admin', ADMIN_PW);
      await page.getByRole('link', { name: 'Jobs' }).click();
      await page.getByRole('heading', { name: 'Jobs' }).waitFor();
      const api = [];
      page.on('request', (r) => r.url().includes('/api/') && api.push(r.url()));
      // The session ends elsewhere (as when it expires).
      const r = await ctx.request.delete(`${app.url}/api/v1/session`, { headers: { Origin: app.url } });
      assert.equal(r.status(), 204);
      await page.waitForURL(/\/login\?expired=1&next=%2Fjobs/, { timeout: 10000 });
      await page.getByText('Your session has ended').waitFor();
      // No loop: the login page asks nothing more of the API.
      const n = api.length;
      await sleep(3000);
      assert.equal(api.length, n, `requests after the redirect: ${api.slice(n).join(', ')}`);
      await page.getByLabel('User name').fill('admin');
      await page.getByLabel('Password').fill(ADMIN_PW);
      await page.getByRole('button', { name: 'Log in' }).click();
      await page.getByRole('heading', { name: 'Jobs' }).waitFor();
      assert.equal(new URL(page.url()).pathname, '/jobs');
    },
  ),
);

test('the keyboard alone: log in, open an app', { skip }, () =>
  screenshotsOnFailure(
    'keyboard',
    () => contexts,
    async () => {
      const ctx = await context();
      const page = await ctx.newPage();
      await page.goto(`${app.url}/`);
      await page.getByLabel('User name').waitFor();
      // The user name has the focus on arrival.
      await page.keyboard.type('admin');
      await page.keyboard.press('Tab');
      await page.keyboard.type(ADMIN_PW);
      await page.keyboard.press('Enter');
      await page.getByRole('heading', { name: 'My apps' }).waitFor();
      let focused = '';
      for (let i = 0; i < 20 && focused !== 'Open XTerm'; i++) {
        await page.keyboard.press('Tab');
        focused = await page.evaluate(() => document.activeElement.getAttribute('aria-label') || document.activeElement.textContent);
      }
      assert.equal(focused, 'Open XTerm', 'Tab reaches the Open button');
      const visible = await page.evaluate(() => {
        const s = getComputedStyle(document.activeElement);
        return s.outlineStyle !== 'none' && s.outlineWidth !== '0px';
      });
      assert.ok(visible, 'the focused button shows a focus ring');
      const [tab] = await Promise.all([ctx.waitForEvent('page'), page.keyboard.press('Enter')]);
      await tab.waitForURL(/\/desktop\//);
      await firstFrame(tab);
      await tab.close();
      await page.getByRole('button', { name: 'Stop XTerm' }).click();
      await page.getByRole('button', { name: 'Open XTerm' }).waitFor({ timeout: 20000 });
    },
  ),
);

test('the app list on a phone-sized screen', { skip }, () =>
  screenshotsOnFailure(
    'phone',
    () => contexts,
    async () => {
      const ctx = await context({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
      const page = await ctx.newPage();
      await login(page, app.url, 'admin', ADMIN_PW);
      const open = page.getByRole('button', { name: /^(Open|Show) XTerm$/ });
      await open.waitFor();
      const box = await open.boundingBox();
      assert.ok(box.x >= 0 && box.x + box.width <= 390, `the button fits: ${JSON.stringify(box)}`);
      assert.ok(box.height >= 40, `a finger-sized button: ${box.height}`);
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth);
      assert.ok(overflow <= 390, `no sideways scrolling: ${overflow}`);
    },
  ),
);

test('files and headers: hashed assets cached forever, index not, CSP, SPA fallback, JSON 404 under /api', { skip }, async () => {
  const index = await fetch(`${app.url}/`, { headers: { 'Accept-Encoding': 'gzip' } });
  assert.equal(index.status, 200);
  assert.equal(index.headers.get('cache-control'), 'no-cache');
  assert.match(index.headers.get('content-security-policy'), /default-src 'self'/);
  assert.equal(index.headers.get('x-frame-options'), 'DENY');
  const html = await index.text();
  const js = html.match(/src="(\/assets\/main-[^"]+\.js)"/)[1];
  const asset = await fetch(`${app.url}${js}`);
  assert.equal(asset.status, 200);
  assert.match(asset.headers.get('cache-control'), /immutable/);
  assert.match(asset.headers.get('content-type'), /javascript/);
  const etag = asset.headers.get('etag');
  const again = await fetch(`${app.url}${js}`, { headers: { 'If-None-Match': etag } });
  assert.equal(again.status, 304);
  const spa = await fetch(`${app.url}/desktop/some-id`);
  assert.equal(spa.status, 200);
  assert.match(await spa.text(), /<div id="root">/);
  const gone = await fetch(`${app.url}/assets/main-OLD.js`);
  assert.equal(gone.status, 404);
  const api = await fetch(`${app.url}/api/v1/nope`);
  assert.equal(api.status, 404);
  assert.equal((await api.json()).error.code, 'not_found');
});
