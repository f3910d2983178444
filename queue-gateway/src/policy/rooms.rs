//! The room configs every request path reads ([`RoomCache`]): a snapshot with the
//! protected-prefix index, replaced whole by each refresh from the store (in the order the
//! refreshes read it, [`RefreshOrder`]). The loops that keep it live are
//! [`crate::background::rooms`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use queue_core::{RoomConfig, RoomId, Store};

/// A snapshot of every room's config with the protected-prefix index.
#[derive(Debug, Default)]
pub struct Index {
    /// Configs by room.
    pub rooms: HashMap<RoomId, RoomConfig>,
    /// `(prefix, room)`, longest prefix first.
    protect: Vec<(String, RoomId)>,
}

impl Index {
    fn new(rooms: HashMap<RoomId, RoomConfig>) -> Self {
        let mut protect: Vec<(String, RoomId)> =
            rooms.iter().flat_map(|(id, c)| c.protect.iter().map(move |p| (p.clone(), id.clone()))).collect();
        protect.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Index { rooms, protect }
    }

    /// The room protecting `path` (longest matching prefix), if any.
    pub fn protecting(&self, path: &str) -> Option<&RoomId> {
        self.protect.iter().find(|(p, _)| crate::policy::screen::under(path, p)).map(|(_, r)| r)
    }
}

/// Orders the refreshes of a cache of the store's configs. Several run at once (the admin
/// API's after a change, the config loop's on events and every second): one that started
/// earlier read the store earlier, so it must not replace what a later one installed (it
/// would forget a room or gate just created until the next refresh).
#[derive(Debug, Default)]
pub(crate) struct RefreshOrder {
    started: AtomicU64,
    applied: AtomicU64,
}

impl RefreshOrder {
    /// Numbers a refresh; taken before it reads the store.
    pub(crate) fn begin(&self) -> u64 {
        self.started.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Whether refresh `number` may install what it read (no later one has), recording it if
    /// so. Called under the lock of what it installs.
    pub(crate) fn admit(&self, number: u64) -> bool {
        if number <= self.applied.load(Ordering::Acquire) {
            return false;
        }
        self.applied.store(number, Ordering::Release);
        true
    }
}

/// The live room configs.
#[derive(Debug, Default)]
pub struct RoomCache {
    index: RwLock<Arc<Index>>,
    order: RefreshOrder,
    /// Held while lost rooms are put back: two refreshes at once put each back once.
    restoring: tokio::sync::Mutex<()>,
}

impl RoomCache {
    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A room's config, if it exists.
    pub fn get(&self, room: &RoomId) -> Option<RoomConfig> {
        self.snapshot().rooms.get(room).cloned()
    }

    /// Reloads every room from the store, first putting back the rooms it lost: those this
    /// cache knows and the store has neither nor remembers deleting ([`Store::was_deleted`]).
    /// Returns those put back. Every refresh does it, whoever asks for it: one that installed
    /// the store's rooms without them would forget their configs with the store.
    pub async fn refresh(&self, store: &dyn Store) -> queue_core::Result<Vec<RoomId>> {
        let number = self.order.begin();
        let known = self.snapshot();
        let mut rooms = HashMap::new();
        for id in store.rooms().await? {
            if let Some(cfg) = store.room_config(&id).await? {
                rooms.insert(id, cfg);
            }
        }
        let mut restored = Vec::new();
        let missing: Vec<_> = known.rooms.iter().filter(|(id, _)| !rooms.contains_key(*id)).collect();
        let _turn = if missing.is_empty() { None } else { Some(self.restoring.lock().await) };
        for (id, cfg) in missing {
            if store.was_deleted(id).await? {
                continue;
            }
            if let Some(back) = store.room_config(id).await? {
                // Put back by a refresh that had the turn first (or made again meanwhile).
                rooms.insert(id.clone(), back);
                continue;
            }
            store.put_room(id, cfg).await?;
            tracing::error!(
                room = %id,
                "the store lost this room (Redis restarted without persistence, was flushed, or failed over to an empty replica): put back from this gateway's last known config; its queue and admissions are gone, waiting pages join again"
            );
            rooms.insert(id.clone(), cfg.clone());
            restored.push(id.clone());
        }
        self.install(number, rooms);
        Ok(restored)
    }

    /// Installs refresh `number`'s configs unless a later refresh's are already in.
    fn install(&self, number: u64, rooms: HashMap<RoomId, RoomConfig>) {
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        if self.order.admit(number) {
            *index = Arc::new(Index::new(rooms));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        let mut rooms = HashMap::new();
        let a = RoomId::parse("a").unwrap();
        let b = RoomId::parse("b").unwrap();
        rooms.insert(a.clone(), RoomConfig { protect: vec!["/book/".into()], ..RoomConfig::default() });
        rooms.insert(b.clone(), RoomConfig { protect: vec!["/book/hot/".into()], ..RoomConfig::default() });
        let idx = Index::new(rooms);
        assert_eq!(idx.protecting("/book/hot/1"), Some(&b));
        assert_eq!(idx.protecting("/book/cold"), Some(&a));
        assert_eq!(idx.protecting("/api/v1/concerts"), None);
    }

    /// The admin API's refresh after a change and the config loop's run at once; the one that
    /// read the store first finishing last must not bring back the world before the change.
    #[tokio::test]
    async fn an_earlier_refresh_does_not_undo_a_later_one() {
        let store = queue_core::MemoryStore::new();
        let cache = RoomCache::default();
        // An earlier refresh has read the store (no rooms yet) and not installed it yet.
        let earlier = cache.order.begin();
        let room = RoomId::parse("r").unwrap();
        store.put_room(&room, &RoomConfig::default()).await.unwrap();
        cache.refresh(&store).await.unwrap();
        assert!(cache.get(&room).is_some());
        cache.install(earlier, HashMap::new());
        assert!(cache.get(&room).is_some(), "the earlier refresh's snapshot replaced the later one's");
        cache.refresh(&store).await.unwrap();
        store.delete_room(&room).await.unwrap();
        cache.refresh(&store).await.unwrap();
        assert!(cache.get(&room).is_none(), "later refreshes still apply");
    }

    /// A store that lost its rooms (Redis flushed) gets them back once, however many
    /// refreshes run at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn refreshes_at_once_put_a_lost_room_back_once() {
        let redis = queue_core::testkit::RedisServer::start();
        let store: Arc<dyn Store> = Arc::new(queue_core::RedisStore::connect(&redis.url()).await.unwrap());
        let cache = Arc::new(RoomCache::default());
        let room = RoomId::parse("r").unwrap();
        let cfg = RoomConfig { batch_size: 7, ..RoomConfig::default() };
        store.put_room(&room, &cfg).await.unwrap();
        cache.refresh(&*store).await.unwrap();
        redis.command("FLUSHALL").unwrap();
        let refreshes: Vec<_> = (0..8)
            .map(|_| {
                let (cache, store) = (cache.clone(), store.clone());
                tokio::spawn(async move { cache.refresh(&*store).await.unwrap().len() })
            })
            .collect();
        let mut put_back = 0;
        for r in refreshes {
            put_back += r.await.unwrap();
        }
        assert_eq!(put_back, 1);
        assert_eq!(store.room_config(&room).await.unwrap(), Some(cfg.clone()));
        assert_eq!(cache.get(&room), Some(cfg));
    }
}
