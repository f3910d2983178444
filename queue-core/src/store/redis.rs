//! `RedisStore`: many gateways on one Redis or a Redis Cluster.
//!
//! Every room's keys share the hash tag `{room}` (`wr:{room}:waiting`, ...), so each script
//! runs on one Cluster slot. Every change is one Lua script from `lua/` (the operation after
//! the functions of the shared prelude `lua/lib.lua` it uses), called by EVALSHA with a
//! reload on NOSCRIPT; all scripts are loaded on every node at connect so pipelines never
//! meet NOSCRIPT. Time comes from Redis `TIME` inside the scripts. Status polls, which only
//! read, are plain pipelined commands where they can be (`reads`). Admissions and config
//! changes are published on `wr:{room}:events`; one pattern subscription per store fans
//! them out in process.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{Script, Value};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::{DELETION_MEMORY, MAX_REVOKED, Store, check_admit, check_touch};
use crate::config::{QueueMethod, RoomConfig};
use crate::error::{Error, Result};
use crate::eta;
use crate::id::{OwnerHash, RoomId, TicketId, UserKey};
use crate::model::*;

mod reads;

const PRELUDE: &str = include_str!("../../../lua/lib.lua");

struct Scripts {
    join: Script,
    status: Script,
    leave: Script,
    touch: Script,
    tick: Script,
    watch: Script,
    admit: Script,
    stats: Script,
    put_room: Script,
    set_paused: Script,
    delete_room: Script,
}

impl Scripts {
    /// Every script with its name (the names `script_shas` reports).
    fn all(&self) -> [(&'static str, &Script); 11] {
        [
            ("watch", &self.watch),
            ("join", &self.join),
            ("status", &self.status),
            ("leave", &self.leave),
            ("touch", &self.touch),
            ("tick", &self.tick),
            ("admit", &self.admit),
            ("stats", &self.stats),
            ("put_room", &self.put_room),
            ("set_paused", &self.set_paused),
            ("delete_room", &self.delete_room),
        ]
    }
}

/// Every room script by name, before linking (`lua/<name>.lua`).
const SOURCES: [(&str, &str); 11] = [
    ("watch", include_str!("../../../lua/watch.lua")),
    ("join", include_str!("../../../lua/join.lua")),
    ("status", include_str!("../../../lua/status.lua")),
    ("leave", include_str!("../../../lua/leave.lua")),
    ("touch", include_str!("../../../lua/touch.lua")),
    ("tick", include_str!("../../../lua/tick.lua")),
    ("admit", include_str!("../../../lua/admit.lua")),
    ("stats", include_str!("../../../lua/stats.lua")),
    ("put_room", include_str!("../../../lua/put_room.lua")),
    ("set_paused", include_str!("../../../lua/set_paused.lua")),
    ("delete_room", include_str!("../../../lua/delete_room.lua")),
];

/// Every room script as Redis gets it (prelude functions, then the operation), by name.
pub fn script_texts() -> impl Iterator<Item = (&'static str, String)> {
    SOURCES.iter().map(|(name, body)| (*name, with_prelude(body)))
}

fn script(name: &str) -> Script {
    let body = SOURCES.iter().find(|(n, _)| *n == name).map(|(_, b)| b).expect("a known script");
    Script::new(&with_prelude(body))
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    join: script("join"),
    status: script("status"),
    leave: script("leave"),
    touch: script("touch"),
    tick: script("tick"),
    watch: script("watch"),
    admit: script("admit"),
    stats: script("stats"),
    put_room: script("put_room"),
    set_paused: script("set_paused"),
    delete_room: script("delete_room"),
});

/// The SHA-1 of each script (what `redis-benchmark` needs to EVALSHA the same thing).
pub fn script_shas() -> Vec<(&'static str, String)> {
    SCRIPTS.all().iter().map(|(n, s)| (*n, s.get_hash().to_owned())).collect()
}

/// `body` after the part of the shared prelude (`lua/lib.lua`) it uses, as every room script
/// is sent to Redis; public for tests that run the prelude's functions themselves.
pub fn with_prelude(body: &str) -> String {
    super::prelude::link(PRELUDE, body)
}

const KEY_NAMES: [&str; 15] = [
    "cfg", "seq", "waiting", "seen", "admitted", "tickets", "users", "gone", "stats", "rate", "draw",
    "batches", "bexp", "batchn", "revoked",
];
const ROOMS_KEY: &str = "wr:rooms";
/// A room's deletion note (`wr:{room}:deleted`), kept for [`DELETION_MEMORY`]; outside
/// [`KEY_NAMES`]: no script touches it.
const DELETED: &str = "deleted";
const EVENTS_PATTERN: &str = "wr:{*}:events";

/// The keys of a room, in the order `lua/lib.lua` expects.
pub fn room_keys(room: &RoomId) -> [String; 15] {
    KEY_NAMES.map(|k| room_key(room, k))
}

/// One key of a room: `wr:{room}:{name}` (the hash tag keeps a room on one Cluster slot).
/// As a command argument it is written into the command in place; pushed, not `format!`ted,
/// where a `String` is needed: every script call names all 15 keys, and formatting them was a
/// ninth of the gateway's instructions per join (callgrind).
struct RoomKey<'a>(&'a RoomId, &'a str);

impl RoomKey<'_> {
    fn parts(&self) -> [&str; 4] {
        ["wr:{", self.0.as_str(), "}:", self.1]
    }
}

impl redis::ToRedisArgs for RoomKey<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        use std::io::Write as _;
        let mut arg = out.writer_for_next_arg();
        for part in self.parts() {
            // Writes into memory, which does not fail.
            let _ = arg.write_all(part.as_bytes());
        }
    }
}

fn room_key(room: &RoomId, name: &str) -> String {
    RoomKey(room, name).parts().concat()
}

/// A connection to one Redis or a Cluster (cheap to clone: both multiplex).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Runs `cmd`, an `EVALSHA` of `script`; loads the script and runs it again if Redis
    /// had lost it (a restart, `SCRIPT FLUSH`, a failover to a node that never saw it).
    pub(crate) async fn eval<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        cmd: &redis::Cmd,
    ) -> Result<T> {
        match self.query(cmd).await {
            Err(Error::Store(e))
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                self.load(script).await?;
                self.query(cmd).await
            }
            other => other,
        }
    }

    pub(crate) async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        let v = match self {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await?,
            Conn::Cluster(c) => cmd.query_async(&mut c.clone()).await?,
        };
        Ok(v)
    }

    pub(crate) async fn pipeline(&self, p: &redis::Pipeline) -> Result<Vec<Value>> {
        let v = match self {
            Conn::Single(c) => p.query_async(&mut c.clone()).await?,
            Conn::Cluster(c) => p.query_async(&mut c.clone()).await?,
        };
        Ok(v)
    }

    pub(crate) async fn load(&self, s: &Script) -> Result<()> {
        match self {
            Conn::Single(c) => s.load_async(&mut c.clone()).await?,
            Conn::Cluster(c) => s.load_async(&mut c.clone()).await?,
        };
        Ok(())
    }
}

/// The Redis-backed store.
pub struct RedisStore {
    conn: Conn,
    /// The URLs it connected to (a [`Store::local`] handle opens its own connection).
    urls: Vec<String>,
    events: broadcast::Sender<RoomEvent>,
    /// What status reads keep between batches, shared with `local` handles.
    reads: Arc<reads::ReadCache>,
    /// The event subscription; only the first handle runs one (`local` handles share it).
    listener: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.conn {
            Conn::Single(_) => "single",
            Conn::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisStore").field("mode", &kind).finish_non_exhaustive()
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        if let Some(l) = &self.listener {
            l.abort();
        }
    }
}

impl RedisStore {
    /// Connects to one Redis (`redis://host:port`) or, given several comma-separated URLs,
    /// to a Redis Cluster; loads every script and starts the event subscription.
    pub async fn connect(urls: &str) -> Result<Self> {
        let urls: Vec<String> =
            urls.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect();
        let first = urls.first().ok_or_else(|| Error::Protocol("no Redis URL given".into()))?;
        let conn = open(&urls).await?;
        let (events, _) = broadcast::channel(4096);
        let listener = Some(tokio::spawn(listen(redis::Client::open(first.as_str())?, events.clone())));
        let store = RedisStore { conn, urls, events, reads: Arc::default(), listener };
        store.load_scripts().await?;
        Ok(store)
    }

    /// Loads every script (on every node of a Cluster).
    pub async fn load_scripts(&self) -> Result<()> {
        for (_, s) in SCRIPTS.all() {
            self.conn.load(s).await?;
        }
        Ok(())
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        self.conn.query(cmd).await
    }

    /// The overload gate's log on the same connection.
    pub async fn gate_log(&self) -> Result<crate::gate::RedisGateLog> {
        crate::gate::RedisGateLog::new(self.conn.clone()).await
    }

    /// Runs a room script with `args` after the channel and room id; maps `no_room` and
    /// `no_ticket` replies to errors. The `EVALSHA` is written here rather than through
    /// redis-rs's `ScriptInvocation`, which holds each key and argument in a `Vec` of its
    /// own before copying them into the command: the keys go straight into the command.
    async fn run<A: AsRef<[u8]>>(&self, s: &Script, room: &RoomId, args: &[A]) -> Result<Reply> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(s.get_hash()).arg(KEY_NAMES.len());
        for name in KEY_NAMES {
            cmd.arg(RoomKey(room, name));
        }
        cmd.arg(RoomKey(room, "events")).arg(room.as_str());
        for a in args {
            cmd.arg(a.as_ref());
        }
        let reply = Reply(self.conn.eval(s, &cmd).await?);
        match &*reply.str(0)? {
            "no_room" => Err(Error::UnknownRoom(room.to_string())),
            "no_ticket" => Err(Error::UnknownTicket),
            _ => Ok(reply),
        }
    }

    /// Status of `tickets` (not empty) by the status script: every state, every queue method.
    async fn status_script(&self, room: &RoomId, tickets: &[TicketId]) -> Result<Vec<Option<TicketStatus>>> {
        let r = self.run(&SCRIPTS.status, room, &hex_ids(tickets)).await?;
        let view = RoomView::decode(&r, 1)?;
        (0..tickets.len())
            .map(|i| {
                let base = 9 + i * 5;
                let state = r.str(base)?;
                if state == "unknown" {
                    return Ok(None);
                }
                let fields = TicketFields {
                    state: state_of(&state)?,
                    pos: r.int(base + 1)?,
                    until: r.u64(base + 2)?,
                    owner: owner_of(&r.str(base + 3)?)?,
                    joined: r.u64(base + 4)?,
                };
                Ok(Some(fields.status(room, tickets[i], &view)))
            })
            .collect()
    }

    /// Adds each admitted ticket's wait (join to now). Read after the tick script so the
    /// script itself stays short: this is metrics, not state.
    async fn with_waits(&self, room: &RoomId, tickets: Vec<TicketId>) -> Result<Vec<Admitted>> {
        if tickets.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(&room_keys(room)[5]);
        for t in &tickets {
            cmd.arg(t.to_string());
        }
        let infos: Vec<Option<String>> = self.query(&cmd).await?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        Ok(tickets
            .into_iter()
            .zip(infos)
            .map(|(ticket, info)| {
                let joined = info.and_then(|i| i.rsplit(':').next().and_then(|j| j.parse::<u64>().ok()));
                Admitted { ticket, waited_ms: joined.map_or(0, |j| now.saturating_sub(j)) }
            })
            .collect())
    }

    /// The Redis memory used by one room's keys (for benchmarks and ops), in bytes.
    pub async fn room_memory_bytes(&self, room: &RoomId) -> Result<u64> {
        let mut total = 0;
        for k in room_keys(room) {
            let used: Option<u64> =
                self.query(redis::cmd("MEMORY").arg("USAGE").arg(&k).arg("SAMPLES").arg(0)).await?;
            total += used.unwrap_or(0);
        }
        Ok(total)
    }
}

/// One multiplexed connection (or Cluster connection) whose I/O runs on the calling runtime.
async fn open(urls: &[String]) -> Result<Conn> {
    let Some(first) = urls.first() else { return Err(Error::Protocol("no Redis URL given".into())) };
    if urls.len() == 1 {
        let client = redis::Client::open(first.as_str())?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        Ok(Conn::Single(client.get_connection_manager_with_config(cfg).await?))
    } else {
        let client = redis::cluster::ClusterClient::builder(urls.to_vec())
            .connection_timeout(Duration::from_secs(5))
            .response_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Conn::Cluster(client.get_async_connection().await?))
    }
}

/// Forwards `wr:{*}:events` messages into the broadcast channel, reconnecting on failure.
async fn listen(client: redis::Client, tx: broadcast::Sender<RoomEvent>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.psubscribe(EVENTS_PATTERN).await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    let mut stream = pubsub.into_on_message();
                    while let Some(msg) = stream.next().await {
                        match serde_json::from_slice::<RoomEvent>(msg.get_payload_bytes()) {
                            Ok(ev) => {
                                let _ = tx.send(ev);
                            }
                            Err(e) => tracing::warn!(error = %e, "unreadable room event"),
                        }
                    }
                    tracing::warn!("Redis event subscription ended; reconnecting");
                }
                Err(e) => tracing::warn!(error = %e, "PSUBSCRIBE failed"),
            },
            Err(e) => tracing::warn!(error = %e, "Redis pub/sub connection failed"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// A script reply with typed accessors.
struct Reply(Vec<Value>);

impl Reply {
    fn get(&self, i: usize) -> Result<&Value> {
        self.0
            .get(i)
            .ok_or_else(|| Error::Protocol(format!("script reply too short ({} < {})", self.0.len(), i + 1)))
    }
    fn str(&self, i: usize) -> Result<Cow<'_, str>> {
        text_of(self.get(i)?)
    }
    fn int(&self, i: usize) -> Result<i64> {
        int_of(self.get(i)?)
    }
    fn u64(&self, i: usize) -> Result<u64> {
        u64_of(self.get(i)?)
    }
    fn f64(&self, i: usize) -> Result<f64> {
        f64_of(self.get(i)?)
    }
    fn ticket(&self, i: usize) -> Result<TicketId> {
        TicketId::parse(&self.str(i)?).map_err(|_| Error::Protocol("bad ticket id in reply".into()))
    }
}

/// A reply value as text, borrowed from the reply where it can be (polls read several per
/// ticket).
fn text_of(v: &Value) -> Result<Cow<'_, str>> {
    match v {
        // Checked first: the lossy conversion walks the bytes in chunks, twice the cost.
        Value::BulkString(b) => {
            Ok(std::str::from_utf8(b).map_or_else(|_| String::from_utf8_lossy(b), Cow::Borrowed))
        }
        Value::SimpleString(s) => Ok(Cow::Borrowed(s)),
        Value::Int(n) => Ok(Cow::Owned(n.to_string())),
        other => Err(Error::Protocol(format!("unexpected reply value {other:?}"))),
    }
}

fn int_of(v: &Value) -> Result<i64> {
    if let Value::Int(n) = v {
        return Ok(*n);
    }
    let s = text_of(v)?;
    s.parse::<i64>()
        .or_else(|_| s.parse::<f64>().map(|f| f as i64))
        .map_err(|_| Error::Protocol(format!("not a number: {s:?}")))
}

fn u64_of(v: &Value) -> Result<u64> {
    Ok(int_of(v)?.max(0) as u64)
}

fn f64_of(v: &Value) -> Result<f64> {
    let s = text_of(v)?;
    s.parse().map_err(|_| Error::Protocol(format!("not a number: {s:?}")))
}

fn state_of(s: &str) -> Result<TicketState> {
    Ok(match s {
        "waiting" => TicketState::Waiting,
        "admitted" => TicketState::Admitted,
        "expired" => TicketState::Expired,
        "left" => TicketState::Left,
        "dropped" => TicketState::Dropped,
        other => return Err(Error::Protocol(format!("unknown ticket state {other:?}"))),
    })
}

/// Decodes `status_reply` of `lua/lib.lua`.
fn decode_status(room: &RoomId, r: &Reply) -> Result<(bool, TicketStatus)> {
    let created = r.int(2)? == 1;
    let fields = TicketFields {
        state: state_of(&r.str(3)?)?,
        pos: r.int(4)?,
        until: r.u64(5)?,
        owner: owner_of(&r.str(6)?)?,
        joined: r.u64(7)?,
    };
    let view = RoomView::decode(r, 8)?;
    Ok((created, fields.status(room, r.ticket(1)?, &view)))
}

/// What a status needs of its room, as the script saw it: `now, rate_pm, batch, interval,
/// opens, paused, max_active, ttl` from reply index `at`.
struct RoomView {
    now: u64,
    rate_pm: f64,
    /// Just the settings the ETA needs.
    cfg: Arc<RoomConfig>,
    phase: RoomPhase,
}

impl RoomView {
    fn decode(r: &Reply, at: usize) -> Result<Self> {
        let now = r.u64(at)?;
        let mut cfg = RoomConfig {
            batch_size: r.u64(at + 2)? as u32,
            tick_interval_ms: r.u64(at + 3)?,
            paused: r.int(at + 5)? == 1,
            max_active: r.u64(at + 6)? as u32,
            session_ttl_s: r.u64(at + 7)? as u32,
            ..RoomConfig::default()
        };
        cfg.set_opens_at_ms(r.u64(at + 4)?);
        Ok(RoomView::new(now, r.f64(at + 1)?, Arc::new(cfg)))
    }

    fn new(now: u64, rate_pm: f64, cfg: Arc<RoomConfig>) -> Self {
        RoomView { now, rate_pm, phase: RoomPhase::of(&cfg, now), cfg }
    }
}

/// One ticket's fields of a reply.
struct TicketFields {
    state: TicketState,
    pos: i64,
    until: u64,
    owner: OwnerHash,
    joined: u64,
}

fn owner_of(hex: &str) -> Result<OwnerHash> {
    OwnerHash::parse_hex(hex).ok_or_else(|| Error::Protocol("bad owner".into()))
}

impl TicketFields {
    fn status(self, room: &RoomId, ticket: TicketId, view: &RoomView) -> TicketStatus {
        let position = (self.pos > 0).then_some(self.pos as u64);
        let eta = position.and_then(|p| eta::estimate(p, view.rate_pm, &view.cfg, view.phase, view.now));
        let timed = matches!(self.state, TicketState::Admitted | TicketState::Expired);
        TicketStatus {
            ticket,
            room: room.clone(),
            state: self.state,
            position,
            eta,
            owner: self.owner,
            admitted_until_ms: timed.then_some(self.until),
            joined_at_ms: self.joined,
            phase: view.phase,
            now_ms: view.now,
        }
    }
}

/// `field value` pairs of a config as stored in the `cfg` hash.
fn config_fields(cfg: &RoomConfig) -> Vec<String> {
    let pairs: [(&str, String); 11] = [
        ("protect", serde_json::to_string(&cfg.protect).unwrap_or_else(|_| "[]".into())),
        ("target", cfg.target.clone()),
        ("batch_size", cfg.batch_size.to_string()),
        ("tick_interval_ms", cfg.tick_interval_ms.to_string()),
        ("free_pass", cfg.free_pass.to_string()),
        ("max_active", cfg.max_active.to_string()),
        ("session_ttl_s", cfg.session_ttl_s.to_string()),
        ("idle_timeout_s", cfg.idle_timeout_s.to_string()),
        ("queue_method", cfg.queue_method.as_str().to_string()),
        ("opens_at_ms", cfg.opens_at_ms().to_string()),
        ("paused", if cfg.paused { "1" } else { "0" }.to_string()),
    ];
    pairs.into_iter().flat_map(|(k, v)| [k.to_string(), v]).collect()
}

fn config_from_hash(h: &std::collections::HashMap<String, String>) -> Result<RoomConfig> {
    let get = |k: &str| h.get(k).ok_or_else(|| Error::Protocol(format!("room config lacks {k}")));
    let num = |k: &str| -> Result<u64> { get(k)?.parse().map_err(|_| Error::Protocol(format!("bad {k}"))) };
    let mut cfg = RoomConfig {
        protect: serde_json::from_str(get("protect")?).map_err(|_| Error::Protocol("bad protect".into()))?,
        target: get("target")?.clone(),
        batch_size: num("batch_size")? as u32,
        tick_interval_ms: num("tick_interval_ms")?,
        free_pass: num("free_pass")? as u32,
        max_active: num("max_active")? as u32,
        session_ttl_s: num("session_ttl_s")? as u32,
        idle_timeout_s: num("idle_timeout_s")? as u32,
        queue_method: match get("queue_method")?.as_str() {
            "random_at_open" => QueueMethod::RandomAtOpen,
            _ => QueueMethod::Fifo,
        },
        opens_at: None,
        paused: get("paused")? == "1",
    };
    cfg.set_opens_at_ms(num("opens_at_ms")?);
    Ok(cfg)
}

fn decode_csv(r: &Reply, i: usize) -> Result<Vec<TicketId>> {
    let csv = r.str(i)?;
    csv.split(',')
        .filter(|t| !t.is_empty())
        .map(|t| TicketId::parse(t).map_err(|_| Error::Protocol("bad ticket id in reply".into())))
        .collect()
}

#[async_trait]
impl Store for RedisStore {
    async fn put_room(&self, room: &RoomId, cfg: &RoomConfig) -> Result<bool> {
        cfg.validate()?;
        // Registry first: a room listed without config is skipped; config without listing is not.
        self.query::<()>(redis::cmd("SADD").arg(ROOMS_KEY).arg(room.as_str())).await?;
        let r = self.run(&SCRIPTS.put_room, room, &config_fields(cfg)).await?;
        self.reads.forget(room);
        self.query::<()>(redis::cmd("DEL").arg(RoomKey(room, DELETED))).await?;
        Ok(r.int(1)? == 1)
    }

    async fn room_config(&self, room: &RoomId) -> Result<Option<RoomConfig>> {
        let key = &room_keys(room)[0];
        let h: std::collections::HashMap<String, String> = self.query(redis::cmd("HGETALL").arg(key)).await?;
        if h.is_empty() {
            return Ok(None);
        }
        config_from_hash(&h).map(Some)
    }

    async fn delete_room(&self, room: &RoomId) -> Result<bool> {
        // Noted before the room goes: whoever finds it gone finds the note, unless the store
        // lost both (then the room was lost, not deleted). In the room's hash slot, so a
        // Cluster node that loses one loses the other.
        let memory = DELETION_MEMORY.as_secs();
        self.query::<()>(redis::cmd("SET").arg(RoomKey(room, DELETED)).arg(1).arg("EX").arg(memory)).await?;
        let r = self.run(&SCRIPTS.delete_room, room, NO_ARGS).await?;
        self.reads.forget(room);
        self.query::<()>(redis::cmd("SREM").arg(ROOMS_KEY).arg(room.as_str())).await?;
        Ok(r.int(1)? == 1)
    }

    async fn revoked(&self, room: &RoomId) -> Result<Vec<(TicketId, u64)>> {
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(RoomKey(room, "revoked")).arg(0).arg(MAX_REVOKED - 1).arg("REV").arg("WITHSCORES");
        let pairs: Vec<(String, u64)> = self.query(&cmd).await?;
        pairs
            .into_iter()
            .map(|(t, until)| {
                TicketId::parse(&t)
                    .map(|t| (t, until))
                    .map_err(|_| Error::Protocol("bad ticket id in revoked".into()))
            })
            .collect()
    }

    async fn was_deleted(&self, room: &RoomId) -> Result<bool> {
        self.query(redis::cmd("EXISTS").arg(RoomKey(room, DELETED))).await
    }

    async fn rooms(&self) -> Result<Vec<RoomId>> {
        let names: Vec<String> = self.query(redis::cmd("SMEMBERS").arg(ROOMS_KEY)).await?;
        let mut rooms: Vec<RoomId> = names.iter().filter_map(|n| RoomId::parse(n).ok()).collect();
        rooms.sort();
        Ok(rooms)
    }

    async fn set_paused(&self, room: &RoomId, paused: bool) -> Result<()> {
        self.run(&SCRIPTS.set_paused, room, &[if paused { "1" } else { "0" }.to_string()]).await?;
        self.reads.forget(room);
        Ok(())
    }

    async fn join(&self, room: &RoomId, user: &UserKey) -> Result<JoinOutcome> {
        let random = format!("{:016x}", rand::random::<u64>());
        let r = self.run(&SCRIPTS.join, room, &[user.owner_hash().to_string(), random]).await?;
        let (created, status) = decode_status(room, &r)?;
        Ok(JoinOutcome { created, status })
    }

    async fn status(&self, room: &RoomId, ticket: TicketId) -> Result<TicketStatus> {
        self.status_many(room, &[ticket]).await?.pop().flatten().ok_or(Error::UnknownTicket)
    }

    async fn status_many(&self, room: &RoomId, tickets: &[TicketId]) -> Result<Vec<Option<TicketStatus>>> {
        check_touch(tickets)?;
        if tickets.is_empty() {
            return Ok(Vec::new());
        }
        // Plain reads first (on a Cluster the pipeline goes to the room's slot: its keyed
        // commands share the hash tag and `TIME` routes nowhere in particular); the script
        // for what they cannot answer.
        let plan = self.reads.plan(room, tickets);
        if plan.undrawn() {
            return self.status_script(room, tickets).await;
        }
        let replies = self.conn.pipeline(&reads::pipeline(room, tickets, &plan)).await?;
        let Some(answers) = reads::decode(&self.reads, room, tickets, plan, &replies)? else {
            return self.status_script(room, tickets).await;
        };
        let rest: Vec<TicketId> = answers
            .iter()
            .zip(tickets)
            .filter(|(a, _)| matches!(a, reads::Read::AskScript))
            .map(|(_, t)| *t)
            .collect();
        let mut scripted =
            if rest.is_empty() { Vec::new() } else { self.status_script(room, &rest).await? }.into_iter();
        answers
            .into_iter()
            .map(|a| match a {
                reads::Read::Known(known) => Ok(known),
                reads::Read::AskScript => {
                    scripted.next().ok_or_else(|| Error::Protocol("status reply too short".into()))
                }
            })
            .collect()
    }

    async fn leave(&self, room: &RoomId, ticket: TicketId) -> Result<TicketState> {
        let r = self.run(&SCRIPTS.leave, room, &[ticket.to_string()]).await?;
        state_of(&r.str(1)?)
    }

    async fn touch(&self, room: &RoomId, tickets: &[TicketId]) -> Result<()> {
        check_touch(tickets)?;
        if tickets.is_empty() {
            return Ok(());
        }
        self.run(&SCRIPTS.touch, room, &hex_ids(tickets)).await?;
        Ok(())
    }

    async fn watch(&self, room: &RoomId, tickets: &[TicketId]) -> Result<Vec<Option<Watched>>> {
        check_touch(tickets)?;
        if tickets.is_empty() {
            return Ok(Vec::new());
        }
        let r = self.run(&SCRIPTS.watch, room, &hex_ids(tickets)).await?;
        (0..tickets.len())
            .map(|i| {
                let base = 2 + i * 3;
                let state = r.str(base)?;
                if state == "unknown" {
                    return Ok(None);
                }
                let state = state_of(&state)?;
                let pos = r.int(base + 1)?;
                let until = r.u64(base + 2)?;
                let timed = matches!(state, TicketState::Admitted | TicketState::Expired);
                Ok(Some(Watched {
                    state,
                    position: (pos > 0).then_some(pos as u64),
                    admitted_until_ms: timed.then_some(until),
                }))
            })
            .collect()
    }

    async fn tick(&self, room: &RoomId) -> Result<TickOutcome> {
        let r = self.run(&SCRIPTS.tick, room, NO_ARGS).await?;
        // A tick moves the admission rate, and may draw the queue.
        self.reads.forget(room);
        let tick = r.u64(1)?;
        if r.str(0)? == "dup" {
            return Ok(TickOutcome { tick, ..TickOutcome::default() });
        }
        let seed = r.str(7)?;
        let draw = (!seed.is_empty()).then(|| -> Result<DrawRecord> {
            Ok(DrawRecord {
                seed: seed.to_string(),
                at_us: r.u64(8)?,
                last_seq: r.u64(9)?,
                shuffled: r.u64(10)?,
            })
        });
        Ok(TickOutcome {
            tick,
            applied: true,
            waiting_before: r.u64(2)?,
            active_before: r.u64(3)?,
            dropped: r.u64(4)?,
            expired: r.u64(5)?,
            expires_at_ms: r.u64(6)?,
            draw: draw.transpose()?,
            admitted: self.with_waits(room, decode_csv(&r, 11)?).await?,
        })
    }

    async fn admit(&self, room: &RoomId, count: u32) -> Result<Vec<TicketId>> {
        check_admit(count)?;
        let r = self.run(&SCRIPTS.admit, room, &[count.to_string()]).await?;
        self.reads.forget(room);
        decode_csv(&r, 2)
    }

    async fn active(&self, room: &RoomId) -> Result<u64> {
        Ok(self.stats(room).await?.active)
    }

    async fn stats(&self, room: &RoomId) -> Result<RoomStats> {
        let r = self.run(&SCRIPTS.stats, room, NO_ARGS).await?;
        let phase = match &*r.str(1)? {
            "scheduled" => RoomPhase::Scheduled,
            "paused" => RoomPhase::Paused,
            _ => RoomPhase::Open,
        };
        let opens = r.u64(5)?;
        Ok(RoomStats {
            room: room.clone(),
            phase,
            waiting: r.u64(2)?,
            active: r.u64(3)?,
            admitted_per_minute: r.f64(4)?,
            opens_at_ms: (opens > 0).then_some(opens),
            joined_total: r.u64(6)?,
            admitted_total: r.u64(7)?,
            dropped_total: r.u64(8)?,
            left_total: r.u64(9)?,
            free_passes_used: r.u64(10)?,
            last_tick: r.u64(11)?,
            now_ms: r.u64(12)?,
        })
    }

    async fn draw_record(&self, room: &RoomId) -> Result<Option<DrawRecord>> {
        let key = &room_keys(room)[10];
        let h: std::collections::HashMap<String, String> = self.query(redis::cmd("HGETALL").arg(key)).await?;
        if h.is_empty() {
            return Ok(None);
        }
        let num = |k: &str| h.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Ok(Some(DrawRecord {
            seed: h.get("seed").cloned().unwrap_or_default(),
            at_us: num("at_us"),
            last_seq: num("last_seq"),
            shuffled: num("shuffled"),
        }))
    }

    fn subscribe(&self) -> broadcast::Receiver<RoomEvent> {
        self.events.subscribe()
    }

    async fn ping(&self) -> Result<()> {
        let _: String = self.query(&redis::cmd("PING")).await?;
        Ok(())
    }

    async fn local(&self) -> Result<Option<Arc<dyn Store>>> {
        let conn = open(&self.urls).await?;
        let local = RedisStore {
            conn,
            urls: self.urls.clone(),
            events: self.events.clone(),
            reads: self.reads.clone(),
            listener: None,
        };
        Ok(Some(Arc::new(local)))
    }
}

/// Script arguments: none.
const NO_ARGS: &[&[u8]] = &[];

/// Ticket ids as script arguments, their hex digits in place (a `String` each cost ~500
/// instructions, and every poll's ticket is touched).
fn hex_ids(tickets: &[TicketId]) -> Vec<[u8; 32]> {
    tickets.iter().map(|t| t.to_hex()).collect()
}

/// Shared handle type for callers that pick a store at run time.
pub type DynStore = Arc<dyn Store>;
