//! Typed wrappers over the Lua scripts in `src/scripts/*.lua`, and the plain
//! `SET NX` of a first attempt.
//!
//! Every script takes its keys through `KEYS`, so it runs on Redis Cluster.
//! Scripts are sent with `EVALSHA` and loaded again on `NOSCRIPT` (after a
//! restart, a failover or `SCRIPT FLUSH`), on the node that answered it
//! only: never with a command for every cluster node (see [`load`]). Every
//! call is bounded by the command timeout: by fred's own timer when the
//! client has the same one, else by `tokio::time::timeout` here; a timeout
//! is always [`Error::Timeout`], whichever timer fired.

use std::sync::LazyLock;
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::scripts::Script;
use fred::types::{ClientState, FromValue, Key, MultipleKeys, Value};

use crate::background::{revive_client, router_gone};
use crate::channel::{PubSub, ReleaseChannel};
use crate::confirm::MinReplicas;
use crate::error::Error;
use crate::keys::LockKeys;

/// The text of `src/scripts/<name>.lua`, with `common.lua` (the helpers
/// helper every script uses) put before it.
macro_rules! lua {
    ($name:literal) => {
        concat!(
            include_str!("scripts/common.lua"),
            include_str!(concat!("scripts/", $name, ".lua"))
        )
    };
}

static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::from_lua(lua!("acquire")));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::from_lua(lua!("release")));
static EXTEND: LazyLock<Script> = LazyLock::new(|| Script::from_lua(lua!("extend")));
/// `extend.lua` declared to touch keys of several cluster slots (Redis 7.0+,
/// Valkey), on the node that serves them all, the keys passed as arguments
/// by `cross_slot.lua` (see `route.rs`). `allow-oom` keeps what a script
/// without flags may do: renew under `maxmemory` (it adds nothing).
static EXTEND_CROSS_SLOT: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(concat!(
        "#!lua flags=allow-cross-slot-keys,allow-oom\n",
        include_str!("scripts/cross_slot.lua"),
        lua!("extend")
    ))
});

/// What the acquire script answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// The caller holds the lock (with its fencing token, when asked for).
    Yes { fencing_token: Option<u64> },
    /// Someone else holds it; `pttl` is their remaining lease, `None` when
    /// the key has no expiry (set by something other than a lock client).
    No { pttl: Option<Duration> },
    /// Someone else holds it, and the caller joined the queue.
    Queued,
}

/// What a token-checked command (release, extend, renew) found for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compared {
    /// The key held the caller's token, and the command did its work.
    Held,
    /// The key was gone.
    Missing,
    /// The key holds something else (another token, or a value of another
    /// type); it was left untouched.
    Replaced,
}

impl Compared {
    pub(crate) fn from_reply(n: i64) -> Self {
        match n {
            1 => Compared::Held,
            0 => Compared::Missing,
            _ => Compared::Replaced,
        }
    }
}

/// Turns a client error into the crate's, noticing a client whose
/// connection task has gone or that was closed.
fn failed(client: &Client, key: &str, error: fred::error::Error, timeout: Duration) -> Error {
    if router_gone(&error) {
        // Transient: the client is connected again on this runtime.
        revive_client(client);
        return Error::Unavailable {
            key: key.to_owned(),
            source: error,
        };
    }
    if client_closed(client) {
        return Error::Shutdown {
            key: key.to_owned(),
        };
    }
    // fred's own timer may be the shorter one: report the one that fired.
    let own = client.inner().default_command_timeout();
    let after = if own.is_zero() {
        timeout
    } else {
        own.min(timeout)
    };
    Error::from_redis(key, error, after)
}

/// `true` once a client that was connected has been closed (`quit`): its
/// connection task has handed back its command queue and nothing reads it
/// any more. (While the task runs it owns the queue, also during a
/// reconnect; a client never connected has no server version.)
pub(crate) fn client_closed(client: &Client) -> bool {
    matches!(
        client.state(),
        ClientState::Disconnecting | ClientState::Disconnected
    ) && client.inner().has_command_rx()
        && client.server_version().is_some()
}

/// Runs `call`, bounded by `timeout`: by the client's own timer when it has
/// the same command timeout (a client made by `connect`), else by one here.
///
/// The command's future is boxed at once: a client's command futures are
/// large (tens of KB with TLS), and held inline they would make every
/// future that awaits a command (`lock`, `lock_all`, a campaign) as large,
/// enough to overflow a 2 MiB thread stack in a debug build.
fn bounded<'a, R: 'a, F>(
    client: &'a Client,
    key: &'a str,
    timeout: Duration,
    call: F,
) -> impl std::future::Future<Output = Result<R, Error>> + 'a
where
    F: std::future::Future<Output = Result<R, fred::error::Error>> + 'a,
{
    bounded_boxed(client, key, timeout, Box::pin(call))
}

async fn bounded_boxed<R>(
    client: &Client,
    key: &str,
    timeout: Duration,
    call: std::pin::Pin<Box<impl std::future::Future<Output = Result<R, fred::error::Error>>>>,
) -> Result<R, Error> {
    if client.inner().default_command_timeout() == timeout {
        return call.await.map_err(|e| failed(client, key, e, timeout));
    }
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) => Err(failed(client, key, e, timeout)),
        Err(_) if client_closed(client) => Err(Error::Shutdown {
            key: key.to_owned(),
        }),
        Err(_) => Err(Error::Timeout {
            key: key.to_owned(),
            after: timeout,
        }),
    }
}

/// Runs one script call, bounded by `timeout`; on `NOSCRIPT` the script is
/// loaded on the node that said so (see [`load`]) and sent once more.
pub(crate) async fn run<R: FromValue>(
    client: &Client,
    script: &Script,
    key: &str,
    keys: impl Into<MultipleKeys> + Send,
    args: Vec<Value>,
    timeout: Duration,
) -> Result<R, Error> {
    use fred::interfaces::LuaInterface;
    let keys: Vec<Key> = keys.into().inner();
    let slot = keys
        .first()
        .map_or(0, |k| fred::util::redis_keyslot(k.as_bytes()));
    let call = async {
        let sha = script.sha1().clone();
        match client
            .evalsha(sha.clone(), keys.clone(), args.clone())
            .await
        {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                load(client, script, slot).await?;
                client.evalsha(sha, keys, args).await
            }
            other => other,
        }
    };
    bounded(client, key, timeout, call).await
}

/// `SCRIPT LOAD` of `script` on the node that serves `slot` (the node that
/// answered `NOSCRIPT`).
///
/// Not fred's `Script::load`: on a cluster that loads the script on every
/// node, and fred 10 sends a command for every node only once every node
/// has answered every command in flight to it, all in its one connection
/// task. One stalled master then holds up every command to every node until
/// it answers: the healthy masters' leases ran out while one was stalled.
///
/// On a cluster the script's other form (per slot or cross-slot, see
/// `route.rs`) is loaded with it: a call sent before a fault (a black-holed
/// connection) and delivered after it then runs, whichever form it was,
/// instead of meeting `NOSCRIPT` (a release that never happens leaves the
/// lock to its TTL). Servers before 7.0 never get the cross-slot form.
async fn load(client: &Client, script: &Script, slot: u16) -> Result<(), fred::error::Error> {
    use fred::types::{ClusterHash, CustomCommand};
    let load_one = |script: &Script| {
        let lua = script.lua().cloned().unwrap_or_default();
        let command = CustomCommand::new_static("SCRIPT", ClusterHash::Custom(slot), false);
        client.custom::<Value, _>(command, vec![Value::from("LOAD"), Value::from(lua)])
    };
    let both = client.is_clustered() && crate::route::cross_slot_scripts(client);
    let other = both.then(|| other_form(script)).flatten();
    match other {
        // Both at once: one round trip.
        Some(other) => {
            let (loaded, _) = tokio::join!(load_one(script), load_one(other));
            loaded.map(|_| ())
        }
        None => load_one(script).await.map(|_| ()),
    }
}

/// The other form of a script that has two (per slot and cross-slot).
fn other_form(script: &Script) -> Option<&'static Script> {
    let pairs: [(&Script, &'static Script); 4] = [
        (&RELEASE, &RELEASE_CROSS_SLOT),
        (&RELEASE_CROSS_SLOT, &RELEASE),
        (&EXTEND, &EXTEND_CROSS_SLOT),
        (&EXTEND_CROSS_SLOT, &EXTEND),
    ];
    pairs
        .into_iter()
        .find(|(one, _)| one.sha1() == script.sha1())
        .map(|(_, other)| other)
}

pub(crate) fn binary_key(bytes: Vec<u8>) -> Key {
    Key::from(bytes.into_boxed_slice())
}

/// The numbers of a script reply that ends with `echo` (the scripts end
/// every reply with the call's token); `None` for anything else: a reply
/// to another command, which fred 10.1 can hand over while it follows an
/// `ASK` redirection with other commands in flight to the same node.
pub(crate) fn checked(reply: Value, echo: &str) -> Option<Vec<i64>> {
    let Value::Array(mut items) = reply else {
        return None;
    };
    let last = items.pop()?;
    if last.as_str().as_deref() != Some(echo) {
        return None;
    }
    items
        .into_iter()
        .map(|v| match v {
            Value::Integer(n) => Some(n),
            _ => None,
        })
        .collect()
}

/// The reply was not this command's (see [`checked`]): what the command did
/// is unknown, as after a lost reply.
pub(crate) fn mismatched(key: &str, script: &str) -> Error {
    Error::Unavailable {
        key: key.to_owned(),
        source: fred::error::Error::new(
            fred::error::ErrorKind::Protocol,
            format!(
                "the reply to the {script} script was another command's (the Redis client \
                 matched replies to the wrong commands, as fred 10.1 can while it follows an \
                 ASK redirection); its outcome is unknown"
            ),
        ),
    }
}

pub(crate) fn unexpected(key: &str, script: &str, reply: impl std::fmt::Debug) -> Error {
    Error::Redis {
        key: key.to_owned(),
        source: fred::error::Error::new(
            fred::error::ErrorKind::Protocol,
            format!("unexpected reply from the {script} script: {reply:?}"),
        ),
    }
}

/// How an attempt relates to the lock's wait queue (see `queue.rs`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Queueing<'a> {
    /// Attempt only (`try_lock`, a waiter that polls without notifications).
    No,
    /// Attempt, and join the queue's tail when the lock is held. Sent once,
    /// never re-sent after a reconnect (a re-send would queue twice). With
    /// `holder_ttl`, the answer says how long the holder's lease has left
    /// (one command more in the script).
    Join {
        spot: &'a QueueSpot,
        holder_ttl: bool,
    },
    /// Attempt, and join the queue's tail unless already in it. Sent once
    /// too: a poll re-sent after the acquisition ended (taken by hand-off
    /// and released meanwhile) could take the key with a token no one
    /// releases.
    Poll(&'a QueueSpot),
}

/// A waiter's entry in a lock's wait queue.
#[derive(Debug, Clone)]
pub(crate) struct QueueSpot {
    /// `1|<mutex id>|<claim ms>|<f or ->|<token>` (`f`: the release draws the
    /// waiter's fencing token when it hands the lock over).
    pub(crate) member: String,
}

impl Queueing<'_> {
    fn mode(&self) -> &'static str {
        match self {
            Queueing::No => "a",
            Queueing::Join {
                holder_ttl: false, ..
            } => "q",
            Queueing::Join {
                holder_ttl: true, ..
            } => "j",
            Queueing::Poll(_) => "p",
        }
    }

    fn spot(&self) -> Option<&QueueSpot> {
        match self {
            Queueing::No => None,
            Queueing::Join { spot, .. } | Queueing::Poll(spot) => Some(spot),
        }
    }
}

/// What an attempt asks for, beyond its lock: its token, lease, fencing,
/// queueing, and the pub/sub mode of the hand-offs it may make.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask<'a> {
    pub(crate) token: &'a str,
    pub(crate) ttl_ms: u64,
    pub(crate) fencing: bool,
    pub(crate) queueing: Queueing<'a>,
    pub(crate) pubsub: PubSub,
}

/// The acquire script's keys and arguments.
fn acquire_call(keys: &LockKeys, ask: Ask<'_>) -> (Vec<Key>, Vec<Value>) {
    let Ask {
        token,
        ttl_ms,
        fencing,
        queueing,
        pubsub,
    } = ask;
    let spot = queueing.spot();
    let script_keys = vec![
        Key::from(keys.lock.as_str()),
        binary_key(keys.fence()),
        binary_key(keys.queue()),
    ];
    let args = vec![
        Value::from(token),
        Value::from(ttl_ms as i64),
        Value::from(if fencing { "1" } else { "" }),
        Value::from(queueing.mode()),
        Value::from(spot.map_or("", |s| s.member.as_str())),
        Value::from(pubsub.arg()),
    ];
    (script_keys, args)
}

/// `SET key token NX PX ttl`, idempotent for `token`, in the lock's queue
/// order (see `acquire.lua`); with fencing, also draws the next fencing
/// token from the lock's counter.
pub(crate) async fn acquire(
    client: &Client,
    keys: &LockKeys,
    ask: Ask<'_>,
    timeout: Duration,
) -> Result<Acquired, Error> {
    let key = keys.lock.as_str();
    let Ask { token, fencing, .. } = ask;
    let (script_keys, args) = acquire_call(keys, ask);
    let reply: Value = if !matches!(ask.queueing, Queueing::No) {
        let script_keys = script_keys.into_iter().map(Value::from).collect();
        run_once(client, &ACQUIRE, key, script_keys, args, timeout).await?
    } else {
        run(client, &ACQUIRE, key, script_keys, args, timeout).await?
    };
    let reply = checked(reply, token).ok_or_else(|| mismatched(key, "acquire"))?;
    parse_acquired(key, fencing, &reply)
}

/// The acquire script with its write confirmed by `WAIT` (see
/// [`confirmed`], which sends it once): the answer, and how many replicas
/// acknowledged it.
pub(crate) async fn acquire_confirmed(
    client: &Client,
    keys: &LockKeys,
    ask: Ask<'_>,
    wait: MinReplicas,
    timeout: Duration,
) -> Result<(Acquired, u32), Error> {
    let key = keys.lock.as_str();
    let Ask { token, fencing, .. } = ask;
    let (script_keys, args) = acquire_call(keys, ask);
    let script_keys = script_keys.into_iter().map(Value::from).collect();
    let (reply, acked): (Value, u32) =
        confirmed(client, &ACQUIRE, key, script_keys, args, wait, timeout).await?;
    let reply = checked(reply, token).ok_or_else(|| mismatched(key, "acquire"))?;
    Ok((parse_acquired(key, fencing, &reply)?, acked))
}

fn parse_acquired(key: &str, fencing: bool, reply: &[i64]) -> Result<Acquired, Error> {
    match reply {
        [1] if !fencing => Ok(Acquired::Yes {
            fencing_token: None,
        }),
        [1, fence] if fencing && *fence > 0 => Ok(Acquired::Yes {
            fencing_token: Some(*fence as u64),
        }),
        [0, pttl] if *pttl >= 0 => Ok(Acquired::No {
            pttl: Some(Duration::from_millis(*pttl as u64)),
        }),
        // -2: the key vanished between SET and PTTL: try again at once.
        [0, -2] => Ok(Acquired::No {
            pttl: Some(Duration::ZERO),
        }),
        [0, -3] => Ok(Acquired::Queued),
        [0, _] => Ok(Acquired::No { pttl: None }),
        other => Err(unexpected(key, "acquire", other)),
    }
}

/// The fast path of a first attempt: a plain `SET key token NX PX ttl`.
/// `true` when it set the key. `false` says only that the key exists (it may
/// be ours, if this command was re-sent after a reconnect): the acquire
/// script must then decide.
///
/// On a cluster, the acquire script instead: its reply names its token,
/// while `OK` could be any command's (fred 10.1 can hand a command another
/// one's reply while it follows an `ASK` redirection, during resharding).
pub(crate) async fn set_nx(
    client: &Client,
    keys: &LockKeys,
    ask: Ask<'_>,
    timeout: Duration,
) -> Result<bool, Error> {
    use fred::interfaces::KeysInterface;
    let Ask { token, ttl_ms, .. } = ask;
    if client.is_clustered() {
        let acquired = acquire(client, keys, ask, timeout).await?;
        return Ok(matches!(acquired, Acquired::Yes { .. }));
    }
    use fred::types::{Expiration, SetOptions};
    let key = keys.lock.as_str();
    let set = client.set::<Option<String>, _, _>(
        key,
        token,
        Some(Expiration::PX(ttl_ms as i64)),
        Some(SetOptions::NX),
        false,
    );
    Ok(bounded(client, key, timeout, set).await?.is_some())
}

/// One release: the lock, its token, and a queue member to remove first
/// (a waiter that gave up; empty for none).
pub(crate) type Releasing<'a> = (&'a LockKeys, &'a str, &'a str);

/// Compare-and-delete (or hand to the next queued waiter) for a batch of
/// releases, all in one cluster slot; one answer per entry, in order.
///
/// Sent once: fred does not re-send it after a reconnect. A re-send could
/// answer "gone" for a release that did delete the key (its reply lost), or
/// run after another holder took the key; with a single send, every answer
/// is the answer to this release, and a lost reply is a transient error
/// ("unknown"), never a wrong answer. A `MOVED` (nothing ran) is followed to
/// the slot's new owner. An `ASK` is not: fred 10.1 sends the command back
/// to the old owner, which answers `ASK` again until the redirections run
/// out (a transient error; the slot's move ends soon).
pub(crate) async fn release(
    client: &Client,
    entries: &[Releasing<'_>],
    pubsub: PubSub,
    timeout: Duration,
) -> Result<Vec<Compared>, Error> {
    let first = entries
        .first()
        .map_or("", |(keys, _, _)| keys.lock.as_str());
    let (script_keys, args) = release_call(entries, pubsub);
    let reply = run_once(client, &RELEASE, first, script_keys, args, timeout).await?;
    release_answers(first, entries, reply)
}

/// The keys and arguments of one release call.
fn release_call(entries: &[Releasing<'_>], pubsub: PubSub) -> (Vec<Value>, Vec<Value>) {
    let sharded = pubsub.sharded();
    let mut script_keys = Vec::with_capacity(entries.len() * 2);
    let mut args = Vec::with_capacity(2 + entries.len() * 3);
    args.push(Value::from(pubsub.arg()));
    args.push(Value::from(
        entries.first().map_or("", |(_, token, _)| *token),
    ));
    for (keys, token, leave) in entries {
        script_keys.push(Value::from(keys.lock.as_str()));
        script_keys.push(Value::from(binary_key(keys.queue())));
        // Plain channels (`<key>:released`) are derived by the script
        // itself; only shard channels, whose slot tag needs the client's
        // table, are sent.
        let channel = if sharded {
            ReleaseChannel::of(keys, true).name
        } else {
            String::new()
        };
        args.extend([
            Value::from(*token),
            Value::from(channel),
            Value::from(*leave),
        ]);
    }
    (script_keys, args)
}

/// The answers of a release call, one per entry.
fn release_answers(
    first: &str,
    entries: &[Releasing<'_>],
    reply: Value,
) -> Result<Vec<Compared>, Error> {
    let echo = entries.first().map_or("", |(_, token, _)| *token);
    let reply = checked(reply, echo).ok_or_else(|| mismatched(first, "release"))?;
    if reply.len() != entries.len() {
        return Err(unexpected(first, "release", reply));
    }
    Ok(reply.into_iter().map(Compared::from_reply).collect())
}

/// Runs one script call, sent once (never re-sent after a reconnect) yet
/// following cluster redirections, bounded by `timeout`.
///
/// fred applies per-command options to commands sent through
/// `ClientLike::custom`, but not to its Lua calls: EVALSHA is sent as one.
/// With `fail_fast`, a command whose connection closes under it (or is
/// down) is answered with the error, never written again, so every write
/// after the first is to a node that redirected it (MOVED, ASK: nothing
/// ran). It has one attempt more than the redirections it may follow: fred
/// 10 ends the client's connection task when an ASK meets a command with no
/// attempts left. On `NOSCRIPT` (nothing ran) the script is loaded (on that
/// node, see [`load`]) and sent once more.
async fn run_once(
    client: &Client,
    script: &Script,
    first: &str,
    keys: Vec<Value>,
    args: Vec<Value>,
    timeout: Duration,
) -> Result<Value, Error> {
    use fred::types::config::Options;
    let redirections = client.connection_config().max_redirections.max(1);
    let once = client.with_options(&Options {
        max_attempts: Some(redirections + 1),
        max_redirections: Some(redirections),
        fail_fast: true,
        ..Options::default()
    });
    let slot = fred::util::redis_keyslot(first.as_bytes());
    let mut rest = Vec::with_capacity(1 + keys.len() + args.len());
    rest.push(Value::from(keys.len() as i64));
    rest.extend(keys);
    rest.extend(args);
    let call = evalsha_reloading(client, &once, script, slot, rest);
    bounded(client, first, timeout, call).await
}

/// `EVALSHA <script's sha> rest...` through `once` to the node of `slot`;
/// on `NOSCRIPT` (nothing ran) the script is loaded on that node and sent
/// once more.
async fn evalsha_reloading(
    client: &Client,
    once: &fred::clients::WithOptions<Client>,
    script: &Script,
    slot: u16,
    rest: Vec<Value>,
) -> Result<Value, fred::error::Error> {
    use fred::types::{ClusterHash, CustomCommand};
    let send = || {
        let command = CustomCommand::new_static("EVALSHA", ClusterHash::Custom(slot), false);
        let mut call = Vec::with_capacity(1 + rest.len());
        call.push(Value::from(script.sha1().clone()));
        call.extend(rest.iter().cloned());
        once.custom::<Value, _>(command, call)
    };
    match send().await {
        Err(e) if e.details().starts_with("NOSCRIPT") => {
            load(client, script, slot).await?;
            send().await
        }
        other => other,
    }
}

/// Compare-and-pexpire for a batch of `(key, token, ttl_ms)`, all in one
/// cluster slot; one answer per entry, in order. A `renewal` never shortens
/// a lease (see `extend.lua`).
pub(crate) async fn extend(
    client: &Client,
    entries: &[(&str, &str, u64)],
    renewal: bool,
    timeout: Duration,
) -> Result<Vec<Compared>, Error> {
    let first = entries.first().map_or("", |e| e.0);
    let keys: Vec<&str> = entries.iter().map(|e| e.0).collect();
    let args = extend_args(entries, renewal);
    let reply: Value = run(client, &EXTEND, first, keys, args, timeout).await?;
    parse_extended(first, entries, reply)
}

/// A renewal ([`extend`] with `renewal`) of keys of several slots served
/// by one cluster node, in one call of the script declared cross-slot (only
/// the first key declared: Redis refuses declared keys of several slots
/// with `CROSSSLOT`, whatever the script's flags). Sent to the node fred's
/// slot table names for the first key's slot, and not redirected: a node
/// that does not serve every key of the call refuses it (`MOVED`, `ASK`, a
/// script error for a key it does not serve), and the caller renews those
/// slots one by one instead (see `route.rs`). On `NOSCRIPT` the script is
/// loaded on that node and sent once more.
pub(crate) async fn extend_cross_slot(
    client: &Client,
    entries: &[(&str, &str, u64)],
    timeout: Duration,
) -> Result<Vec<Compared>, Error> {
    let first = entries.first().map_or("", |e| e.0);
    let keys: Vec<Value> = entries.iter().map(|e| Value::from(e.0)).collect();
    let args = extend_args(entries, true);
    let call = (first, keys);
    let reply = run_cross_slot(client, &EXTEND_CROSS_SLOT, call, args, false, timeout).await?;
    parse_extended(first, entries, reply)
}

/// `release.lua` declared cross-slot, like [`EXTEND_CROSS_SLOT`], with
/// every key touched before anything is written (`cross_slot_check.lua`).
static RELEASE_CROSS_SLOT: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(concat!(
        "#!lua flags=allow-cross-slot-keys,allow-oom\n",
        include_str!("scripts/cross_slot.lua"),
        include_str!("scripts/cross_slot_check.lua"),
        lua!("release")
    ))
});

/// Whether `error` is a node's refusal of a cross-slot call before it ran
/// anything: a slot of the call is elsewhere or moving (`MOVED`, `ASK`,
/// neither followed, `TRYAGAIN`, `CROSSSLOT`, or a key the node does not
/// serve, met by `cross_slot_check.lua` before any write). Read from the
/// client's or the server's own error only (never from a text that names
/// a key), and never a reply matched to the wrong command (its outcome is
/// unknown).
pub(crate) fn refused_across_slots(error: &Error) -> bool {
    let source = match error {
        Error::Redis { source, .. } | Error::Unavailable { source, .. } => source,
        _ => return false,
    };
    let details = source.details();
    match source.kind() {
        fred::error::ErrorKind::Routing => details.starts_with("Too many redirections"),
        fred::error::ErrorKind::Protocol => false,
        _ => {
            ["MOVED ", "ASK ", "TRYAGAIN", "CROSSSLOT"]
                .iter()
                .any(|reply| details.starts_with(reply))
                // Met first by `cross_slot_check.lua`, before any write (every
                // other key of a release is in the slot of one checked).
                || details.contains("Script attempted to access a non local key")
        }
    }
}

/// One call of a cross-slot `script` (see `cross_slot.lua`) on the node
/// fred's slot table names for `first`'s slot: `keys` are passed as
/// arguments behind `first`, the only declared key. Not redirected; with
/// `once`, never re-sent after a reconnect either (as [`run_once`]). On
/// `NOSCRIPT` the script is loaded on that node and sent once more.
async fn run_cross_slot(
    client: &Client,
    script: &Script,
    (first, keys): (&str, Vec<Value>),
    args: Vec<Value>,
    once: bool,
    timeout: Duration,
) -> Result<Value, Error> {
    use fred::types::config::Options;
    let slot = fred::util::redis_keyslot(first.as_bytes());
    let once = client.with_options(&Options {
        max_redirections: Some(0),
        fail_fast: once,
        ..Options::default()
    });
    // One declared key (Redis refuses declared keys of several slots), the
    // others as arguments (see `cross_slot.lua`).
    let mut rest = Vec::with_capacity(3 + keys.len() + args.len());
    rest.extend([Value::from(1), Value::from(first)]);
    rest.push(Value::from(keys.len() as i64));
    rest.extend(keys);
    rest.extend(args);
    let call = evalsha_reloading(client, &once, script, slot, rest);
    bounded(client, first, timeout, call).await
}

/// [`release`] of entries in several slots of one cluster node, in one
/// call (Redis 7.0+). A call the node refuses ran nothing (see
/// [`refused_across_slots`]): the caller sends the entries per slot.
pub(crate) async fn release_cross_slot(
    client: &Client,
    entries: &[Releasing<'_>],
    pubsub: PubSub,
    timeout: Duration,
) -> Result<Vec<Compared>, Error> {
    let first = entries
        .first()
        .map_or("", |(keys, _, _)| keys.lock.as_str());
    let (script_keys, args) = release_call(entries, pubsub);
    let call = (first, script_keys);
    let reply = run_cross_slot(client, &RELEASE_CROSS_SLOT, call, args, true, timeout).await?;
    release_answers(first, entries, reply)
}

/// [`extend`] with its writes confirmed by `WAIT` (see [`confirmed`]): the
/// answers, and how many replicas acknowledged them.
pub(crate) async fn extend_confirmed(
    client: &Client,
    entries: &[(&str, &str, u64)],
    renewal: bool,
    wait: MinReplicas,
    timeout: Duration,
) -> Result<(Vec<Compared>, u32), Error> {
    let first = entries.first().map_or("", |e| e.0);
    let keys: Vec<Value> = entries.iter().map(|e| Value::from(e.0)).collect();
    let args = extend_args(entries, renewal);
    let (reply, acked): (Value, u32) =
        confirmed(client, &EXTEND, first, keys, args, wait, timeout).await?;
    Ok((parse_extended(first, entries, reply)?, acked))
}

fn extend_args(entries: &[(&str, &str, u64)], renewal: bool) -> Vec<Value> {
    let mut args = Vec::with_capacity(entries.len() * 2 + 1);
    for (_, token, ttl_ms) in entries {
        args.push(Value::from(*token));
        args.push(Value::from(*ttl_ms as i64));
    }
    if renewal {
        args.push(Value::from("r"));
    }
    args
}

fn parse_extended(
    first: &str,
    entries: &[(&str, &str, u64)],
    reply: Value,
) -> Result<Vec<Compared>, Error> {
    let echo = entries.first().map_or("", |e| e.1);
    let reply = checked(reply, echo).ok_or_else(|| mismatched(first, "extend"))?;
    if reply.len() != entries.len() {
        return Err(unexpected(first, "extend", reply));
    }
    Ok(reply.into_iter().map(Compared::from_reply).collect())
}

/// Runs `script` and confirms its writes with `WAIT`, on `client` (the
/// mutex's confirming connection, see `confirm.rs`): one round trip of four
/// commands pipelined on the connection to the node that serves `first`'s
/// slot, `CLIENT ID`, `EVALSHA`, `WAIT n timeout`, `CLIENT ID`. Returns the
/// script's answer and `WAIT`'s (how many replicas acknowledged every
/// write this connection made up to then, the script's included).
///
/// `WAIT` speaks for the connection it runs on, so the four must run on one
/// connection, in order:
/// * on a cluster they are pinned to one node (the one the client's slot
///   table names), and a redirection is not followed (`MOVED` fails the call
///   as [`Error::Unavailable`], and the client's slot table is refreshed);
/// * each is sent at most once (no re-send after a reconnect), and the two
///   `CLIENT ID`s must match: a connection replaced between the script and
///   `WAIT` (whose fresh connection would confirm nothing of ours) fails the
///   call as [`Error::Unavailable`].
///
/// Bounded by `timeout` plus the `WAIT` timeout.
async fn confirmed<R: FromValue>(
    client: &Client,
    script: &Script,
    first: &str,
    keys: Vec<Value>,
    args: Vec<Value>,
    wait: MinReplicas,
    timeout: Duration,
) -> Result<(R, u32), Error> {
    use fred::types::config::Options;
    use fred::types::{ClusterHash, CustomCommand};
    let slot = fred::util::redis_keyslot(first.as_bytes());
    let node = if client.is_clustered() {
        let owner = client
            .inner()
            .with_cluster_state(|state| Ok(state.get_server(slot).cloned()));
        match owner {
            Ok(Some(node)) => Some(node),
            _ => {
                return Err(Error::Unavailable {
                    key: first.to_owned(),
                    source: fred::error::Error::new(
                        fred::error::ErrorKind::Cluster,
                        format!("no cluster node is known to serve slot {slot}"),
                    ),
                })
            }
        }
    } else {
        None
    };
    let total = timeout + wait.timeout();
    let once = client.with_options(&Options {
        max_attempts: Some(1),
        max_redirections: Some(0),
        timeout: Some(total),
        cluster_node: node,
        ..Options::default()
    });
    let command =
        |name: &'static str| CustomCommand::new_static(name, ClusterHash::Custom(slot), false);
    let client_id = || once.custom::<i64, _>(command("CLIENT"), vec![Value::from("ID")]);
    // Boxed, as in `bounded`: four command futures held at once.
    let call = Box::pin(async {
        let mut loaded = false;
        loop {
            let mut evalsha = Vec::with_capacity(2 + keys.len() + args.len());
            evalsha.push(Value::from(script.sha1().clone()));
            evalsha.push(Value::from(keys.len() as i64));
            evalsha.extend(keys.iter().cloned());
            evalsha.extend(args.iter().cloned());
            // `join!` polls each future once, in order, before any answer
            // comes: each is handed to the client (which writes them to the
            // connection in that order) on its first poll.
            let (before, reply, acked, after) = tokio::join!(
                client_id(),
                once.custom::<R, _>(command("EVALSHA"), evalsha),
                once.custom::<i64, _>(
                    command("WAIT"),
                    vec![
                        Value::from(i64::from(wait.replicas)),
                        Value::from(wait.timeout_ms as i64),
                    ],
                ),
                client_id(),
            );
            let reply = match reply {
                Err(e) if !loaded && e.details().starts_with("NOSCRIPT") => {
                    // Nothing ran (a new master after a failover has an empty
                    // script cache): load the script and go again.
                    load(client, script, slot).await?;
                    loaded = true;
                    continue;
                }
                other => other?,
            };
            let (before, after, acked) = (before?, after?, acked?);
            if before != after {
                return Err(fred::error::Error::new(
                    fred::error::ErrorKind::IO,
                    "the connection was replaced between a write and its WAIT",
                ));
            }
            return Ok((reply, u32::try_from(acked.max(0)).unwrap_or(u32::MAX)));
        }
    });
    match tokio::time::timeout(total, call).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) if *e.kind() == fred::error::ErrorKind::Timeout => Err(Error::Timeout {
            key: first.to_owned(),
            after: total,
        }),
        Ok(Err(e)) => Err(failed(client, first, e, total)),
        Err(_) if client_closed(client) => Err(Error::Shutdown {
            key: first.to_owned(),
        }),
        Err(_) => Err(Error::Timeout {
            key: first.to_owned(),
            after: total,
        }),
    }
}

// ---- multi-key locks (`multi/`) ---------------------------------------------

static ACQUIRE_ALL: LazyLock<Script> = LazyLock::new(|| Script::from_lua(lua!("acquire_all")));

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

fn parse_acquired_all(first: &str, len: usize, reply: &[i64]) -> Result<AcquiredAll, Error> {
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

#[cfg(test)]
mod cross_slot_tests {
    use super::*;
    use fred::error::{Error as FredError, ErrorKind};

    fn unavailable(kind: ErrorKind, details: &'static str) -> Error {
        Error::Unavailable {
            key: "TASK:MOVED:1".into(),
            source: FredError::new(kind, details),
        }
    }

    #[test]
    fn only_a_refusal_before_anything_ran_counts() {
        let refused = |e: &Error| refused_across_slots(e);
        assert!(refused(&unavailable(
            ErrorKind::Routing,
            "Too many redirections."
        )));
        assert!(refused(&unavailable(
            ErrorKind::Unknown,
            "TRYAGAIN Multiple keys request during rehashing of slot"
        )));
        assert!(refused(&Error::Redis {
            key: "k".into(),
            source: FredError::new(
                ErrorKind::Unknown,
                "ERR Script attempted to access a non local key in a cluster node script: x"
            ),
        }));
        // A key named like a redirection, a timeout, a reply matched to the
        // wrong command (it mentions ASK): the outcome is unknown.
        assert!(!refused(&unavailable(ErrorKind::IO, "connection reset")));
        assert!(!refused(&Error::Timeout {
            key: "ASK".into(),
            after: Duration::from_secs(2),
        }));
        assert!(!refused(&unavailable(
            ErrorKind::Protocol,
            "the reply was another command's (while it follows an ASK redirection)"
        )));
    }
}
