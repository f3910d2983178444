// The whole system in a real browser (Debian's chromium driven by playwright-core), as a buyer
// and an operator meet it. Run by queue-gateway/tests/browser.rs against the all-in-one system
// (gateway in front of the real backend) with the room `demo` at 2 per second:
//
// 1. the queue is filled with AHEAD people; a buyer opens the hot concert, picks a round and
//    lands in the waiting room; the position falls and the progress bar moves;
// 2. an operator signs in to the console and raises the batch size; the buyer's ETA per place
//    in line falls to under half of what it was;
// 3. the buyer is admitted, lands on the seat map, signs up, claims a coupon, picks two seats,
//    pays on the simulator (the amount is the seats' prices less the coupon), sees the
//    payment's notification arrive live, and finds the reservation paid (with its tickets)
//    under "My bookings";
// 4. the operator pauses the room; a second buyer who copies the first one's admission cookie
//    into a fresh browser is sent back to the queue (303 to the waiting room, which says it
//    is paused, in Korean for this one), and the API refuses the cookie with 403.
//
// Env: BASE (gateway URL), ADMIN (admin token), ARTIFACTS (screenshot folder), CHROMIUM
// (default /usr/bin/chromium). Exits non-zero on the first failed expectation.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const BASE = process.env.BASE;
const ADMIN = process.env.ADMIN;
const OUT = process.env.ARTIFACTS;
const AHEAD = 150;
assert.ok(BASE && ADMIN && OUT, 'BASE, ADMIN and ARTIFACTS are required');
mkdirSync(OUT, { recursive: true });

const step = (s) => console.log(`[${new Date().toISOString()}] ${s}`);
// The seat map runs to 1,000 seats: its pages are shot as the buyer sees them (the top).
const shot = (page, name, fullPage = true) => page.screenshot({ path: join(OUT, name), fullPage });
// "24 s – 38 s" or "3 min – 5 min": the high end in seconds.
const etaHigh = (text) => {
  const m = /([\d.]+)\s*(min|분|s|초)\s*$/.exec(text.trim());
  if (!m) return null;
  return Number(m[1]) * (m[2] === 'min' || m[2] === '분' ? 60 : 1);
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
try {
  step(`filling the queue with ${AHEAD} people`);
  for (let i = 0; i < AHEAD; i++) {
    const r = await fetch(`${BASE}/api/v1/rooms/demo/tickets`, { method: 'POST' });
    assert.equal(r.status, 201, `join ${i}: ${r.status} ${await r.text()}`);
  }

  step('buyer: the hot concert, a round, the waiting room');
  const buyerCtx = await browser.newContext({ locale: 'en-US', viewport: { width: 390, height: 844 } });
  const buyer = await buyerCtx.newPage();
  await buyer.goto(`${BASE}/`);
  await buyer.getByRole('link', { name: /Neon Tides World Tour/ }).click();
  await buyer.getByText('Sold through a waiting room').waitFor();
  const round = buyer.locator('a[href^="/book/"]').filter({ hasNotText: 'On sale now' }).first();
  const bookPath = await round.getAttribute('href');
  await round.click();
  await buyer.waitForURL(/\/rooms\/demo/);
  const p0 = Number(await buyer.locator('#position').textContent());
  assert.ok(p0 > AHEAD / 2, `a place behind the crowd, got ${p0}`);
  await shot(buyer, '01-waiting-room.png');

  step(`buyer: position ${p0}; waiting for it to fall and the bar to move`);
  await buyer.waitForFunction(
    (p) => Number(document.getElementById('position').textContent) < p && document.getElementById('progress').value > 0,
    p0, { timeout: 20_000 });
  const before = { pos: Number(await buyer.locator('#position').textContent()), eta: await buyer.locator('#eta').textContent() };
  const perPlace = etaHigh(before.eta) / before.pos;
  assert.ok(perPlace > 0, `an ETA is shown: ${before.eta}`);
  await shot(buyer, '02-position-falls.png');

  step(`operator: raise the batch size (buyer at ${before.pos}, ETA ${before.eta})`);
  const opCtx = await browser.newContext({ locale: 'en-US' });
  const op = await opCtx.newPage();
  await op.goto(`${BASE}/admin/`);
  await op.getByLabel('Admin token').fill(ADMIN);
  await op.getByRole('button', { name: 'Use' }).click();
  const row = op.locator('#rooms tr[data-room="demo"]');
  await row.waitFor();
  // The table refreshes every 2 s; a value being typed must survive it.
  await row.locator('input[name=batch_size]').fill('25');
  await op.waitForTimeout(2_500);
  assert.equal(await row.locator('input[name=batch_size]').inputValue(), '25', 'the refresh kept the typed value');
  await row.getByRole('button', { name: 'Apply' }).click();
  await op.locator('#status', { hasText: 'Room demo updated.' }).waitFor();
  await shot(op, '03-console-batch-size.png');

  step('buyer: the ETA per place in line falls');
  await buyer.waitForFunction(
    (limit) => {
      // etaHigh, in the page (its CSP allows no eval).
      const m = /([\d.]+)\s*(min|분|s|초)\s*$/.exec(document.getElementById('eta').textContent.trim());
      const pos = Number(document.getElementById('position').textContent);
      return m !== null && pos > 0 && Number(m[1]) * (m[2] === 'min' || m[2] === '분' ? 60 : 1) / pos < limit;
    },
    perPlace / 2, { timeout: 15_000 });
  const after = { pos: await buyer.locator('#position').textContent(), eta: await buyer.locator('#eta').textContent() };
  step(`buyer: ETA ${before.eta} at ${before.pos} -> ${after.eta} at ${after.pos}`);
  await shot(buyer, '04-eta-after-batch-change.png');

  step('buyer: admitted, on to the seat map');
  await buyer.waitForURL((u) => u.pathname === bookPath, { timeout: 30_000 });
  const admission = (await buyerCtx.cookies()).find((c) => c.name === 'wr_admission_demo');
  assert.ok(admission, 'the admission cookie is set');
  await buyer.locator('.seatmap').waitFor();
  await shot(buyer, '05-seat-map.png', false);

  step('buyer: sign up, claim a coupon, pick two seats, pay');
  await buyer.getByLabel('Email').fill(`buyer-${Date.now()}@example.com`);
  await buyer.getByLabel('Password').fill('correct horse battery');
  await buyer.getByRole('button', { name: 'Sign in or up' }).click();
  await buyer.locator('#msg', { hasText: 'Signed in.' }).waitFor();
  const offer = buyer.locator('#offers button').first();
  await offer.waitFor();
  assert.match(await offer.textContent(), /10,000 KRW off/);
  await offer.click();
  await buyer.locator('#msg', { hasText: 'Coupon issued' }).waitFor();
  assert.notEqual(await buyer.locator('#coupon').inputValue(), '', 'the new coupon is selected');
  const freeBefore = Number(await buyer.locator('#free').textContent());
  const seats = buyer.locator('.seat.available');
  let expected = -10_000;
  for (const i of [0, 1]) {
    const title = await seats.nth(i).getAttribute('title');
    expected += Number(/ (\d+) KRW/.exec(title)[1]);
  }
  const picked = [await seats.nth(0).getAttribute('data-seat'), await seats.nth(1).getAttribute('data-seat')];
  await seats.nth(0).click();
  await buyer.locator(`[data-seat="${picked[1]}"]`).click();
  await buyer.locator('#msg', { hasText: '2 seat(s) picked' }).waitFor();
  await buyer.getByRole('button', { name: 'Hold and pay' }).click();
  const paid = buyer.locator('#msg', { hasText: 'Paid' });
  await paid.waitFor({ timeout: 20_000 });
  const text = await paid.textContent();
  assert.match(text, new RegExp(`Paid ${expected} KRW: reservation (\\S+) is paid`), text);
  const reservation = /reservation (\S+) is/.exec(text)[1];
  for (const s of picked) assert.equal(await buyer.locator(`[data-seat="${s}"]`).getAttribute('class'), 'seat sold');
  assert.equal(Number(await buyer.locator('#free').textContent()), freeBefore - 2, 'the count of free seats follows');

  step(`buyer: reservation ${reservation} paid ${expected} KRW; its notification arrives`);
  await buyer.locator('#events li[data-kind="payment.paid"]', { hasText: 'Payment confirmed' }).waitFor({ timeout: 10_000 });
  await shot(buyer, '06-paid-with-notification.png', false);

  step('buyer: my bookings');
  await buyer.getByRole('link', { name: 'See my bookings' }).click();
  const mine = buyer.locator('#reservations li[data-status="paid"]', { hasText: reservation });
  await mine.waitFor();
  // The reservation's price is the seats'; what was paid is less the coupon.
  assert.match(await mine.textContent(), new RegExp(`${expected + 10_000} KRW \\(paid ${expected} KRW\\)`));
  await buyer.waitForFunction(() => document.querySelectorAll('#tickets li').length === 2, null, { timeout: 15_000 });
  await shot(buyer, '07-my-bookings.png');

  step('the admitted buyer can still open the round; the operator pauses the room');
  const again = await buyer.goto(`${BASE}${bookPath}`);
  assert.equal(again.status(), 200);
  assert.equal(new URL(buyer.url()).pathname, bookPath);
  await op.bringToFront();
  await row.getByRole('button', { name: 'Pause' }).click();
  await row.getByRole('button', { name: 'Resume' }).waitFor();

  step('second buyer: the copied admission cookie alone sends them back to the queue');
  const thiefCtx = await browser.newContext({ locale: 'ko-KR', viewport: { width: 390, height: 844 } });
  await thiefCtx.addCookies([admission]);
  const thief = await thiefCtx.newPage();
  const redirects = [];
  thief.on('response', (r) => { if (r.status() === 303) redirects.push(r.headers().location); });
  await thief.goto(`${BASE}${bookPath}`);
  await thief.waitForURL(/\/rooms\/demo/);
  assert.ok(redirects.some((l) => l && l.startsWith('/rooms/demo')), `303 to the waiting room, saw ${JSON.stringify(redirects)}`);
  assert.equal(await thief.locator('html').getAttribute('lang'), 'ko');
  await thief.locator('#phase').waitFor();
  await shot(thief, '08-copied-cookie-back-in-queue.png');
  const api = await thiefCtx.request.post(`${BASE}/api/v1/reservations`, {
    headers: { accept: 'application/json' }, data: { schedule_id: Number(bookPath.split('/').pop()), seat_ids: [1] },
  });
  assert.equal(api.status(), 403);
  assert.equal((await api.json()).error.code, 'not_admitted');
  step('all expectations held');
} catch (e) {
  // What each page showed when it went wrong.
  const pages = browser.contexts().flatMap((c) => c.pages());
  for (const [i, p] of pages.entries()) {
    await shot(p, `failure-page-${i}.png`).catch(() => {});
    console.log(`page ${i} at ${p.url()}:\n${(await p.locator('body').innerText().catch(() => '?')).slice(0, 2000)}`);
  }
  throw e;
} finally {
  await browser.close();
}
