//! Without the feature: nothing, inline.

use std::time::Instant;

use crate::policy::error::lost::LostReason;
use crate::policy::error::Error;
use crate::protocol::scripts::Compared;

#[derive(Debug, Clone, Default)]
pub(crate) struct Config;

impl Config {
    #[inline(always)]
    pub(crate) fn lock(&self, _key: &str) -> Lock {
        Lock
    }

    #[inline(always)]
    pub(crate) fn release_queued(&self) {}

    #[inline(always)]
    pub(crate) fn release_failed(&self, _error: &Error) {}
}

pub(crate) struct Acquisition;

impl Acquisition {
    #[inline(always)]
    pub(crate) fn start(_config: &Config, _key: &str) -> Self {
        Acquisition
    }

    #[inline(always)]
    pub(crate) fn waiting(&mut self) {}

    #[inline(always)]
    pub(crate) fn finish<T>(self, result: Result<T, Error>) -> Result<T, Error> {
        result
    }
}

pub(crate) struct Lock;

impl Lock {
    #[inline(always)]
    pub(crate) fn untracked() -> Self {
        Lock
    }

    #[inline(always)]
    pub(crate) fn lost(&self, _reason: LostReason) {}

    #[inline(always)]
    pub(crate) fn ended(&self) {}
}

#[inline(always)]
pub(crate) fn renewals<'a>(
    _locks: impl Iterator<Item = &'a Lock>,
    _answers: &Result<Vec<Compared>, Error>,
    _unconfirmed: Option<u32>,
    _sent_at: Instant,
) {
}
