//! Ranking: views counted per concert per UTC day; the top 5 of the last 7 days.
//!
//! With `TB_REDIS_URL` the counts are Redis sorted sets (`tb:views:{day}`, one per day,
//! expiring after 8 days) so every backend instance shares them; otherwise a map in process.

use std::collections::HashMap;
use std::sync::Mutex;

use redis::aio::ConnectionManager;

/// Days in the sliding window.
pub const WINDOW_DAYS: i64 = 7;
/// How many concerts the ranking returns.
pub const TOP: usize = 5;

fn day_of(ms: i64) -> i64 {
    ms.div_euclid(86_400_000)
}

/// Where view counts live.
pub enum Views {
    /// In process: `(day, concert) -> views`.
    Memory(Mutex<HashMap<(i64, i64), u64>>),
    /// Shared through Redis.
    Redis(ConnectionManager),
}

impl std::fmt::Debug for Views {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Views::Memory(_) => "Views::Memory",
            Views::Redis(_) => "Views::Redis",
        })
    }
}

impl Views {
    /// In-process counts.
    pub fn memory() -> Self {
        Views::Memory(Mutex::new(HashMap::new()))
    }

    /// Redis-backed counts.
    pub async fn redis(url: &str) -> redis::RedisResult<Self> {
        Ok(Views::Redis(redis::Client::open(url)?.get_connection_manager().await?))
    }

    /// Counts one view of `concert` at `now_ms`.
    pub async fn record(&self, concert: i64, now_ms: i64) -> redis::RedisResult<()> {
        let day = day_of(now_ms);
        match self {
            Views::Memory(m) => {
                let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
                *m.entry((day, concert)).or_default() += 1;
                // Forget days that left the window.
                m.retain(|(d, _), _| *d > day - WINDOW_DAYS);
                Ok(())
            }
            Views::Redis(c) => {
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
        match self {
            Views::Memory(m) => {
                let m = m.lock().unwrap_or_else(|e| e.into_inner());
                for ((d, c), n) in m.iter() {
                    if *d > today - WINDOW_DAYS {
                        *totals.entry(*c).or_default() += n;
                    }
                }
            }
            Views::Redis(c) => {
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
}
