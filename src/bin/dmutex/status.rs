//! `dmutex status KEY [--json]`: whether the key is held, by which token,
//! for how much longer, and the fencing counter's value.
//!
//! Three reads in one round trip (a pipeline, not a transaction: `GET` and
//! `PTTL` of the lock key, `GET` of its fencing counter), with only the
//! rights the README's least-privilege ACL user has. Exit 0 when the key is
//! held, 1 when it is not (as `grep` does), 69 when Redis cannot be asked.

use std::time::Duration;

use distributed_mutex::Holder;

use fred::error::ErrorKind;
use fred::interfaces::KeysInterface;
use fred::types::{Key, Value};

use crate::args::{Global, StatusArgs};
use crate::clock;
use crate::connect::connect;
use crate::duration::human;
use crate::exit::{self, Failure};
use crate::json;

/// What the three reads found.
#[derive(Debug, PartialEq, Eq)]
struct Found {
    /// The lock key's value, when it exists.
    token: Option<String>,
    /// Its remaining lease; `None` when it has no expiry (not set by a lock
    /// client) or does not exist.
    ttl: Option<Duration>,
    /// The last fencing token drawn for the key, if any ever was.
    fencing_counter: Option<u64>,
}

impl Found {
    fn held(&self) -> bool {
        self.token.is_some()
    }
}

pub async fn status(global: &Global, args: StatusArgs) -> u8 {
    let quiet = global.quiet;
    let mutex = match connect(global, |b| b).await {
        Ok(mutex) => mutex,
        Err(failure) => return failure.report(quiet),
    };
    let redis_key = format!("{}{}", global.key_prefix, args.key);
    let fence = mutex.fencing_counter_key(&args.key);
    let found = read(mutex.client(), &redis_key, fence).await;
    let _ = fred::interfaces::ClientLike::quit(mutex.client()).await;
    mutex.shutdown().await;
    let found = match found {
        Ok(found) => found,
        Err(failure) => return failure.report(quiet),
    };
    if args.json {
        println!("{}", as_json(&args.key, &redis_key, &found));
    } else {
        print!("{}", as_text(&args.key, &redis_key, &found));
    }
    if found.held() {
        exit::OK
    } else {
        exit::NOT_HELD
    }
}

async fn read(
    client: &fred::clients::Client,
    redis_key: &str,
    fence: Vec<u8>,
) -> Result<Found, Failure> {
    let pipeline = client.pipeline();
    let fence = Key::from(fence.as_slice());
    let queued: Result<(), fred::error::Error> = async {
        pipeline.get::<(), _>(redis_key).await?;
        pipeline.pttl::<(), _>(redis_key).await?;
        pipeline.get::<(), _>(fence).await?;
        Ok(())
    }
    .await;
    queued.map_err(|e| failed(redis_key, &e))?;
    let mut replies = pipeline.try_all::<Value>().await.into_iter();
    let mut next = || match replies.next() {
        Some(reply) => reply.map_err(|e| failed(redis_key, &e)),
        None => Err(Failure::error(
            exit::UNAVAILABLE,
            "Redis did not answer every read",
        )),
    };
    let (token, pttl, counter) = (next()?, next()?, next()?);
    Ok(found(&token, &pttl, &counter))
}

/// Makes sense of the three replies.
fn found(token: &Value, pttl: &Value, counter: &Value) -> Found {
    let pttl = pttl.as_i64().unwrap_or(-2);
    let token = match token.as_bytes() {
        // Expired between the GET and the PTTL: not held.
        Some(_) if pttl == -2 => None,
        Some(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        None => None,
    };
    let ttl = match (&token, u64::try_from(pttl)) {
        (Some(_), Ok(ms)) => Some(Duration::from_millis(ms)),
        _ => None,
    };
    Found {
        token,
        ttl,
        fencing_counter: counter.as_u64(),
    }
}

/// A read that failed: the code a lock command would get for it.
fn failed(redis_key: &str, e: &fred::error::Error) -> Failure {
    let details = e.details();
    let code = if details.starts_with("WRONGTYPE") {
        return Failure::error(
            exit::DATAERR,
            format!("key `{redis_key}` holds a value that is not a lock ({details})"),
        );
    } else if details.starts_with("NOPERM") {
        exit::NOPERM
    } else {
        match e.kind() {
            ErrorKind::Auth => exit::NOPERM,
            _ => exit::UNAVAILABLE,
        }
    };
    Failure::error(code, format!("cannot read lock `{redis_key}`: {e}"))
}

fn as_text(key: &str, redis_key: &str, found: &Found) -> String {
    let mut out = format!("key:      {key}\n");
    if redis_key != key {
        out.push_str(&format!("lock key: {redis_key}\n"));
    }
    match &found.token {
        Some(token) => {
            out.push_str("held:     yes\n");
            out.push_str(&format!("token:    {token}\n"));
            if let Some(holder) = Holder::from_token(token) {
                out.push_str(&format!("holder:   {}\n", holder.label));
                out.push_str(&format!(
                    "since:    {} ({} ago, the holder's clock)\n",
                    clock::utc(holder.since),
                    human(clock::age(holder.since))
                ));
            }
            match found.ttl {
                Some(ttl) => out.push_str(&format!("ttl:      {} left\n", human(ttl))),
                None => out
                    .push_str("ttl:      none (the key has no expiry: not set by a lock client)\n"),
            }
        }
        None => out.push_str("held:     no\n"),
    }
    match found.fencing_counter {
        Some(n) => out.push_str(&format!("fencing:  {n} (the last fencing token drawn)\n")),
        None => out.push_str("fencing:  none (never taken with fencing)\n"),
    }
    out
}

/// The JSON object; `holder` and `since_ms` are there only when the token
/// carries a holder label.
fn as_json(key: &str, redis_key: &str, found: &Found) -> String {
    let holder = found
        .token
        .as_deref()
        .and_then(Holder::from_token)
        .map(|h| {
            format!(
                ",\"holder\":{},\"since_ms\":{}",
                json::string(&h.label),
                clock::unix_ms(h.since)
            )
        })
        .unwrap_or_default();
    format!(
        "{{\"key\":{},\"redis_key\":{},\"held\":{},\"token\":{},\"ttl_ms\":{}{holder},\"fencing_counter\":{}}}",
        json::string(key),
        json::string(redis_key),
        found.held(),
        json::or_null(found.token.as_deref(), json::string),
        json::or_null(found.ttl, |t| t.as_millis().to_string()),
        json::or_null(found.fencing_counter, |n| n.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Value {
        Value::String(text.into())
    }

    #[test]
    fn replies_make_a_status() {
        let held = found(&s("tok"), &Value::Integer(41_300), &s("12"));
        assert_eq!(
            held,
            Found {
                token: Some("tok".into()),
                ttl: Some(Duration::from_millis(41_300)),
                fencing_counter: Some(12),
            }
        );
        assert_eq!(
            as_json("k", "p:k", &held),
            r#"{"key":"k","redis_key":"p:k","held":true,"token":"tok","ttl_ms":41300,"fencing_counter":12}"#
        );
        let free = found(&Value::Null, &Value::Integer(-2), &Value::Null);
        assert!(!free.held());
        assert_eq!(
            as_json("k", "k", &free),
            r#"{"key":"k","redis_key":"k","held":false,"token":null,"ttl_ms":null,"fencing_counter":null}"#
        );
        assert!(as_text("k", "k", &free).contains("held:     no"));
        // Expired between the two reads.
        assert!(!found(&s("tok"), &Value::Integer(-2), &Value::Null).held());
        // No expiry: held, TTL unknown.
        let forever = found(&s("tok"), &Value::Integer(-1), &Value::Null);
        assert!(forever.held());
        assert_eq!(forever.ttl, None);
        assert!(as_text("k", "k", &forever).contains("no expiry"));
        // A labelled token: holder and since.
        let token = "0f8e1c52-6f8e-4b8e-9d4c-2a1b3c4d5e6f:1700000000000:web-3";
        let labelled = found(&s(token), &Value::Integer(5_000), &Value::Null);
        let text = as_text("k", "k", &labelled);
        assert!(text.contains("holder:   web-3\n"), "{text}");
        assert!(text.contains("since:    2023-11-14 22:13:20Z ("), "{text}");
        assert_eq!(
            as_json("k", "k", &labelled),
            format!(
                r#"{{"key":"k","redis_key":"k","held":true,"token":"{token}","ttl_ms":5000,"holder":"web-3","since_ms":1700000000000,"fencing_counter":null}}"#
            )
        );
    }
}
