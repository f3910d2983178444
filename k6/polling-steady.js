// polling-steady: a steady crowd waits in a paused room and polls its tickets at the pace the
// gateway asks for (poll_after_ms). Shows the cost of a poll with many waiting.
//
//   k6 run -e BASE=http://127.0.0.1:8080 -e ADMIN=<WR_ADMIN_TOKEN> -e MODE=short k6/polling-steady.js
//
// MODE=short: 30 pollers for 15 s (CI); MODE=long: 1000 pollers for 5 minutes.
import http from 'k6/http';
import { check, sleep, fail } from 'k6';

const BASE = __ENV.BASE || 'http://127.0.0.1:8080';
const ADMIN = __ENV.ADMIN || '';
const LONG = (__ENV.MODE || 'short') === 'long';

export const options = {
  scenarios: {
    steady: { executor: 'constant-vus', vus: LONG ? 1000 : 30, duration: LONG ? '5m' : '15s' },
  },
  thresholds: {
    checks: ['rate>0.99'],
    'http_req_duration{name:status}': ['p(95)<100'],
    http_req_failed: ['rate<0.01'],
  },
};

export function setup() {
  const auth = { headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' } };
  const r = http.put(`${BASE}/admin/v1/rooms/polling`, JSON.stringify({ protect: ['/polling-only/'], paused: true }), auth);
  if (r.status !== 200 && r.status !== 201) fail(`room: ${r.status} ${r.body}`);
}

export default function () {
  const join = http.post(`${BASE}/api/v1/rooms/polling/tickets`, null, { tags: { name: 'join' } });
  if (!check(join, { joined: (r) => r.status === 201 || r.status === 200 })) return;
  const ticket = join.json('ticket');
  for (let i = 0; i < (LONG ? 100 : 5); i++) {
    sleep((join.json('poll_after_ms') || 1000) / 1000);
    const st = http.get(`${BASE}/api/v1/rooms/polling/tickets/${ticket}`, { tags: { name: 'status' } });
    check(st, { waiting: (r) => r.status === 200 && r.json('state') === 'waiting' && r.json('position') >= 1 });
  }
}

export function teardown() {
  http.del(`${BASE}/admin/v1/rooms/polling`, null, { headers: { authorization: `Bearer ${ADMIN}` } });
}
