//! A least-privilege ACL user: the README's "ACL user" line, run as written
//! against a private server. With it, everything works and the server logs
//! no denial; without any one of its rights, the call that needs the right
//! fails with `Error::NoPermission` naming it, at once; a user of another
//! prefix cannot touch this prefix's locks.

use std::time::{Duration, Instant};

use distributed_mutex::{Builder, DistributedMutex, Error, RetryStrategy};
use tracing::Level;

use crate::support::common::ms;
use crate::support::logs::Logs;
use crate::support::RedisServer;

/// The README, whose "ACL user" section the tests run.
const README: &str = include_str!("../../README.md");
/// The key prefix the README's line is written for.
const PREFIX: &str = "app:";
const PASSWORD: &str = "CHANGE-ME";
/// The rights a mutex on one server needs, each with the call that needs it
/// (the rest of the line serves Redis Cluster, `min_replicas` and fred's
/// connection set-up).
const NEEDED: &[&str] = &[
    "evalsha",
    "script|load",
    "set",
    "get",
    "pttl",
    "incr",
    "pexpire",
    "del",
    "pubsub|numsub",
    "publish",
];

/// The `ACL SETUSER locker ...` line of the README, as its words.
fn readme_line() -> Vec<&'static str> {
    let line = README
        .lines()
        .find(|l| l.starts_with("ACL SETUSER locker "))
        .expect("the README gives an `ACL SETUSER locker ...` line");
    line.split_whitespace().collect()
}

/// Creates user `name` from the README's line (`locker` renamed), with
/// `edit` applied to its rules.
fn create_user(server: &RedisServer, name: &str, edit: impl Fn(&str) -> Option<String>) {
    let words = readme_line();
    let mut args: Vec<String> = vec!["ACL".into(), "SETUSER".into(), name.into()];
    args.extend(words[3..].iter().filter_map(|w| edit(w)));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(server.cli(&args), "OK", "{args:?}");
}

fn url_of(server: &RedisServer, user: &str, password: &str) -> String {
    format!("redis://{user}:{password}@127.0.0.1:{}", server.port())
}

async fn mutex_as(server: &RedisServer, user: &str) -> DistributedMutex {
    Builder::connect(&url_of(server, user, PASSWORD))
        .await
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"))
        .key_prefix(PREFIX)
        .ttl(ms(600))
        .retry(RetryStrategy::linear(ms(1_000), 5))
        .build()
        .unwrap()
}

/// Denials the server logged (`ACL LOG`), as raw text; empty when none.
fn acl_log(server: &RedisServer) -> String {
    server.cli(&["ACL", "LOG"])
}

/// Lock, try_lock, renewal past the TTL, fencing, a waiter woken by the
/// release message, release, drop and shutdown, all as the README's user:
/// every one works and the server logs no denial at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_acl_user_can_do_everything_the_mutex_does() {
    let server = RedisServer::start();
    create_user(&server, "locker", |w| Some(w.to_owned()));
    let mutex = mutex_as(&server, "locker").await;
    let rival = mutex_as(&server, "locker").await;

    let guard = mutex.acquire("job").fencing().await.unwrap();
    assert_eq!(server.cli(&["GET", "app:job"]), guard.token());
    assert!(rival.try_lock("job").await.unwrap().is_none());
    tokio::time::sleep(ms(1_500)).await; // 2.5 TTLs: renewed
    assert!(!guard.is_lost(), "the lease was not renewed");
    assert_eq!(server.cli(&["GET", "app:job"]), guard.token());
    guard.extend(ms(900)).await.unwrap();

    let waiter = {
        let rival = rival.clone();
        tokio::spawn(async move { rival.acquire("job").fencing().await })
    };
    tokio::time::sleep(ms(200)).await;
    let released_at = Instant::now();
    let first = guard.fencing_token().unwrap();
    guard.release().await.unwrap();
    let next = waiter.await.unwrap().unwrap();
    let waited = released_at.elapsed();
    assert!(next.fencing_token().unwrap() > first);
    // Woken by the release message, not by its 1 s retry interval.
    assert!(waited < ms(500), "the waiter took {waited:?}");
    drop(next);
    mutex.shutdown().await;
    rival.shutdown().await;

    assert_eq!(server.cli(&["EXISTS", "app:job"]), "0", "left after drop");
    let denials = acl_log(&server);
    assert!(denials.is_empty(), "the server denied something: {denials}");
}

/// An election as the README's user: campaign, proclaim, leader, observe,
/// a handover by resignation; no denial logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_acl_user_can_run_an_election() {
    let server = RedisServer::start();
    create_user(&server, "locker", |w| Some(w.to_owned()));
    let mutex = mutex_as(&server, "locker").await;
    let rival = mutex_as(&server, "locker").await;
    let mut leaders = rival.election("scheduler").observe().unwrap();
    let first = mutex.election("scheduler").campaign("a").await.unwrap();
    first.proclaim("a2").await.unwrap();
    let leader = rival.election("scheduler").leader().await.unwrap().unwrap();
    assert_eq!((leader.value.as_str(), leader.term), ("a2", first.term()));
    let waiting = {
        let rival = rival.clone();
        tokio::spawn(async move { rival.election("scheduler").campaign("b").await })
    };
    tokio::time::sleep(ms(200)).await;
    first.resign().await.unwrap();
    let second = waiting.await.unwrap().unwrap();
    let seen = tokio::time::timeout(
        ms(5_000),
        leaders.wait_for(|l| l.as_ref().is_some_and(|l| l.value == "b")),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    assert!(seen, "the observer never saw b");
    drop(leaders);
    second.resign().await.unwrap();
    let denials = acl_log(&server);
    assert!(denials.is_empty(), "the server denied something: {denials}");
}

/// For each right the line grants, a user without it: the call that needs
/// it fails with `NoPermission` naming the command, not transient, within
/// the command timeout (never `NotObtained`, never a hang).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_missing_one_right_gets_no_permission_naming_the_command() {
    for right in NEEDED {
        // A fresh server per right: `script|load` needs an empty script cache.
        let server = RedisServer::start();
        let user = format!("without-{}", right.replace('|', "-"));
        create_user(&server, &user, |w| {
            (w != format!("+{right}")).then(|| w.to_owned())
        });
        create_user(&server, "locker", |w| Some(w.to_owned()));
        let mutex = mutex_as(&server, &user).await;
        let full = mutex_as(&server, "locker").await;

        let started = Instant::now();
        let err = denied_call(right, &mutex, &full).await;
        let took = started.elapsed();
        eprintln!("without +{right} ({took:?}): {err}");
        let Error::NoPermission { command, .. } = &err else {
            panic!("without +{right}: expected NoPermission, got {err:?}");
        };
        let name = right.to_uppercase();
        let name = name.split('|').next().unwrap();
        assert!(
            command.contains(name),
            "without +{right}: names {command:?}: {err}"
        );
        assert!(err.to_string().contains("NOPERM"), "{err}");
        assert!(!err.is_transient(), "{err:?}");
        assert!(
            took < Duration::from_secs(2),
            "without +{right}: took {took:?}"
        );
        mutex.shutdown().await;
        full.shutdown().await;
    }
}

/// The call that needs `right`, made by `mutex` (whose user lacks it), with
/// `full` (the README's user) setting the stage; returns its error.
async fn denied_call(right: &str, mutex: &DistributedMutex, full: &DistributedMutex) -> Error {
    let held = |key: &'static str| async move { full.lock(key).await.unwrap() };
    let result = match right {
        // An uncontended lock is a plain `SET NX PX`; with fencing it runs
        // the acquire script.
        "set" => mutex.lock("job").await.map(drop),
        "evalsha" | "script|load" => mutex.acquire("job").fencing().await.map(drop),
        // A held key: SET NX fails, the script reads the holder (GET) and
        // its remaining lease (PTTL).
        "get" | "pttl" => {
            let _holder = held("busy").await;
            mutex.try_lock("busy").await.map(drop)
        }
        "incr" => mutex.acquire("job").fencing().await.map(drop),
        "pexpire" => {
            let guard = full.lock("job").await.unwrap();
            let guard = reacquire_as(mutex, guard).await;
            guard.extend(ms(900)).await
        }
        "del" | "pubsub|numsub" => {
            let guard = reacquire_as(mutex, full.lock("job").await.unwrap()).await;
            guard.release().await
        }
        "publish" => {
            let guard = reacquire_as(mutex, full.lock("job").await.unwrap()).await;
            // Someone listens, so the release script publishes.
            let waiter = {
                let full = full.clone();
                tokio::spawn(async move { full.lock("job").await.map(drop) })
            };
            tokio::time::sleep(ms(200)).await;
            let result = guard.release().await;
            waiter.abort();
            result
        }
        other => panic!("no call for right {other}"),
    };
    result.expect_err(&format!("without +{right}, the call succeeded"))
}

/// A guard of `mutex` for the key `guard` holds: `guard` (taken with full
/// rights) is released and `mutex` takes the key, using only the rights the
/// acquire script needs. Rights the user lacks for later steps are not
/// needed here.
async fn reacquire_as(
    mutex: &DistributedMutex,
    guard: distributed_mutex::LockGuard,
) -> distributed_mutex::LockGuard {
    let key = guard.key().to_owned();
    guard.release().await.unwrap();
    mutex.lock(&key).await.unwrap()
}

/// A user whose patterns cover another prefix cannot take, read or delete
/// this prefix's locks: its mutex gets `NoPermission` (a key outside its
/// patterns), and its raw commands on the key are refused.
#[tokio::test]
async fn a_user_of_another_prefix_cannot_touch_this_prefixs_locks() {
    let server = RedisServer::start();
    create_user(&server, "locker", |w| Some(w.to_owned()));
    create_user(&server, "other", |w| match w {
        "~app:*" => Some("~other:*".to_owned()),
        "&app:*" => Some("&other:*".to_owned()),
        w => Some(w.to_owned()),
    });
    let mutex = mutex_as(&server, "locker").await;
    let guard = mutex.lock("job").await.unwrap();
    let intruder = mutex_as(&server, "other").await;

    let err = intruder.try_lock("job").await.unwrap_err();
    assert!(
        matches!(&err, Error::NoPermission { command, .. } if command.contains("key")),
        "{err:?}"
    );
    assert!(!err.is_transient());
    let as_other = |args: &[&str]| {
        let mut all = vec!["--user", "other", "--pass", PASSWORD, "--no-auth-warning"];
        all.extend_from_slice(args);
        server.cli(&all)
    };
    assert!(as_other(&["DEL", "app:job"]).starts_with("NOPERM"));
    assert!(as_other(&["GET", "app:job"]).starts_with("NOPERM"));
    assert_eq!(server.cli(&["GET", "app:job"]), guard.token());

    // Under its own prefix the other user locks as usual.
    let own = Builder::connect(&url_of(&server, "other", PASSWORD))
        .await
        .unwrap()
        .key_prefix("other:")
        .build()
        .unwrap();
    assert!(own.try_lock("job").await.unwrap().is_some());
    own.shutdown().await;
    guard.release().await.unwrap();
    mutex.shutdown().await;
    intruder.shutdown().await;
}

/// A user without the channel pattern still gets its locks, by polling, and
/// a warning says why release messages do not reach it.
#[tokio::test(flavor = "current_thread")]
async fn without_the_channel_pattern_waiters_poll_and_a_warning_says_why() {
    let logs = Logs::capture();
    let server = RedisServer::start();
    create_user(&server, "locker", |w| Some(w.to_owned()));
    create_user(&server, "deaf", |w| (w != "&app:*").then(|| w.to_owned()));
    let holder = mutex_as(&server, "locker").await;
    let deaf = Builder::connect(&url_of(&server, "deaf", PASSWORD))
        .await
        .unwrap()
        .key_prefix(PREFIX)
        .retry(RetryStrategy::linear(ms(100), 50))
        .build()
        .unwrap();

    let guard = holder.lock("job").await.unwrap();
    let waiter = {
        let deaf = deaf.clone();
        tokio::spawn(async move { deaf.lock("job").await })
    };
    tokio::time::sleep(ms(300)).await;
    guard.release().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(3), waiter)
        .await
        .expect("the polling waiter never got the lock")
        .unwrap();
    assert!(got.is_ok(), "{got:?}");
    let warnings = logs.at_least(Level::WARN);
    assert!(
        warnings.iter().any(|w| format!("{w:?}").contains("NOPERM")),
        "no NOPERM warning: {:#?}",
        logs.events()
    );
    drop(got);
    deaf.shutdown().await;
    holder.shutdown().await;
}

/// A named user with a wrong password: `connect` fails with `Config`.
#[tokio::test]
async fn a_named_user_with_a_wrong_password_is_a_config_error() {
    let server = RedisServer::start();
    create_user(&server, "locker", |w| Some(w.to_owned()));
    let err = DistributedMutex::connect(&url_of(&server, "locker", "wrong"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    assert!(!err.is_transient());
}
