//! The acquire-all script (`acquire_all.lua`) of multi-key locks (`multi/`).

use std::sync::LazyLock;
use std::time::Duration;

use fred::clients::Client;
use fred::types::scripts::Script;
use fred::types::Value;

use crate::policy::error::Error;
use crate::protocol::confirm::MinReplicas;

use super::*;

pub(super) static ACQUIRE_ALL: LazyLock<Script> =
    LazyLock::new(|| Script::from_lua(lua!("acquire_all")));

/// What the acquire-all script answered for one group of keys (one slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcquiredAll {
    /// Every key of the group holds the caller's token now.
    Yes,
    /// The key at this index (into the group) is held by someone else, with
    /// this remaining lease (`None`: no expiry); nothing was written.
    Busy {
        index: usize,
        pttl: Option<Duration>,
    },
    /// The key at this index holds a value of another type; nothing was
    /// written.
    WrongType { index: usize },
}

/// `SET key token PX ttl` for every key of `keys` (one cluster slot, no
/// duplicates) when none is held by another token, else nothing: one
/// atomic script call. Idempotent for `token`.
pub(crate) async fn acquire_all(
    client: &Client,
    keys: &[&str],
    token: &str,
    ttl_ms: u64,
    timeout: Duration,
) -> Result<AcquiredAll, Error> {
    let first = keys.first().copied().unwrap_or("");
    let args = vec![Value::from(token), Value::from(ttl_ms as i64)];
    let script_keys: Vec<&str> = keys.to_vec();
    let reply: Value = run(client, &ACQUIRE_ALL, first, script_keys, args, timeout).await?;
    let reply = checked(reply, token).ok_or_else(|| mismatched(first, "acquire-all"))?;
    parse_acquired_all(first, keys.len(), &reply)
}

/// [`acquire_all`] with its writes confirmed by `WAIT` (see [`confirmed`]):
/// the answer, and how many replicas acknowledged it.
pub(crate) async fn acquire_all_confirmed(
    client: &Client,
    keys: &[&str],
    token: &str,
    ttl_ms: u64,
    wait: MinReplicas,
    timeout: Duration,
) -> Result<(AcquiredAll, u32), Error> {
    let first = keys.first().copied().unwrap_or("");
    let args = vec![Value::from(token), Value::from(ttl_ms as i64)];
    let script_keys: Vec<Value> = keys.iter().map(|k| Value::from(*k)).collect();
    let (reply, acked): (Value, u32) = confirmed(
        client,
        &ACQUIRE_ALL,
        first,
        script_keys,
        args,
        wait,
        timeout,
    )
    .await?;
    let reply = checked(reply, token).ok_or_else(|| mismatched(first, "acquire-all"))?;
    Ok((parse_acquired_all(first, keys.len(), &reply)?, acked))
}

pub(super) fn parse_acquired_all(
    first: &str,
    len: usize,
    reply: &[i64],
) -> Result<AcquiredAll, Error> {
    let index = |i: i64| {
        usize::try_from(i)
            .ok()
            .filter(|&i| (1..=len).contains(&i))
            .map(|i| i - 1)
    };
    match *reply {
        [1] => Ok(AcquiredAll::Yes),
        [0, i, pttl] if index(i).is_some() => {
            let pttl = match pttl {
                p if p >= 0 => Some(Duration::from_millis(p as u64)),
                // Vanished between GET and PTTL: try again at once.
                -2 => Some(Duration::ZERO),
                _ => None,
            };
            Ok(AcquiredAll::Busy {
                index: index(i).unwrap_or(0),
                pttl,
            })
        }
        [2, i] if index(i).is_some() => Ok(AcquiredAll::WrongType {
            index: index(i).unwrap_or(0),
        }),
        _ => Err(unexpected(first, "acquire-all", reply)),
    }
}

#[cfg(test)]
mod acquire_all_tests {
    use super::*;

    #[test]
    fn acquire_all_replies_are_parsed_or_refused() {
        let parse = |reply: &[i64]| parse_acquired_all("k", 3, reply);
        assert_eq!(parse(&[1]).unwrap(), AcquiredAll::Yes);
        assert_eq!(
            parse(&[0, 2, 150]).unwrap(),
            AcquiredAll::Busy {
                index: 1,
                pttl: Some(Duration::from_millis(150))
            }
        );
        assert_eq!(
            parse(&[0, 3, -1]).unwrap(),
            AcquiredAll::Busy {
                index: 2,
                pttl: None
            }
        );
        assert_eq!(
            parse(&[0, 1, -2]).unwrap(),
            AcquiredAll::Busy {
                index: 0,
                pttl: Some(Duration::ZERO)
            }
        );
        assert_eq!(parse(&[2, 3]).unwrap(), AcquiredAll::WrongType { index: 2 });
        for bad in [&[][..], &[0, 0, 5], &[0, 4, 5], &[2, 0], &[1, 1], &[7]] {
            assert!(matches!(parse(bad), Err(Error::Redis { .. })), "{bad:?}");
        }
    }
}
