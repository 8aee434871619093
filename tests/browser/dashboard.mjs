// Drives the dashboard in Debian's Chromium through one canary release, for the e2e suite
// (tests/e2e/tests/suite/dashboard.rs), which starts the cluster side and reads this script's
// lines on stdout:
//   ready              the page shows the Rollout Healthy: start the release now
//   result {json}      what the page showed, with the figures measured
// Environment: DASHBOARD_URL, ROLLOUT ("namespace/name"), ARTIFACTS (a directory for
// screenshots), CHROMIUM (the browser's path).
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const url = process.env.DASHBOARD_URL;
const rollout = process.env.ROLLOUT;
const artifacts = process.env.ARTIFACTS;
const WAIT = 60_000;
mkdirSync(artifacts, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  // The machine's network is closed: Chromium's own background connections would only fail.
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const row = `tr[data-rollout="${rollout}"]`;
const screenshots = [];
const page = await browser.newPage({ viewport: { width: 1360, height: 1000 } });
const consoleErrors = [];
page.on('console', (message) => { if (message.type() === 'error') consoleErrors.push(message.text()); });
page.on('pageerror', (error) => consoleErrors.push(String(error)));

async function shot(name) {
  const path = join(artifacts, name);
  await page.screenshot({ path, fullPage: true });
  screenshots.push(path);
}

try {
  await page.goto(url);
  await page.waitForSelector(`${row}[data-phase="Healthy"]`, { timeout: WAIT });
  // Every state the row goes through, as drawn (rows are redrawn on each change).
  await page.evaluate((selector) => {
    window.__seen = [];
    const note = () => {
      const el = document.querySelector(selector);
      if (!el) return;
      const state = { step: el.dataset.stepIndex, phase: el.dataset.phase, weight: el.dataset.weight, aborted: el.classList.contains('aborted') };
      const last = window.__seen[window.__seen.length - 1];
      if (!last || JSON.stringify(last.state) !== JSON.stringify(state)) window.__seen.push({ at: performance.now(), state });
    };
    new MutationObserver(note).observe(document.querySelector('#rollouts tbody'), { childList: true, subtree: true, attributes: true });
    note();
  }, row);
  console.log('ready');

  // The release runs to the pause at step 4 (index 3) by itself.
  await page.waitForSelector(`${row}[data-step-index="3"][data-phase="Paused"]`, { timeout: WAIT });
  await page.click(row);
  await page.waitForFunction(() => document.querySelectorAll('#detail svg.metric-chart circle.point').length >= 3, null, { timeout: WAIT });
  await page.waitForFunction(() => document.querySelectorAll('.burn-down circle.point').length >= 2, null, { timeout: WAIT });
  const points = await page.locator('#detail svg.metric-chart circle.point').count();
  const thresholdLines = await page.locator('#detail svg.metric-chart line.threshold').count();
  await shot('dashboard-release.png');

  // Promote from the page: on to the next pause.
  await page.click('#detail button[data-action="promote"]');
  await page.waitForSelector(`${row}[data-step-index="5"][data-phase="Paused"]`, { timeout: WAIT });

  // Abort from the page, and time how long until the row turns red (noted by an observer as the
  // page redraws, not by polling).
  await page.evaluate((selector) => {
    const clicked = performance.now();
    const check = () => {
      const el = document.querySelector(selector);
      if (window.__red === undefined && el && el.classList.contains('aborted')) window.__red = performance.now() - clicked;
    };
    new MutationObserver(check).observe(document.querySelector('#rollouts tbody'), { childList: true, subtree: true, attributes: true });
  }, row);
  await page.click('#detail button[data-action="abort"]');
  await page.waitForFunction(() => window.__red !== undefined, null, { timeout: WAIT });
  const abortToRedMs = await page.evaluate(() => window.__red);
  const red = await page.locator(row).evaluate((el) => getComputedStyle(el).backgroundColor);
  await page.waitForSelector('#detail .history td .badge.Aborted', { timeout: WAIT });
  await shot('dashboard-aborted.png');

  const seen = await page.evaluate(() => window.__seen);
  const result = { seen, points, thresholdLines, abortToRedMs: Math.round(abortToRedMs), red, screenshots, consoleErrors };
  console.log('result ' + JSON.stringify(result));
} catch (error) {
  await shot('dashboard-failure.png').catch(() => {});
  console.error(String(error && error.stack || error));
  if (consoleErrors.length) console.error('the page logged: ' + consoleErrors.join('\n'));
  process.exitCode = 1;
} finally {
  await browser.close();
}
