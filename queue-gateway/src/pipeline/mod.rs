//! The request's path.

pub mod forward;
pub mod relay;
pub mod upstream;
