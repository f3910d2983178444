//! The room configs every request path reads, kept live, and the tickers that drive rooms.
//!
//! Configs are cached in process and reloaded on every `ConfigChanged` event of the store and
//! at least once a second, so an admin change is in force on every gateway within a second
//! even if a pub/sub message is lost. Every gateway ticks every room (ticks are idempotent in
//! the store), a few times per interval with jitter, so a dying gateway loses nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use queue_core::{RoomConfig, RoomEvent, RoomId, Store};
use tokio::sync::watch;

use crate::metrics::{DropLabel, Metrics};
use crate::state::App;

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

/// Keeps the cache live and the room gauges fresh until shutdown.
pub async fn config_loop(app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let mut events = app.store.subscribe();
    let mut every = tokio::time::interval(Duration::from_secs(1));
    // Each room's leave count when its revoked admissions were last read.
    let mut left = HashMap::new();
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(RoomEvent::ConfigChanged { .. }) | Err(_) => refresh(&app).await,
                Ok(RoomEvent::Admitted { .. } | RoomEvent::Left { .. }) => {}
            },
            _ = every.tick() => {
                refresh(&app).await;
                update_gauges(&app, &mut left).await;
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Reloads the room configs into `app`'s cache, counting the rooms it put back
/// ([`RoomCache::refresh`]).
pub async fn reload(app: &App) -> queue_core::Result<()> {
    let restored = app.rooms.refresh(&*app.store).await?;
    if !restored.is_empty() {
        app.metrics.restored("room").inc_by(restored.len() as u64);
    }
    Ok(())
}

async fn refresh(app: &Arc<App>) {
    // The refresh reads the store every second anyway: its outcome is the store's health.
    let reached = reload(app).await;
    app.metrics.store_up.set(i64::from(reached.is_ok()));
    if let Err(e) = reached {
        tracing::warn!(error = %e, "room config refresh failed; keeping the last known configs");
    }
    if let Err(e) = crate::policy::gate::refresh(app).await {
        tracing::warn!(error = %e, "gate config refresh failed; keeping the last known configs");
    }
}

async fn update_gauges(app: &App, left: &mut HashMap<RoomId, u64>) {
    let m = &app.metrics;
    let snapshot = app.rooms.snapshot();
    app.revoked.retain_rooms(&snapshot.rooms);
    left.retain(|room, _| snapshot.rooms.contains_key(room));
    for room in snapshot.rooms.keys() {
        let label = Metrics::room(room.as_str());
        // Every series of a room exists from the start (at 0), so dashboards and alert rules
        // see data before the first join, admission or drop.
        let _ = m.tickets_joined.get_or_create(&label);
        let _ = m.admitted.get_or_create(&label);
        let _ = m.wait_seconds.get_or_create(&label);
        for reason in ["idle", "left"] {
            let _ = m.dropped.get_or_create(&DropLabel { room: room.to_string(), reason });
        }
        if let Ok(st) = app.store.stats(room).await {
            m.waiting.get_or_create(&label).set(st.waiting as i64);
            m.active.get_or_create(&label).set(st.active as i64);
            // A leave anywhere may have ended an admission: the room's list is read again.
            if left.insert(room.clone(), st.left_total) != Some(st.left_total) {
                match app.store.revoked(room).await {
                    Ok(ended) => app.revoked.add(room, ended),
                    Err(e) => {
                        left.remove(room);
                        tracing::warn!(room = %room, error = %e, "could not read the room's revoked admissions");
                    }
                }
            }
        }
    }
}

/// Ticks every room a few times per tick interval, with jitter, until shutdown.
pub async fn ticker_loop(app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let mut next: HashMap<RoomId, Instant> = HashMap::new();
    let mut in_flight: HashMap<RoomId, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut every = tokio::time::interval(Duration::from_millis(20));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.changed() => return,
        }
        let snapshot = app.rooms.snapshot();
        let now = Instant::now();
        in_flight.retain(|_, h| !h.is_finished());
        next.retain(|room, _| snapshot.rooms.contains_key(room));
        for (room, cfg) in &snapshot.rooms {
            if in_flight.contains_key(room) || next.get(room).is_some_and(|due| now < *due) {
                continue;
            }
            let third = cfg.tick_interval_ms / 3;
            let jitter = rand::random::<u64>() % (third / 2 + 1);
            next.insert(room.clone(), now + Duration::from_millis((third + jitter).max(20)));
            let (app, room2) = (app.clone(), room.clone());
            in_flight.insert(room.clone(), tokio::spawn(async move { tick_once(&app, &room2).await }));
        }
    }
}

async fn tick_once(app: &App, room: &RoomId) {
    let started = Instant::now();
    let out = match app.store.tick(room).await {
        Ok(out) => out,
        Err(queue_core::Error::UnknownRoom(_)) => return,
        Err(e) => {
            tracing::warn!(room = %room, error = %e, "tick failed");
            return;
        }
    };
    if !out.applied {
        return;
    }
    let m = &app.metrics;
    m.tick_seconds.observe(started.elapsed().as_secs_f64());
    let label = Metrics::room(room.as_str());
    m.admitted.get_or_create(&label).inc_by(out.admitted.len() as u64);
    if out.dropped > 0 {
        m.dropped.get_or_create(&DropLabel { room: room.to_string(), reason: "idle" }).inc_by(out.dropped);
    }
    let hist = m.wait_seconds.get_or_create(&label);
    for a in &out.admitted {
        hist.observe(a.waited_ms as f64 / 1000.0);
    }
    if let Some(draw) = &out.draw {
        tracing::info!(room = %room, seed = %draw.seed, shuffled = draw.shuffled, "random_at_open draw");
    }
    if !out.admitted.is_empty() {
        tracing::debug!(room = %room, tick = out.tick, admitted = out.admitted.len(), "tick applied");
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
