//! The details of what `ls` lists: who holds it, since when, for how much
//! longer, who waits. A few reads per entity, with the rights of the
//! README's ACL user (`get`, `pttl`, `llen`, `zcount`, `zrange`, `hmget`).

use std::time::{Duration, SystemTime};

use distributed_mutex::Holder;
use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::{Key, Value};

use super::classify::Entity;

/// One row of the listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub kind: &'static str,
    pub name: String,
    /// The holder label (a lock), or the leader's value (an election).
    pub holder: Option<String>,
    pub token: Option<String>,
    pub since: Option<SystemTime>,
    pub ttl: Option<Duration>,
    pub waiting: Option<u64>,
    /// A short description for the table.
    pub detail: String,
    /// Kind-specific JSON fields, values already in JSON.
    pub extra: Vec<(&'static str, String)>,
}

impl Row {
    fn new(kind: &'static str, name: &str) -> Row {
        Row {
            kind,
            name: name.to_owned(),
            holder: None,
            token: None,
            since: None,
            ttl: None,
            waiting: None,
            detail: String::new(),
            extra: Vec::new(),
        }
    }
}

type Result<T> = std::result::Result<T, fred::error::Error>;

async fn call(client: &Client, command: &'static str, args: Vec<Value>) -> Result<Value> {
    client
        .custom(
            fred::types::CustomCommand::new_static(
                command,
                fred::types::ClusterHash::FirstKey,
                false,
            ),
            args,
        )
        .await
}

fn key(bytes: &[u8]) -> Value {
    Value::from(Key::from(bytes))
}

/// `LLEN` of an optional queue.
async fn queued(client: &Client, queue: Option<&Vec<u8>>) -> Result<u64> {
    match queue {
        Some(queue) => Ok(call(client, "LLEN", vec![key(queue)])
            .await?
            .as_u64()
            .unwrap_or(0)),
        None => Ok(0),
    }
}

/// Unexpired members of a sorted set scored by expiry (ms, Redis time).
async fn live(client: &Client, set: Option<&Vec<u8>>, now_ms: u64) -> Result<u64> {
    let Some(set) = set else { return Ok(0) };
    let args = vec![
        key(set),
        Value::from(format!("({now_ms}")),
        Value::from("+inf"),
    ];
    Ok(call(client, "ZCOUNT", args).await?.as_u64().unwrap_or(0))
}

/// How long the latest-expiring member of `set` has left.
async fn last_expiry(
    client: &Client,
    set: Option<&Vec<u8>>,
    now_ms: u64,
) -> Result<Option<Duration>> {
    let Some(set) = set else { return Ok(None) };
    let args = vec![
        key(set),
        Value::from(-1),
        Value::from(-1),
        Value::from("WITHSCORES"),
    ];
    let reply = call(client, "ZRANGE", args).await?;
    let score = match reply {
        Value::Array(items) => items.get(1).and_then(Value::as_f64),
        _ => None,
    };
    Ok(score
        .filter(|s| *s > now_ms as f64)
        .map(|s| Duration::from_millis(s as u64 - now_ms)))
}

/// The row of `entity`, or `None` when nothing of it is held now.
pub async fn row(client: &Client, entity: &Entity, now_ms: u64) -> Result<Option<Row>> {
    match entity {
        Entity::Lock {
            name,
            key: lock,
            queue,
        } => lock_row(client, name, lock, queue.as_ref()).await,
        Entity::Semaphore { name, set } => {
            let held = live(client, Some(set), now_ms).await?;
            if held == 0 {
                return Ok(None);
            }
            let mut row = Row::new("semaphore", name);
            row.ttl = last_expiry(client, Some(set), now_ms).await?;
            row.detail = format!("{held} permit(s) held");
            row.extra.push(("permits_held", held.to_string()));
            Ok(Some(row))
        }
        Entity::RwLock {
            name,
            readers,
            writer,
            intents,
        } => {
            let r = live(client, readers.as_ref(), now_ms).await?;
            let w = live(client, writer.as_ref(), now_ms).await?;
            if r == 0 && w == 0 {
                return Ok(None);
            }
            let i = live(client, intents.as_ref(), now_ms).await?;
            let mut row = Row::new("rwlock", name);
            let held_by = if w > 0 {
                writer.as_ref()
            } else {
                readers.as_ref()
            };
            row.ttl = last_expiry(client, held_by, now_ms).await?;
            row.waiting = Some(i);
            row.detail = if w > 0 {
                "writer".to_owned()
            } else {
                format!("{r} reader(s)")
            };
            row.extra.push(("readers", r.to_string()));
            row.extra.push(("writer", (w > 0).to_string()));
            row.extra.push(("waiting_writers", i.to_string()));
            Ok(Some(row))
        }
        Entity::Election {
            name,
            info,
            lock,
            queue,
        } => election_row(client, name, info, lock, queue.as_ref()).await,
    }
}

/// The lock's token and lease, or `None` when it is not held.
async fn held(client: &Client, lock: &[u8]) -> Result<Option<(String, Option<Duration>)>> {
    let token = call(client, "GET", vec![key(lock)]).await?;
    let Some(token) = token
        .as_bytes()
        .map(|b| String::from_utf8_lossy(b).into_owned())
    else {
        return Ok(None);
    };
    let pttl = call(client, "PTTL", vec![key(lock)])
        .await?
        .as_i64()
        .unwrap_or(-2);
    if pttl == -2 {
        return Ok(None);
    }
    Ok(Some((
        token,
        u64::try_from(pttl).ok().map(Duration::from_millis),
    )))
}

async fn lock_row(
    client: &Client,
    name: &str,
    lock: &[u8],
    queue: Option<&Vec<u8>>,
) -> Result<Option<Row>> {
    let Some((token, ttl)) = held(client, lock).await? else {
        return Ok(None);
    };
    let mut row = Row::new("lock", name);
    if let Some(holder) = Holder::from_token(&token) {
        row.holder = Some(holder.label);
        row.since = Some(holder.since);
    }
    row.token = Some(token);
    row.ttl = ttl;
    row.waiting = Some(queued(client, queue).await?);
    Ok(Some(row))
}

async fn election_row(
    client: &Client,
    name: &str,
    info: &[u8],
    lock: &[u8],
    queue: Option<&Vec<u8>>,
) -> Result<Option<Row>> {
    let Some((token, ttl)) = held(client, lock).await? else {
        return Ok(None);
    };
    let fields = ["token", "value", "term", "since"].map(Value::from);
    let mut args = vec![key(info)];
    args.extend(fields);
    let reply = call(client, "HMGET", args).await?;
    let Value::Array(values) = reply else {
        return Ok(None);
    };
    let text = |i: usize| values.get(i).and_then(Value::as_string);
    let mut row = Row::new("election", name);
    row.ttl = ttl;
    row.waiting = Some(queued(client, queue).await?);
    if text(0).as_deref() == Some(token.as_str()) {
        let term = text(2)
            .and_then(|t| t.parse::<u64>().ok())
            .map_or_else(|| "null".to_owned(), |t| t.to_string());
        row.holder = text(1);
        row.since = text(3)
            .and_then(|s| s.parse::<u64>().ok())
            .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
        row.detail = format!("term {term}");
        row.extra.push(("term", term));
    } else {
        row.detail = "taking over".to_owned();
    }
    row.token = Some(token);
    Ok(Some(row))
}
