//! [`Epoch`]: the count of Sentinel master switches that renewals and
//! hand-offs check their answers against.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts master switches: odd while one is being followed. An answer from
/// Redis counts only if the epoch read before the command was even and is
/// still the same when the answer arrives.
#[derive(Debug, Default)]
pub(crate) struct Epoch(AtomicU64);

impl Epoch {
    pub(crate) fn read(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    /// `true` when no switch began since `before` was read, and none was
    /// under way then.
    pub(crate) fn unchanged(&self, before: u64) -> bool {
        before % 2 == 0 && self.read() == before
    }

    pub(super) fn begin(&self) {
        if self.read() % 2 == 0 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    pub(super) fn end(&self) {
        if self.read() % 2 == 1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}
