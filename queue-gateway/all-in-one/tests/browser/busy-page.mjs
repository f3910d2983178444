// A buyer whose waiting page is rate limited keeps their place (run by
// queue-gateway/tests/browser.rs against a gateway whose per-IP status limit is 1 a second,
// burst 3, with the paused room `busy` ticking every second, so the page polls every second):
//
// 1. the buyer opens the waiting page; the event stream is cut, so the page falls back to
//    polling the status API;
// 2. other traffic from the same address spends the per-IP budget, so the page's polls are
//    answered 429: the page keeps polling (no reload onto an error), still shows the position;
// 3. a reload while limited gets the limit as a page in the buyer's language that reloads
//    itself after Retry-After, and, once the budget refills, the waiting page again.
//
// Env: BASE (gateway URL), CHROMIUM (default /usr/bin/chromium). Exits non-zero on the first
// failed expectation.
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const BASE = process.env.BASE;
assert.ok(BASE, 'BASE is required');
// Any ticket's status URL: its polls spend the same per-IP budget as the page's.
const OTHER = `${BASE}/api/v1/rooms/busy/tickets/00000000000000014b247235e8f3d0eb`;
const step = (s) => console.log(`[${new Date().toISOString()}] ${s}`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
});
try {
  const page = await browser.newPage({ locale: 'ko-KR' });
  const navigations = [];
  const polls = [];
  page.on('framenavigated', (f) => { if (f === page.mainFrame()) navigations.push(f.url()); });
  page.on('response', (r) => { if (/\/tickets\/[0-9a-f]{32}$/.test(r.url())) polls.push(r.status()); });
  await page.route('**/events', (route) => route.abort());

  step('the buyer opens the waiting page; the event stream is cut');
  await page.goto(`${BASE}/rooms/busy`);
  assert.equal((await page.locator('#position').textContent()).trim(), '1');

  step('the same address spends the status budget; the page keeps its place');
  const spend = setInterval(() => {
    for (let i = 0; i < 4; i++) fetch(OTHER).catch(() => {});
  }, 250);
  await page.waitForTimeout(9000);
  clearInterval(spend);
  assert.ok(polls.filter((s) => s === 429).length >= 2, `the page's polls were limited: ${polls}`);
  assert.equal(navigations.length, 1, `no reload onto an error: ${navigations}`);
  assert.equal((await page.locator('#position').textContent()).trim(), '1');

  step('a reload while limited: a page that comes back by itself');
  for (let i = 0; i < 8; i++) await fetch(OTHER);
  const limited = await page.reload();
  assert.equal(limited.status(), 429);
  assert.match(await page.locator('h1').textContent(), /접속이 많습니다/);
  const refresh = await page.locator('meta[http-equiv="refresh"]').getAttribute('content');
  assert.ok(Number(refresh) >= 1, `refresh after Retry-After: ${refresh}`);
  await page.locator('#position').waitFor({ timeout: 15000 });
  assert.equal((await page.locator('#position').textContent()).trim(), '1', 'the same place in line');
  step('ok');
} finally {
  await browser.close();
}
