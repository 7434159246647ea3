//! The observer of an election: one task per election name and mutex,
//! shared by every [`Election::observe`](crate::Election::observe) receiver.
//!
//! It waits on the election's news channel as a waiter of the mutex's
//! subscriber (`engine/notify/`): claims, proclamations and resignations publish
//! there. It reads the leader (`leader.lua`) after each message, when the
//! leader's lease may have run out (a crashed leader announces nothing),
//! and at least every [`OBSERVE_POLL`]. The state is sent only when it
//! changed (another term or value, or none), so receivers see each change
//! once, in order. It ends when the last receiver is dropped, or when the
//! mutex is shut down (the receivers then see the channel closed).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use super::leader::Leader;
use super::names::Names;
use super::Election;
use crate::engine::inner::Inner;
use crate::policy::error::Error;

/// The longest an observer goes without reading the leader.
pub const OBSERVE_POLL: Duration = Duration::from_secs(1);

/// How long after a leader's lease would end the observer reads again.
const EXPIRY_MARGIN: Duration = Duration::from_millis(2);

type State = Option<Leader>;

/// An observer's identity: its mutex's id and the election's lock key.
type Id = (String, String);
type Registry = HashMap<Id, watch::Sender<State>>;

/// The running observers.
static OBSERVERS: LazyLock<Mutex<Registry>> = LazyLock::new(Mutex::default);

fn observers() -> MutexGuard<'static, Registry> {
    OBSERVERS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A receiver of the election's leader, starting its observer if none runs.
pub(crate) fn subscribe(
    election: &Election,
    names: Names,
) -> Result<watch::Receiver<State>, Error> {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return Err(Error::Config {
            message: "Election::observe must be called within a Tokio runtime (its observer task runs there)".to_owned(),
            source: None,
        });
    };
    let inner = Arc::clone(election.mutex.inner());
    let id = (inner.waiters.id().to_owned(), names.lock_key.clone());
    let mut running = observers();
    if let Some(sender) = running.get(&id) {
        return Ok(sender.subscribe());
    }
    let (sender, receiver) = watch::channel(None);
    running.insert(id.clone(), sender.clone());
    drop(running);
    inner.ensure_background();
    let election = election.clone();
    runtime.spawn(async move {
        run(&inner, &election, &names, &sender).await;
        tracing::debug!(election = %election.name(), "observer stopped");
    });
    Ok(receiver)
}

/// Whether the observer of `id` may stop: no receiver is left (checked under
/// the registry's lock, so no new one can be made meanwhile); it is then
/// taken out of the registry.
fn may_stop(id: &Id, sender: &watch::Sender<State>) -> bool {
    let mut running = observers();
    if sender.receiver_count() > 0 {
        return false;
    }
    if running.get(id).is_some_and(|s| s.same_channel(sender)) {
        running.remove(id);
    }
    true
}

/// Takes the observer of `id` out of the registry (its task ends).
fn forget(id: &Id, sender: &watch::Sender<State>) {
    let mut running = observers();
    if running.get(id).is_some_and(|s| s.same_channel(sender)) {
        running.remove(id);
    }
}

/// The observer's loop, until no receiver is left.
async fn run(
    inner: &Arc<Inner>,
    election: &Election,
    names: &Names,
    sender: &watch::Sender<State>,
) {
    let id = (inner.waiters.id().to_owned(), names.lock_key.clone());
    let timeout = inner.settings.command_timeout;
    let mut ticket = inner.waiters.join(names.news_keys());
    // Read once the subscription is in place: nothing announced before it
    // is missed.
    ticket.subscribed(timeout).await;
    loop {
        let next = match election.target(names).leader().await {
            Ok(state) => {
                let next = next_read(state.as_ref());
                update(sender, state);
                next
            }
            Err(Error::Shutdown { .. }) => {
                // The mutex is shut down: the receivers see the channel close.
                forget(&id, sender);
                return;
            }
            Err(e) => {
                tracing::debug!(election = %election.name(), error = %e, "observer: leader not read");
                OBSERVE_POLL
            }
        };
        tokio::select! {
            _ = ticket.wait(next) => {}
            () = sender.closed() => {
                if may_stop(&id, sender) {
                    return;
                }
            }
        }
    }
}

/// When to read again: by the poll, or just after the leader's lease would
/// end without renewal.
fn next_read(state: Option<&Leader>) -> Duration {
    match state {
        Some(leader) => OBSERVE_POLL.min(leader.lease_left + EXPIRY_MARGIN),
        None => OBSERVE_POLL,
    }
}

/// Sends `state` when it differs from the last one sent.
fn update(sender: &watch::Sender<State>, state: State) {
    sender.send_if_modified(|current| {
        let same = match (&*current, &state) {
            (Some(a), Some(b)) => a.same_as(b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            *current = state;
        }
        !same
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn leader(term: u64, value: &str, left_ms: u64) -> Leader {
        Leader {
            value: value.to_owned(),
            term,
            lease_left: Duration::from_millis(left_ms),
            since: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn only_changes_are_sent() {
        let (sender, mut receiver) = watch::channel(None);
        update(&sender, None);
        assert!(!receiver.has_changed().unwrap());
        update(&sender, Some(leader(1, "a", 500)));
        assert!(receiver.has_changed().unwrap());
        receiver.borrow_and_update();
        update(&sender, Some(leader(1, "a", 100)));
        assert!(
            !receiver.has_changed().unwrap(),
            "the lease alone is no change"
        );
        update(&sender, Some(leader(1, "b", 100)));
        assert_eq!(receiver.borrow_and_update().as_ref().unwrap().value, "b");
        update(&sender, None);
        assert!(receiver.borrow_and_update().is_none());
    }

    #[test]
    fn reads_follow_the_lease() {
        assert_eq!(next_read(None), OBSERVE_POLL);
        assert_eq!(
            next_read(Some(&leader(1, "a", 10))),
            Duration::from_millis(12)
        );
        assert_eq!(next_read(Some(&leader(1, "a", 60_000))), OBSERVE_POLL);
    }
}
