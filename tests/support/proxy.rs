//! A loopback TCP proxy between a client and a Redis server, for fault
//! injection: it passes traffic, adds latency, cuts connections or
//! black-holes traffic, switchable at run time.
//!
//! ```ignore
//! let proxy = Proxy::start(server.port());
//! let mutex = DistributedMutex::connect(&proxy.url()).await?;
//! proxy.set_mode(Mode::Latency(Duration::from_millis(100)));
//! proxy.set_mode(Mode::BlackHole);  // accept, read, never answer
//! proxy.set_mode(Mode::Pass);       // held traffic flows again
//! proxy.cut_all().await;            // close every live connection now
//! let fired = proxy.on_next(Point::Acquire, Action::CutAfterForward);
//! ```
//!
//! Modes apply to every connection, including ones made later:
//!
//! * [`Mode::Pass`]: bytes are forwarded as they arrive.
//! * [`Mode::Latency`]`(d)`: every chunk is held `d` after it was read, in
//!   each direction, so a round trip takes at least `2 d` longer.
//! * [`Mode::BlackHole`]: connections are accepted and read, but nothing is
//!   forwarded either way; what was read is held, in order, and flows when
//!   the mode changes again (a network partition that heals: TCP would
//!   retransmit). Cut the connections instead to lose it.
//!
//! Named fault points: the proxy parses the client-to-server byte stream
//! into RESP commands and recognises the lock's commands ([`Point`]); an
//! [`Action`] armed with [`Proxy::on_next`] is applied to the next command of
//! that point, on whichever connection it comes.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinHandle};

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward at once.
    Pass,
    /// Forward each chunk this long after it was read, in both directions.
    Latency(Duration),
    /// Accept and read, forward nothing (held until the mode changes).
    BlackHole,
}

/// A lock command the proxy recognises in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Point {
    /// Any acquisition command: the acquire script (`EVALSHA`/`EVAL`), or a
    /// plain `SET ... NX` (a fast path for a first attempt).
    Acquire,
    /// The acquire script only (with the `SET NX` fast path: an attempt on a
    /// busy key, a retry, or an acquisition with fencing).
    AcquireScript,
    /// The release script.
    Release,
    /// The extend script: `guard.extend` and automatic renewal.
    Extend,
    /// `SUBSCRIBE` to a handoff channel (`{T}:handoff:<id>:<key>`) or a
    /// `<key>:released` channel: a waiter starting to wait for messages.
    Subscribe,
}

impl Point {
    fn matches(self, command: Point) -> bool {
        self == command || (self == Point::Acquire && command == Point::AcquireScript)
    }
}

/// What to do to the connection carrying the next command of a [`Point`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Close the connection without forwarding the command: it never runs.
    CutBeforeForward,
    /// Forward the command, let Redis run it (wait for its reply to come
    /// back), drop the reply and close the connection: the command ran and
    /// the client does not know. (Aimed at a script that Redis has not
    /// loaded yet, it hits the `EVALSHA` that gets NOSCRIPT: load the
    /// scripts first to hit the call that runs one.)
    CutAfterForward,
    /// Switch the whole proxy to [`Mode::BlackHole`] just before forwarding
    /// the command: it, and everything after it, is held.
    BlackHole,
}

/// The SHA1s of the library's scripts, as sent by `EVALSHA`.
static SHAS: LazyLock<[(String, Point); 3]> = LazyLock::new(|| {
    use fred::types::scripts::Script;
    let sha = |lua: &str| Script::from_lua(lua.to_owned()).sha1().to_string();
    [
        (sha(super::common::ACQUIRE_LUA), Point::AcquireScript),
        (sha(super::common::RELEASE_LUA), Point::Release),
        (sha(super::common::EXTEND_LUA), Point::Extend),
    ]
});

/// Completes when an armed action was applied.
pub struct Fired {
    rx: watch::Receiver<bool>,
}

impl Fired {
    /// Whether the action has been applied.
    pub fn is_fired(&self) -> bool {
        *self.rx.borrow()
    }

    /// Waits (at most `limit`) for the action to be applied; `true` if it was.
    pub async fn wait(&mut self, limit: Duration) -> bool {
        matches!(
            tokio::time::timeout(limit, self.rx.wait_for(|fired| *fired)).await,
            Ok(Ok(_))
        )
    }
}

struct Armed {
    point: Point,
    /// Matching commands still to let through before acting.
    skip: u32,
    action: Action,
    fired: watch::Sender<bool>,
}

struct Shared {
    upstream: SocketAddr,
    mode: watch::Sender<Mode>,
    conns: Mutex<HashMap<u64, AbortHandle>>,
    next_id: AtomicU64,
    armed: Mutex<Vec<Armed>>,
    seen: Mutex<HashMap<Point, u64>>,
    accepted: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Counts `command` and takes the first action armed for it that is due.
    fn take_action(&self, command: Point) -> Option<(Action, watch::Sender<bool>)> {
        {
            let mut seen = lock(&self.seen);
            *seen.entry(command).or_insert(0) += 1;
            if command == Point::AcquireScript {
                *seen.entry(Point::Acquire).or_insert(0) += 1;
            }
        }
        let mut armed = lock(&self.armed);
        let mut due = None;
        for (i, a) in armed.iter_mut().enumerate() {
            if !a.point.matches(command) {
                continue;
            }
            if a.skip > 0 {
                a.skip -= 1;
            } else if due.is_none() {
                due = Some(i);
            }
        }
        let a = armed.remove(due?);
        Some((a.action, a.fired))
    }
}

/// A running proxy. Dropping it closes the listener and every connection.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to
    /// `127.0.0.1:upstream_port`, in [`Mode::Pass`]. Call inside a Tokio
    /// runtime (prefer a multi-thread one, so a test that blocks its thread
    /// does not stall the proxy).
    pub fn start(upstream_port: u16) -> Proxy {
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy on 127.0.0.1:0");
        std_listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = std_listener.local_addr().expect("proxy address");
        let listener = TcpListener::from_std(std_listener).expect("tokio listener");
        let (mode, _) = watch::channel(Mode::Pass);
        let shared = Arc::new(Shared {
            upstream: SocketAddr::from(([127, 0, 0, 1], upstream_port)),
            mode,
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            armed: Mutex::new(Vec::new()),
            seen: Mutex::new(HashMap::new()),
            accepted: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Proxy {
            addr,
            shared,
            accept,
        }
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `redis://127.0.0.1:PORT` of the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.addr.port())
    }

    /// Switches every connection (and later ones) to `mode`.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.send_replace(mode);
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.shared.mode.borrow()
    }

    /// Closes every live connection now (held traffic is lost); returns once
    /// they are closed. New connections are still accepted, per the mode.
    pub async fn cut_all(&self) {
        let cut: HashSet<u64> = {
            let conns = lock(&self.shared.conns);
            for handle in conns.values() {
                handle.abort();
            }
            conns.keys().copied().collect()
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if !lock(&self.shared.conns).keys().any(|id| cut.contains(id)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("proxy connections were not closed within 2 s of cut_all");
    }

    /// Applies `action` to the next command of `point`, on any connection.
    pub fn on_next(&self, point: Point, action: Action) -> Fired {
        self.on_nth(point, 1, action)
    }

    /// Applies `action` to the `n`-th next command of `point` (`n` >= 1),
    /// letting the ones before it through.
    pub fn on_nth(&self, point: Point, n: u32, action: Action) -> Fired {
        assert!(n >= 1, "on_nth counts from 1");
        let (fired, rx) = watch::channel(false);
        lock(&self.shared.armed).push(Armed {
            point,
            skip: n - 1,
            action,
            fired,
        });
        Fired { rx }
    }

    /// Forgets every armed action that has not fired.
    pub fn disarm(&self) {
        lock(&self.shared.armed).clear();
    }

    /// How many commands of `point` the proxy has read from clients (in any
    /// mode; held ones count when read).
    pub fn seen(&self, point: Point) -> u64 {
        lock(&self.shared.seen).get(&point).copied().unwrap_or(0)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn live(&self) -> usize {
        lock(&self.shared.conns).len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for handle in lock(&self.shared.conns).values() {
            handle.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        // Registered under the lock before the task can finish, so the
        // task's own removal always comes after the insertion.
        let mut conns = lock(&shared.conns);
        let task = tokio::spawn(serve(Arc::clone(&shared), id, stream));
        conns.insert(id, task.abort_handle());
    }
}

/// Removes a connection from the registry however its task ends (finished
/// or aborted).
struct Registered {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.shared.conns).remove(&self.id);
    }
}

/// What the server-to-client direction must know about a cut after forward.
#[derive(Default)]
struct Gate {
    /// Replies are dropped from now on.
    closed: AtomicBool,
    /// Bytes came from the server after the gate closed.
    reply_seen: AtomicBool,
}

struct Chunk {
    read_at: Instant,
    bytes: Vec<u8>,
    written: Option<oneshot::Sender<()>>,
}

enum End {
    Closed,
    Cut(watch::Sender<bool>),
}

async fn serve(shared: Arc<Shared>, id: u64, client: TcpStream) {
    let _registered = Registered {
        shared: Arc::clone(&shared),
        id,
    };
    let Ok(server) = TcpStream::connect(shared.upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let gate = Arc::new(Gate::default());
    let (to_server, to_server_rx) = mpsc::unbounded_channel();
    let (to_client, to_client_rx) = mpsc::unbounded_channel();
    let end = tokio::select! {
        end = read_client(&shared, client_read, to_server, &gate) => end,
        () = write(shared.mode.subscribe(), server_write, to_server_rx, None) => End::Closed,
        () = read_server(server_read, to_client, &gate) => End::Closed,
        () = write(shared.mode.subscribe(), client_write, to_client_rx, Some(&gate)) => End::Closed,
    };
    // Every socket half is dropped by now: both connections are closed.
    if let End::Cut(fired) = end {
        fired.send_replace(true);
    }
}

async fn read_server(mut from: OwnedReadHalf, to: mpsc::UnboundedSender<Chunk>, gate: &Gate) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if gate.closed.load(Ordering::SeqCst) {
            gate.reply_seen.store(true, Ordering::SeqCst);
            continue;
        }
        let chunk = Chunk {
            read_at: Instant::now(),
            bytes: buf[..n].to_vec(),
            written: None,
        };
        if to.send(chunk).is_err() {
            return;
        }
    }
}

async fn read_client(
    shared: &Shared,
    mut from: OwnedReadHalf,
    to: mpsc::UnboundedSender<Chunk>,
    gate: &Gate,
) -> End {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return End::Closed,
            Ok(n) => n,
        };
        let read_at = Instant::now();
        pending.extend_from_slice(&buf[..n]);
        loop {
            let (len, point) = match parse_command(&pending) {
                Parsed::Incomplete => break,
                // Not RESP we understand: pass everything on as it is.
                Parsed::Opaque => (pending.len(), None),
                Parsed::Command(len, args) => (len, classify(&args)),
            };
            let bytes: Vec<u8> = pending.drain(..len).collect();
            let action = point.and_then(|p| shared.take_action(p));
            let chunk = |written| Chunk {
                read_at,
                bytes,
                written,
            };
            match action {
                None => {
                    if to.send(chunk(None)).is_err() {
                        return End::Closed;
                    }
                }
                Some((Action::CutBeforeForward, fired)) => return End::Cut(fired),
                Some((Action::CutAfterForward, fired)) => {
                    gate.closed.store(true, Ordering::SeqCst);
                    let (written, written_rx) = oneshot::channel();
                    if to.send(chunk(Some(written))).is_err() {
                        return End::Cut(fired);
                    }
                    // Written to Redis, then wait for its reply (dropped).
                    let _ = tokio::time::timeout(Duration::from_secs(2), written_rx).await;
                    let deadline = Instant::now() + Duration::from_secs(1);
                    while !gate.reply_seen.load(Ordering::SeqCst) && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    return End::Cut(fired);
                }
                Some((Action::BlackHole, fired)) => {
                    shared.mode.send_replace(Mode::BlackHole);
                    fired.send_replace(true);
                    if to.send(chunk(None)).is_err() {
                        return End::Closed;
                    }
                }
            }
        }
    }
}

/// Writes chunks in order, as the mode allows.
async fn write(
    mut mode: watch::Receiver<Mode>,
    mut out: OwnedWriteHalf,
    mut from: mpsc::UnboundedReceiver<Chunk>,
    gate: Option<&Gate>,
) {
    while let Some(chunk) = from.recv().await {
        loop {
            let current = *mode.borrow_and_update();
            match current {
                Mode::Pass => break,
                Mode::Latency(d) => {
                    let due = chunk.read_at + d;
                    if Instant::now() >= due {
                        break;
                    }
                    tokio::select! {
                        () = tokio::time::sleep_until(due.into()) => break,
                        changed = mode.changed() => if changed.is_err() { return },
                    }
                }
                Mode::BlackHole => {
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
        if gate.is_some_and(|g| g.closed.load(Ordering::SeqCst)) {
            continue;
        }
        if out.write_all(&chunk.bytes).await.is_err() {
            return;
        }
        if let Some(written) = chunk.written {
            let _ = written.send(());
        }
    }
}

enum Parsed {
    Incomplete,
    Opaque,
    Command(usize, Vec<Vec<u8>>),
}

/// Parses one RESP command (an array of bulk strings) from the front of
/// `buf`: its length in bytes and its arguments.
fn parse_command(buf: &[u8]) -> Parsed {
    fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
        Some((&buf[at..at + end], at + end + 2))
    }
    fn number(s: &[u8]) -> Option<usize> {
        std::str::from_utf8(s).ok()?.parse().ok()
    }
    if buf.is_empty() {
        return Parsed::Incomplete;
    }
    if buf[0] != b'*' {
        return Parsed::Opaque;
    }
    let Some((head, mut at)) = line(buf, 1) else {
        return Parsed::Incomplete;
    };
    let Some(count) = number(head) else {
        return Parsed::Opaque;
    };
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        match buf.get(at) {
            None => return Parsed::Incomplete,
            Some(b'$') => {}
            Some(_) => return Parsed::Opaque,
        }
        let Some((len, start)) = line(buf, at + 1) else {
            return Parsed::Incomplete;
        };
        let Some(len) = number(len) else {
            return Parsed::Opaque;
        };
        if buf.len() < start + len + 2 {
            return Parsed::Incomplete;
        }
        args.push(buf[start..start + len].to_vec());
        at = start + len + 2;
    }
    Parsed::Command(at, args)
}

/// Which lock command `args` is, if any.
fn classify(args: &[Vec<u8>]) -> Option<Point> {
    let name = String::from_utf8_lossy(args.first()?).to_ascii_uppercase();
    match name.as_str() {
        "EVALSHA" | "EVALSHA_RO" => {
            let sha = String::from_utf8_lossy(args.get(1)?).to_ascii_lowercase();
            SHAS.iter().find(|(s, _)| *s == sha).map(|(_, p)| *p)
        }
        "EVAL" | "EVAL_RO" => {
            let sha = fred::util::sha1_hash(&String::from_utf8_lossy(args.get(1)?));
            SHAS.iter().find(|(s, _)| *s == sha).map(|(_, p)| *p)
        }
        "SET" if args[1..].iter().any(|a| a.eq_ignore_ascii_case(b"NX")) => Some(Point::Acquire),
        "SUBSCRIBE" | "SSUBSCRIBE"
            if args[1..]
                .iter()
                .any(|c| c.ends_with(b":released") || c.windows(9).any(|w| w == b":handoff:")) =>
        {
            Some(Point::Subscribe)
        }
        _ => None,
    }
}
