//! Tooling of the mutual-exclusion audit (`tests/it/audit.rs`): the rig (one
//! private server, two fault proxies, a mutex through each), the fault
//! injector, a reproducible random generator, tallies, the event journal
//! printed on a violation, and the record of who is inside a critical
//! section.
//!
//! Environment: `AUDIT_SECS` (how long each audit runs, default 4),
//! `AUDIT_SEED` (fixes the random choices), `AUDIT_JOURNAL=<dir>` (writes
//! every event to `<dir>/<test>.log`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use distributed_mutex::{DistributedMutex, Error, Lease, RetryStrategy};
use fred::prelude::*;

use super::common::{ms, mutex_via};
use super::proxy::{Action, Mode, Point, Proxy};
use super::RedisServer;

/// The lease of the workers' locks.
pub const TTL: Duration = ms(2_000);
/// The mutexes' command timeout.
pub const COMMAND_TIMEOUT: Duration = ms(500);
/// How long one acquisition may wait (keeps the wind-down bounded).
pub const ACQUIRE_TIMEOUT: Duration = ms(2_500);
/// Keys contended for.
pub const KEYS: usize = 3;
/// Workers per mutex instance.
pub const WORKERS_PER_MUTEX: usize = 4;
/// The long fault of the fencing test: a black hole longer than the TTL.
pub const LONG_PAUSE: Duration = ms(2_500);
/// How long a long black hole waits (at most) for a renewal to start it.
pub const LONG_PAUSE_TRIGGER: Duration = ms(1_000);
/// Events kept for reporting a violation.
pub const JOURNAL_CAP: usize = 50_000;

pub fn audit_duration() -> Duration {
    let secs = std::env::var("AUDIT_SECS")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(4.0);
    Duration::from_secs_f64(secs)
}

pub fn audit_seed() -> u64 {
    std::env::var("AUDIT_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

pub fn lock_key(k: usize) -> String {
    format!("audit:lock:{k}")
}

/// A small xorshift64* generator: reproducible from `AUDIT_SEED`, no extra
/// dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64, stream: u64) -> Rng {
        Rng((seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A duration in `[lo, hi]` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        ms(lo + self.below(hi - lo + 1))
    }
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::NotObtained { .. } => "NotObtained",
        Error::NotHeld { .. } => "NotHeld",
        Error::Lost { .. } => "Lost",
        Error::Timeout { .. } => "Timeout",
        Error::Unavailable { .. } => "Unavailable",
        Error::WrongType { .. } => "WrongType",
        Error::Redis { .. } => "Redis",
        Error::Shutdown { .. } => "Shutdown",
        Error::InvalidKey { .. } => "InvalidKey",
        Error::InvalidTtl { .. } => "InvalidTtl",
        Error::Config { .. } => "Config",
        _ => "other",
    }
}

/// Counts by name.
#[derive(Default)]
pub struct Tally(Mutex<BTreeMap<&'static str, u64>>);

impl Tally {
    pub fn add(&self, name: &'static str) {
        *lock(&self.0).entry(name).or_insert(0) += 1;
    }

    pub fn get(&self, name: &str) -> u64 {
        lock(&self.0).get(name).copied().unwrap_or(0)
    }

    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.0).clone()
    }
}

/// Timestamped events per key, to print the exact sequence on a violation.
///
/// With `AUDIT_JOURNAL=<dir>` set, every event kept is also written to
/// `<dir>/<test>.log` when the test ends (passed or failed).
pub struct Journal {
    name: &'static str,
    start: Instant,
    events: Mutex<VecDeque<(usize, String)>>,
}

impl Drop for Journal {
    fn drop(&mut self) {
        if let Some(dir) = std::env::var_os("AUDIT_JOURNAL") {
            let path = std::path::Path::new(&dir).join(format!("{}.log", self.name));
            let _ = std::fs::write(&path, self.tail(None, usize::MAX));
            eprintln!("journal written to {}", path.display());
        }
    }
}

impl Journal {
    pub fn new(name: &'static str) -> Journal {
        Journal {
            name,
            start: Instant::now(),
            events: Mutex::new(VecDeque::new()),
        }
    }

    pub fn note(&self, key: usize, event: impl Into<String>) {
        let at = self.start.elapsed().as_secs_f64() * 1e3;
        let mut events = lock(&self.events);
        if events.len() >= JOURNAL_CAP {
            events.pop_front();
        }
        events.push_back((key, format!("{at:>10.3} ms  {}", event.into())));
    }

    /// The last `n` events of key `k` (all keys with `None`).
    pub fn tail(&self, key: Option<usize>, n: usize) -> String {
        let events = lock(&self.events);
        let picked: Vec<&String> = events
            .iter()
            .filter(|(k, _)| match key {
                // Faults are noted under `usize::MAX` and shown with every key.
                Some(key) => *k == key || *k == usize::MAX,
                None => true,
            })
            .map(|(_, e)| e)
            .collect();
        let from = picked.len().saturating_sub(n);
        picked[from..]
            .iter()
            .map(|e| format!("    {e}\n"))
            .collect()
    }
}

/// Who is inside a critical section of each key, in this process.
///
/// A holder entering a section while an earlier holder of the same key is
/// still inside is legitimate only if the earlier holder's lease is already
/// lost: the library promises that while a guard's lease is valid nobody
/// else holds the key. The earlier holder's lease cannot be reported valid
/// at that point by mistake: Redis let the new holder in only after the old
/// key expired, which is no earlier than the old lease's local validity.
pub struct Occupancy {
    slots: Mutex<Vec<Vec<(u64, Lease)>>>,
    violations: Mutex<Vec<String>>,
    pub takeovers: AtomicU64,
}

impl Occupancy {
    pub fn new() -> Occupancy {
        Occupancy {
            slots: Mutex::new(vec![Vec::new(); KEYS]),
            violations: Mutex::new(Vec::new()),
            takeovers: AtomicU64::new(0),
        }
    }

    pub fn enter(&self, k: usize, holder: u64, lease: Lease, journal: &Journal) {
        let mut slots = lock(&self.slots);
        for (other, other_lease) in &slots[k] {
            if other_lease.is_lost() {
                self.takeovers.fetch_add(1, Ordering::SeqCst);
                journal.note(
                    k,
                    format!("h{holder} enters while h{other} (lease lost) is still inside"),
                );
            } else {
                let v = format!(
                    "key {k}: h{holder} (token {}, fence {:?}) entered while h{other} (token {}, \
                     fence {:?}) was inside with a lease still valid for {:?}",
                    lease.token(),
                    lease.fencing_token(),
                    other_lease.token(),
                    other_lease.fencing_token(),
                    other_lease.remaining(),
                );
                journal.note(k, format!("VIOLATION: {v}"));
                lock(&self.violations).push(v);
            }
        }
        slots[k].push((holder, lease));
    }

    pub fn exit(&self, k: usize, holder: u64) {
        lock(&self.slots)[k].retain(|(h, _)| *h != holder);
    }

    pub fn violations(&self) -> Vec<String> {
        lock(&self.violations).clone()
    }
}

/// Faults injected, by kind.
#[derive(Default)]
pub struct Faults(pub Tally);

/// The server, two proxies, a mutex through each, and a direct raw client.
pub struct Rig {
    pub server: RedisServer,
    pub proxies: [Proxy; 2],
    pub mutexes: [DistributedMutex; 2],
    pub raw: Client,
}

async fn audit_mutex(proxy: &Proxy, fencing: bool) -> DistributedMutex {
    mutex_via(proxy, |b| {
        let b = b
            .ttl(TTL)
            .command_timeout(COMMAND_TIMEOUT)
            .retry(RetryStrategy::exponential(ms(1), ms(50), 10_000));
        if fencing {
            b.fencing()
        } else {
            b
        }
    })
    .await
}

pub async fn rig(fencing: bool) -> Rig {
    let server = RedisServer::start();
    let proxies = [Proxy::start(server.port()), Proxy::start(server.port())];
    let mutexes = [
        audit_mutex(&proxies[0], fencing).await,
        audit_mutex(&proxies[1], fencing).await,
    ];
    let raw = server.client().await;
    Rig {
        server,
        proxies,
        mutexes,
        raw,
    }
}

/// Every `~300–700 ms` until `deadline`, one fault on one proxy: cut every
/// connection, 100 ms latency for 500 ms, or a 300 ms black hole (all shorter
/// than the TTL). With `long_pauses`, the first fault (and then one at most
/// 1.5 s after the previous one ended) is a 2.5 s black hole, longer than the
/// TTL, started by the next renewal through that proxy when one comes within
/// a second (so a lock is held through it). Faults never overlap, and none
/// runs past `deadline`.
pub async fn inject_faults(
    proxies: &[Proxy; 2],
    deadline: Instant,
    seed: u64,
    long_pauses: bool,
    faults: &Faults,
    journal: &Journal,
) {
    let mut rng = Rng::new(seed, 0xFA17);
    let mut last_long: Option<Instant> = None;
    loop {
        tokio::time::sleep(rng.millis(300, 700)).await;
        let p = rng.below(2) as usize;
        let proxy = &proxies[p];
        let left = deadline.saturating_duration_since(Instant::now());
        let long_due = long_pauses
            && match last_long {
                None => true,
                Some(at) => at.elapsed() >= ms(1_500),
            };
        let choice = if long_due && left > LONG_PAUSE + ms(300) {
            3
        } else {
            rng.below(3)
        };
        let length = match choice {
            0 => Duration::ZERO,
            1 => ms(500),
            2 => ms(300),
            _ => LONG_PAUSE,
        };
        if left <= length + ms(50) {
            break;
        }
        match choice {
            0 => {
                journal.note(usize::MAX, format!("fault: cut all on proxy {p}"));
                faults.0.add("cut_all");
                proxy.cut_all().await;
            }
            1 => {
                journal.note(usize::MAX, format!("fault: 100 ms latency on proxy {p}"));
                faults.0.add("latency_100ms_for_500ms");
                proxy.set_mode(Mode::Latency(ms(100)));
                tokio::time::sleep(length).await;
                proxy.set_mode(Mode::Pass);
            }
            2 => {
                journal.note(usize::MAX, format!("fault: black hole on proxy {p}"));
                faults.0.add("black_hole_300ms");
                proxy.set_mode(Mode::BlackHole);
                tokio::time::sleep(length).await;
                proxy.set_mode(Mode::Pass);
            }
            _ => {
                // Preferably while a lock is held through this proxy: the
                // black hole starts with the next renewal it carries.
                let mut fired = proxy.on_next(Point::Extend, Action::BlackHole);
                let trigger = LONG_PAUSE_TRIGGER.min(left - LONG_PAUSE - ms(300));
                let at_renewal = fired.wait(trigger).await;
                if !at_renewal {
                    proxy.disarm();
                    proxy.set_mode(Mode::BlackHole);
                }
                journal.note(
                    usize::MAX,
                    format!("fault: long black hole on proxy {p} (at a renewal: {at_renewal})"),
                );
                faults.0.add(if at_renewal {
                    "black_hole_2500ms_from_a_renewal"
                } else {
                    "black_hole_2500ms"
                });
                tokio::time::sleep(LONG_PAUSE).await;
                proxy.set_mode(Mode::Pass);
                last_long = Some(Instant::now());
            }
        }
        journal.note(usize::MAX, format!("fault on proxy {p} over"));
    }
    for proxy in proxies {
        proxy.set_mode(Mode::Pass);
    }
}

/// Lock keys (not fencing counters) still in Redis.
pub fn lock_keys_left(server: &RedisServer) -> Vec<String> {
    server
        .cli(&["KEYS", "audit:lock:*"])
        .lines()
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect()
}

pub fn short(token: &str) -> &str {
    &token[..8.min(token.len())]
}
