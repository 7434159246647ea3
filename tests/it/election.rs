//! Leader election (`DistributedMutex::election`) against real, private
//! `redis-server` processes: handover on resign and drop, terms, `leader()`
//! and `observe()` following every change, proclamation, a SIGKILLed
//! leader, bad input, and exclusion under faults (proptest) on one server
//! and on the cluster.
//!
//! Time bounds are generous (the machine is loaded); the handover times are
//! printed (`--nocapture`) for the notes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use distributed_mutex::{
    Election, Error, Leader, Leadership, MAX_ELECTION_NAME_LEN, MAX_ELECTION_VALUE_LEN,
};
use fred::prelude::*;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::support::common::{ms, mutex_for, Fixture};

/// A campaign of `value` in its own task.
fn campaign(election: &Election, value: &str) -> JoinHandle<(Instant, Leadership)> {
    let election = election.clone();
    let value = value.to_owned();
    tokio::spawn(async move {
        let leadership = election.campaign(value).await.expect("campaign");
        (Instant::now(), leadership)
    })
}

/// Waits (at most `limit`) until `leader()` satisfies `want`.
async fn leader_becomes(
    election: &Election,
    limit: Duration,
    want: impl Fn(Option<&Leader>) -> bool,
) -> Option<Leader> {
    let deadline = Instant::now() + limit;
    loop {
        let leader = election.leader().await.expect("leader()");
        if want(leader.as_ref()) {
            return leader;
        }
        assert!(Instant::now() < deadline, "leader() stayed {leader:?}");
        tokio::time::sleep(ms(10)).await;
    }
}

/// The value and term of an observed state.
fn seen(state: &Option<Leader>) -> Option<(String, u64)> {
    state.as_ref().map(|l| (l.value.clone(), l.term))
}

/// What an observer received: each state (value, term) with when it came.
type Log = Mutex<Vec<(Instant, Option<(String, u64)>)>>;

/// Records every state an observer receives, with when it arrived.
fn record(mut rx: watch::Receiver<Option<Leader>>) -> Arc<Log> {
    let log = Arc::new(Mutex::new(vec![(
        Instant::now(),
        seen(&rx.borrow_and_update()),
    )]));
    let out = Arc::clone(&log);
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let state = seen(&rx.borrow_and_update());
            out.lock().unwrap().push((Instant::now(), state));
        }
    });
    log
}

/// Waits until the last recorded state is `want`; returns when it came.
async fn observed(log: &Log, want: Option<(&str, u64)>, limit: Duration) -> Instant {
    let want = want.map(|(v, t)| (v.to_owned(), t));
    let deadline = Instant::now() + limit;
    loop {
        if let Some((at, state)) = log.lock().unwrap().last() {
            if *state == want {
                return *at;
            }
        }
        assert!(
            Instant::now() < deadline,
            "observer never saw {want:?}: {:?}",
            log.lock()
                .unwrap()
                .iter()
                .map(|(_, s)| s)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(ms(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resign_hands_over_within_milliseconds() {
    let Fixture {
        server,
        raw: _raw,
        mutex,
    } = Fixture::start().await;
    let other = mutex_for(&server).await;
    let first = mutex.election("e:resign");
    let second = other.election("e:resign");

    let a = first.campaign("a").await.expect("a leads");
    let waiting = campaign(&second, "b");
    tokio::time::sleep(ms(300)).await;
    assert!(!waiting.is_finished(), "b led while a did");
    let leader = first.leader().await.unwrap().expect("a leader");
    assert_eq!((leader.value.as_str(), leader.term), ("a", a.term()));
    assert!(leader.lease_left > Duration::from_secs(50), "{leader:?}");

    let a_term = a.term();
    let resigned = Instant::now();
    a.resign().await.expect("a resigns");
    let (led, b) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("b leads within 5 s")
        .unwrap();
    let handover = led - resigned;
    println!("election handover after resign: {handover:?}");
    assert!(handover < Duration::from_millis(1000), "{handover:?}");
    assert!(b.term() > a_term);
    assert_eq!(b.value(), "b");
    let leader = first.leader().await.unwrap().expect("b leads");
    assert_eq!((leader.value.as_str(), leader.term), ("b", b.term()));
    b.resign().await.expect("b resigns");
    assert_eq!(first.leader().await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_leadership_resigns() {
    let Fixture {
        server,
        raw: _raw,
        mutex,
    } = Fixture::start().await;
    let other = mutex_for(&server).await;
    let a = mutex.election("e:drop").campaign("a").await.unwrap();
    let waiting = campaign(&other.election("e:drop"), "b");
    tokio::time::sleep(ms(200)).await;
    assert!(!waiting.is_finished());
    let dropped = Instant::now();
    drop(a);
    let (led, b) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("b leads within 5 s")
        .unwrap();
    println!("election handover after drop: {:?}", led - dropped);
    assert!(led - dropped < Duration::from_millis(1000));
    assert_eq!(b.value(), "b");
    drop(b);
    leader_becomes(&mutex.election("e:drop"), Duration::from_secs(5), |l| {
        l.is_none()
    })
    .await;
}

#[tokio::test]
async fn terms_strictly_increase_across_leaders_and_handles() {
    let Fixture {
        server,
        raw: _raw,
        mutex,
    } = Fixture::start().await;
    let other = mutex_for(&server).await;
    let mut last = 0;
    for round in 0..6 {
        let m = if round % 2 == 0 { &mutex } else { &other };
        let leadership = m
            .election("e:terms")
            .campaign(format!("r{round}"))
            .await
            .unwrap();
        assert!(
            leadership.term() > last,
            "round {round}: {} after {last}",
            leadership.term()
        );
        assert_eq!(leadership.lease().fencing_token(), Some(leadership.term()));
        last = leadership.term();
        if round % 3 == 0 {
            drop(leadership);
            leader_becomes(&m.election("e:terms"), Duration::from_secs(5), |l| {
                l.is_none()
            })
            .await;
        } else {
            leadership.resign().await.unwrap();
        }
    }
    assert!(last >= 6);
    // Another election counts on its own.
    let fresh = mutex.election("e:terms-other").campaign("x").await.unwrap();
    assert_eq!(fresh.term(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_and_observe_see_every_change_in_order() {
    let Fixture {
        server,
        raw: _raw,
        mutex,
    } = Fixture::start().await;
    let watcher = mutex_for(&server).await;
    let election = mutex.election("e:observe");
    let watched = watcher.election("e:observe");
    let log = record(watched.observe().expect("observe"));
    let second = record(watched.observe().expect("a second receiver"));
    let limit = Duration::from_secs(5);
    observed(&log, None, limit).await;

    let a = election.campaign("a").await.unwrap();
    let ta = a.term();
    let led = Instant::now();
    let at = observed(&log, Some(("a", ta)), limit).await;
    println!(
        "observer saw the new leader after {:?}",
        at.saturating_duration_since(led)
    );
    a.proclaim("a2").await.expect("proclaim");
    assert_eq!(a.value(), "a2");
    observed(&log, Some(("a2", ta)), limit).await;
    let leader = watched.leader().await.unwrap().unwrap();
    assert_eq!((leader.value.as_str(), leader.term), ("a2", ta));

    let resigned = Instant::now();
    a.resign().await.unwrap();
    let at = observed(&log, None, limit).await;
    let after_resign = at.saturating_duration_since(resigned);
    println!("observer saw the resignation after {after_resign:?}");
    assert!(
        after_resign < Duration::from_millis(900),
        "{after_resign:?}: by notification, not the 1 s poll"
    );
    assert_eq!(watched.leader().await.unwrap(), None);

    let b = election.campaign("b").await.unwrap();
    let tb = b.term();
    observed(&log, Some(("b", tb)), limit).await;
    drop(b);
    observed(&log, None, limit).await;

    let want = vec![
        None,
        Some(("a".to_owned(), ta)),
        Some(("a2".to_owned(), ta)),
        None,
        Some(("b".to_owned(), tb)),
        None,
    ];
    let got: Vec<_> = log.lock().unwrap().iter().map(|(_, s)| s.clone()).collect();
    assert_eq!(got, want);
    observed(&second, None, limit).await;
    let got: Vec<_> = second
        .lock()
        .unwrap()
        .iter()
        .map(|(_, s)| s.clone())
        .collect();
    assert_eq!(got, want, "every receiver sees the same changes");
}

#[tokio::test]
async fn proclaim_after_the_lock_is_gone_is_not_held() {
    let Fixture {
        server: _server,
        raw,
        mutex,
    } = Fixture::start().await;
    let election = mutex.election("e:gone");
    let leadership = election.campaign("a").await.unwrap();
    // Someone deletes every key (FLUSHALL by an operator).
    let _: () = raw.flushall(false).await.unwrap();
    let err = leadership.proclaim("b").await.expect_err("not held");
    assert!(
        matches!(err, Error::NotHeld { ref key, .. } if key == "e:gone"),
        "{err:?}"
    );
    assert_eq!(leadership.value(), "a");
    assert_eq!(election.leader().await.unwrap(), None);
    assert!(matches!(
        leadership.resign().await,
        Err(Error::NotHeld { .. })
    ));
}

#[tokio::test]
async fn bad_names_and_values_are_refused_before_anything_is_sent() {
    let Fixture {
        server: _server,
        raw: _raw,
        mutex,
    } = Fixture::start().await;
    let empty = mutex.election("");
    assert!(matches!(
        empty.campaign("v").await,
        Err(Error::InvalidKey { .. })
    ));
    assert!(matches!(
        empty.leader().await,
        Err(Error::InvalidKey { .. })
    ));
    assert!(matches!(empty.observe(), Err(Error::InvalidKey { .. })));
    let long = mutex.election("n".repeat(MAX_ELECTION_NAME_LEN + 1));
    assert!(matches!(
        long.campaign("v").await,
        Err(Error::InvalidKey { .. })
    ));
    let election = mutex.election("e:bad");
    let huge = "v".repeat(MAX_ELECTION_VALUE_LEN + 1);
    assert!(matches!(
        election.campaign(huge.clone()).await,
        Err(Error::Config { .. })
    ));
    assert_eq!(election.leader().await.unwrap(), None, "nothing was taken");
    let leadership = election
        .campaign("v".repeat(MAX_ELECTION_VALUE_LEN))
        .await
        .unwrap();
    assert!(matches!(
        leadership.proclaim(huge).await,
        Err(Error::Config { .. })
    ));
    assert_eq!(leadership.value().len(), MAX_ELECTION_VALUE_LEN);
    let zero_ttl = mutex.election("e:bad-ttl").ttl(Duration::ZERO);
    assert!(matches!(
        zero_ttl.campaign("v").await,
        Err(Error::InvalidTtl { .. })
    ));
}
