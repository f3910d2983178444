//! The rooms' background work: the config cache ([`crate::policy::rooms::RoomCache`]) kept
//! live, the room gauges, and the tickers that drive rooms.
//!
//! Configs are reloaded on every `ConfigChanged` event of the store and at least once a
//! second, so an admin change is in force on every gateway within a second even if a pub/sub
//! message is lost. Every gateway ticks every room (ticks are idempotent in the store), a few
//! times per interval with jitter, so a dying gateway loses nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use queue_core::{RoomEvent, RoomId};
use tokio::sync::watch;

use crate::metrics::{DropLabel, Metrics};
use crate::state::App;

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
/// ([`crate::policy::rooms::RoomCache::refresh`]).
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
    if let Err(e) = crate::background::gates::refresh(app).await {
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
