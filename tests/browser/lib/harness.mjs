// Starts the real daas-appliance (port 0, plain HTTP on loopback, a temp
// state dir, `serve --demo`) and Debian's Chromium through playwright-core.
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, createWriteStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = dirname(fileURLToPath(import.meta.url));
export const ROOT = resolve(HERE, '../../..');
export const RESULTS = resolve(HERE, '../test-results');
export const ADMIN_PW = 'admin-password-1';
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-quic',
];

export function applianceBin() {
  if (process.env.DAAS_APPLIANCE_BIN) return process.env.DAAS_APPLIANCE_BIN;
  const t = process.env.CARGO_TARGET_DIR || 'target';
  return join(isAbsolute(t) ? t : join(ROOT, t), 'debug', 'daas-appliance');
}

/** Whether this machine can run the suite; else a reason to skip loudly. */
export function missing() {
  if (!existsSync(CHROMIUM)) return `${CHROMIUM} is missing (apt-get install chromium)`;
  if (!existsSync(applianceBin())) return `${applianceBin()} is missing (cargo build -p daas-appliance)`;
  return null;
}

/**
 * A running appliance. `extra` is TOML appended to the config; `idle` sets
 * the session idle expiry in seconds.
 */
export async function startAppliance({ extra = '', demo = true } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'daas-browser-'));
  chmodSync(dir, 0o711);
  const config = join(dir, 'appliance.toml');
  writeFileSync(config, `[server]\nlisten = "127.0.0.1:0"\ntls = "off"\n[paths]\nstate_dir = "${join(dir, 'state')}"\n${extra}`);
  const add = spawnSync(applianceBin(), ['--config', config, 'user', 'add', 'admin', '--role', 'admin', '--password-stdin'], {
    input: ADMIN_PW,
    encoding: 'utf8',
  });
  if (add.status !== 0) throw new Error(`user add failed: ${add.stderr}`);
  const a = { dir, config, stateDir: join(dir, 'state'), child: null, url: null };
  await spawnDaemon(a, demo);
  a.stop = () => stopDaemon(a, true);
  a.restart = async () => {
    await stopDaemon(a, false);
    await spawnDaemon(a, demo);
  };
  a.log = () => {
    try {
      return readFileSync(join(dir, 'daemon.log'), 'utf8');
    } catch {
      return '';
    }
  };
  if (demo) await waitForApp(a, 'XTerm');
  return a;
}

async function spawnDaemon(a, demo) {
  const args = ['--config', a.config, 'serve'];
  if (demo) args.push('--demo');
  const child = spawn(applianceBin(), args, {
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stderr.pipe(createWriteStream(join(a.dir, 'daemon.log'), { flags: 'a' }));
  a.child = child;
  a.url = await new Promise((ok, fail) => {
    let buf = '';
    const timer = setTimeout(() => fail(new Error('the appliance did not start within 60 s')), 60000);
    child.stdout.on('data', (d) => {
      buf += d;
      const m = buf.match(/DaaS appliance listening on (\S+)/);
      if (m) {
        clearTimeout(timer);
        ok(m[1]);
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      fail(new Error(`the appliance exited (${code}) before listening: ${readFileSync(join(a.dir, 'daemon.log'), 'utf8').slice(-2000)}`));
    });
  });
  child.stdout.resume();
}

function stopDaemon(a, removeDir) {
  return new Promise((done) => {
    const c = a.child;
    const finish = () => {
      if (removeDir && !process.env.KEEP_STATE) rmSync(a.dir, { recursive: true, force: true });
      done();
    };
    if (!c || c.exitCode !== null) return finish();
    const kill = setTimeout(() => c.kill('SIGKILL'), 20000);
    c.once('exit', () => {
      clearTimeout(kill);
      finish();
    });
    c.kill('SIGTERM');
  });
}

/** A plain API client (fetch with a cookie and our Origin). */
export async function apiLogin(url, username, password) {
  const r = await fetch(`${url}/api/v1/session`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Origin: url },
    body: JSON.stringify({ username, password }),
  });
  if (!r.ok) throw new Error(`login ${username}: ${r.status} ${await r.text()}`);
  const cookie = r.headers.get('set-cookie').split(';')[0];
  const call = async (method, path, body) => {
    const res = await fetch(`${url}${path}`, {
      method,
      headers: { Cookie: cookie, Origin: url, ...(body ? { 'Content-Type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : null };
  };
  return { call, cookie };
}

async function waitForApp(a, name) {
  const admin = await apiLogin(a.url, 'admin', ADMIN_PW);
  const deadline = Date.now() + 120000;
  for (;;) {
    const r = await admin.call('GET', '/api/v1/apps');
    if (r.status === 200 && r.body.items.some((x) => x.name === name)) return;
    if (Date.now() > deadline) throw new Error(`the demo app ${name} did not appear: ${a.log().slice(-3000)}`);
    await sleep(200);
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function launch() {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
}

/** A browser context at 1280×800 with the clipboard permissions for `url`. */
export async function newContext(browser, url, opts = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, ...opts });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: url });
  return context;
}

/** Runs `fn`; on failure saves a screenshot of every page of the contexts. */
export async function screenshotsOnFailure(name, contexts, fn) {
  try {
    return await fn();
  } catch (e) {
    mkdirSync(RESULTS, { recursive: true });
    let i = 0;
    for (const c of contexts()) {
      for (const p of c.pages()) {
        const file = join(RESULTS, `${name.replace(/[^A-Za-z0-9-]+/g, '-')}-${i++}.png`);
        await p.screenshot({ path: file }).catch(() => {});
        console.error(`screenshot: ${file} (${p.url()})`);
      }
    }
    throw e;
  }
}

export async function login(page, url, username, password) {
  await page.goto(`${url}/`);
  await page.getByLabel('User name').fill(username);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByRole('heading', { name: 'My apps' }).waitFor();
}

/**
 * The remote desktop as drawn: its size (the display's, as guacamole-common-js
 * knows it; its canvases are larger, in steps of 64 pixels), the distinct
 * colours in it and a hash of its pixels.
 */
export function canvasInfo(page) {
  return page.evaluate(() => {
    const d = window.daasDesktop || {};
    let best = null;
    for (const c of document.querySelectorAll('.desktop canvas')) {
      if (!best || c.width * c.height > best.width * best.height) best = c;
    }
    const w = Math.min(d.width || 0, best ? best.width : 0);
    const h = Math.min(d.height || 0, best ? best.height : 0);
    if (!w || !h) return { w: 0, h: 0, distinct: 0, hash: 0 };
    const px = best.getContext('2d').getImageData(0, 0, w, h).data;
    const colours = new Set();
    let hash = 2166136261;
    for (let i = 0; i < px.length; i += 4 * 3) {
      const v = (px[i] << 16) | (px[i + 1] << 8) | px[i + 2];
      if (colours.size < 1000) colours.add(v);
      hash = Math.imul(hash ^ v, 16777619) >>> 0;
    }
    return { w: d.width, h: d.height, distinct: colours.size, hash };
  });
}

/** Stops every live instance (a test starts from none). */
export async function stopAll(a) {
  const admin = await apiLogin(a.url, 'admin', ADMIN_PW);
  const live = await admin.call('GET', '/api/v1/instances?all=true&active=true');
  for (const i of live.body.items) {
    if (i.state !== 'stopping') await admin.call('POST', `/api/v1/instances/${i.id}/stop`);
  }
  await until(
    async () => (await admin.call('GET', '/api/v1/instances?all=true&active=true')).body.items.length,
    (n) => n === 0,
    'every instance to stop',
    30000,
  );
}

/** Waits until `check(value of probe())` holds; returns the last value. */
export async function until(probe, check, what, ms = 10000) {
  const deadline = Date.now() + ms;
  let v;
  for (;;) {
    v = await probe();
    if (check(v)) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}; last: ${JSON.stringify(v)}`);
    await sleep(100);
  }
}

/** Opens an app from "My apps" in a new tab; returns the tab. */
export async function openApp(page, name) {
  const [tab] = await Promise.all([page.context().waitForEvent('page'), page.getByRole('button', { name: `Open ${name}` }).click()]);
  await tab.waitForURL(/\/desktop\//, { timeout: 20000 });
  return tab;
}

/** Waits until the desktop tab shows a desktop: at least `minColours` colours. */
export function firstFrame(tab, ms = 10000, minColours = 3) {
  return until(
    () => canvasInfo(tab),
    (c) => c.w > 0 && c.distinct >= minColours,
    'a desktop on the canvas',
    ms,
  );
}

/** The instance's home on the local backend (files the desktop writes). */
export function instanceHome(a, instanceId) {
  return join(a.stateDir, 'local', 'instances', instanceId, 'home');
}
