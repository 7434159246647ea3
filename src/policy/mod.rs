//! Policy, the lowest layer: what failed ([`error`]), when to try again and
//! when to give up ([`retry`], [`schedule`]), and the bounds every setting is
//! checked against ([`limits`]). Pure: no I/O, no tasks; it imports nothing
//! of the crate's other layers.

pub(crate) mod error;
pub(crate) mod limits;
pub(crate) mod retry;
pub(crate) mod schedule;
