//! Seat holds: one winner per seat under any contention, all or none per request.
//!
//! Per schedule, a map seat → `held by R until T` or `sold to R`. Holding checks every
//! requested seat and takes them all in one atomic step (one Lua script on `tb:hold:{schedule}`
//! with `TB_REDIS_URL`, shared by every backend instance; a lock per schedule in process
//! otherwise). A hold past its expiry counts as free, so seats return without anyone acting;
//! the hold-expiry job only tidies. This is DESIGN's "available-seat set" turned around: the
//! map records what is taken, so a schedule needs no loading before its first hold and an
//! expiry is a comparison rather than a write.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use redis::Script;
use redis::aio::ConnectionManager;

/// What a hold request got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HoldOutcome {
    /// Every seat is held until this time (Unix ms).
    Held {
        /// Expiry of the hold.
        expires_at_ms: i64,
    },
    /// Nothing was held: these seats are held or sold by someone else.
    Taken(Vec<i64>),
}

/// A seat that is not available.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeatState {
    /// Held by a reservation that has not expired.
    Held,
    /// Sold.
    Sold,
}

impl SeatState {
    /// The status a seat shows: `held`, `sold` or (no state) `available`.
    pub fn label(state: Option<&SeatState>) -> &'static str {
        match state {
            Some(SeatState::Held) => "held",
            Some(SeatState::Sold) => "sold",
            None => "available",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    Held { owner: String, until: i64 },
    Sold { owner: String },
}

struct Scripts {
    hold: Script,
    drop: Script,
    sell: Script,
    sweep: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    hold: Script::new(include_str!("../../lua/seat_hold.lua")),
    drop: Script::new(include_str!("../../lua/seat_drop.lua")),
    sell: Script::new(include_str!("../../lua/seat_sell.lua")),
    sweep: Script::new(include_str!("../../lua/seat_sweep.lua")),
});

fn key(schedule: i64) -> String {
    format!("tb:hold:{{{schedule}}}")
}

/// Seat holds, in process or in Redis.
pub struct Holds(Store);

enum Store {
    /// In process: schedule → seat → entry.
    Memory(Mutex<HashMap<i64, HashMap<i64, Entry>>>),
    /// Shared through Redis.
    Redis(ConnectionManager),
}

impl std::fmt::Debug for Holds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Store::Memory(_) => "Holds::Memory",
            Store::Redis(_) => "Holds::Redis",
        })
    }
}

fn parse(v: &str) -> Option<Entry> {
    let mut it = v.splitn(3, '|');
    let (kind, owner, until) = (it.next()?, it.next()?.to_owned(), it.next()?.parse().ok()?);
    match kind {
        "H" => Some(Entry::Held { owner, until }),
        "S" => Some(Entry::Sold { owner }),
        _ => None,
    }
}

impl Holds {
    /// In-process holds.
    pub fn memory() -> Self {
        Holds(Store::Memory(Mutex::new(HashMap::new())))
    }

    /// In-process holds rebuilt from the database's live reservations (the truth), so a
    /// restart of the embedded default keeps every hold and sale.
    pub async fn memory_from(db: &crate::db::Db) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        let rows = sqlx::query(
            "SELECT rs.schedule_id, rs.seat_id, r.id, r.status, r.expires_at FROM reservation_seats rs \
             JOIN reservations r ON r.id = rs.reservation_id WHERE rs.active = 1 AND r.status IN ('held', 'paid')",
        )
        .fetch_all(&db.pool)
        .await?;
        let mut all: HashMap<i64, HashMap<i64, Entry>> = HashMap::new();
        for r in rows {
            let owner: String = r.get(2);
            let entry = if r.get::<String, _>(3) == "paid" {
                Entry::Sold { owner }
            } else {
                Entry::Held { owner, until: r.get(4) }
            };
            all.entry(r.get(0)).or_default().insert(r.get(1), entry);
        }
        Ok(Holds(Store::Memory(Mutex::new(all))))
    }

    /// Redis-backed holds.
    pub async fn redis(url: &str) -> redis::RedisResult<Self> {
        Ok(Holds(Store::Redis(redis::Client::open(url)?.get_connection_manager().await?)))
    }

    fn with<T>(
        m: &Mutex<HashMap<i64, HashMap<i64, Entry>>>,
        schedule: i64,
        f: impl FnOnce(&mut HashMap<i64, Entry>) -> T,
    ) -> T {
        let mut all = m.lock().unwrap_or_else(|e| e.into_inner());
        f(all.entry(schedule).or_default())
    }

    /// Holds `seats` of `schedule` for `owner` for `ttl_ms`, all or none.
    pub async fn hold(
        &self,
        schedule: i64,
        seats: &[i64],
        owner: &str,
        ttl_ms: i64,
    ) -> redis::RedisResult<HoldOutcome> {
        match &self.0 {
            Store::Memory(m) => {
                let now = crate::db::now_ms();
                Ok(Self::with(m, schedule, |map| {
                    let taken: Vec<i64> = seats
                        .iter()
                        .copied()
                        .filter(|s| match map.get(s) {
                            Some(Entry::Sold { .. }) => true,
                            Some(Entry::Held { owner: o, until }) => o != owner && *until > now,
                            None => false,
                        })
                        .collect();
                    if !taken.is_empty() {
                        return HoldOutcome::Taken(taken);
                    }
                    let until = now + ttl_ms;
                    for s in seats {
                        map.insert(*s, Entry::Held { owner: owner.to_owned(), until });
                    }
                    HoldOutcome::Held { expires_at_ms: until }
                }))
            }
            Store::Redis(c) => {
                let mut inv = SCRIPTS.hold.prepare_invoke();
                inv.key(key(schedule)).arg(owner).arg(ttl_ms);
                for s in seats {
                    inv.arg(*s);
                }
                let reply: Vec<String> = inv.invoke_async(&mut c.clone()).await?;
                Ok(match reply.first().map(String::as_str) {
                    Some("held") => HoldOutcome::Held {
                        expires_at_ms: reply.get(1).and_then(|v| v.parse().ok()).unwrap_or(0),
                    },
                    _ => HoldOutcome::Taken(reply.iter().skip(1).filter_map(|v| v.parse().ok()).collect()),
                })
            }
        }
    }

    /// Releases `owner`'s holds on `seats` (never a sale, never someone else's hold).
    pub async fn release(&self, schedule: i64, seats: &[i64], owner: &str) -> redis::RedisResult<usize> {
        self.drop_owned(schedule, seats, owner, false).await
    }

    /// Frees `owner`'s seats, held or sold (a refund or a compensation); returns how many.
    pub async fn free(&self, schedule: i64, seats: &[i64], owner: &str) -> redis::RedisResult<usize> {
        self.drop_owned(schedule, seats, owner, true).await
    }

    /// Removes `owner`'s holds on `seats`, and their sales too when `sales`.
    async fn drop_owned(
        &self,
        schedule: i64,
        seats: &[i64],
        owner: &str,
        sales: bool,
    ) -> redis::RedisResult<usize> {
        match &self.0 {
            Store::Memory(m) => Ok(Self::with(m, schedule, |map| {
                let mine: Vec<i64> = seats
                    .iter()
                    .copied()
                    .filter(|s| match map.get(s) {
                        Some(Entry::Held { owner: o, .. }) => o == owner,
                        Some(Entry::Sold { owner: o }) => sales && o == owner,
                        None => false,
                    })
                    .collect();
                for s in &mine {
                    map.remove(s);
                }
                mine.len()
            })),
            Store::Redis(c) => {
                let mut inv = SCRIPTS.drop.prepare_invoke();
                inv.key(key(schedule)).arg(owner).arg(if sales { "1" } else { "0" });
                for s in seats {
                    inv.arg(*s);
                }
                inv.invoke_async(&mut c.clone()).await
            }
        }
    }

    /// Turns `owner`'s holds on `seats` into sales, all or none; `Err(lost seats)` when any
    /// seat is no longer `owner`'s (its hold expired and someone else took it).
    pub async fn sell(
        &self,
        schedule: i64,
        seats: &[i64],
        owner: &str,
    ) -> redis::RedisResult<Result<(), Vec<i64>>> {
        match &self.0 {
            Store::Memory(m) => Ok(Self::with(m, schedule, |map| {
                let lost: Vec<i64> = seats
                    .iter()
                    .copied()
                    .filter(|s| match map.get(s) {
                        Some(Entry::Held { owner: o, .. } | Entry::Sold { owner: o }) => o != owner,
                        None => true,
                    })
                    .collect();
                if !lost.is_empty() {
                    return Err(lost);
                }
                for s in seats {
                    map.insert(*s, Entry::Sold { owner: owner.to_owned() });
                }
                Ok(())
            })),
            Store::Redis(c) => {
                let mut inv = SCRIPTS.sell.prepare_invoke();
                inv.key(key(schedule)).arg(owner);
                for s in seats {
                    inv.arg(*s);
                }
                let reply: Vec<String> = inv.invoke_async(&mut c.clone()).await?;
                Ok(match reply.first().map(String::as_str) {
                    Some("sold") => Ok(()),
                    _ => Err(reply.iter().skip(1).filter_map(|v| v.parse().ok()).collect()),
                })
            }
        }
    }

    /// Every unavailable seat of `schedule` (expired holds are available).
    pub async fn states(&self, schedule: i64) -> redis::RedisResult<HashMap<i64, SeatState>> {
        let entries: Vec<(i64, Entry)> = match &self.0 {
            Store::Memory(m) => {
                Self::with(m, schedule, |map| map.iter().map(|(k, v)| (*k, v.clone())).collect())
            }
            Store::Redis(c) => {
                let all: HashMap<i64, String> =
                    redis::cmd("HGETALL").arg(key(schedule)).query_async(&mut c.clone()).await?;
                all.into_iter().filter_map(|(k, v)| Some((k, parse(&v)?))).collect()
            }
        };
        let now = self.now_ms().await?;
        Ok(entries
            .into_iter()
            .filter_map(|(seat, e)| match e {
                Entry::Sold { .. } => Some((seat, SeatState::Sold)),
                Entry::Held { until, .. } if until > now => Some((seat, SeatState::Held)),
                Entry::Held { .. } => None,
            })
            .collect())
    }

    /// The clock holds are judged by: Redis `TIME` when shared, so instances agree.
    async fn now_ms(&self) -> redis::RedisResult<i64> {
        match &self.0 {
            Store::Redis(c) => {
                let (s, us): (i64, i64) = redis::cmd("TIME").query_async(&mut c.clone()).await?;
                Ok(s * 1000 + us / 1000)
            }
            _ => Ok(crate::db::now_ms()),
        }
    }

    /// Forgets expired holds of `schedule`; returns how many.
    pub async fn sweep(&self, schedule: i64) -> redis::RedisResult<usize> {
        match &self.0 {
            Store::Memory(m) => {
                let now = crate::db::now_ms();
                Ok(Self::with(m, schedule, |map| {
                    let before = map.len();
                    map.retain(|_, e| !matches!(e, Entry::Held { until, .. } if *until <= now));
                    before - map.len()
                }))
            }
            Store::Redis(c) => {
                let mut inv = SCRIPTS.sweep.prepare_invoke();
                inv.key(key(schedule));
                inv.invoke_async(&mut c.clone()).await
            }
        }
    }
}
