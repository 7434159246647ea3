//! TLS (cargo feature `tls`): a private server with a TLS port and
//! certificates made at test time (`tests/support/tls.rs`). Locks, renewal,
//! notifications and release over TLS; an untrusted server certificate, a
//! refused client certificate and a plain URL against the TLS port each end
//! in a clear error within the connect timeout, never a hang and never a
//! plaintext connection.

use std::time::{Duration, Instant};

use distributed_mutex::{Builder, DistributedMutex, Error, RetryStrategy, Tls};

use crate::support::common::ms;
use crate::support::tls::TlsServer;

/// The connect timeout (the default command timeout) and some slack.
const CONNECT_LIMIT: Duration = Duration::from_secs(3);

fn trusting(server: &TlsServer) -> Tls {
    Tls::new().ca_file(server.file("ca.pem"))
}

async fn builder(server: &TlsServer, tls: Tls) -> Builder {
    Builder::connect_tls(&server.url(), tls)
        .await
        .unwrap_or_else(|e| panic!("connect over TLS: {e}"))
}

/// Connects with `connect` and returns its error and how long it took;
/// panics if it connected.
async fn refused<F, T>(connect: F) -> (Error, Duration)
where
    F: std::future::Future<Output = Result<T, Error>>,
{
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .expect("connect hung for 10 s");
    let took = started.elapsed();
    match result {
        Ok(_) => panic!("connected"),
        Err(e) => (e, took),
    }
}

/// A 500 ms lease held for 1.5 s is renewed, a waiter on another
/// connection is woken by the release message, and the key is released:
/// all over TLS, checked on the server's plain port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_renew_notify_and_release_over_tls() {
    let tls = TlsServer::start(false);
    let mutex = builder(&tls, trusting(&tls))
        .await
        .ttl(ms(500))
        .build()
        .unwrap();
    let rival = builder(&tls, trusting(&tls))
        .await
        .retry(RetryStrategy::linear(ms(1_000), 5))
        .build()
        .unwrap();

    let guard = mutex.lock("tls:job").await.unwrap();
    tokio::time::sleep(ms(1_500)).await;
    assert!(!guard.is_lost(), "not renewed over TLS");
    assert_eq!(tls.server.cli(&["GET", "tls:job"]), guard.token());

    let waiter = {
        let rival = rival.clone();
        tokio::spawn(async move { rival.lock("tls:job").await })
    };
    tokio::time::sleep(ms(200)).await;
    let released_at = Instant::now();
    guard.release().await.unwrap();
    let next = waiter.await.unwrap().unwrap();
    let waited = released_at.elapsed();
    assert!(
        waited < ms(500),
        "the waiter took {waited:?}: no release message"
    );
    assert_eq!(tls.server.cli(&["GET", "tls:job"]), next.token());
    drop(next);
    mutex.shutdown().await;
    rival.shutdown().await;
    assert_eq!(tls.server.cli(&["EXISTS", "tls:job"]), "0");
    // Every connection the mutexes made was a TLS one: the plain port saw
    // only this test's redis-cli calls.
}

/// A server certificate signed by a CA the client does not trust (another
/// CA file, or the system roots): `Config` within the connect timeout.
#[tokio::test]
async fn an_untrusted_server_certificate_is_a_config_error() {
    let tls = TlsServer::start(false);
    let before = tls.server.cli(&["INFO", "stats"]);

    let other = Tls::new().ca_file(tls.file("other-ca.pem"));
    let (err, took) = refused(Builder::connect_tls(&tls.url(), other)).await;
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    assert!(err.to_string().contains("TLS"), "{err}");
    assert!(took < CONNECT_LIMIT, "took {took:?}");

    // `connect` of a rediss:// URL trusts the system roots, which do not
    // include the test CA.
    let (err, took) = refused(DistributedMutex::connect(&tls.url())).await;
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    assert!(took < CONNECT_LIMIT, "took {took:?}");

    // No plaintext fallback: nothing connected to the plain port.
    let connections = |info: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("total_connections_received")
    };
    let after = tls.server.cli(&["INFO", "stats"]);
    // The two INFO calls are the only plain connections (the second counts
    // itself).
    assert_eq!(connections(&after), connections(&before) + 1);
}

/// With `tls-auth-clients yes`: a client certificate signed by the CA
/// works; without one, `connect_tls` fails with `Config` within the connect
/// timeout.
#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let tls = TlsServer::start(true);
    let with_cert = trusting(&tls).client_cert(tls.file("client.pem"), tls.file("client.key"));
    let mutex = builder(&tls, with_cert).await.build().unwrap();
    let guard = mutex.lock("tls:mutual").await.unwrap();
    assert_eq!(tls.server.cli(&["GET", "tls:mutual"]), guard.token());
    guard.release().await.unwrap();
    mutex.shutdown().await;

    let (err, took) = refused(Builder::connect_tls(&tls.url(), trusting(&tls))).await;
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    assert!(took < CONNECT_LIMIT, "took {took:?}");
}

/// A plain `redis://` URL against the TLS port: a clear error within the
/// connect timeout, not a hang.
#[tokio::test]
async fn a_plain_url_against_the_tls_port_is_a_clear_error() {
    let tls = TlsServer::start(false);
    let url = format!("redis://127.0.0.1:{}", tls.tls_port);
    let (err, took) = refused(DistributedMutex::connect(&url)).await;
    eprintln!("plain URL against the TLS port ({took:?}): {err}");
    assert!(took < CONNECT_LIMIT, "took {took:?}");
    assert!(
        err.to_string().contains("rediss://"),
        "the error does not point at TLS: {err}"
    );
}

/// Certificate files that are missing or not PEM: `Config` naming the file,
/// before anything is sent.
#[tokio::test]
async fn unreadable_certificate_files_are_config_errors_naming_them() {
    let tls = TlsServer::start(false);
    let missing = tls.file("no-such-ca.pem");
    let (err, _) = refused(Builder::connect_tls(
        &tls.url(),
        Tls::new().ca_file(&missing),
    ))
    .await;
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-ca.pem"), "{err}");

    // A key file given as the certificate.
    let not_a_cert = trusting(&tls).client_cert(tls.file("client.key"), tls.file("client.key"));
    let (err, _) = refused(Builder::connect_tls(&tls.url(), not_a_cert)).await;
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    assert!(err.to_string().contains("client.key"), "{err}");
}
