//! The in-process gate log: the embedded default (one gateway, nothing to install). Same
//! semantics as the Redis Streams log, entries lost only with the process.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::time::Instant;

use super::*;
use crate::store::DeletionNotes;

#[derive(Debug)]
struct Entry {
    n: u64,
    request: LoggedRequest,
    /// Owner and when it was last given to (or attempted by) the owner.
    owner: Option<(String, Instant)>,
    attempts: u32,
}

#[derive(Debug, Default)]
struct Log {
    last: Option<EntryId>,
    logged: u64,
    done: u64,
    dead: u64,
    entries: BTreeMap<EntryId, Entry>,
    responses: HashMap<EntryId, (StoredResponse, Instant)>,
    expiries: VecDeque<(Instant, EntryId)>,
    dead_letters: VecDeque<DeadLetter>,
}

impl Log {
    fn next_id(&mut self) -> EntryId {
        let ms = unix_ms();
        let id = match self.last {
            Some(last) if last.ms >= ms => EntryId { ms: last.ms, seq: last.seq + 1 },
            _ => EntryId { ms, seq: 0 },
        };
        self.last = Some(id);
        id
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.expiries.front() {
            if at > now {
                break;
            }
            self.expiries.pop_front();
            if self.responses.get(&id).is_some_and(|(_, exp)| *exp <= now) {
                self.responses.remove(&id);
            }
        }
    }
}

/// The in-process gate log.
#[derive(Debug, Default)]
pub struct MemoryGateLog {
    configs: Mutex<BTreeMap<GateId, GateConfig>>,
    logs: Mutex<HashMap<GateId, Log>>,
    /// Gates deleted lately, on the system clock.
    deleted: DeletionNotes<GateId>,
}

impl MemoryGateLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, gate: &GateId, f: impl FnOnce(&mut Log) -> T) -> T {
        let mut logs = self.logs.lock().expect("gate log lock");
        f(logs.entry(gate.clone()).or_default())
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn delivery(id: EntryId, e: &Entry) -> Delivery {
    Delivery { id, request: e.request.clone() }
}

#[async_trait]
impl GateLog for MemoryGateLog {
    async fn put_gate(&self, gate: &GateId, cfg: &GateConfig) -> Result<bool> {
        self.deleted.forget(gate);
        Ok(self.configs.lock().expect("gate config lock").insert(gate.clone(), cfg.clone()).is_none())
    }

    async fn gates(&self) -> Result<Vec<(GateId, GateConfig)>> {
        let configs = self.configs.lock().expect("gate config lock");
        Ok(configs.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    async fn delete_gate(&self, gate: &GateId) -> Result<bool> {
        let backlog = self.with(gate, |l| l.entries.len() as u64);
        if backlog > 0 {
            return Err(Error::GateBusy(gate.to_string(), backlog));
        }
        self.deleted.note(gate, unix_ms());
        Ok(self.configs.lock().expect("gate config lock").remove(gate).is_some())
    }

    async fn was_deleted(&self, gate: &GateId) -> Result<bool> {
        Ok(self.deleted.contains(gate, unix_ms()))
    }

    async fn append(&self, gate: &GateId, req: &LoggedRequest, max_logged: u32) -> Result<Appended> {
        if !self.configs.lock().expect("gate config lock").contains_key(gate) {
            return Err(Error::UnknownGate(gate.to_string()));
        }
        self.with(gate, |l| {
            if l.entries.len() >= max_logged as usize {
                return Err(Error::LogFull(gate.to_string()));
            }
            let id = l.next_id();
            l.logged += 1;
            let n = l.logged;
            l.entries.insert(id, Entry { n, request: req.clone(), owner: None, attempts: 0 });
            Ok(Appended { id, position: n.saturating_sub(l.done).max(1) })
        })
    }

    async fn next(&self, gate: &GateId, consumer: &str) -> Result<Option<Delivery>> {
        let now = Instant::now();
        Ok(self.with(gate, |l| {
            let (id, e) = l.entries.iter_mut().find(|(_, e)| e.owner.is_none())?;
            e.owner = Some((consumer.to_owned(), now));
            Some(delivery(*id, e))
        }))
    }

    async fn claim(
        &self,
        gate: &GateId,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>> {
        let now = Instant::now();
        Ok(self.with(gate, |l| {
            l.entries
                .iter_mut()
                .filter(|(_, e)| e.owner.as_ref().is_some_and(|(_, at)| now.duration_since(*at) >= min_idle))
                .take(count)
                .map(|(id, e)| {
                    e.owner = Some((consumer.to_owned(), now));
                    delivery(*id, e)
                })
                .collect()
        }))
    }

    async fn attempt(&self, gate: &GateId, consumer: &str, id: EntryId) -> Result<Option<u32>> {
        let now = Instant::now();
        Ok(self.with(gate, |l| {
            let e = l.entries.get_mut(&id)?;
            match &mut e.owner {
                Some((who, at)) if who == consumer => *at = now,
                _ => return None,
            }
            e.attempts += 1;
            Some(e.attempts)
        }))
    }

    async fn finish(
        &self,
        gate: &GateId,
        id: EntryId,
        response: &StoredResponse,
        ttl: Duration,
        dead: Option<&str>,
    ) -> Result<bool> {
        let now = Instant::now();
        Ok(self.with(gate, |l| {
            let Some(e) = l.entries.remove(&id) else { return false };
            l.done += 1;
            l.responses.insert(id, (response.clone(), now + ttl));
            l.expiries.push_back((now + ttl, id));
            if let Some(reason) = dead {
                l.dead += 1;
                l.dead_letters.push_front(DeadLetter { id, reason: reason.to_owned(), request: e.request });
                l.dead_letters.truncate(MAX_DEAD_LETTERS);
            }
            l.expire(now);
            true
        }))
    }

    async fn poll(&self, gate: &GateId, id: EntryId) -> Result<Polled> {
        let now = Instant::now();
        Ok(self.with(gate, |l| {
            l.expire(now);
            if let Some((r, _)) = l.responses.get(&id) {
                return Polled::Done(r.clone());
            }
            match l.entries.get(&id) {
                Some(e) => Polled::Pending { position: e.n.saturating_sub(l.done).max(1) },
                None => Polled::Unknown,
            }
        }))
    }

    async fn counts(&self, gate: &GateId) -> Result<GateCounts> {
        Ok(self.with(gate, |l| GateCounts {
            logged: l.logged,
            backlog: l.entries.len() as u64,
            dead_letters: l.dead,
        }))
    }

    async fn dead_letters(&self, gate: &GateId, limit: usize) -> Result<Vec<DeadLetter>> {
        Ok(self.with(gate, |l| l.dead_letters.iter().take(limit).cloned().collect()))
    }
}
