// overload: offered load far above a backend's capacity, through the gateway: every iteration is one
// booking (POST with an Idempotency-Key). With an overload gate the gateway answers 201 (a
// permit was free) or 202 + offset (logged, replayed in order); without one the backend is
// hit directly and collapses.
//
//   k6 run -e BASE=http://127.0.0.1:8080 -e STATS=http://127.0.0.1:9090/_stats \
//          -e RATE=1000 -e DURATION=30s k6/overload.js
//
// It needs the capacity backend (`cargo run --release -p queue-gateway --example
// capacity_upstream`) behind the gateway; `queue-gateway/benches/gate_bench.sh` runs the
// whole comparison (with and without a gate) and is the long mode; a short run is
// `-e RATE=200 -e DURATION=5s`.
//
// STATS is the capacity backend's counter endpoint (queue_gateway::capacity): setup() and
// teardown() read it and teardown() prints one `GOODPUT {json}` line: backend successes per
// second over the run and the backend's errors.
import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';

const BASE = __ENV.BASE || 'http://127.0.0.1:8080';
const STATS = __ENV.STATS || 'http://127.0.0.1:9090/_stats';
const RATE = parseInt(__ENV.RATE || '1000', 10);
const DURATION = __ENV.DURATION || '30s';
const PATH = __ENV.PATH_PREFIX || '/api/v1/reservations';

const answered = new Counter('answered_201');
const logged = new Counter('logged_202');
const refused = new Counter('refused_5xx');

export const options = {
  scenarios: {
    offered: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: Math.min(RATE * 2, 3000),
      maxVUs: 4000,
      gracefulStop: '5s',
    },
  },
  discardResponseBodies: false,
  summaryTrendStats: ['avg', 'p(50)', 'p(99)', 'max'],
};

export function setup() {
  return { t: Date.now(), stats: http.get(STATS).json() };
}

export default function () {
  const key = `${__VU}-${__ITER}-${Date.now()}`;
  const r = http.post(`${BASE}${PATH}`, '{"seat":1}', {
    headers: { 'content-type': 'application/json', 'idempotency-key': key },
    timeout: '30s',
  });
  if (r.status === 201) answered.add(1);
  else if (r.status === 202) logged.add(1);
  else refused.add(1);
  check(r, { 'answered or logged': (x) => x.status === 201 || x.status === 202 });
}

export function teardown(data) {
  const secs = (Date.now() - data.t) / 1000;
  const now = http.get(STATS).json();
  const served = now.served - data.stats.served;
  const errors = now.errors - data.stats.errors;
  console.log(`GOODPUT ${JSON.stringify({ seconds: secs, served, per_second: served / secs, backend_errors: errors })}`);
}
