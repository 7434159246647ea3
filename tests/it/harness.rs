//! Self-tests of the `tests/support` fixture (private redis-server processes).

use std::net::TcpStream;
use std::time::{Duration, Instant};

use fred::prelude::*;

use crate::support::RedisServer;

#[tokio::test]
async fn a_server_is_private_and_stops_when_dropped() {
    let server = RedisServer::start();
    let port = server.port();
    assert_ne!(port, 6379, "must never use the default port");
    assert_eq!(server.url(), format!("redis://127.0.0.1:{port}"));

    let client = server.client().await;
    let _: () = client
        .set("harness:key", "hello", None, None, false)
        .await
        .unwrap();
    let value: Option<String> = client.get("harness:key").await.unwrap();
    assert_eq!(value.as_deref(), Some("hello"));
    // redis-cli sees the same server.
    assert_eq!(server.cli(&["GET", "harness:key"]), "hello");

    // A second server is a different, empty instance.
    let other = RedisServer::start();
    assert_ne!(other.port(), port);
    assert_eq!(other.cli(&["EXISTS", "harness:key"]), "0");

    client.quit().await.unwrap();
    drop(server);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "server still listening on {port} after drop"
    );
}

#[tokio::test]
async fn a_restart_loses_the_data_and_a_client_reconnects() {
    let mut server = RedisServer::start();
    let port = server.port();
    let client = server.client().await;
    let _: () = client
        .set("harness:key", "before", None, None, false)
        .await
        .unwrap();

    server.restart();
    assert_eq!(server.port(), port, "restart must reuse the port");

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_millis(500),
            client.get::<Option<String>, _>("harness:key"),
        )
        .await;
        match attempt {
            Ok(Ok(value)) => {
                assert_eq!(value, None, "data must be lost on restart");
                break;
            }
            other => {
                assert!(
                    Instant::now() < deadline,
                    "client did not reconnect after restart: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // The connection is usable for writes again too.
    let _: () = client
        .set("harness:key", "after", None, None, false)
        .await
        .unwrap();
    assert_eq!(server.cli(&["GET", "harness:key"]), "after");

    // kill is idempotent; restart from the killed state works as well.
    server.kill();
    server.kill();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    server.restart();
    assert_eq!(server.cli(&["PING"]), "PONG");
    let _ = client.quit().await;
}

#[tokio::test]
async fn a_paused_server_answers_nothing_until_resumed() {
    let server = RedisServer::start();
    let client = server.client().await;
    let _: () = client
        .set("harness:key", "v", None, None, false)
        .await
        .unwrap();

    server.pause();
    let started = Instant::now();
    let paused = tokio::time::timeout(
        Duration::from_millis(300),
        client.get::<Option<String>, _>("harness:key"),
    )
    .await;
    assert!(
        paused.is_err(),
        "GET against a paused server should time out, got {paused:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));

    server.resume();
    let resumed = tokio::time::timeout(
        Duration::from_secs(2),
        client.get::<Option<String>, _>("harness:key"),
    )
    .await
    .expect("GET after resume timed out")
    .expect("GET after resume failed");
    assert_eq!(resumed.as_deref(), Some("v"));

    // Dropping a paused server must not hang or leak it.
    server.pause();
    let port = server.port();
    drop(server);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    let _ = client.quit().await;
}
