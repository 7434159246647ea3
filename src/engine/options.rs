//! The per-call options every acquisition builder shares ([`Options`]), and
//! one set of setters over them ([`option_setters!`]): each builder gives
//! the docs of its own setters, the bodies are written once.

use std::fmt;
use std::time::Duration;

use crate::policy::retry::RetryStrategy;

/// One acquisition's options, each `None` until set (then the mutex's
/// setting applies).
#[derive(Clone, Copy, Default)]
pub(crate) struct Options {
    pub(crate) ttl: Option<Duration>,
    pub(crate) retry: Option<RetryStrategy>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) auto_renew: Option<bool>,
    /// Replicas and their timeout, for builders with `min_replicas`.
    pub(crate) min_replicas: Option<(u32, Duration)>,
}

impl Options {
    /// Adds the options to a builder's `Debug` output, each as a field of
    /// its own (`min_replicas` only for builders that have the setter).
    pub(crate) fn fields(&self, out: &mut fmt::DebugStruct<'_, '_>, min_replicas: bool) {
        out.field("ttl", &self.ttl)
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .field("auto_renew", &self.auto_renew);
        if min_replicas {
            out.field("min_replicas", &self.min_replicas);
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("Options");
        self.fields(&mut out, self.min_replicas.is_some());
        out.finish()
    }
}

/// The option setters of a builder with an `options: Options` field: each
/// setter named (`ttl`, `retry`, `timeout`, `auto_renew`, `min_replicas`)
/// after its docs, in the order given.
macro_rules! option_setters {
    ($($(#[$doc:meta])* $name:ident;)*) => {
        $($crate::engine::options::option_setters!(@one [$(#[$doc])*] $name);)*
    };
    (@one [$($doc:tt)*] ttl) => {
        $($doc)*
        pub fn ttl(mut self, ttl: std::time::Duration) -> Self {
            self.options.ttl = Some(ttl);
            self
        }
    };
    (@one [$($doc:tt)*] retry) => {
        $($doc)*
        pub fn retry(mut self, retry: crate::RetryStrategy) -> Self {
            self.options.retry = Some(retry);
            self
        }
    };
    (@one [$($doc:tt)*] timeout) => {
        $($doc)*
        pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
            self.options.timeout = Some(timeout);
            self
        }
    };
    (@one [$($doc:tt)*] auto_renew) => {
        $($doc)*
        pub fn auto_renew(mut self, on: bool) -> Self {
            self.options.auto_renew = Some(on);
            self
        }
    };
    (@one [$($doc:tt)*] min_replicas) => {
        $($doc)*
        pub fn min_replicas(mut self, replicas: u32, timeout: std::time::Duration) -> Self {
            self.options.min_replicas = Some((replicas, timeout));
            self
        }
    };
}
pub(crate) use option_setters;
