//! The per-call options every acquisition builder shares ([`Options`]), and
//! the macros that write the builders: one set of setters over the options
//! ([`option_setters!`]; each builder gives the docs of its own setters,
//! the bodies are written once), plain setters ([`setters!`]), and `.await`
//! ([`into_future!`]).

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

/// Builder setters that store their arguments: each one's docs, then
/// `name(arg: Type, ...) => field.path = value;`. The setter takes and
/// returns the builder (`mut self`).
macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*) => $($field:ident).+ = $value:expr;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, $($arg: $ty),*) -> Self {
                self.$($field).+ = $value;
                self
            }
        )*
    };
}
pub(crate) use setters;

/// The option setters of a builder with an `options: Options` field: each
/// setter named (`ttl`, `retry`, `timeout`, `auto_renew`, `min_replicas`)
/// after its docs, in the order given.
macro_rules! option_setters {
    ($($(#[$doc:meta])* $name:ident;)*) => {
        $($crate::engine::options::option_setters!(@one [$(#[$doc])*] $name);)*
    };
    (@one [$($doc:tt)*] ttl) => {
        $crate::engine::options::setters! {
            $($doc)* ttl(ttl: std::time::Duration) => options.ttl = Some(ttl);
        }
    };
    (@one [$($doc:tt)*] retry) => {
        $crate::engine::options::setters! {
            $($doc)* retry(retry: $crate::policy::retry::RetryStrategy) => options.retry = Some(retry);
        }
    };
    (@one [$($doc:tt)*] timeout) => {
        $crate::engine::options::setters! {
            $($doc)* timeout(timeout: std::time::Duration) => options.timeout = Some(timeout);
        }
    };
    (@one [$($doc:tt)*] auto_renew) => {
        $crate::engine::options::setters! {
            $($doc)* auto_renew(on: bool) => options.auto_renew = Some(on);
        }
    };
    (@one [$($doc:tt)*] min_replicas) => {
        $crate::engine::options::setters! {
            $($doc)* min_replicas(replicas: u32, timeout: std::time::Duration)
                => options.min_replicas = Some((replicas, timeout));
        }
    };
}
pub(crate) use option_setters;

/// `.await` for an acquisition builder: `$run(self)`, boxed, so that the
/// future is `Send + 'static` and as small as a pointer.
macro_rules! into_future {
    ($builder:ty => $output:ty, $run:path) => {
        impl std::future::IntoFuture for $builder {
            type Output = Result<$output, $crate::policy::error::Error>;
            type IntoFuture =
                std::pin::Pin<Box<dyn std::future::Future<Output = Self::Output> + Send + 'static>>;

            fn into_future(self) -> Self::IntoFuture {
                Box::pin($run(self))
            }
        }
    };
}
pub(crate) use into_future;
