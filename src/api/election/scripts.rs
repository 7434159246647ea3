//! Typed calls of the election's scripts (`claim.lua`, `leader.lua`,
//! `news.lua` beside this file). Each reply ends with the call's token or
//! a nonce, checked, as the lock's scripts do (`scripts::checked`).

use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use fred::clients::Client;
use fred::types::scripts::Script;
use fred::types::Value;

use super::leader::Leader;
use super::names::Names;
use crate::policy::error::Error;
use crate::protocol::scripts::{binary_key, mismatched, run, unexpected};

static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::from_lua(include_str!("claim.lua")));
static LEADER: LazyLock<Script> = LazyLock::new(|| Script::from_lua(include_str!("leader.lua")));
static NEWS: LazyLock<Script> = LazyLock::new(|| Script::from_lua(include_str!("news.lua")));
static FLOOR: LazyLock<Script> = LazyLock::new(|| Script::from_lua(include_str!("floor.lua")));

/// What a claim or proclamation writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Write {
    /// A new leader (token, value, term and since), whose term must be at
    /// least the floor its campaign raised the counter to.
    NewLeader { floor: u64 },
    /// A proclamation: the value only.
    Value,
}

/// What a claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claimed {
    Yes,
    /// The lock is not the caller's.
    NotHeld,
    /// The term is below the campaign's floor: the counter was lost.
    BelowFloor,
}

/// Where an election's news goes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    pub(crate) client: &'a Client,
    pub(crate) names: &'a Names,
    /// The election's name (errors name it).
    pub(crate) name: &'a str,
    pub(crate) sharded: bool,
    pub(crate) timeout: Duration,
}

impl Target<'_> {
    fn keys(&self) -> Vec<fred::types::Key> {
        vec![
            fred::types::Key::from(self.names.lock.lock.as_str()),
            binary_key(self.names.info.clone()),
        ]
    }

    fn mode(&self) -> &'static str {
        if self.sharded {
            "s"
        } else {
            "p"
        }
    }

    /// Writes the leader's value (and for a new leader its term and since)
    /// if `token` holds the election's lock; `true` when written.
    pub(crate) async fn claim(
        &self,
        token: &str,
        value: &str,
        term: u64,
        write: Write,
    ) -> Result<Claimed, Error> {
        let channel = self.names.news_channel(self.sharded).name;
        let floor = match write {
            Write::NewLeader { floor } => floor,
            Write::Value => 0,
        };
        let args = vec![
            Value::from(token),
            Value::from(value),
            Value::from(term.to_string()),
            Value::from(match write {
                Write::NewLeader { .. } => "new",
                Write::Value => "value",
            }),
            Value::from(channel),
            Value::from(self.mode()),
            Value::from(floor.to_string()),
        ];
        let reply: Value = run(
            self.client,
            &CLAIM,
            self.name,
            self.keys(),
            args,
            self.timeout,
        )
        .await?;
        match echoed(reply, token, self.name, "claim")?.as_slice() {
            [Value::Integer(1)] => Ok(Claimed::Yes),
            [Value::Integer(0)] => Ok(Claimed::NotHeld),
            [Value::Integer(2)] => Ok(Claimed::BelowFloor),
            other => Err(unexpected(self.name, "claim", other)),
        }
    }

    /// The current leader, or `None`.
    pub(crate) async fn leader(&self) -> Result<Option<Leader>, Error> {
        let nonce = uuid::Uuid::new_v4().to_string();
        let args = vec![Value::from(nonce.as_str())];
        let reply: Value = run(
            self.client,
            &LEADER,
            self.name,
            self.keys(),
            args,
            self.timeout,
        )
        .await?;
        let items = echoed(reply, &nonce, self.name, "leader")?;
        parse_leader(&items).ok_or_else(|| unexpected(self.name, "leader", items))
    }

    /// Raises the term counter to the server's clock (ms); returns that
    /// floor.
    pub(crate) async fn floor(&self) -> Result<u64, Error> {
        let nonce = uuid::Uuid::new_v4().to_string();
        let keys = vec![binary_key(self.names.lock.fence())];
        let args = vec![Value::from(nonce.as_str())];
        let reply: Value = run(self.client, &FLOOR, self.name, keys, args, self.timeout).await?;
        match echoed(reply, &nonce, self.name, "floor")?.as_slice() {
            [Value::Integer(floor)] if *floor > 0 => Ok(*floor as u64),
            other => Err(unexpected(self.name, "floor", other)),
        }
    }

    /// Announces that the leader resigned.
    pub(crate) async fn news(&self) -> Result<(), Error> {
        let nonce = uuid::Uuid::new_v4().to_string();
        let channel = self.names.news_channel(self.sharded).name;
        let args = vec![
            Value::from(channel),
            Value::from(self.mode()),
            Value::from(nonce.as_str()),
        ];
        let keys = vec![binary_key(self.names.info.clone())];
        let reply: Value = run(self.client, &NEWS, self.name, keys, args, self.timeout).await?;
        match echoed(reply, &nonce, self.name, "news")?.as_slice() {
            [Value::Integer(1)] => Ok(()),
            other => Err(unexpected(self.name, "news", other)),
        }
    }
}

/// The items of a reply that ends with `echo`, without it.
fn echoed(reply: Value, echo: &str, name: &str, script: &str) -> Result<Vec<Value>, Error> {
    let Value::Array(mut items) = reply else {
        return Err(mismatched(name, script));
    };
    match items.pop() {
        Some(last) if last.as_str().as_deref() == Some(echo) => Ok(items),
        _ => Err(mismatched(name, script)),
    }
}

/// `{1, pttl, value, term, since}` or `{0, pttl, last term}`.
fn parse_leader(items: &[Value]) -> Option<Option<Leader>> {
    match items {
        [Value::Integer(1), Value::Integer(pttl), value, term, since] => {
            let since_ms: u64 = since.as_str()?.parse().ok()?;
            Some(Some(Leader {
                value: value.as_str()?.into_owned(),
                term: term.as_str()?.parse().ok()?,
                lease_left: Duration::from_millis((*pttl).max(0) as u64),
                since: SystemTime::UNIX_EPOCH + Duration::from_millis(since_ms),
            }))
        }
        [Value::Integer(0), Value::Integer(_), _] => Some(None),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_replies_are_parsed_or_refused() {
        let held = [
            Value::Integer(1),
            Value::Integer(1500),
            Value::from("web-3"),
            Value::from("7"),
            Value::from("1700000000000"),
        ];
        let leader = parse_leader(&held).unwrap().unwrap();
        assert_eq!(leader.value, "web-3");
        assert_eq!(leader.term, 7);
        assert_eq!(leader.lease_left, Duration::from_millis(1500));
        let none = [Value::Integer(0), Value::Integer(-2), Value::from("")];
        assert_eq!(parse_leader(&none), Some(None));
        let bad_term = [
            Value::Integer(1),
            Value::Integer(1),
            Value::from("v"),
            Value::from("x"),
            Value::from("0"),
        ];
        assert_eq!(parse_leader(&bad_term), None);
        assert_eq!(parse_leader(&[Value::Integer(2)]), None);
    }
}
