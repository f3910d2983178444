//! Status polls, coalesced: the polls that arrive while the store is busy with earlier ones
//! are answered by one `status_many` read per room, so a crowd polling a Redis-backed room
//! costs a few store calls per round trip instead of one per poll (Redis spends far more
//! on each call than on each ticket in it). Nothing waits on a timer: a poll that finds the
//! store idle goes out at once, alone.
//!
//! Each serving thread has its own coalescer over its own store connection ([`Store::local`]),
//! opened in the background on its runtime after its first request: from then on a poll, its
//! batch and the store's reply never leave the thread that serves the request. Handing every
//! poll to one shared coalescer and connection cost a third of the gateway's CPU in thread
//! hops (BENCHMARKS.md). Joins and leaves use the same connection ([`Polls::store`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use queue_core::{RoomId, Store, TicketId, TicketStatus};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::GatewayError;

/// Most polls answered by one read.
const MAX_BATCH: usize = 1024;
/// Most polls waiting for a read; beyond it a poll is refused (`503`) rather than queued.
const MAX_WAITING: usize = 65_536;
/// After a serving thread failed to open its own store connection, its polls go through the
/// shared one for this long before it tries again.
const LOCAL_RETRY: Duration = Duration::from_secs(5);

type Answer = Result<TicketStatus, GatewayError>;

#[derive(Debug)]
struct Ask {
    room: RoomId,
    ticket: TicketId,
    reply: oneshot::Sender<Answer>,
}

/// One coalescing loop's inbox.
#[derive(Debug)]
struct Coalescer {
    tx: mpsc::Sender<Ask>,
}

impl Coalescer {
    /// Runs a coalescer over `store` on the calling runtime until `stop` turns true.
    fn start(store: Arc<dyn Store>, stop: watch::Receiver<bool>) -> Self {
        let (tx, rx) = mpsc::channel(MAX_WAITING);
        tokio::spawn(run(rx, store, stop));
        Coalescer { tx }
    }

    async fn status(&self, room: &RoomId, ticket: TicketId) -> Answer {
        let (reply, answer) = oneshot::channel();
        let busy = || unavailable("too many status polls are waiting for the store; retry shortly");
        self.tx.try_send(Ask { room: room.clone(), ticket, reply }).map_err(|_| busy())?;
        answer.await.map_err(|_| busy())?
    }
}

/// A serving thread's own store handle and the coalescer over it.
#[derive(Debug)]
struct Own {
    store: Arc<dyn Store>,
    coalescer: Coalescer,
}

/// A serving thread's [`Own`], once its connection is open.
#[derive(Debug, Default)]
struct Local {
    own: OnceLock<Own>,
    /// An attempt to open the connection is under way (or waiting out [`LOCAL_RETRY`] after
    /// a failure).
    opening: AtomicBool,
}

/// The handle handlers ask through.
#[derive(Debug)]
pub struct Polls {
    store: Arc<dyn Store>,
    stop: watch::Receiver<bool>,
    /// For polls off the serving threads, and a serving thread's until its own is ready.
    shared: Coalescer,
    /// One per serving thread, by [`crate::transport::current_worker`].
    local: Vec<Arc<Local>>,
}

impl Polls {
    /// Coalescers over `store` for `workers` serving threads; they run until `stop` turns true
    /// (after the server drained) or their thread's runtime ends.
    pub fn start(store: Arc<dyn Store>, workers: usize, stop: watch::Receiver<bool>) -> Self {
        let shared = Coalescer::start(store.clone(), stop.clone());
        let local = (0..workers).map(|_| Arc::default()).collect();
        Polls { store, stop, shared, local }
    }

    /// A ticket's status, read together with whatever other polls are waiting.
    pub async fn status(&self, room: &RoomId, ticket: TicketId) -> Result<TicketStatus, GatewayError> {
        self.coalescer().status(room, ticket).await
    }

    /// The store handle for the calling thread: its own once open, else the shared one. Joins
    /// and leaves go through it, so they too stay on the thread that serves the request.
    pub fn store(&self) -> &Arc<dyn Store> {
        self.own().map_or(&self.store, |o| &o.store)
    }

    fn coalescer(&self) -> &Coalescer {
        self.own().map_or(&self.shared, |o| &o.coalescer)
    }

    /// The calling serving thread's own handle. Nothing waits for a connection: while one is
    /// being opened (or after an attempt failed, for [`LOCAL_RETRY`]), this is `None` and the
    /// caller uses the shared handle.
    fn own(&self) -> Option<&Own> {
        let local = crate::transport::current_worker().and_then(|w| self.local.get(w))?;
        if let Some(own) = local.own.get() {
            return Some(own);
        }
        if !local.opening.swap(true, Ordering::AcqRel) {
            // Spawned from the serving thread, so the connection and the coalescer live on its
            // runtime.
            let (local, store, stop) = (local.clone(), self.store.clone(), self.stop.clone());
            tokio::spawn(async move {
                match store.local().await {
                    Ok(own) => {
                        let store = own.unwrap_or(store);
                        let coalescer = Coalescer::start(store.clone(), stop);
                        let _ = local.own.set(Own { store, coalescer });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "a serving thread could not open its own store connection; it uses the shared one for now");
                        tokio::time::sleep(LOCAL_RETRY).await;
                    }
                }
                local.opening.store(false, Ordering::Release);
            });
        }
        None
    }
}

/// One read at a time: the polls that arrive while it is out wait for the next, one bigger
/// read. Two reads in flight (as before) halved the batches and cost both sides more per
/// poll (`http_bench.sh`, session 10: gateway 14.6 → 12.4 µs, Redis 2.9 → 2.3 µs per poll)
/// for a wait no longer than one read's round trip.
async fn run(mut rx: mpsc::Receiver<Ask>, store: Arc<dyn Store>, mut stop: watch::Receiver<bool>) {
    let mut asks = Vec::with_capacity(MAX_BATCH);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut asks, MAX_BATCH) => if n == 0 { return },
            _ = stop.changed() => return,
        }
        // Sized to the batch: a fresh `MAX_BATCH` buffer per read is a ~48 KiB allocation
        // whose free makes malloc consolidate its free lists.
        let mut batch = Vec::with_capacity(asks.len());
        batch.append(&mut asks);
        answer(&*store, batch).await;
    }
}

/// One `status_many` per room of the batch.
async fn answer(store: &dyn Store, mut batch: Vec<Ask>) {
    while let Some(room) = batch.first().map(|a| a.room.clone()) {
        let mine = if batch.iter().all(|a| a.room == room) {
            std::mem::take(&mut batch)
        } else {
            let (mine, rest): (Vec<Ask>, Vec<Ask>) = batch.into_iter().partition(|a| a.room == room);
            batch = rest;
            mine
        };
        let tickets: Vec<TicketId> = mine.iter().map(|a| a.ticket).collect();
        match store.status_many(&room, &tickets).await {
            Ok(statuses) => {
                for (ask, st) in mine.into_iter().zip(statuses) {
                    let _ = ask.reply.send(st.ok_or_else(|| queue_core::Error::UnknownTicket.into()));
                }
            }
            Err(e) => {
                if !e.is_client_error() {
                    // Once per read, not once per poll it answered.
                    tracing::error!(error = %e, polls = mine.len(), room = %room, "store failure");
                }
                for ask in mine {
                    let answer = match &e {
                        queue_core::Error::UnknownRoom(r) => queue_core::Error::UnknownRoom(r.clone()).into(),
                        _ => unavailable("the waiting room is briefly unavailable; retry shortly"),
                    };
                    let _ = ask.reply.send(Err(answer));
                }
            }
        }
    }
}

fn unavailable(message: &str) -> GatewayError {
    GatewayError::Unavailable { code: "store_unavailable", message: message.into(), retry_after_s: 2 }
}
