// soak: ordinary traffic for a long time — browsing the catalog, searching, the ranking, and
// joining then leaving the room — to show that latency and errors stay flat (no leaks, no
// slow drift).
//
//   k6 run -e BASE=http://127.0.0.1:8080 -e MODE=short k6/soak.js
//
// MODE=short: 20 requests/s for 20 s (CI); MODE=long: 200 requests/s for 1 hour.
import http from 'k6/http';
import { check } from 'k6';

const BASE = __ENV.BASE || 'http://127.0.0.1:8080';
const LONG = (__ENV.MODE || 'short') === 'long';
const WORDS = ['여름', 'Festival', 'Orch', '재즈', 'Summer', 'Rock'];

export const options = {
  scenarios: {
    soak: { executor: 'constant-arrival-rate', rate: LONG ? 200 : 20, timeUnit: '1s', duration: LONG ? '1h' : '20s', preAllocatedVUs: 20, maxVUs: 200 },
  },
  thresholds: {
    checks: ['rate>0.99'],
    http_req_failed: ['rate<0.01'],
    http_req_duration: ['p(95)<200'],
  },
};

export default function () {
  const pick = Math.random();
  if (pick < 0.4) {
    check(http.get(`${BASE}/api/v1/concerts?page=1&size=20`, { tags: { name: 'concerts' } }), { list: (r) => r.status === 200 });
  } else if (pick < 0.7) {
    const q = encodeURIComponent(WORDS[Math.floor(Math.random() * WORDS.length)]);
    check(http.get(`${BASE}/api/v1/search?q=${q}`, { tags: { name: 'search' } }), { search: (r) => r.status === 200 });
  } else if (pick < 0.85) {
    check(http.get(`${BASE}/api/v1/rankings/concerts`, { tags: { name: 'ranking' } }), { ranking: (r) => r.status === 200 });
  } else {
    const j = http.post(`${BASE}/api/v1/rooms/demo/tickets`, null, { tags: { name: 'join' } });
    if (check(j, { joined: (r) => r.status === 201 || r.status === 200 })) {
      check(http.del(`${BASE}/api/v1/rooms/demo/tickets/${j.json('ticket')}`, null, { tags: { name: 'leave' } }), { left: (r) => r.status === 204 });
    }
  }
}
