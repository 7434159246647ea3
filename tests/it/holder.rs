//! Holder labels (`Builder::holder`, `Acquire::holder`): carried in the
//! lock's token (`<uuid>:<unix ms>:<label>`), read back with
//! `Holder::from_token`, through the fast path, the acquire script and the
//! wait queue's handoff; still a plain token to other clients of the
//! protocol; bad labels refused before anything is sent.

use std::time::{Duration, SystemTime};

use distributed_mutex::{Builder, Error, Holder, RetryStrategy, MAX_HOLDER_LEN};
use fred::prelude::*;

use crate::support::common::{builder_for, ms, raw_get, Fixture};

fn holder_of(token: &str) -> Holder {
    Holder::from_token(token).unwrap_or_else(|| panic!("no holder in {token:?}"))
}

async fn labelled(fixture: &Fixture, label: &str) -> distributed_mutex::DistributedMutex {
    builder_for(&fixture.server)
        .await
        .holder(label)
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_label_is_stored_with_the_lock_and_read_back() {
    let fixture = Fixture::start().await;
    let mutex = labelled(&fixture, "web-3").await;
    let before = SystemTime::now() - ms(1000);
    // The fast path (SET NX), then the script (fencing).
    let guard = mutex.lock("h:fast").await.unwrap();
    let fenced = mutex.acquire("h:fenced").fencing().await.unwrap();
    for (key, guard) in [("h:fast", &guard), ("h:fenced", &fenced)] {
        let stored = raw_get(&fixture.raw, key).await.expect("held");
        assert_eq!(stored, guard.token());
        let holder = holder_of(&stored);
        assert_eq!(holder.label, "web-3");
        assert!(holder.since >= before && holder.since <= SystemTime::now() + ms(1000));
    }
    // Per call, instead of the mutex's; and none on a plain mutex.
    let other = mutex.acquire("h:call").holder("cron@db-2").await.unwrap();
    assert_eq!(holder_of(other.token()).label, "cron@db-2");
    let plain = fixture.mutex.lock("h:plain").await.unwrap();
    assert!(Holder::from_token(plain.token()).is_none());
    assert_eq!(
        plain.token().len(),
        36,
        "an unlabelled token is a bare UUID"
    );
    // Renewal, extension and release compare the whole token.
    guard.extend(ms(5000)).await.unwrap();
    guard.release().await.unwrap();
    fenced.release().await.unwrap();
    assert_eq!(raw_get(&fixture.raw, "h:fast").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_labelled_waiter_is_handed_the_lock_through_the_queue() {
    let fixture = Fixture::start().await;
    let holder = labelled(&fixture, "first").await;
    // A label with the queue member's separators and the token's own.
    let waiter = labelled(&fixture, "second|with:colons").await;
    let guard = holder.lock("h:queue").await.unwrap();
    let task = tokio::spawn(async move {
        waiter
            .acquire("h:queue")
            .retry(RetryStrategy::linear(ms(5000), 10))
            .await
    });
    tokio::time::sleep(ms(300)).await;
    guard.release().await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(3), task)
        .await
        .expect("handed over, not polled after 5 s")
        .unwrap()
        .unwrap();
    assert_eq!(holder_of(next.token()).label, "second|with:colons");
    let stored = raw_get(&fixture.raw, "h:queue").await.unwrap();
    assert_eq!(stored, next.token());
}

#[tokio::test]
async fn a_labelled_lock_is_a_plain_lock_to_other_clients() {
    let fixture = Fixture::start().await;
    let mutex = labelled(&fixture, "web-3").await;
    let guard = mutex.lock("h:interop").await.unwrap();
    // Another client's SET NX fails while it is held.
    let taken: Option<String> = fixture
        .raw
        .set(
            "h:interop",
            "foreign",
            Some(Expiration::PX(10_000)),
            Some(SetOptions::NX),
            false,
        )
        .await
        .unwrap();
    assert_eq!(taken, None);
    // The compare-and-delete every client of the protocol runs (redis-py's,
    // bsm/redislock's) deletes it with its token, and only with it.
    let cad = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";
    let wrong: i64 = fixture
        .raw
        .eval(cad, vec!["h:interop"], vec!["not-the-token"])
        .await
        .unwrap();
    assert_eq!(wrong, 0);
    let right: i64 = fixture
        .raw
        .eval(cad, vec!["h:interop"], vec![guard.token()])
        .await
        .unwrap();
    assert_eq!(right, 1);
    assert!(matches!(guard.release().await, Err(Error::NotHeld { .. })));
    // And the operator's token-checked release takes the labelled token.
    let again = mutex.lock("h:interop").await.unwrap();
    let token = again.token().to_owned();
    fixture
        .mutex
        .release_token("h:interop", &token)
        .await
        .unwrap();
    assert_eq!(raw_get(&fixture.raw, "h:interop").await, None);
}

#[tokio::test]
async fn bad_labels_are_refused_before_anything_is_sent() {
    let fixture = Fixture::start().await;
    let too_long = "x".repeat(MAX_HOLDER_LEN + 1);
    for label in ["", "a\nb", too_long.as_str()] {
        let built = builder_for(&fixture.server).await.holder(label).build();
        assert!(matches!(built, Err(Error::Config { .. })), "{label:?}");
        let call = fixture.mutex.acquire("h:bad").holder(label).await;
        assert!(matches!(call, Err(Error::Config { .. })), "{label:?}");
    }
    assert_eq!(raw_get(&fixture.raw, "h:bad").await, None);
    let longest = Builder::holder(
        builder_for(&fixture.server).await,
        "x".repeat(MAX_HOLDER_LEN),
    );
    let guard = longest.build().unwrap().lock("h:bad").await.unwrap();
    assert_eq!(holder_of(guard.token()).label.len(), MAX_HOLDER_LEN);
}
