//! Ranking: views counted per concert per UTC day; the top 5 of the last 7 days.
//!
//! With `TB_REDIS_URL` the counts are Redis sorted sets (`tb:views:{day}`, one per day,
//! expiring after 8 days) so every backend instance shares them; otherwise a map in process.
//!
//! A client's views count once per window (`view_dedup_window_s`, [`Views::record_once`]):
//! the client is the signed-in user, else the address ([`Viewer`]), so reloading a page or a
//! script hammering one does not move the ranking. With Redis a `SET NX EX` marker per
//! (concert, viewer) decides in one round trip for every instance; in process a bounded
//! table ([`SEEN_CAP`]) does, which forgets its oldest markers first when full.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;

use redis::aio::ConnectionManager;

/// Days in the sliding window.
pub const WINDOW_DAYS: i64 = 7;
/// How many concerts the ranking returns.
pub const TOP: usize = 5;

fn day_of(ms: i64) -> i64 {
    ms.div_euclid(86_400_000)
}

/// How many (concert, viewer) markers the in-process table keeps. At ~100 bytes each, 10 MB;
/// past it the oldest go first, so only a client unseen for 100,000 others counts again early.
pub const SEEN_CAP: usize = 100_000;

/// Whose view it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Viewer {
    /// A signed-in user, wherever from.
    User(i64),
    /// Anyone else, by address (the /64 for IPv6: [`crate::client::ClientIp::bucket`]).
    Addr(IpAddr),
}

impl std::fmt::Display for Viewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Viewer::User(id) => write!(f, "u{id}"),
            Viewer::Addr(ip) => write!(f, "a{ip}"),
        }
    }
}

/// The in-process markers: expiry per (concert, viewer), and the same in insertion order,
/// which is expiry order since the window is fixed, so expired ones leave from the front.
#[derive(Default)]
struct Seen {
    until: HashMap<(i64, Viewer), i64>,
    order: VecDeque<((i64, Viewer), i64)>,
}

impl Seen {
    /// Marks `key` until `until` unless it is marked at `now`; whether it was new.
    fn first(&mut self, key: (i64, Viewer), now: i64, until: i64, cap: usize) -> bool {
        while let Some((k, t)) = self.order.front().copied() {
            if t > now && self.order.len() < cap {
                break;
            }
            self.order.pop_front();
            // A key marked again after expiring has a later entry; only the last one counts.
            if self.until.get(&k) == Some(&t) {
                self.until.remove(&k);
            }
        }
        if self.until.get(&key).is_some_and(|t| *t > now) {
            return false;
        }
        self.until.insert(key, until);
        self.order.push_back((key, until));
        true
    }
}

enum Counts {
    /// In process: `(day, concert) -> views`, and the markers.
    Memory(Mutex<HashMap<(i64, i64), u64>>, Mutex<Seen>),
    /// Shared through Redis.
    Redis(ConnectionManager),
}

/// Where view counts live.
pub struct Views {
    counts: Counts,
    window_s: u32,
    cap: usize,
}

impl std::fmt::Debug for Views {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.counts {
            Counts::Memory(..) => "memory",
            Counts::Redis(_) => "redis",
        };
        f.debug_struct("Views").field("store", &kind).field("window_s", &self.window_s).finish()
    }
}

impl Views {
    /// In-process counts (a 600 s de-duplication window unless set).
    pub fn memory() -> Self {
        let counts = Counts::Memory(Mutex::default(), Mutex::default());
        Views { counts, window_s: 600, cap: SEEN_CAP }
    }

    /// Redis-backed counts (a 600 s de-duplication window unless set).
    pub async fn redis(url: &str) -> redis::RedisResult<Self> {
        let conn = redis::Client::open(url)?.get_connection_manager().await?;
        Ok(Views { counts: Counts::Redis(conn), window_s: 600, cap: SEEN_CAP })
    }

    /// Counts a client's views once per `window_s` (≥ 1) seconds.
    pub fn with_window(mut self, window_s: u32) -> Self {
        self.window_s = window_s.max(1);
        self
    }

    /// Keeps at most `cap` (≥ 1) markers in process (tests use a small one).
    pub fn with_cap(mut self, cap: usize) -> Self {
        self.cap = cap.max(1);
        self
    }

    /// Counts `viewer`'s view of `concert` at `now_ms` unless they were counted within the
    /// window; whether it counted. Redis markers expire by Redis's clock.
    pub async fn record_once(&self, concert: i64, viewer: Viewer, now_ms: i64) -> redis::RedisResult<bool> {
        let first = match &self.counts {
            Counts::Memory(_, seen) => {
                let until = now_ms + i64::from(self.window_s) * 1000;
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                seen.first((concert, viewer), now_ms, until, self.cap)
            }
            Counts::Redis(c) => {
                let set: Option<String> = redis::cmd("SET")
                    .arg(format!("tb:viewed:{concert}:{viewer}"))
                    .arg(1)
                    .arg("NX")
                    .arg("EX")
                    .arg(self.window_s)
                    .query_async(&mut c.clone())
                    .await?;
                set.is_some()
            }
        };
        if first {
            self.record(concert, now_ms).await?;
        }
        Ok(first)
    }

    /// Counts one view of `concert` at `now_ms`.
    pub async fn record(&self, concert: i64, now_ms: i64) -> redis::RedisResult<()> {
        let day = day_of(now_ms);
        match &self.counts {
            Counts::Memory(m, _) => {
                let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
                *m.entry((day, concert)).or_default() += 1;
                // Forget days that left the window.
                m.retain(|(d, _), _| *d > day - WINDOW_DAYS);
                Ok(())
            }
            Counts::Redis(c) => {
                let key = format!("tb:views:{day}");
                redis::pipe()
                    .cmd("ZINCRBY")
                    .arg(&key)
                    .arg(1)
                    .arg(concert)
                    .ignore()
                    .cmd("EXPIRE")
                    .arg(&key)
                    .arg((WINDOW_DAYS + 1) * 86_400)
                    .ignore()
                    .query_async::<()>(&mut c.clone())
                    .await
            }
        }
    }

    /// `(concert, views)` over the last 7 days, most viewed first (ties: lower id first),
    /// at most `limit`.
    pub async fn top(&self, now_ms: i64, limit: usize) -> redis::RedisResult<Vec<(i64, u64)>> {
        let today = day_of(now_ms);
        let mut totals: HashMap<i64, u64> = HashMap::new();
        match &self.counts {
            Counts::Memory(m, _) => {
                let m = m.lock().unwrap_or_else(|e| e.into_inner());
                for ((d, c), n) in m.iter() {
                    if *d > today - WINDOW_DAYS {
                        *totals.entry(*c).or_default() += n;
                    }
                }
            }
            Counts::Redis(c) => {
                let mut cmd = redis::cmd("ZUNION");
                cmd.arg(WINDOW_DAYS);
                for d in (today - WINDOW_DAYS + 1)..=today {
                    cmd.arg(format!("tb:views:{d}"));
                }
                cmd.arg("WITHSCORES");
                let pairs: Vec<(String, f64)> = cmd.query_async(&mut c.clone()).await?;
                for (id, n) in pairs {
                    if let Ok(id) = id.parse() {
                        totals.insert(id, n as u64);
                    }
                }
            }
        }
        let mut v: Vec<(i64, u64)> = totals.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(limit);
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn window_slides() {
        let v = Views::memory();
        let day = 86_400_000;
        let now = 100 * day;
        for _ in 0..5 {
            v.record(1, now - 8 * day).await.unwrap();
        }
        v.record(2, now - 6 * day).await.unwrap();
        v.record(3, now).await.unwrap();
        v.record(3, now).await.unwrap();
        assert_eq!(v.top(now, 5).await.unwrap(), vec![(3, 2), (2, 1)]);
    }

    #[tokio::test]
    async fn a_viewer_counts_once_per_window() {
        let v = Views::memory().with_window(60);
        let (ann, bob) = (Viewer::Addr([192, 0, 2, 1].into()), Viewer::User(7));
        let now = 1_000 * 86_400_000;
        assert!(v.record_once(1, ann, now).await.unwrap());
        assert!(!v.record_once(1, ann, now + 59_999).await.unwrap());
        assert!(v.record_once(2, ann, now).await.unwrap(), "another concert");
        assert!(v.record_once(1, bob, now).await.unwrap(), "another viewer");
        assert!(v.record_once(1, ann, now + 60_000).await.unwrap(), "the window passed");
        assert!(!v.record_once(1, ann, now + 60_001).await.unwrap());
        assert_eq!(v.top(now + 60_001, 5).await.unwrap(), vec![(1, 3), (2, 1)]);
    }

    #[tokio::test]
    async fn the_table_stays_within_its_cap() {
        let v = Views::memory().with_window(600).with_cap(100);
        let now = 1_000 * 86_400_000;
        for i in 0..1_000u32 {
            v.record_once(1, Viewer::Addr(std::net::Ipv4Addr::from(i).into()), now).await.unwrap();
        }
        let Counts::Memory(_, seen) = &v.counts else { unreachable!() };
        let sizes = {
            let seen = seen.lock().unwrap();
            (seen.until.len(), seen.order.len())
        };
        assert!(sizes.0 <= 100 && sizes.1 <= 100, "{sizes:?}");
        // The newest markers are kept: the last viewer still counts once.
        let last = Viewer::Addr(std::net::Ipv4Addr::from(999u32).into());
        assert!(!v.record_once(1, last, now + 1).await.unwrap());
        // Expired markers leave as new ones come.
        assert!(v.record_once(1, last, now + 600_000).await.unwrap());
    }
}
