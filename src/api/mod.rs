//! The public API: [`DistributedMutex`](mutex::DistributedMutex) and its
//! [`Builder`](builder::Builder), a lock acquisition ([`acquire`]) and its
//! guard ([`guard`]), multi-key locks ([`multi`]), [`semaphore`], [`rwlock`],
//! [`election`], [`redlock`] and the Go-compatible [`adapter`]. Each is a
//! thin face over the engine; lib.rs re-exports what users name.

// First the modules of `DistributedMutex`'s own methods: the docs list a
// type's methods in the order the compiler meets their impl blocks.
pub(crate) mod builder;
pub(crate) mod mutex;

pub(crate) mod acquire;
pub(crate) mod adapter;
pub(crate) mod election;
pub(crate) mod guard;
pub(crate) mod multi;
pub(crate) mod redlock;
pub(crate) mod rwlock;
pub(crate) mod semaphore;
pub(crate) mod with_lock;
