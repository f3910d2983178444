// sse-hold: a crowd waits in a paused room, each buyer holding a live SSE stream on their
// ticket (GET /api/v1/rooms/{room}/tickets/{ticket}/events); once all are connected the room is
// resumed with a batch big enough for everyone, and every stream must deliver `admitted` with
// its token within a few seconds. Shows that one gateway holds the streams (the
// waitingroom_sse_connections gauge counts them all while they wait) and fans an admission out
// to all of them at once, not one store connection per client.
//
// Stock k6 has no SSE client, but the gateway ends a stream after `admitted`, so each VU opens
// its stream with a plain GET that returns, with every event in its body, when the stream ends.
//
//   k6 run -e BASE=http://127.0.0.1:8080 -e ADMIN=<WR_ADMIN_TOKEN> -e MODE=short k6/sse-hold.js
//
// MODE=short: 200 streams held for ~10 s (CI); MODE=long: 5,000 streams held for ~60 s (the
// gateway's join limit per IP must allow one machine's crowd; see BENCHMARKS.md).
import http from 'k6/http';
import exec from 'k6/execution';
import { check, fail, sleep } from 'k6';
import { Trend } from 'k6/metrics';

const BASE = __ENV.BASE || 'http://127.0.0.1:8080';
const ADMIN = __ENV.ADMIN || '';
const LONG = (__ENV.MODE || 'short') === 'long';
const STREAMS = LONG ? 5000 : 200;
const RESUME_S = LONG ? 60 : 10;
const ROOM = 'ssehold';
const auth = { headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' } };

// From the planned resume to this stream's end (its `admitted` event).
const admittedAfterResume = new Trend('sse_admitted_after_resume', true);

export const options = {
  scenarios: {
    hold: { executor: 'per-vu-iterations', vus: STREAMS, iterations: 1, maxDuration: `${RESUME_S + 60}s`, exec: 'hold' },
    resume: { executor: 'per-vu-iterations', vus: 1, iterations: 1, startTime: `${RESUME_S}s`, exec: 'resume' },
  },
  thresholds: {
    checks: ['rate==1'],
    http_req_failed: ['rate==0'],
    sse_admitted_after_resume: ['p(99)<3000', 'max<5000'],
  },
};

export function setup() {
  const r = http.put(`${BASE}/admin/v1/rooms/${ROOM}`, JSON.stringify({
    protect: ['/ssehold-only/'], paused: true, batch_size: STREAMS, tick_interval_ms: 1000,
  }), auth);
  if (r.status !== 200 && r.status !== 201) fail(`room: ${r.status} ${r.body}`);
}

export function hold() {
  const join = http.post(`${BASE}/api/v1/rooms/${ROOM}/tickets`, null, { tags: { name: 'join' } });
  if (!check(join, { joined: (r) => r.status === 201 })) return;
  const ticket = join.json('ticket');
  // The ticket cookie from the join (k6 keeps it per VU) proves the holder.
  const sse = http.get(`${BASE}/api/v1/rooms/${ROOM}/tickets/${ticket}/events`, {
    headers: { accept: 'text/event-stream' }, timeout: `${RESUME_S + 50}s`, tags: { name: 'sse' },
  });
  admittedAfterResume.add(Date.now() - (exec.scenario.startTime + RESUME_S * 1000));
  check(sse, {
    'stream ok': (r) => r.status === 200 && (r.headers['Content-Type'] || '').startsWith('text/event-stream'),
    'position first': (r) => /^event: position\n/m.test(r.body || ''),
    'admitted with a token': (r) => {
      const m = /^event: admitted\n(?:retry: \d+\n)?data: (.*)$/m.exec(r.body || '');
      const a = m && JSON.parse(m[1]);
      return !!a && /^[\w-]+\.[\w-]+\.[\w-]+$/.test(a.token) && !!a.expires_at;
    },
  });
}

export function resume() {
  // Every stream is open before anyone goes in.
  for (let i = 0; i < 30; i++) {
    const m = http.get(`${BASE}/metrics`, { tags: { name: 'metrics' } });
    const open = Number((/^waitingroom_sse_connections (\d+)/m.exec(m.body) || [0, 0])[1]);
    if (open >= STREAMS) break;
    sleep(1);
  }
  const m = http.get(`${BASE}/metrics`, { tags: { name: 'metrics' } });
  check(m, { 'all streams held at once': (r) => Number((/^waitingroom_sse_connections (\d+)/m.exec(r.body) || [0, 0])[1]) >= STREAMS });
  const r = http.post(`${BASE}/admin/v1/rooms/${ROOM}/resume`, null, auth);
  check(r, { resumed: (x) => x.status === 200 });
}

export function teardown() {
  http.del(`${BASE}/admin/v1/rooms/${ROOM}`, null, { headers: { authorization: `Bearer ${ADMIN}` } });
}
