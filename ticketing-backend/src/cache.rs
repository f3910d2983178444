//! Read-through cache of concert list pages and details (Redis when `TB_REDIS_URL` is set,
//! in process otherwise), with a TTL and invalidation on every catalog write.
//!
//! Details are keyed by id and deleted on write. List pages are keyed under a generation
//! number that every write bumps, so all pages go stale at once without scanning keys.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use redis::aio::ConnectionManager;

/// How long an entry may be served.
pub const TTL: Duration = Duration::from_secs(30);
/// Most entries kept in process.
pub const MAX_ENTRIES: usize = 10_000;

/// The cache.
pub enum Cache {
    /// In process.
    Memory { map: DashMap<String, (Instant, String)>, generation: AtomicU64 },
    /// Shared through Redis.
    Redis(ConnectionManager),
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cache::Memory { .. } => "Cache::Memory",
            Cache::Redis(_) => "Cache::Redis",
        })
    }
}

const GEN_KEY: &str = "tb:cache:gen";

impl Cache {
    /// An in-process cache.
    pub fn memory() -> Self {
        Cache::Memory { map: DashMap::new(), generation: AtomicU64::new(0) }
    }

    /// A Redis cache.
    pub async fn redis(url: &str) -> redis::RedisResult<Self> {
        Ok(Cache::Redis(redis::Client::open(url)?.get_connection_manager().await?))
    }

    async fn generation(&self) -> u64 {
        match self {
            Cache::Memory { generation, .. } => generation.load(Ordering::SeqCst),
            Cache::Redis(c) => redis::cmd("GET")
                .arg(GEN_KEY)
                .query_async::<Option<u64>>(&mut c.clone())
                .await
                .ok()
                .flatten()
                .unwrap_or(0),
        }
    }

    /// The key of a concert's detail.
    pub fn detail_key(id: i64) -> String {
        format!("tb:cache:concert:{id}")
    }

    /// The key of a list page under the current generation.
    pub async fn list_key(&self, page: i64, size: i64) -> String {
        format!("tb:cache:list:{}:{page}:{size}", self.generation().await)
    }

    /// A cached value (errors count as misses: the cache never fails a read).
    pub async fn get(&self, key: &str) -> Option<String> {
        match self {
            Cache::Memory { map, .. } => {
                let hit = map.get(key).filter(|e| e.0 > Instant::now()).map(|e| e.1.clone());
                if hit.is_none() {
                    map.remove(key);
                }
                hit
            }
            Cache::Redis(c) => {
                redis::cmd("GET").arg(key).query_async::<Option<String>>(&mut c.clone()).await.ok().flatten()
            }
        }
    }

    /// Stores a value for [`TTL`].
    pub async fn put(&self, key: &str, value: &str) {
        match self {
            Cache::Memory { map, .. } => {
                if map.len() >= MAX_ENTRIES {
                    let now = Instant::now();
                    map.retain(|_, e| e.0 > now);
                    if map.len() >= MAX_ENTRIES {
                        map.clear();
                    }
                }
                map.insert(key.to_owned(), (Instant::now() + TTL, value.to_owned()));
            }
            Cache::Redis(c) => {
                let r = redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("PX")
                    .arg(TTL.as_millis() as u64)
                    .query_async::<()>(&mut c.clone())
                    .await;
                if let Err(e) = r {
                    tracing::debug!(error = %e, "cache write failed");
                }
            }
        }
    }

    /// Forgets a concert's detail and every list page.
    pub async fn invalidate(&self, concert: Option<i64>) {
        match self {
            Cache::Memory { map, generation } => {
                generation.fetch_add(1, Ordering::SeqCst);
                if let Some(id) = concert {
                    map.remove(&Self::detail_key(id));
                }
                map.retain(|k, _| !k.starts_with("tb:cache:list:"));
            }
            Cache::Redis(c) => {
                let mut p = redis::pipe();
                p.cmd("INCR").arg(GEN_KEY).ignore();
                if let Some(id) = concert {
                    p.cmd("DEL").arg(Self::detail_key(id)).ignore();
                }
                if let Err(e) = p.query_async::<()>(&mut c.clone()).await {
                    // Stale pages then live out their TTL; log it.
                    tracing::warn!(error = %e, "cache invalidation failed");
                }
            }
        }
    }
}
