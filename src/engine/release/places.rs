//! The release of a token's places in sorted sets (semaphore permits,
//! read-write lock shares): the job, and its one script call.

use std::time::Duration;

use fred::clients::Client;
use fred::types::Value;

use crate::policy::error::Error;
use crate::protocol::channel::{Mode, ReleaseChannel};
use crate::protocol::keys::LockKeys;
use crate::protocol::scripts::members::RELEASE;
use crate::protocol::scripts::{binary_key, checked, mismatched, run, unexpected, Compared};

/// One release of places: a token out of its sets, announced to waiters.
#[derive(Debug, Clone)]
pub(crate) struct Places {
    /// The primitive's name as the caller gave it (for errors and logs).
    pub(crate) name: String,
    pub(crate) sets: Vec<Vec<u8>>,
    pub(crate) token: String,
    /// The keys whose release channels wake the primitive's waiters.
    pub(crate) wakes: Vec<LockKeys>,
}

/// Kept alive until a release of places finishes (a dropped guard's hold
/// on the mutex's connections: see `primitive/guard.rs`).
pub(crate) type KeepAlive = Option<Box<dyn Send + Sync>>;

/// Removes the token from its sets (its holding set first) and announces it
/// on the release channels of `wakes`: `Held` when it still held an
/// unexpired place, else `Missing`.
pub(crate) async fn release(
    client: &Client,
    mode: &Mode,
    places: &Places,
    timeout: Duration,
) -> Result<Compared, Error> {
    let pubsub = mode.get(client);
    let Places {
        name, sets, token, ..
    } = places;
    let mut args = Vec::with_capacity(2 + places.wakes.len());
    args.push(Value::from(token.as_str()));
    args.push(Value::from(pubsub.arg()));
    for keys in &places.wakes {
        args.push(Value::from(ReleaseChannel::of(keys, pubsub.sharded()).name));
    }
    let keys: Vec<_> = sets.iter().cloned().map(binary_key).collect();
    let reply: Value = run(client, &RELEASE, name, keys, args, timeout).await?;
    let reply = checked(reply, token).ok_or_else(|| mismatched(name, "release"))?;
    match reply.as_slice() {
        [1] => Ok(Compared::Held),
        [0] => Ok(Compared::Missing),
        other => Err(unexpected(name, "release", other)),
    }
}
