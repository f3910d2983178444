//! The ops console at `/admin/`: one server-rendered page (maud, no build step) whose script
//! talks to the admin API with the admin token the operator types in (kept in the tab's
//! `sessionStorage`, sent as `Authorization: Bearer`, never in a URL or a cookie). It lists
//! every room (state, waiting, active, admitted per minute, the wait of the last in line),
//! charts waiting and admitted/min live, and has forms to change a room's batch size and tick
//! interval, pause or resume it and admit N; and lists the gates with their load.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, PreEscaped, html};

const SCRIPT: &str = r##"
const $ = (s) => document.querySelector(s);
const token = () => sessionStorage.getItem('wr-admin') || '';
const history = {};
async function api(method, path, body) {
  const r = await fetch(path, { method, headers: { 'authorization': 'Bearer ' + token(), 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let data = null; try { data = JSON.parse(text); } catch (_) {}
  if (!r.ok) throw new Error((data && data.error && data.error.message) || r.status + ' ' + text);
  return data;
}
// Actions report in #status; the refresh reports in #updated, so it never hides an action's result.
function say(msg, bad, where) { const el = $(where || '#status'); el.textContent = msg; el.className = bad ? 'bad' : 'ok'; }
function eta(room) {
  if (!room.admitted_per_minute) return room.waiting ? '—' : '0 s';
  return Math.round(room.waiting / room.admitted_per_minute * 60) + ' s';
}
function spark(values) {
  const max = Math.max(1, ...values);
  const pts = values.map((v, i) => (i * 4) + ',' + (30 - v / max * 28).toFixed(1)).join(' ');
  return '<svg width="240" height="32" role="img" aria-label="last ' + values.length + ' readings"><polyline fill="none" stroke="#2563eb" stroke-width="2" points="' + pts + '"/></svg>';
}
function controls(r) {
  return '<form data-room="' + r.room + '" class="cfg"><label>batch <input name="batch_size" type="number" min="1"></label> ' +
    '<label>every (ms) <input name="tick_interval_ms" type="number" min="100"></label> <button>Apply</button></form>' +
    '<form data-room="' + r.room + '" class="admit"><label>admit <input name="count" type="number" min="1" value="10"></label> <button>Admit</button></form>' +
    '<button data-room="' + r.room + '" class="toggle"></button>';
}
// Rows are updated in place: the forms survive the refresh, and a value being edited (or
// edited and not applied yet) is not overwritten.
function showRooms(rooms) {
  const body = $('#rooms tbody');
  const seen = new Set(rooms.map((r) => r.room));
  for (const tr of [...body.rows]) if (!seen.has(tr.dataset.room)) tr.remove();
  for (const r of rooms) {
    const h = history[r.room] = (history[r.room] || []).concat([r.waiting]).slice(-60);
    let tr = [...body.rows].find((x) => x.dataset.room === r.room);
    if (!tr) {
      tr = body.insertRow();
      tr.dataset.room = r.room;
      tr.innerHTML = '<th scope="row"></th>' + '<td></td>'.repeat(6) + '<td>' + controls(r) + '</td>';
      tr.cells[0].textContent = r.room;
    }
    [r.state, r.waiting, r.active, r.admitted_per_minute, eta(r)].forEach((v, i) => { tr.cells[i + 1].textContent = v; });
    tr.cells[6].innerHTML = spark(h);
    const f = tr.querySelector('form.cfg');
    if (!f.dataset.dirty) { f.batch_size.value = r.batch_size; f.tick_interval_ms.value = r.tick_interval_ms; }
    tr.querySelector('.toggle').textContent = r.paused ? 'Resume' : 'Pause';
  }
  $('#no-rooms').hidden = rooms.length > 0;
}
async function refresh() {
  if (!token()) { say('Enter the admin token.', true, '#updated'); return; }
  try {
    showRooms((await api('GET', '/admin/v1/rooms')).rooms);
    const gates = (await api('GET', '/admin/v1/gates')).gates;
    $('#gates tbody').innerHTML = gates.map((g) => '<tr><th scope="row">' + g.gate + '</th><td>' + g.prefixes.join(', ') +
      '</td><td>' + g.inflight + ' / ' + g.max_inflight + '</td><td>' + (g.overloaded ? 'yes' : 'no') + '</td><td>' + g.logged +
      '</td><td>' + g.backlog + '</td><td>' + g.dead_letters + '</td></tr>').join('') || '<tr><td colspan="7">No gates.</td></tr>';
    say('Updated ' + new Date().toLocaleTimeString(), false, '#updated');
  } catch (e) { say(e.message, true, '#updated'); }
}
document.addEventListener('input', (ev) => { const f = ev.target.form; if (f && f.classList.contains('cfg')) f.dataset.dirty = '1'; });
document.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const f = ev.target;
  try {
    if (f.id === 'login') { sessionStorage.setItem('wr-admin', f.token.value.trim()); f.token.value = ''; }
    else if (f.classList.contains('cfg')) {
      const room = f.dataset.room;
      const cfg = await api('GET', '/admin/v1/rooms/' + room);
      for (const k of ['state', 'room', 'waiting', 'active', 'admitted_per_minute']) delete cfg[k];
      cfg.batch_size = parseInt(f.batch_size.value, 10); cfg.tick_interval_ms = parseInt(f.tick_interval_ms.value, 10);
      await api('PUT', '/admin/v1/rooms/' + room, cfg);
      delete f.dataset.dirty;
      say('Room ' + room + ' updated.');
    } else if (f.classList.contains('admit')) {
      const r = await api('POST', '/admin/v1/rooms/' + f.dataset.room + '/admit', { count: parseInt(f.count.value, 10) });
      say('Admitted ' + r.admitted + ' in ' + r.room + '.');
    }
  } catch (e) { say(e.message, true); }
  refresh();
});
document.addEventListener('click', async (ev) => {
  const b = ev.target;
  if (!b.classList || !b.classList.contains('toggle')) return;
  try { await api('POST', '/admin/v1/rooms/' + b.dataset.room + (b.textContent === 'Pause' ? '/pause' : '/resume')); }
  catch (e) { say(e.message, true); }
  refresh();
});
refresh();
setInterval(refresh, 2000);
"##;

/// `GET /admin/`: the console page (the data comes from the admin API, which checks the token).
pub async fn page() -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Waiting room — ops console" }
                style { (PreEscaped("body{font-family:system-ui,sans-serif;margin:1rem;max-width:90rem}table{border-collapse:collapse;width:100%;margin-bottom:2rem}\
                    th,td{border-bottom:1px solid #ddd;padding:.4rem;text-align:left;vertical-align:top}form{display:inline-block;margin:.1rem .4rem .1rem 0}\
                    input[type=number]{width:6rem}.bad{color:#b91c1c}.ok{color:#15803d}")) }
            }
            body {
                h1 { "Ops console" }
                form #login {
                    label { "Admin token " input name="token" type="password" autocomplete="off" required; }
                    " " button { "Use" }
                }
                p #status role="status" aria-live="polite" {}
                p #updated {}
                h2 { "Rooms" }
                table #rooms {
                    thead { tr { th { "Room" } th { "State" } th { "Waiting" } th { "Active" } th { "Admitted/min" } th { "ETA of the last" } th { "Waiting, last 2 min" } th { "Levers" } } }
                    tbody {}
                }
                p #no-rooms hidden { "No rooms." }
                h2 { "Gates (this gateway)" }
                table #gates {
                    thead { tr { th { "Gate" } th { "Prefixes" } th { "In flight" } th { "Overloaded" } th { "Logged" } th { "Backlog" } th { "Dead letters" } } }
                    tbody {}
                }
                script { (PreEscaped(SCRIPT)) }
            }
        }
    };
    let mut r = axum::response::Html(markup.into_string()).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'; form-action 'self'"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    r
}
