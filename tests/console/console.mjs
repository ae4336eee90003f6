// Drives levee's admin web console in headless Chromium, as an admin on a phone would:
// a wrong token first (the API's error must show), then the operator's token, a
// switchover to the replica with a reason, and a look at the audit log. Prints one JSON
// line with what it saw; exits 1 (with {"ok": false, "error"}) at the first surprise.
//
// Environment: LEVEE_CONSOLE_URL (https://localhost:<port>/), LEVEE_CONSOLE_TOKEN,
// LEVEE_CONSOLE_WRONG_TOKEN, LEVEE_CONSOLE_SCREENSHOT (a .png path), and optionally
// CHROMIUM (default /usr/bin/chromium). The test CA is not installed in Chromium, so
// certificate errors are ignored for this one context.

import { chromium } from 'playwright-core';

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};

const url = env('LEVEE_CONSOLE_URL');
const token = env('LEVEE_CONSOLE_TOKEN');
const wrongToken = env('LEVEE_CONSOLE_WRONG_TOKEN');
const screenshot = env('LEVEE_CONSOLE_SCREENSHOT');
const executablePath = env('CHROMIUM', '/usr/bin/chromium');
const REASON = 'console drill <b>&amp;</b>';

// Chromium must never wait on the (closed) internet: no background fetches of any kind.
const ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

function check(condition, what) {
  if (!condition) throw new Error(what);
}

async function run(report) {
  const browser = await chromium.launch({ executablePath, args: ARGS, timeout: 30000 });
  try {
    const context = await browser.newContext({
      ignoreHTTPSErrors: true,
      viewport: { width: 390, height: 844 },
      deviceScaleFactor: 2,
      isMobile: true,
      hasTouch: true,
    });
    context.setDefaultTimeout(30000);
    const page = await context.newPage();
    const problems = [];
    page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
    page.on('console', (msg) => {
      // A refused token is a 401 that Chromium logs as a failed load: expected here.
      if (msg.type() === 'error' && !msg.text().startsWith('Failed to load resource')) {
        problems.push(`console: ${msg.text()}`);
      }
    });
    const requested = [];
    page.on('request', (request) => requested.push(request.url()));

    const response = await page.goto(url);
    check(response && response.status() === 200, `GET / answered ${response && response.status()}`);
    report.csp = response.headers()['content-security-policy'] ?? null;

    // A wrong token: the API's own words appear, nothing is stored.
    await page.fill('#token', wrongToken);
    await page.click('#login');
    const loginError = page.locator('#login-error');
    await loginError.waitFor({ state: 'visible' });
    report.wrong_token_error = (await loginError.textContent()).trim();
    check(await page.locator('#console-view').isHidden(), 'a wrong token opened the console');
    check(await page.evaluate(() => sessionStorage.length) === 0, 'a wrong token was stored');

    // The operator's token: the primary is active, only the switchover is offered.
    await page.fill('#token', token);
    await page.click('#login');
    await page.locator('#active-site').filter({ hasText: /^primary$/ }).waitFor();
    report.before = {
      site: (await page.textContent('#active-site')).trim(),
      epoch: Number(await page.textContent('#epoch')),
      switchover_enabled: await page.isEnabled('#switchover'),
      failback_enabled: await page.isEnabled('#failback'),
    };
    const stored = await page.evaluate(() => ({
      session: Object.values(sessionStorage),
      local: localStorage.length,
      url: location.href,
    }));
    report.token_in_session_storage = stored.session.includes(token);
    report.token_elsewhere = stored.local > 0 || stored.url.includes(token)
      || requested.some((u) => u.includes(token));
    await page.locator('#replica-health').filter({ hasText: 'ok' }).waitFor();
    report.replica_health = (await page.textContent('#replica-health')).trim();

    // Switch over: the reason is required, then the replica becomes active.
    await page.click('#switchover');
    await page.locator('#reason').waitFor({ state: 'visible' });
    report.confirm_enabled_without_reason = await page.isEnabled('#confirm');
    await page.fill('#reason', REASON);
    await page.click('#confirm');
    await page.locator('#active-site').filter({ hasText: /^replica$/ }).waitFor();
    const message = page.locator('#message.ok');
    await message.waitFor();
    report.message = (await message.textContent()).trim();
    report.after = {
      site: (await page.textContent('#active-site')).trim(),
      epoch: Number(await page.textContent('#epoch')),
      switchover_enabled: await page.isEnabled('#switchover'),
      failback_enabled: await page.isEnabled('#failback'),
    };

    // The audit log shows the switch, newest first, with the reason as plain text.
    const entry = page.locator('#audit li[data-action="failover"]').first();
    await entry.waitFor();
    report.audit_first_action = await page.locator('#audit li').first().getAttribute('data-action');
    report.audit_switch = (await entry.locator('.detail').textContent()).trim();
    report.audit_markup_injected = await page.locator('#audit b').count() > 0;
    // Let one more poll land so that the page shows live data, then keep the picture.
    await page.waitForTimeout(3500);
    report.freshness = (await page.textContent('#freshness')).trim();
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: screenshot, fullPage: true });
    report.screenshot = screenshot;

    // Logging out forgets the token.
    await page.click('#logout');
    await page.locator('#login-view').waitFor({ state: 'visible' });
    report.stored_after_logout = await page.evaluate(() => sessionStorage.length);
    report.problems = problems;
    await context.close();
  } finally {
    await browser.close();
  }
}

const report = { ok: false };
// A hung browser must not hang the test: give up loudly.
const watchdog = setTimeout(() => {
  console.log(JSON.stringify({ ...report, ok: false, error: 'timed out after 120 s' }));
  process.exit(1);
}, 120000);
try {
  await run(report);
  report.ok = true;
  console.log(JSON.stringify(report));
} catch (err) {
  console.log(JSON.stringify({ ...report, ok: false, error: String(err && err.stack || err) }));
  process.exitCode = 1;
} finally {
  clearTimeout(watchdog);
}
