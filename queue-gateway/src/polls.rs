//! Status polls, coalesced: the polls that arrive while the store is busy with earlier ones
//! are answered by one `status_many` read per room, so a crowd polling a Redis-backed room
//! costs a few store calls per round trip instead of one per poll (Redis spends far more
//! on each call than on each ticket in it). Nothing waits on a timer: a poll that finds the
//! store idle goes out at once, alone.

use std::sync::Arc;

use queue_core::{RoomId, Store, TicketId, TicketStatus};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::error::GatewayError;

/// Store reads in flight at once; polls arriving meanwhile wait for the next read.
const IN_FLIGHT: usize = 4;
/// Most polls answered by one read.
const MAX_BATCH: usize = 1024;
/// Most polls waiting for a read; beyond it a poll is refused (`503`) rather than queued.
const MAX_WAITING: usize = 65_536;

type Answer = Result<TicketStatus, GatewayError>;

#[derive(Debug)]
struct Ask {
    room: RoomId,
    ticket: TicketId,
    reply: oneshot::Sender<Answer>,
}

/// The handle handlers ask through.
#[derive(Debug)]
pub struct Polls {
    tx: mpsc::Sender<Ask>,
}

impl Polls {
    /// A coalescer over `store`; it runs until `stop` turns true (after the server drained).
    pub fn start(store: Arc<dyn Store>, stop: watch::Receiver<bool>) -> Self {
        let (tx, rx) = mpsc::channel(MAX_WAITING);
        tokio::spawn(run(rx, store, stop));
        Polls { tx }
    }

    /// A ticket's status, read together with whatever other polls are waiting.
    pub async fn status(&self, room: &RoomId, ticket: TicketId) -> Result<TicketStatus, GatewayError> {
        let (reply, answer) = oneshot::channel();
        let busy = || unavailable("too many status polls are waiting for the store; retry shortly");
        self.tx.try_send(Ask { room: room.clone(), ticket, reply }).map_err(|_| busy())?;
        answer.await.map_err(|_| busy())?
    }
}

async fn run(mut rx: mpsc::Receiver<Ask>, store: Arc<dyn Store>, mut stop: watch::Receiver<bool>) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut asks = Vec::with_capacity(MAX_BATCH);
    loop {
        // Take a slot first: while all are busy, polls pile up for one bigger read.
        let Ok(slot) = in_flight.clone().acquire_owned().await else { return };
        tokio::select! {
            n = rx.recv_many(&mut asks, MAX_BATCH) => if n == 0 { return },
            _ = stop.changed() => return,
        }
        let batch = std::mem::replace(&mut asks, Vec::with_capacity(MAX_BATCH));
        let store = store.clone();
        tokio::spawn(async move {
            answer(&*store, batch).await;
            drop(slot);
        });
    }
}

/// One `status_many` per room of the batch.
async fn answer(store: &dyn Store, mut batch: Vec<Ask>) {
    while let Some(room) = batch.first().map(|a| a.room.clone()) {
        let (mine, rest): (Vec<Ask>, Vec<Ask>) = batch.into_iter().partition(|a| a.room == room);
        batch = rest;
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
