//! Batched "seen" marks: polls note their ticket here and a background task writes them to
//! the store per room every 250 ms, so a poll costs one store call instead of two.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use queue_core::{RoomId, Store, TicketId};
use tokio::sync::watch;

/// Tickets seen since the last flush, per room.
#[derive(Debug, Default)]
pub struct Touches {
    pending: Mutex<HashMap<RoomId, HashSet<TicketId>>>,
}

impl Touches {
    /// Notes that `ticket` was seen now.
    pub fn mark(&self, room: &RoomId, ticket: TicketId) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        // Every waiting holder's poll lands here: no room id copied once its room has a set.
        match p.get_mut(room) {
            Some(seen) => {
                seen.insert(ticket);
            }
            None => {
                p.insert(room.clone(), HashSet::from([ticket]));
            }
        }
    }

    fn take(&self) -> HashMap<RoomId, HashSet<TicketId>> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Writes every pending mark to the store.
    pub async fn flush(&self, store: &dyn Store) {
        for (room, tickets) in self.take() {
            let tickets: Vec<TicketId> = tickets.into_iter().collect();
            for chunk in tickets.chunks(queue_core::store::MAX_TOUCH_BATCH) {
                if let Err(e) = store.touch(&room, chunk).await {
                    tracing::debug!(room = %room, error = %e, "touch flush failed");
                }
            }
        }
    }
}

/// Flushes every 250 ms until shutdown, then once more.
pub async fn flush_loop(touches: Arc<Touches>, store: Arc<dyn Store>, mut shutdown: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = every.tick() => touches.flush(&*store).await,
            _ = shutdown.changed() => {
                touches.flush(&*store).await;
                return;
            }
        }
    }
}
