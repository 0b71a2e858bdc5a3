// An admin in the portal: a Baseimage through every phase to an App (live
// job logs, the configuration desktop, finalize), users, open sessions.
import { after, before, beforeEach, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ADMIN_PW,
  firstFrame,
  launch,
  login,
  missing,
  newContext,
  openApp,
  screenshotsOnFailure,
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
  app = await startAppliance({ extra: '[limits]\nenvironments_per_user = 3\n' });
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

/** Waits for the job panel titled `title` to succeed; returns its log text. */
async function jobSucceeds(page, title) {
  const panel = page.getByRole('region', { name: title });
  await panel.waitFor();
  await panel.locator('.badge', { hasText: 'Succeeded' }).waitFor({ timeout: 60000 });
  assert.equal(await panel.locator('.progress-value').innerText(), '100%');
  return panel.getByRole('log').innerText();
}

async function confirm(page, yes) {
  const dialog = page.getByRole('dialog');
  await dialog.getByRole('button', { name: yes }).click();
  await dialog.waitFor({ state: 'hidden' });
}

test('a Baseimage through every phase to an App, from the portal alone', { skip }, () =>
  screenshotsOnFailure(
    'lifecycle',
    () => contexts,
    async () => {
      const ctx = await context();
      const page = await ctx.newPage();
      await login(page, app.url, 'admin', ADMIN_PW);
      await page.getByRole('link', { name: 'Lifecycle' }).click();
      await page.getByRole('heading', { name: 'Lifecycle' }).waitFor();

      // Create a Baseimage on the local backend with a script and the interactive stop.
      await page.getByRole('button', { name: 'New Baseimage' }).click();
      const form = page.getByRole('dialog');
      await form.getByLabel('Name', { exact: true }).fill('Browser image');
      await form.getByLabel('Backend').selectOption('local');
      await form.getByRole('button', { name: 'Add script' }).click();
      await form.getByLabel('Script name').fill('ticks');
      await form.getByLabel('Shell script').fill('for i in 1 2 3 4; do echo tick-$i; sleep 1; done');
      await form.getByLabel(/Stop in interactive configuration/).check();
      await form.getByRole('button', { name: 'Create Baseimage' }).click();

      // Its job: live log lines while it runs, then 100 %.
      const panel = page.getByRole('region', { name: 'Create baseimage “Browser image”' });
      await panel.getByRole('log').getByText('tick-1').waitFor({ timeout: 30000 });
      const whileRunning = await panel.locator('.progress-value').innerText();
      assert.notEqual(whileRunning, '100%', 'log lines arrive while the job runs');
      const log = await jobSucceeds(page, 'Create baseimage “Browser image”');
      assert.match(log, /tick-4/);

      // ConfigInteractive: its desktop opens in a tab of its own.
      const row = page.locator('tr[data-object="Browser image"]');
      await until(
        () => row.innerText(),
        (t) => t.includes('Interactive configuration'),
        'config_interactive',
      );
      const [tab] = await Promise.all([ctx.waitForEvent('page'), row.getByRole('button', { name: 'Open desktop' }).click()]);
      await tab.waitForURL(/\/desktop\//);
      // The configuration desktop: a plain xterm, black on white on black.
      await firstFrame(tab, 15000, 2);
      await tab.getByRole('button', { name: 'Desktop menu' }).click();
      await tab.getByRole('button', { name: 'Stop this desktop' }).click();
      await tab.getByText('This desktop was stopped.').waitFor({ timeout: 15000 });
      await tab.close();

      // Finalize (the configuration desktop may take a moment to stop).
      await until(
        async () => {
          await row.getByRole('button', { name: 'Finalize' }).click();
          await confirm(page, 'Finalize');
          const err = page.locator('.lifecycle > p.error');
          await page.waitForTimeout(300);
          return (await err.count()) === 0;
        },
        Boolean,
        'finalize to be accepted',
        20000,
      );
      await jobSucceeds(page, 'Finalize “Browser image”');
      await until(
        () => row.innerText(),
        (t) => t.includes('Ready'),
        'the Baseimage to be ready',
      );

      // CloneTemplate → Environment.
      await row.getByRole('button', { name: 'New Environment' }).click();
      await form.getByLabel('Name', { exact: true }).fill('Browser env');
      await form.getByRole('button', { name: 'CloneTemplate' }).click();
      await jobSucceeds(page, 'CloneTemplate: environment “Browser env”');

      // CreateSnapshot → Deployment.
      await page.getByRole('link', { name: 'Environments' }).click();
      const env = page.locator('tr[data-object="Browser env"]');
      await until(
        () => env.innerText(),
        (t) => t.includes('Ready'),
        'the Environment to be ready',
        30000,
      );
      await env.getByRole('button', { name: 'New Deployment' }).click();
      await form.getByLabel('Name', { exact: true }).fill('Browser deployment');
      await form.getByRole('button', { name: 'CreateSnapshot' }).click();
      await jobSucceeds(page, 'CreateSnapshot: deployment “Browser deployment”');

      // RunApp → App, shared with every user.
      await page.getByRole('link', { name: 'Deployments' }).click();
      const dep = page.locator('tr[data-object="Browser deployment"]');
      await until(
        () => dep.innerText(),
        (t) => t.includes('Ready'),
        'the Deployment to be ready',
        30000,
      );
      await dep.getByRole('button', { name: 'New App' }).click();
      await form.getByLabel('Name', { exact: true }).fill('Browser app');
      await form.getByLabel('Command').fill('xterm -fa "DejaVu Sans Mono"');
      await form.getByRole('button', { name: 'RunApp' }).click();
      await jobSucceeds(page, 'RunApp: app “Browser app”');

      // The App is in "My apps" and opens.
      await page.getByRole('link', { name: 'My apps', exact: true }).click();
      const tab2 = await openApp(page, 'Browser app');
      await firstFrame(tab2, 10000);
      await tab2.close();
      await page.getByRole('button', { name: 'Stop Browser app' }).click();
      await page.getByRole('button', { name: 'Open Browser app' }).waitFor({ timeout: 20000 });
    },
  ),
);

test('a failing script: the job and the object say why; Retry runs it again; Delete removes it', { skip }, () =>
  screenshotsOnFailure(
    'failing-script',
    () => contexts,
    async () => {
      const ctx = await context();
      const page = await ctx.newPage();
      await login(page, app.url, 'admin', ADMIN_PW);
      await page.goto(`${app.url}/lifecycle/baseimages`);
      await page.getByRole('button', { name: 'New Baseimage' }).click();
      const form = page.getByRole('dialog');
      await form.getByLabel('Name', { exact: true }).fill('Broken image');
      await form.getByRole('button', { name: 'Add script' }).click();
      await form.getByLabel('Script name').fill('breaks');
      await form.getByLabel('Shell script').fill('echo about to fail; exit 3');
      await form.getByRole('button', { name: 'Create Baseimage' }).click();
      const panel = page.getByRole('region', { name: 'Create baseimage “Broken image”' });
      await panel.locator('.badge', { hasText: 'Failed' }).waitFor({ timeout: 30000 });
      await panel.getByRole('log').getByText('about to fail').waitFor();
      const row = page.locator('tr[data-object="Broken image"]');
      await row.locator('.badge', { hasText: 'Failed' }).waitFor({ timeout: 10000 });
      assert.ok((await row.locator('.error').innerText()).length > 0, 'the row says why');

      await row.getByRole('button', { name: 'Retry' }).click();
      await page.getByRole('region', { name: 'Retry “Broken image”' }).locator('.badge', { hasText: 'Failed' }).waitFor({ timeout: 30000 });

      await row.getByRole('button', { name: 'Delete Broken image' }).click();
      await page.getByRole('dialog').getByRole('button', { name: 'Delete' }).click();
      await page
        .getByRole('region', { name: 'Delete “Broken image”' })
        .locator('.badge', { hasText: 'Succeeded' })
        .waitFor({ timeout: 30000 });
      await row.waitFor({ state: 'detached', timeout: 10000 });
    },
  ),
);

test('users: create, disable, enable, reset a password; open sessions: stop one', { skip }, () =>
  screenshotsOnFailure(
    'users-sessions',
    () => contexts,
    async () => {
      const ctx = await context();
      const page = await ctx.newPage();
      await login(page, app.url, 'admin', ADMIN_PW);
      await page.getByRole('link', { name: 'Users' }).click();
      await page.getByLabel('User name').fill('alice');
      await page.getByLabel('Password (at least 8 characters)').fill('alice-password-1');
      await page.getByRole('button', { name: 'Create user' }).click();
      await page.getByText('The user alice can log in now.').waitFor();

      // A name already taken: the API's sentence, not a code.
      await page.getByLabel('User name').fill('alice');
      await page.getByLabel('Password (at least 8 characters)').fill('alice-password-1');
      await page.getByRole('button', { name: 'Create user' }).click();
      const err = page.locator('p.error[role="alert"]');
      await err.waitFor();
      const text = await err.innerText();
      assert.match(text, /^[A-Z].*\.$/, `a sentence: ${text}`);

      // Disabled: alice cannot log in.
      await page.getByRole('button', { name: 'Disable alice' }).click();
      await page.locator('tr[data-user="alice"]').getByText('Disabled').waitFor();
      const actx = await context();
      const alice = await actx.newPage();
      await alice.goto(`${app.url}/`);
      await alice.getByLabel('User name').fill('alice');
      await alice.getByLabel('Password').fill('alice-password-1');
      await alice.getByRole('button', { name: 'Log in' }).click();
      await alice.getByText('This account is disabled.').waitFor();

      // Enabled, with a new password.
      await page.getByRole('button', { name: 'Enable alice' }).click();
      await page.locator('tr[data-user="alice"]').getByText('Active').waitFor();
      await page.getByRole('button', { name: 'Reset the password of alice' }).click();
      await page.getByRole('dialog').getByLabel('New password').fill('alice-password-2');
      await page.getByRole('dialog').getByRole('button', { name: 'Set password' }).click();
      await page.getByText('The password of alice is changed').waitFor();
      await login(alice, app.url, 'alice', 'alice-password-2');
      await alice.getByRole('link', { name: 'Users' }).waitFor({ state: 'detached' });

      // alice opens XTerm; the admin sees her session and stops it.
      const tab = await openApp(alice, 'XTerm');
      await firstFrame(tab);
      await page.getByRole('link', { name: 'Sessions' }).click();
      await page.getByRole('button', { name: 'Stop XTerm of alice' }).click({ timeout: 15000 });
      await confirm(page, 'Stop');
      await tab.getByText('This desktop was stopped.').waitFor({ timeout: 15000 });
      assert.equal(await tab.locator('.desktop-page').getAttribute('data-phase'), 'ended');
      await page.getByText('No open sessions.').waitFor({ timeout: 20000 });

      // System: the configured backends and the reconciler's orphans.
      await page.getByRole('link', { name: 'System' }).click();
      await page.locator('tr[data-backend="local"]').waitFor();
      await page.getByText('No orphans.').waitFor();
    },
  ),
);
