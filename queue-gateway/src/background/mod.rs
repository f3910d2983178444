//! Background work: the loops that keep a gateway's shared state live.
//!
//! # Layout
//! - [`rooms`]: room configs reloaded (events and every second), room gauges, the tickers.
//! - [`gates`]: gate configs reloaded, the replay consumers of the gate logs.
//! - [`touch`]: batched "seen" marks of waiting tickets.
//!
//! The SSE hub's loop is [`crate::api::sse::hub_loop`], beside the streams it feeds; the
//! rate limiters' compaction is [`crate::policy::rate_limit::compact_loop`].

pub mod gates;
pub mod rooms;
pub mod touch;
