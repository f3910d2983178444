//! Policy.

pub mod admission;
pub mod gate;
pub mod rate_limit;
pub mod screen;
