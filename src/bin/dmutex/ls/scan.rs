//! SCAN of every key under the prefix: on one server, or on every master of
//! a cluster (`CLUSTER SLOTS` names them).

use fred::clients::Client;
use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::config::Server;
use fred::types::{ClusterHash, Value};

/// How many keys one SCAN call asks for.
const COUNT: u32 = 1000;

/// Every key matching `pattern`, from every master.
pub async fn keys(client: &Client, pattern: &str) -> Result<Vec<Vec<u8>>, fred::error::Error> {
    let mut keys = Vec::new();
    if client.is_clustered() {
        for master in masters(client).await? {
            scan_node(client, Some(master), pattern, &mut keys).await?;
        }
    } else {
        scan_node(client, None, pattern, &mut keys).await?;
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// The masters of the cluster, each once.
async fn masters(client: &Client) -> Result<Vec<Server>, fred::error::Error> {
    let command = fred::cmd!("CLUSTER", hash: ClusterHash::Random);
    let reply: Value = client.custom(command, vec!["SLOTS"]).await?;
    let mut servers: Vec<Server> = Vec::new();
    let Value::Array(ranges) = reply else {
        return Ok(servers);
    };
    for range in ranges {
        let Value::Array(parts) = range else { continue };
        let Some(Value::Array(master)) = parts.get(2) else {
            continue;
        };
        let (Some(host), Some(port)) = (
            master.first().and_then(Value::as_string),
            master.get(1).and_then(Value::as_i64),
        ) else {
            continue;
        };
        let server = Server::new(host, port as u16);
        if !servers.contains(&server) {
            servers.push(server);
        }
    }
    Ok(servers)
}

/// SCANs one node (the only one when `node` is `None`) to the end.
async fn scan_node(
    client: &Client,
    node: Option<Server>,
    pattern: &str,
    keys: &mut Vec<Vec<u8>>,
) -> Result<(), fred::error::Error> {
    let mut cursor = "0".to_owned();
    loop {
        let reply: Value = match &node {
            Some(server) => {
                let on = client.with_cluster_node(server.clone());
                on.scan_page(cursor.as_str(), pattern, Some(COUNT), None)
                    .await?
            }
            None => {
                client
                    .scan_page(cursor.as_str(), pattern, Some(COUNT), None)
                    .await?
            }
        };
        let (next, page) = page(reply)?;
        keys.extend(page);
        if next == "0" {
            return Ok(());
        }
        cursor = next;
    }
}

/// A SCAN reply: the next cursor and the keys.
fn page(reply: Value) -> Result<(String, Vec<Vec<u8>>), fred::error::Error> {
    let bad = || fred::error::Error::new(fred::error::ErrorKind::Protocol, "unexpected SCAN reply");
    let Value::Array(mut parts) = reply else {
        return Err(bad());
    };
    if parts.len() != 2 {
        return Err(bad());
    }
    let keys = parts.pop().ok_or_else(bad)?;
    let cursor = parts.pop().and_then(|c| c.as_string()).ok_or_else(bad)?;
    let Value::Array(keys) = keys else {
        return Err(bad());
    };
    let keys = keys
        .into_iter()
        .filter_map(|k| k.as_bytes().map(<[u8]>::to_vec))
        .collect();
    Ok((cursor, keys))
}
