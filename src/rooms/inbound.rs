//! Moved to [`super::admission::prepare`] (kept as a path until the room actor's imports
//! follow).

pub use super::admission::prepare::*;
