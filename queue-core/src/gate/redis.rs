//! The gate log on Redis Streams, shared by every gateway.
//!
//! Keys of gate `g` share the hash tag `{g}` (one Cluster slot): `wr:gate:{g}:cfg` (config
//! JSON), `:log` (the stream; consumer group `replay`), `:meta` (logged/done/dead counters),
//! `:tries` (attempts per entry), `:dead` (dead-letter stream), `:r:{id}` (stored responses,
//! with a TTL) and `:deleted` (a deletion note, with a TTL). The set `wr:gates` lists gate
//! names. Changes that must be atomic are scripts (`lua/gate_*.lua`); reading and claiming are
//! plain `XREADGROUP` / `XAUTOCLAIM`.

use std::sync::LazyLock;

use ::redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use ::redis::{FromRedisValue, Script, Value};

use super::*;
use crate::store::redis::Conn;

const GROUP: &str = "replay";
const GATES_KEY: &str = "wr:gates";

struct Scripts {
    append: Script,
    attempt: Script,
    finish: Script,
    poll: Script,
    delete: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    append: Script::new(include_str!("../../../lua/gate_append.lua")),
    attempt: Script::new(include_str!("../../../lua/gate_attempt.lua")),
    finish: Script::new(include_str!("../../../lua/gate_finish.lua")),
    poll: Script::new(include_str!("../../../lua/gate_poll.lua")),
    delete: Script::new(include_str!("../../../lua/gate_delete.lua")),
});

fn key(gate: &GateId, what: &str) -> String {
    format!("wr:gate:{{{gate}}}:{what}")
}

/// The Redis Streams gate log.
#[derive(Clone)]
pub struct RedisGateLog {
    conn: Conn,
}

impl fmt::Debug for RedisGateLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RedisGateLog")
    }
}

fn bytes_of(v: Option<&Value>) -> Bytes {
    match v {
        Some(Value::BulkString(b)) => Bytes::copy_from_slice(b),
        Some(Value::SimpleString(s)) => Bytes::copy_from_slice(s.as_bytes()),
        Some(Value::Int(n)) => Bytes::from(n.to_string()),
        _ => Bytes::new(),
    }
}

fn text_of(v: Option<&Value>) -> String {
    String::from_utf8_lossy(&bytes_of(v)).into_owned()
}

fn decode_entry(e: &StreamId) -> Result<Delivery> {
    let id = EntryId::parse(&e.id).ok_or_else(|| Error::Protocol(format!("bad stream id {:?}", e.id)))?;
    let headers: Vec<(String, String)> = serde_json::from_str(&text_of(e.map.get("h")))
        .map_err(|err| Error::Protocol(format!("bad logged headers: {err}")))?;
    Ok(Delivery {
        id,
        request: LoggedRequest {
            method: text_of(e.map.get("m")),
            path: text_of(e.map.get("p")),
            headers,
            body: bytes_of(e.map.get("b")),
        },
    })
}

fn is_nogroup(e: &Error) -> bool {
    matches!(e, Error::Store(r) if r.code() == Some("NOGROUP"))
}

impl RedisGateLog {
    pub(crate) async fn new(conn: Conn) -> Result<Self> {
        let s = &*SCRIPTS;
        for script in [&s.append, &s.attempt, &s.finish, &s.poll, &s.delete] {
            conn.load(script).await?;
        }
        Ok(RedisGateLog { conn })
    }

    /// Runs gate script `s` over `keys`, `args` adding its arguments; reloads it if Redis
    /// lost it, as the room scripts are ([`Conn::eval`]).
    async fn run<T: FromRedisValue>(
        &self,
        s: &Script,
        keys: &[String],
        args: impl FnOnce(&mut ::redis::Cmd),
    ) -> Result<T> {
        let mut cmd = ::redis::cmd("EVALSHA");
        cmd.arg(s.get_hash()).arg(keys.len()).arg(keys);
        args(&mut cmd);
        self.conn.eval(s, &cmd).await
    }

    async fn ensure_group(&self, gate: &GateId) -> Result<()> {
        let mut cmd = ::redis::cmd("XGROUP");
        cmd.arg("CREATE").arg(key(gate, "log")).arg(GROUP).arg("0").arg("MKSTREAM");
        match self.conn.query::<()>(&cmd).await {
            Err(Error::Store(e)) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// Runs `cmd` built by `make`, creating the consumer group once if it is missing.
    async fn with_group<T: ::redis::FromRedisValue>(
        &self,
        gate: &GateId,
        make: impl Fn() -> ::redis::Cmd,
    ) -> Result<T> {
        match self.conn.query(&make()).await {
            Err(e) if is_nogroup(&e) => {
                self.ensure_group(gate).await?;
                self.conn.query(&make()).await
            }
            other => other,
        }
    }
}

#[async_trait]
impl GateLog for RedisGateLog {
    async fn put_gate(&self, gate: &GateId, cfg: &GateConfig) -> Result<bool> {
        let json = serde_json::to_string(cfg).map_err(|e| Error::Protocol(e.to_string()))?;
        let old: Option<String> =
            self.conn.query(::redis::cmd("SET").arg(key(gate, "cfg")).arg(json).arg("GET")).await?;
        self.conn.query::<()>(::redis::cmd("SADD").arg(GATES_KEY).arg(gate.as_str())).await?;
        self.conn.query::<()>(::redis::cmd("DEL").arg(key(gate, "deleted"))).await?;
        Ok(old.is_none())
    }

    async fn was_deleted(&self, gate: &GateId) -> Result<bool> {
        self.conn.query(::redis::cmd("EXISTS").arg(key(gate, "deleted"))).await
    }

    async fn gates(&self) -> Result<Vec<(GateId, GateConfig)>> {
        let names: Vec<String> = self.conn.query(::redis::cmd("SMEMBERS").arg(GATES_KEY)).await?;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let Ok(gate) = GateId::parse(&name) else { continue };
            let json: Option<String> = self.conn.query(::redis::cmd("GET").arg(key(&gate, "cfg"))).await?;
            match json.map(|j| GateConfig::from_json(j.as_bytes())) {
                Some(Ok(cfg)) => out.push((gate, cfg)),
                Some(Err(e)) => tracing::warn!(gate = %gate, error = %e, "unreadable gate config"),
                None => {}
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn delete_gate(&self, gate: &GateId) -> Result<bool> {
        let keys = [key(gate, "cfg"), key(gate, "log"), key(gate, "deleted")];
        let memory = crate::store::DELETION_MEMORY.as_secs();
        let (status, n): (String, u64) = self
            .run(&SCRIPTS.delete, &keys, |c| {
                c.arg(memory);
            })
            .await?;
        if status == "busy" {
            return Err(Error::GateBusy(gate.to_string(), n));
        }
        self.conn.query::<()>(::redis::cmd("SREM").arg(GATES_KEY).arg(gate.as_str())).await?;
        Ok(n == 1)
    }

    async fn append(&self, gate: &GateId, req: &LoggedRequest, max_logged: u32) -> Result<Appended> {
        let headers = serde_json::to_string(&req.headers).map_err(|e| Error::Protocol(e.to_string()))?;
        let keys = [key(gate, "cfg"), key(gate, "log"), key(gate, "meta")];
        let reply: Vec<Value> = self
            .run(&SCRIPTS.append, &keys, |c| {
                c.arg(GROUP)
                    .arg(max_logged)
                    .arg(&req.method)
                    .arg(&req.path)
                    .arg(headers)
                    .arg(req.body.as_ref());
            })
            .await?;
        match text_of(reply.first()).as_str() {
            "ok" => {
                let id = EntryId::parse(&text_of(reply.get(1)))
                    .ok_or_else(|| Error::Protocol("bad id from gate_append".into()))?;
                let position = text_of(reply.get(2)).parse().unwrap_or(1);
                Ok(Appended { id, position })
            }
            "no_gate" => Err(Error::UnknownGate(gate.to_string())),
            "full" => Err(Error::LogFull(gate.to_string())),
            other => Err(Error::Protocol(format!("gate_append answered {other:?}"))),
        }
    }

    async fn next(&self, gate: &GateId, consumer: &str) -> Result<Option<Delivery>> {
        let reply: Option<StreamReadReply> = self
            .with_group(gate, || {
                let mut cmd = ::redis::cmd("XREADGROUP");
                cmd.arg("GROUP").arg(GROUP).arg(consumer).arg("COUNT").arg(1);
                cmd.arg("STREAMS").arg(key(gate, "log")).arg(">");
                cmd
            })
            .await?;
        let Some(reply) = reply else { return Ok(None) };
        match reply.keys.first().and_then(|k| k.ids.first()) {
            Some(e) => decode_entry(e).map(Some),
            None => Ok(None),
        }
    }

    async fn claim(
        &self,
        gate: &GateId,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>> {
        let reply: StreamAutoClaimReply = self
            .with_group(gate, || {
                let mut cmd = ::redis::cmd("XAUTOCLAIM");
                cmd.arg(key(gate, "log")).arg(GROUP).arg(consumer).arg(min_idle.as_millis() as u64);
                cmd.arg("0-0").arg("COUNT").arg(count.max(1));
                cmd
            })
            .await?;
        reply.claimed.iter().map(decode_entry).collect()
    }

    async fn attempt(&self, gate: &GateId, consumer: &str, id: EntryId) -> Result<Option<u32>> {
        let keys = [key(gate, "log"), key(gate, "tries")];
        let n: i64 = self
            .run(&SCRIPTS.attempt, &keys, |c| {
                c.arg(GROUP).arg(consumer).arg(id.to_string());
            })
            .await?;
        Ok((n > 0).then_some(n as u32))
    }

    async fn finish(
        &self,
        gate: &GateId,
        id: EntryId,
        response: &StoredResponse,
        ttl: Duration,
        dead: Option<&str>,
    ) -> Result<bool> {
        let keys = [
            key(gate, "log"),
            key(gate, "meta"),
            key(gate, "tries"),
            key(gate, &format!("r:{id}")),
            key(gate, "dead"),
        ];
        let n: i64 = self
            .run(&SCRIPTS.finish, &keys, |c| {
                c.arg(GROUP)
                    .arg(id.to_string())
                    .arg(response.encode())
                    .arg(ttl.as_secs().max(1))
                    .arg(dead.unwrap_or(""))
                    .arg(MAX_DEAD_LETTERS);
            })
            .await?;
        Ok(n == 1)
    }

    async fn poll(&self, gate: &GateId, id: EntryId) -> Result<Polled> {
        let keys = [key(gate, "log"), key(gate, "meta"), key(gate, &format!("r:{id}"))];
        let reply: Vec<Value> = self
            .run(&SCRIPTS.poll, &keys, |c| {
                c.arg(id.to_string());
            })
            .await?;
        Ok(match text_of(reply.first()).as_str() {
            "done" => Polled::Done(StoredResponse::decode(&bytes_of(reply.get(1)))?),
            "pending" => Polled::Pending { position: text_of(reply.get(1)).parse().unwrap_or(1) },
            _ => Polled::Unknown,
        })
    }

    async fn counts(&self, gate: &GateId) -> Result<GateCounts> {
        let (logged, dead): (Option<u64>, Option<u64>) =
            self.conn.query(::redis::cmd("HMGET").arg(key(gate, "meta")).arg("logged").arg("dead")).await?;
        let backlog: u64 = self.conn.query(::redis::cmd("XLEN").arg(key(gate, "log"))).await?;
        Ok(GateCounts { logged: logged.unwrap_or(0), backlog, dead_letters: dead.unwrap_or(0) })
    }

    async fn dead_letters(&self, gate: &GateId, limit: usize) -> Result<Vec<DeadLetter>> {
        let mut cmd = ::redis::cmd("XREVRANGE");
        cmd.arg(key(gate, "dead")).arg("+").arg("-").arg("COUNT").arg(limit.max(1));
        let reply: ::redis::streams::StreamRangeReply = self.conn.query(&cmd).await?;
        reply
            .ids
            .iter()
            .map(|e| {
                let mut d = decode_entry(&StreamId {
                    id: text_of(e.map.get("offset")),
                    map: e.map.clone(),
                    ..StreamId::default()
                })?;
                d.request.body = bytes_of(e.map.get("b"));
                Ok(DeadLetter { id: d.id, reason: text_of(e.map.get("reason")), request: d.request })
            })
            .collect()
    }
}
