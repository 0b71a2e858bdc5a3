// Benchmark: from the click on "Open" in "My apps" to the first frame of
// the desktop on the canvas of its new tab, local backend, demo XTerm.
// Each run starts a fresh instance (the previous one is stopped first).
//
//   cd tests/browser && npm run bench        # RUNS=10 by default
//
// Prints each run and the median, with where the time goes (marks the
// portal sets: daas-open, daas-opened, daas-running, daas-tunnel,
// daas-connected, daas-first-frame), and the share of the backend's
// instance start (POST open → running) in the total.
import { ADMIN_PW, apiLogin, launch, login, newContext, sleep, startAppliance, until } from '../lib/harness.mjs';

const RUNS = Number(process.env.RUNS || 10);
const app = await startAppliance();
const browser = await launch();
const results = [];
try {
  const ctx = await newContext(browser, app.url);
  const page = await ctx.newPage();
  await login(page, app.url, 'admin', ADMIN_PW);
  const api = await apiLogin(app.url, 'admin', ADMIN_PW);
  // Warm the browser's cache of the desktop's code once, as a returning user has it.
  await page.evaluate(() => {
    window.__clickAt = 0;
    document.addEventListener('click', () => (window.__clickAt = Date.now()), true);
  });
  for (let run = 0; run <= RUNS; run++) {
    await page.getByRole('button', { name: 'Open XTerm' }).waitFor({ timeout: 30000 });
    await sleep(300);
    const [tab] = await Promise.all([ctx.waitForEvent('page'), page.getByRole('button', { name: 'Open XTerm' }).click()]);
    const clickAt = await page.evaluate(() => window.__clickAt);
    await until(
      () => tab.evaluate(() => window.daasDesktop && window.daasDesktop.firstFrameAt).catch(() => 0),
      Boolean,
      'the first frame',
      30000,
    );
    const t = await tab.evaluate(() => {
      const m = Object.fromEntries(performance.getEntriesByType('mark').map((e) => [e.name, performance.timeOrigin + e.startTime]));
      return { firstFrameAt: window.daasDesktop.firstFrameAt, navAt: performance.timeOrigin, ...m };
    });
    const iid = new URL(tab.url()).pathname.split('/').pop();
    await tab.close();
    const r = {
      total: t.firstFrameAt - clickAt,
      page: t['daas-open'] - clickAt, // new tab, index.html, scripts
      open: t['daas-opened'] - t['daas-open'], // POST open
      start: t['daas-running'] - t['daas-opened'], // the backend starts the instance
      tunnel: t['daas-connected'] - t['daas-running'], // ticket, WebSocket, handshake
      frame: t['daas-first-frame'] - t['daas-connected'], // first picture drawn
    };
    if (run > 0) results.push(r); // run 0 warms the caches
    console.log(`${run === 0 ? 'warm-up' : `run ${run}`}: ${fmt(r)}`);
    const s = await api.call('POST', `/api/v1/instances/${iid}/stop`);
    if (s.status !== 202) throw new Error(`stop: ${JSON.stringify(s)}`);
    await until(
      async () => (await api.call('GET', `/api/v1/instances/${iid}`)).body.state,
      (st) => st === 'stopped',
      'the instance to stop',
      30000,
    );
  }
} finally {
  await browser.close();
  await app.stop();
}

function fmt(r) {
  return Object.entries(r)
    .map(([k, v]) => `${k} ${Math.round(v)} ms`)
    .join(', ');
}
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const keys = Object.keys(results[0]);
console.log('\nclick on Open → first frame, local backend, XTerm (median of ' + results.length + ')');
console.log('| step | median ms |');
console.log('| --- | ---: |');
for (const k of keys) console.log(`| ${k} | ${Math.round(median(results.map((r) => r[k])))} |`);
const total = median(results.map((r) => r.total));
const start = median(results.map((r) => r.start));
console.log(
  `\ntotal ${Math.round(total)} ms (goal ≤ 1500 ms: ${total <= 1500 ? 'met' : 'NOT met'}); backend start ${Math.round(start)} ms = ${((100 * start) / total).toFixed(0)} % of it; portal and tunnel ${Math.round(total - start)} ms`,
);
