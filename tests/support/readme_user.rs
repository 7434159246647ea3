//! The README's "ACL user" (`ACL SETUSER locker ...`, read from the README
//! itself, so the tests follow what users are told), on every node of a
//! test cluster, with or without some of its rights.

use crate::support::cluster::RedisCluster;

/// The README, whose `ACL SETUSER locker ...` line these tests run.
const README: &str = include_str!("../../README.md");
/// The key prefix the README's user may use (`~app:*`).
pub const ACL_PREFIX: &str = "app:";
/// The README user's password (`>CHANGE-ME`).
pub const ACL_PASSWORD: &str = "CHANGE-ME";
/// The rights taken out of the README's line so that only plain pub/sub
/// can work: without `+info` fred cannot read the server's version, and
/// without the sharded pub/sub rights nothing but plain pub/sub can.
pub const PLAIN_ONLY_WITHOUT: &[&str] = &[
    "+info",
    "+spublish",
    "+ssubscribe",
    "+sunsubscribe",
    "+pubsub|shardnumsub",
];

/// Creates on every node of `cluster` the user `name` with the README's
/// rules less the rules in `without`.
pub fn create_user(cluster: &RedisCluster, name: &str, without: &[&str]) {
    let line = README
        .lines()
        .find(|l| l.starts_with("ACL SETUSER locker "))
        .expect("the README gives an `ACL SETUSER locker ...` line");
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut args = vec!["ACL", "SETUSER", name];
    args.extend(words[3..].iter().copied().filter(|w| !without.contains(w)));
    for node in cluster.nodes() {
        assert_eq!(node.cli(&args), "OK", "port {}: {args:?}", node.port());
    }
}

/// The cluster's URL with `user`'s credentials.
pub fn cluster_url_as(cluster: &RedisCluster, user: &str) -> String {
    let url = cluster.url();
    let rest = url
        .strip_prefix("redis-cluster://")
        .expect("a redis-cluster:// URL");
    format!("redis-cluster://{user}:{ACL_PASSWORD}@{rest}")
}
