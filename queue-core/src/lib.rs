//! `queue-core`: the waiting-room engine as a library (no HTTP).
//!
//! A room protects one on-sale event. Buyers join its queue and get a ticket; every tick the
//! room admits up to `batch_size` waiting tickets in order (amusement-park batching), bounded by
//! `max_active`; admissions expire after `session_ttl_s`; tickets unseen for `idle_timeout_s`
//! are dropped. Ticks are numbered on the store's clock and applied at most once, so any number
//! of gateways can tick the same room. Admitted buyers get an EdDSA admission token that any
//! backend can verify with [`verify::Verifier`].
//!
//! # Layout
//! - [`id`]: `RoomId`, `TicketId`, `UserKey`: parsed once, trusted after.
//! - [`config`]: `RoomConfig`, every setting of DESIGN §2, validated with field-named errors;
//!   `parse_file` for the binaries' TOML config files.
//! - [`model`]: ticket states, outcomes, stats and events.
//! - [`store`]: the `Store` trait, `MemoryStore` (embedded) and `RedisStore` (many gateways,
//!   single node or Cluster; scripts in `lua/`).
//! - [`eta`]: wait estimates from the observed admission rate.
//! - [`gate`]: the overload gate's durable log (memory, Redis Streams) and replay markers.
//! - [`draw`]: the auditable `random_at_open` shuffle.
//! - [`lang`]: Korean or English from `Accept-Language`, for the pages people read.
//! - [`process`]: the binaries' shutdown signal (SIGINT, SIGTERM).
//! - [`token`]: admission tokens (EdDSA JWT), key sets with rotation, JWKS.
//! - [`verify`]: the backend-side verifier with a JWKS cache and a verified-token cache.
//! - [`error`]: the crate's error type.
//! - `testkit` (feature `testkit`): real `redis-server`s and Clusters for tests.
//!
//! Feature `engine` (default) brings the stores and the gate logs; without it the crate is
//! the small surface a backend needs to trust the room (ids, config files, `token`,
//! `verify`, `gate::marker`, `lang`), with no Redis client.
#![forbid(unsafe_code)]

pub mod config;
pub mod draw;
pub mod error;
pub mod eta;
pub mod gate;
pub mod id;
pub mod lang;
pub mod model;
pub mod process;
#[cfg(feature = "engine")]
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod token;
pub mod verify;

pub use config::{QueueMethod, RoomConfig};
pub use error::{Error, Result};
pub use id::{OwnerHash, RoomId, TicketId, UserKey};
pub use model::*;
#[cfg(feature = "engine")]
pub use store::{MemoryStore, RedisStore, Store};
