//! What the counting semaphore ([`Semaphore`](crate::Semaphore)) and the
//! read-write lock ([`RwLock`](crate::RwLock)) share: each holder holds a
//! *place* (its random token) in a Redis sorted set, scored by when the place
//! expires in Redis server time (`TIME` inside the scripts, so clients'
//! clocks do not matter). Every script prunes expired places first, so a
//! crashed holder's place frees itself after its TTL.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | [`Target`]: the Redis names of one acquisition and how it is taken; the macros that write the public builders and guards (`acquisition!`, `guard_type!`) |
//! | `acquire.rs` | the attempt loop: schedule, local FIFO wait, cancel safety |
//! | `guard.rs` | [`Held`]: the place held, its release and drop (the release script and the background release: `engine/release/`) |
//! | `scripts.rs` | the typed script calls (the scripts: `protocol/scripts/members.rs`) |
//!
//! Renewal goes through the mutex's renewer (`engine/renew/`): a lease with a
//! `member_set` is renewed by `member_renew.lua`, batched per slot.
//!
//! Redis names, for a primitive named `K` through a mutex with prefix `P`
//! (`{T}`: `K`'s slot tag, see `keys.rs`; all in one slot):
//!
//! | what | name |
//! |---|---|
//! | semaphore permits | `P \xff {T}:sem:K` |
//! | read-write lock readers, writer, writers' intents | `P \xff {T}:rw-readers:K`, `P \xff {T}:rw-writer:K`, `P \xff {T}:rw-intents:K` |
//! | wake-up channels (plain) | `P {T}\0<role>:K:released`, role `sem`, `rw-read`, `rw-write` |
//! | wake-up channels (sharded) | `P {T}:released:{T}\0<role>:K` |

pub(crate) mod acquire;
pub(crate) mod guard;
pub(crate) mod scripts;

use crate::protocol::keys::LockKeys;
use scripts::Attempt;

/// The most permits a semaphore may have.
pub const MAX_PERMITS: u32 = 1 << 20;

/// Everything an acquisition of one primitive needs to know about Redis.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The name as the caller gave it.
    pub(crate) name: String,
    /// The acquire script and its own arguments.
    pub(crate) attempt: Attempt,
    /// Where this role's waiters queue locally and listen.
    pub(crate) waiting: LockKeys,
    /// The sorted sets, in the acquire script's order.
    pub(crate) sets: Vec<Vec<u8>>,
    /// The sets a release clears the token from, holding set first.
    pub(crate) release_sets: Vec<Vec<u8>>,
    /// The waiters told on release (their channels).
    pub(crate) wakes: Vec<LockKeys>,
}

impl Target {
    /// One permit of the semaphore `name` with `permits`.
    pub(crate) fn permit(prefix: &str, name: &str, permits: u32) -> Self {
        let base = LockKeys::new(prefix, name);
        let set = base.member_set("sem");
        let waiting = base.waiting("sem");
        Target {
            name: name.to_owned(),
            attempt: Attempt::Permit { permits },
            waiting: waiting.clone(),
            sets: vec![set.clone()],
            release_sets: vec![set],
            wakes: vec![waiting],
        }
    }

    /// The read-write lock `name`'s sets: readers, writer, intents.
    fn rw_sets(base: &LockKeys) -> Vec<Vec<u8>> {
        ["rw-readers", "rw-writer", "rw-intents"]
            .iter()
            .map(|what| base.member_set(what))
            .collect()
    }

    /// A read guard of the read-write lock `name`.
    pub(crate) fn read(prefix: &str, name: &str) -> Self {
        let base = LockKeys::new(prefix, name);
        let sets = Self::rw_sets(&base);
        Target {
            name: name.to_owned(),
            attempt: Attempt::Read,
            waiting: base.waiting("rw-read"),
            release_sets: vec![sets[0].clone()],
            sets,
            // A reader leaving may let a writer in.
            wakes: vec![base.waiting("rw-write")],
        }
    }

    /// A write guard of the read-write lock `name`; `intent_ms` as in
    /// [`Attempt::Write`].
    pub(crate) fn write(prefix: &str, name: &str, intent_ms: u64) -> Self {
        let base = LockKeys::new(prefix, name);
        let sets = Self::rw_sets(&base);
        Target {
            name: name.to_owned(),
            attempt: Attempt::Write { intent_ms },
            waiting: base.waiting("rw-write"),
            release_sets: vec![sets[1].clone(), sets[2].clone()],
            sets,
            // A writer leaving (or withdrawing its intent) lets readers in,
            // or the next writer.
            wakes: vec![base.waiting("rw-read"), base.waiting("rw-write")],
        }
    }
}

/// The option setters shared by the acquisition builders
/// ([`AcquirePermit`](crate::AcquirePermit), [`AcquireRead`](crate::AcquireRead),
/// [`AcquireWrite`](crate::AcquireWrite)); each has an `options` field.
macro_rules! option_setters {
    () => {
        $crate::engine::options::option_setters! {
            /// The lease, instead of the mutex's TTL.
            ttl;
            /// How to wait, instead of the mutex's retry strategy.
            retry;
            /// The longest time to wait, on top of the retry strategy (whichever
            /// ends first); `Duration::ZERO` means one attempt.
            timeout;
            /// Whether the guard renews its lease while it lives, instead of the
            /// mutex's setting (default on).
            auto_renew;
        }
    };
}
pub(crate) use option_setters;

/// The read-only methods every guard of a place has (each has a `held`
/// field); `$what` names the guard in the docs.
macro_rules! guard_methods {
    ($what:literal) => {
        /// The name as the caller gave it (without the mutex's key prefix).
        pub fn name(&self) -> &str {
            self.held.name()
        }

        /// The random token (a v4 UUID) that holds this place in Redis.
        pub fn token(&self) -> &str {
            self.held.token()
        }

        /// The lease this place was taken or last renewed with.
        pub fn ttl(&self) -> std::time::Duration {
            self.held.ttl()
        }

        #[doc = concat!("How long the ", $what, " is at least still held: the lease counted from when")]
        /// the last acquiring or renewing command was sent, less a drift
        /// margin (1 % of the lease + 2 ms). Zero once lost.
        pub fn remaining(&self) -> std::time::Duration {
            self.held.remaining()
        }

        #[doc = concat!("`true` once the ", $what, " is known lost (renewal found its place gone, or")]
        /// its lease ran out locally without a confirmed renewal).
        pub fn is_lost(&self) -> bool {
            self.held.is_lost()
        }

        #[doc = concat!("Completes when the ", $what, " is known lost, with the reason:")]
        /// [`LostReason::Missing`](crate::LostReason::Missing) when a renewal
        /// found its place gone (expired in Redis, or removed),
        /// [`LostReason::Expired`](crate::LostReason::Expired) when its lease
        /// ran out locally first.
        ///
        /// # Cancel safety
        /// Cancel-safe: it only watches; dropping it changes nothing.
        pub async fn lost(&self) -> $crate::policy::error::lost::LostReason {
            self.held.lost().await
        }

        /// A cheap, cloneable view of this place (name, token, remaining,
        /// loss), for work that runs under it.
        pub fn lease(&self) -> $crate::engine::lease::Lease {
            self.held.lease()
        }

        #[doc = concat!("Releases the ", $what, " now, and wakes waiters.")]
        ///
        /// # Errors
        /// [`Error::NotHeld`](crate::Error::NotHeld) when its place had
        /// already expired; [`Error::Unavailable`](crate::Error::Unavailable)
        /// or [`Error::Timeout`](crate::Error::Timeout) when Redis could not
        /// be asked (the release is then retried in the background).
        ///
        /// # Cancel safety
        /// Cancel-safe: if dropped before the answer, the guard's drop queues
        /// the release in the background.
        pub async fn release(self) -> Result<(), $crate::policy::error::Error> {
            self.held.release().await
        }
    };
}
pub(crate) use guard_methods;

/// The acquisition builder of a place (with `inner`, `name` and `options`
/// fields, and the `$extra` ones): its option setters, `.await` giving a
/// `$guard` (boxed, `Send + 'static`), and `Debug`. `$target` makes the
/// place's [`Target`] from `$this`, the builder.
macro_rules! acquisition {
    ($builder:ident => $guard:ident, |$this:ident| $target:expr $(, $extra:ident)*) => {
        impl $builder {
            $crate::engine::primitive::option_setters!();
        }

        impl std::future::IntoFuture for $builder {
            type Output = Result<$guard, $crate::policy::error::Error>;
            type IntoFuture = std::pin::Pin<
                Box<dyn std::future::Future<Output = Self::Output> + Send + 'static>,
            >;

            fn into_future(self) -> Self::IntoFuture {
                let $this = &self;
                let target = $target;
                Box::pin(async move {
                    let run = $crate::engine::primitive::acquire::run;
                    let held = run(self.inner, target, self.options).await?;
                    Ok($guard { held })
                })
            }
        }

        impl std::fmt::Debug for $builder {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($builder))
                    .field("name", &self.name)
                    $(.field(stringify!($extra), &self.$extra))*
                    .field("options", &self.options)
                    .finish()
            }
        }
    };
}
pub(crate) use acquisition;

/// A guard type of a place (with a `held` field): its methods (see
/// [`guard_methods!`]; `$what` names it in the docs) and `Debug`.
macro_rules! guard_type {
    ($guard:ident, $what:literal) => {
        impl $guard {
            $crate::engine::primitive::guard_methods!($what);
        }

        impl std::fmt::Debug for $guard {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($guard))
                    .field("name", &self.name())
                    .field("remaining", &self.remaining())
                    .finish()
            }
        }
    };
}
pub(crate) use guard_type;
