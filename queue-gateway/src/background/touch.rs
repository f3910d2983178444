//! Batched "seen" marks: polls note their ticket here and a background task writes them to
//! the store per room every 250 ms, so a poll costs one store call instead of two.

use std::collections::{HashMap, HashSet};

use foldhash::fast::RandomState;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use queue_core::{RoomId, Store, TicketId};
use tokio::sync::watch;

/// Tickets seen since the last flush, per room.
///
/// Only polls that passed (an existing room, a waiting ticket) mark, so no key here is a
/// client's choice: the maps use foldhash's fast hash.
#[derive(Debug, Default)]
pub struct Touches {
    pending: Mutex<HashMap<RoomId, Seen, RandomState>>,
}

type Seen = HashSet<TicketId, RandomState>;

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
                p.insert(room.clone(), Seen::from_iter([ticket]));
            }
        }
    }

    /// The marks so far; each room starts again at the size it reached, so a crowd's marks
    /// do not regrow (and rehash) its set from nothing every flush.
    fn take(&self) -> Vec<(RoomId, Seen)> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        // A room nobody marked since the last flush gives its set up.
        p.retain(|_, seen| !seen.is_empty());
        p.iter_mut()
            .map(|(room, seen)| {
                let fresh = Seen::with_capacity_and_hasher(seen.len(), RandomState::default());
                (room.clone(), std::mem::replace(seen, fresh))
            })
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(t: &Touches) -> Vec<(String, Vec<TicketId>)> {
        let mut out: Vec<(String, Vec<TicketId>)> = t
            .take()
            .into_iter()
            .map(|(room, seen)| {
                let mut seen: Vec<TicketId> = seen.into_iter().collect();
                seen.sort();
                (room.to_string(), seen)
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn marks_are_taken_once_per_flush_and_sets_keep_their_size() {
        let t = Touches::default();
        let (a, b) = (RoomId::parse("a").unwrap(), RoomId::parse("b").unwrap());
        let id = |n: u64| TicketId::new(n, n * 7);
        for n in 1..=100 {
            t.mark(&a, id(n));
            t.mark(&a, id(n));
        }
        t.mark(&b, id(500));
        assert_eq!(taken(&t), [("a".into(), (1..=100).map(id).collect()), ("b".into(), vec![id(500)])]);
        assert!(t.pending.lock().unwrap()[&a].capacity() >= 100, "room a's next set starts at its size");
        assert_eq!(taken(&t), [], "nothing marked since");
        t.mark(&a, id(7));
        assert_eq!(taken(&t), [("a".into(), vec![id(7)])]);
        assert_eq!(t.pending.lock().unwrap().len(), 1, "room b, unmarked for a flush, gave its set up");
    }
}
