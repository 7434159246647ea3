//! `dmutex ls [PATTERN] [--json]`: what is held under the key prefix:
//! locks, semaphores, read-write locks and elections, with holder, age,
//! TTL left and waiters.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the command: scan, classify, read, print |
//! | `scan.rs` | SCAN on the server, or on every master of a cluster |
//! | `classify.rs` | which entity each key belongs to; PATTERN |
//! | `inspect.rs` | each entity's holder, lease and waiters |
//! | `table.rs` | the table and the JSON lines |
//!
//! Exit 0 (also when nothing is held), 69 when Redis cannot be asked, 77
//! without the rights.

mod classify;
mod inspect;
mod scan;
mod table;

use std::time::{Duration, SystemTime};

use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::{ClusterHash, Value};

use crate::args::Global;
use crate::connect::connect;
use crate::exit::{self, Failure};
use crate::options::LsArgs;

pub async fn ls(global: &Global, args: LsArgs) -> u8 {
    let quiet = global.quiet;
    let mutex = match connect(global, |b| b).await {
        Ok(mutex) => mutex,
        Err(failure) => return failure.report(quiet),
    };
    let listed = list(mutex.client(), &global.key_prefix, &args.pattern).await;
    mutex.shutdown().await;
    let rows = match listed {
        Ok(rows) => rows,
        Err(e) => return failed(&e).report(quiet),
    };
    let now = SystemTime::now();
    if args.json {
        print!("{}", table::json_lines(&rows, now));
    } else {
        print!("{}", table::text(&rows, now));
        if rows.is_empty() && !quiet {
            eprintln!(
                "dmutex: nothing held under prefix {:?} matching {:?}",
                global.key_prefix, args.pattern
            );
        }
    }
    exit::OK
}

/// The rows of everything held under `prefix` whose name matches `pattern`.
async fn list(
    client: &Client,
    prefix: &str,
    pattern: &str,
) -> Result<Vec<inspect::Row>, fred::error::Error> {
    let keys = scan::keys(client, &classify::scan_pattern(prefix)).await?;
    let now_ms = server_ms(client).await?;
    let mut rows = Vec::new();
    for entity in classify::entities(prefix.as_bytes(), &keys) {
        if !classify::glob(pattern, entity.name()) {
            continue;
        }
        if let Some(row) = inspect::row(client, &entity, now_ms).await? {
            rows.push(row);
        }
    }
    Ok(rows)
}

/// The server's clock in milliseconds (`TIME`): semaphores and read-write
/// locks score their places by it.
async fn server_ms(client: &Client) -> Result<u64, fred::error::Error> {
    let command = fred::cmd!("TIME", hash: ClusterHash::Random);
    let reply: Value = client.custom(command, Vec::<Value>::new()).await?;
    let parts: Vec<u64> = match reply {
        Value::Array(parts) => parts.iter().filter_map(Value::as_u64).collect(),
        _ => Vec::new(),
    };
    match parts.as_slice() {
        [secs, micros] => Ok(secs * 1000 + micros / 1000),
        _ => Ok(SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as u64),
    }
}

fn failed(e: &fred::error::Error) -> Failure {
    let details = e.details();
    let code = if details.starts_with("NOPERM") || matches!(e.kind(), fred::error::ErrorKind::Auth)
    {
        exit::NOPERM
    } else {
        exit::UNAVAILABLE
    };
    Failure::error(code, format!("cannot list: {e}"))
}
