//! The contention bench's reduction of what its runs recorded: handoff
//! waits, where the time between acquisitions goes, which instance wins,
//! commands per acquisition. No timing, no printing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::{Mode, Recorded, INSTANCES};

/// One combination (workload x waiting), reduced.
pub struct Row {
    pub mode: Mode,
    /// Workers, and the mutex instances they are spread over.
    pub shape: (usize, usize),
    /// Commands the instances' clients sent in the window.
    pub client_commands: u64,
    pub notifications: bool,
    /// The master serving the key (0 on one server).
    pub master: usize,
    /// Per master: connections (all, subscribed to a channel) the run's
    /// mutex instances opened, from `CLIENT LIST` at the window's start
    /// minus before the mutexes were made.
    pub connections: Vec<(usize, usize)>,
    /// Redis CPU seconds in the window, summed over the masters.
    pub redis_cpu: f64,
    pub acquisitions: usize,
    pub secs: f64,
    pub handoffs: Vec<Duration>,
    pub inversions: usize,
    pub lock_calls: Vec<Duration>,
    pub counts: Vec<usize>,
    pub commands: BTreeMap<String, u64>,
    pub violations: u64,
    pub segments: Segments,
    pub probed: Probed,
    /// `streaks[a][b]`: acquisitions by instance `b` right after one by `a`.
    pub streaks: [[usize; INSTANCES]; INSTANCES],
}

/// Where the time from one acquisition to the next goes (for acquisitions
/// in the window followed by another).
#[derive(Default)]
pub struct Segments {
    /// `lock()` returned → `release()` called: the 1 ms critical section
    /// and its scheduling.
    pub critical: Vec<Duration>,
    /// `release()` called → returned.
    pub release: Vec<Duration>,
    /// `release()` called → the next holder's `lock()` returned.
    pub to_next: Vec<Duration>,
    /// `lock()` returned → the next holder's `lock()` returned.
    pub cycle: Vec<Duration>,
}

/// Handoffs split at the moment a fred subscriber outside the library saw
/// the release message.
#[derive(Default)]
pub struct Probed {
    /// `release()` called → the message arrived at the probe.
    pub to_message: Vec<Duration>,
    /// The message arrived at the probe → the next holder's `lock()`
    /// returned.
    pub message_to_lock: Vec<Duration>,
}

impl Row {
    pub fn per_sec(&self) -> f64 {
        self.acquisitions as f64 / self.secs
    }
    pub fn share(&self) -> f64 {
        let min = *self.counts.iter().min().unwrap_or(&0) as f64;
        let max = *self.counts.iter().max().unwrap_or(&0) as f64;
        if max == 0.0 {
            0.0
        } else {
            min / max
        }
    }
    pub fn per_acq(&self, filter: impl Fn(&str) -> bool) -> f64 {
        let n: u64 = self
            .commands
            .iter()
            .filter(|(name, _)| filter(name))
            .map(|(_, n)| n)
            .sum();
        n as f64 / self.acquisitions.max(1) as f64
    }
    pub fn calls(&self, command: &str) -> u64 {
        self.commands.get(command).copied().unwrap_or(0)
    }
    pub fn evalsha(&self) -> f64 {
        self.per_acq(|c| c == "evalsha")
    }
    /// Release messages sent (`SPUBLISH` or `PUBLISH`, all run by the
    /// release script) per acquisition.
    pub fn publishes(&self) -> f64 {
        self.per_acq(|c| c == "spublish" || c == "publish")
    }
    /// Redis CPU (all masters) per acquisition, in µs.
    pub fn redis_us(&self) -> f64 {
        self.redis_cpu * 1e6 / self.acquisitions.max(1) as f64
    }
    pub fn all(&self) -> f64 {
        self.per_acq(|_| true)
    }

    /// Client commands per acquisition: what the instances' clients sent,
    /// plus their subscriber connections' commands.
    pub fn client(&self) -> f64 {
        let subscriber: u64 = [
            "subscribe",
            "unsubscribe",
            "ssubscribe",
            "sunsubscribe",
            "ping",
        ]
        .iter()
        .map(|c| self.calls(c))
        .sum();
        (self.client_commands + subscriber) as f64 / self.acquisitions.max(1) as f64
    }
}

/// Matches every acquisition with the release before it (by sequence
/// number: acquisitions are serialised by the lock) and reduces the logs.
pub fn analyse(r: &Recorded) -> Row {
    let window = r.window;
    let in_window = |t: Instant| t >= window.0 && t < window.1;
    let counts: Vec<usize> = r
        .logs
        .iter()
        .map(|log| {
            log.acquisitions
                .iter()
                .filter(|(_, t, _)| in_window(*t))
                .count()
        })
        .collect();
    // seq → (worker, acquired, called), and seq → (worker, release called,
    // release returned).
    let mut acquired = BTreeMap::new();
    let mut released = BTreeMap::new();
    for (worker, log) in r.logs.iter().enumerate() {
        for &(seq, at, called) in &log.acquisitions {
            acquired.insert(seq, (worker, at, called));
        }
        for &(seq, called, done) in &log.releases {
            released.insert(seq, (worker, called, done));
        }
    }
    let mut handoffs = Vec::new();
    let mut lock_calls = Vec::new();
    let mut inversions = 0;
    let mut segments = Segments::default();
    let mut probed = Probed::default();
    for (&seq, &(worker, at, called)) in &acquired {
        if !in_window(at) {
            continue;
        }
        lock_calls.push(at - called);
        // Where the time between this acquisition and the next goes.
        if let (Some(&(_, releasing, done)), Some(&(_, next, _))) =
            (released.get(&seq), acquired.get(&(seq + 1)))
        {
            segments.critical.push(releasing - at);
            segments.release.push(done - releasing);
            segments
                .to_next
                .push(next.saturating_duration_since(releasing));
            segments.cycle.push(next.saturating_duration_since(at));
        }
        let Some(&(previous, _, released_at)) = seq.checked_sub(1).and_then(|s| released.get(&s))
        else {
            continue;
        };
        if previous != worker {
            if at < released_at {
                inversions += 1;
            }
            handoffs.push(at.saturating_duration_since(released_at));
            // The k-th release message is the release of acquisition k
            // (releases are serialised by the lock, and all of them delete).
            let message = r
                .messages
                .as_ref()
                .and_then(|m| m.get(usize::try_from(seq - 1).ok()?));
            if let (Some(&message), Some(&(_, releasing, _))) = (message, released.get(&(seq - 1)))
            {
                probed
                    .to_message
                    .push(message.saturating_duration_since(releasing));
                probed
                    .message_to_lock
                    .push(at.saturating_duration_since(message));
            }
        }
    }
    // Which instance won each acquisition, and how often it won again next.
    let mut streaks = [[0usize; INSTANCES]; INSTANCES];
    for (&seq, &(worker, at, _)) in &acquired {
        if let (true, Some(&(previous, _, _))) =
            (in_window(at), acquired.get(&(seq.wrapping_sub(1))))
        {
            streaks[previous % INSTANCES][worker % INSTANCES] += 1;
        }
    }
    handoffs.sort();
    lock_calls.sort();
    let commands = r
        .after
        .iter()
        .map(|(name, &n)| (name.clone(), n - r.before.get(name).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let (before, during) = &r.connections;
    let connections = before
        .iter()
        .zip(during)
        .map(|(b, d)| (d.0.saturating_sub(b.0), d.1.saturating_sub(b.1)))
        .collect();
    Row {
        mode: r.mode,
        shape: r.shape,
        client_commands: r.client_commands,
        notifications: r.notifications,
        master: r.master,
        connections,
        redis_cpu: r.redis_cpu,
        acquisitions: counts.iter().sum(),
        secs: (window.1 - window.0).as_secs_f64(),
        handoffs,
        inversions,
        lock_calls,
        counts,
        commands,
        violations: r.violations,
        segments,
        probed,
        streaks,
    }
}
