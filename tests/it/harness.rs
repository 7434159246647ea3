//! Self-tests of the `tests/support` fixture (private redis-server processes).

use std::net::TcpStream;
use std::time::{Duration, Instant};

use fred::prelude::*;

use crate::support::cluster::RedisCluster;
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

#[tokio::test]
async fn a_cluster_has_three_masters_and_three_replicas_and_stops_when_dropped() {
    let cluster = RedisCluster::start();
    assert_eq!(
        cluster.states(),
        vec!["ok"; 6],
        "cluster_state of every node"
    );

    let roles = cluster.roles();
    assert_eq!(roles.len(), 6, "CLUSTER NODES: {roles:?}");
    let masters: Vec<u16> = roles
        .iter()
        .filter(|(_, role)| role == "master")
        .map(|(port, _)| *port)
        .collect();
    assert_eq!(roles.iter().filter(|(_, r)| r == "slave").count(), 3);
    let mut expected = cluster.masters();
    expected.sort();
    let mut masters_sorted = masters.clone();
    masters_sorted.sort();
    assert_eq!(masters_sorted, expected);
    for port in cluster.masters() {
        assert_ne!(port, 6379, "must never use the default port");
        assert!(port <= 55535, "bus port of {port} out of range");
    }

    // Slot ownership and key placement agree with what the nodes say.
    assert_eq!(cluster.master_for_slot(0), 0);
    assert_eq!(cluster.master_for_slot(16383), 2);
    let client = cluster.client().await;
    for i in 0..3 {
        let key = cluster.key_on_master(i, "harness:cluster:");
        assert_eq!(cluster.master_for_key(&key), i);
        let _: () = client.set(&key, "here", None, None, false).await.unwrap();
        // The master itself holds it (redis-cli without -c: no redirect).
        assert_eq!(cluster.master(i).cli(&["GET", &key]), "here", "{key}");
        for (j, port) in cluster.masters().into_iter().enumerate() {
            if j != i {
                let other = cluster.master(j).cli(&["GET", &key]);
                assert!(other.starts_with("MOVED"), "{key} on {port}: {other:?}");
            }
        }
    }
    client.quit().await.unwrap();

    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
    drop(cluster);
    for port in ports {
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "node still listening on {port} after drop"
        );
    }
}
