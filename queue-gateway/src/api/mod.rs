//! The gateway's own API.

pub mod admin;
pub mod console;
pub mod page;
pub mod polls;
pub mod room;
pub mod sse;
