//! Background work.

pub mod rooms;
pub mod touch;
