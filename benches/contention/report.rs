//! The contention bench's tables, from rows already reduced by
//! [`analysis`](crate::analysis). Prints; measures nothing.

use std::time::Duration;

use crate::analysis::Row;
use crate::common::report::{check, ms, Align, Table};
use crate::common::stats::{mean, median_duration, percentile, percentile_of};
use crate::{Mode, Reference, INSTANCES, WORKERS};
use crate::{TARGET_ACQ_PER_SEC, TARGET_CMDS, TARGET_P50, TARGET_P99, TARGET_SHARE};

/// The fleet table (`CONTENTION_FLEET`): how waiting scales with the
/// number of processes.
pub fn print_fleet(rows: &[Row]) {
    let right = |h| (h, Align::Right);
    let mut table = Table::new(&[
        right("workers"),
        right("processes"),
        right("acq/s"),
        right("waiter gap p50 / p99 ms"),
        right("release() called → next lock() p50 ms"),
        right("client cmds per acquisition"),
        right("Redis cmds per acquisition"),
        right("per-worker acquisitions min–max"),
        right("share min/max"),
    ]);
    for row in rows {
        let min = row.counts.iter().min().copied().unwrap_or(0);
        let max = row.counts.iter().max().copied().unwrap_or(0);
        table.row([
            row.shape.0.to_string(),
            row.shape.1.to_string(),
            format!("{:.0}", row.per_sec()),
            format!(
                "{} / {}",
                ms(percentile(&row.handoffs, 50.0)),
                ms(percentile(&row.handoffs, 99.0))
            ),
            ms(median_duration(&row.segments.to_next)),
            format!("{:.2}", row.client()),
            format!("{:.1}", row.all()),
            format!("{min}–{max}"),
            format!("{:.2}", row.share()),
        ]);
    }
    println!();
    print!("{}", table.markdown());
    println!();
    println!(
        "strict handoff, 1 ms critical section, notifications on; each process a mutex instance \
         with its own connections; window {:.1} s per row",
        rows.first().map_or(0.0, |r| r.secs)
    );
}

/// Every table, with the notes under them. `references` has one entry per
/// master (one on one server).
pub fn print(rows: &[Row], probe: bool, references: &[Reference]) {
    let cluster = references.len() > 1;
    println!();
    print!("{}", main_table(rows, cluster));
    println!();
    println!(
        "targets (notify rows; acq/s for strict handoff): >= {TARGET_ACQ_PER_SEC:.0} acquisitions/s, \
         handoff wait p50 <= {} ms, p99 <= {} ms, <= {TARGET_CMDS:.0} top-level commands per \
         acquisition, share min/max >= {TARGET_SHARE}",
        ms(TARGET_P50),
        ms(TARGET_P99),
    );
    println!();
    println!("where the time between two acquisitions goes:");
    println!();
    print!("{}", time_table(rows, cluster));
    println!();
    println!(
        "which mutex instance wins (workers 0, 2, 4, 6 use instance 0; 1, 3, 5, 7 instance 1):"
    );
    println!();
    print!("{}", instance_table(rows, cluster));
    println!();
    if probe {
        println!(
            "release messages seen by a fred subscriber outside the library (CONTENTION_PROBE):"
        );
        println!();
        print!("{}", probe_table(rows));
        println!();
    }
    if cluster {
        println!("per master (Redis Cluster; the hot key on that master, runs one after another):");
        println!();
        print!("{}", master_table(rows, references));
        println!();
        println!(
            "references: round trips on idle connections to that master, measured in this run \
             before the contention runs (PING sent to the master; SPUBLISH on a shard channel it \
             serves until a fred subscriber's message_rx yields it). connections per instance: \
             CLIENT LIST on each master at the window's start minus before the run's 2 mutex \
             instances were made, divided by 2, as `all (subscribed)` summed over the masters [all on each master]."
        );
    } else {
        let reference = &references[0];
        println!(
            "reference round trips on idle connections (p50): PING {} ms; PUBLISH → fred \
             subscriber's message_rx {} ms",
            ms(percentile_of(&reference.pings, 50.0)),
            ms(percentile_of(&reference.deliveries, 50.0))
        );
        let strict = rows
            .iter()
            .find(|r| r.mode == Mode::StrictHandoff && r.notifications);
        if let Some(strict) = strict {
            let (all, subscribed) = strict.connections[0];
            println!(
                "strict handoff, notify: {:.2} release messages (PUBLISH) per acquisition; \
                 Redis CPU {:.1} µs per acquisition; connections per mutex instance {:.1} ({:.1} \
                 subscribed), from CLIENT LIST at the window's start minus before the run's \
                 mutexes were made",
                strict.publishes(),
                strict.redis_us(),
                all as f64 / INSTANCES as f64,
                subscribed as f64 / INSTANCES as f64
            );
        }
    }
    println!(
        "inv = handoffs whose lock() returned before the previous holder's release() did \
         (counted as 0 ms); mutual-exclusion violations: 0"
    );
}

/// The notify rows' misses against the targets, or `(reference)` for
/// polling rows.
fn targets(row: &Row, p50: Duration, p99: Duration) -> String {
    if !row.notifications {
        return "(reference)".to_owned();
    }
    let mut misses = Vec::new();
    if row.mode == Mode::StrictHandoff && row.per_sec() < TARGET_ACQ_PER_SEC {
        misses.push("acq/s");
    }
    if p50 > TARGET_P50 {
        misses.push("p50");
    }
    if p99 > TARGET_P99 {
        misses.push("p99");
    }
    if row.client() > TARGET_CMDS {
        misses.push("cmds");
    }
    if row.share() < TARGET_SHARE {
        misses.push("share");
    }
    if misses.is_empty() {
        check(true).to_owned()
    } else {
        format!("{}: {}", check(false), misses.join(", "))
    }
}

fn main_table(rows: &[Row], cluster: bool) -> String {
    let right = |h| (h, Align::Right);
    let mut table = Table::new(&[
        ("workload", Align::Left),
        ("master", Align::Right),
        ("waiting", Align::Left),
        right("acq/s"),
        right("handoff wait p50 / p99 / max (ms)"),
        right("inv"),
        right("lock() p50 (ms)"),
        right("share min/max"),
        right("evalsha/acq"),
        right("top-level cmds/acq"),
        right("all cmds/acq"),
        ("targets", Align::Left),
    ]);
    for row in rows {
        // `handoffs` and `lock_calls` are sorted.
        let p50 = percentile(&row.handoffs, 50.0);
        let p99 = percentile(&row.handoffs, 99.0);
        let max = row.handoffs.last().copied().unwrap_or_default();
        table.row([
            mode_name(row.mode).to_owned(),
            if cluster {
                row.master.to_string()
            } else {
                "-".to_owned()
            },
            waiting_name(row.notifications).to_owned(),
            format!("{:.0}", row.per_sec()),
            format!("{} / {} / {}", ms(p50), ms(p99), ms(max)),
            row.inversions.to_string(),
            ms(percentile(&row.lock_calls, 50.0)),
            format!("{:.2}", row.share()),
            format!("{:.2}", row.evalsha()),
            format!("{:.2}", row.client()),
            format!("{:.2}", row.all()),
            targets(row, p50, p99),
        ]);
    }
    table.markdown()
}

/// Per master: the strict handoff's wait beside the reference round trips
/// to that master, release messages per acquisition, connections.
fn master_table(rows: &[Row], references: &[Reference]) -> String {
    let right = |h| (h, Align::Right);
    let mut table = Table::new(&[
        ("master", Align::Right),
        right("strict handoff acq/s"),
        right("handoff wait p50 / p99 (ms)"),
        right("p50 <= 1 ms"),
        right("free-for-all handoff p50 (ms)"),
        right("PING p50 (ms)"),
        right("SPUBLISH → subscriber p50 (ms)"),
        right("release msgs/acq"),
        right("top-level cmds/acq"),
        right("Redis CPU/acq (µs)"),
        right("connections per instance"),
    ]);
    let find = |mode: Mode, master: usize| {
        rows.iter()
            .find(|r| r.mode == mode && r.notifications && r.master == master)
    };
    for (master, reference) in references.iter().enumerate() {
        let (Some(strict), Some(free)) = (
            find(Mode::StrictHandoff, master),
            find(Mode::FreeForAll, master),
        ) else {
            continue;
        };
        let p50 = percentile(&strict.handoffs, 50.0);
        let all: usize = strict.connections.iter().map(|c| c.0).sum();
        let subscribed: usize = strict.connections.iter().map(|c| c.1).sum();
        table.row([
            master.to_string(),
            format!("{:.0}", strict.per_sec()),
            format!("{} / {}", ms(p50), ms(percentile(&strict.handoffs, 99.0))),
            check(p50 <= TARGET_P50).to_owned(),
            ms(percentile(&free.handoffs, 50.0)),
            ms(percentile_of(&reference.pings, 50.0)),
            ms(percentile_of(&reference.deliveries, 50.0)),
            format!("{:.2}", strict.publishes()),
            format!("{:.2}", strict.client()),
            format!("{:.1}", strict.redis_us()),
            format!(
                "{:.1} ({:.1}) [{}]",
                all as f64 / INSTANCES as f64,
                subscribed as f64 / INSTANCES as f64,
                strict
                    .connections
                    .iter()
                    .map(|c| format!("{:.1}", c.0 as f64 / INSTANCES as f64))
                    .collect::<Vec<_>>()
                    .join(" + ")
            ),
        ]);
    }
    table.markdown()
}

fn time_table(rows: &[Row], cluster: bool) -> String {
    let right = |h| (h, Align::Right);
    let mut table = Table::new(&[
        ("workload", Align::Left),
        ("waiting", Align::Left),
        right("cycle mean / p50 (ms)"),
        right("critical section mean / p50"),
        right("release() mean / p50"),
        right("release() called → next lock() returned mean / p50"),
    ]);
    let pair = |v: &[Duration]| format!("{} / {}", ms(mean(v)), ms(median_duration(v)));
    for row in rows {
        let s = &row.segments;
        table.row([
            workload(row, cluster),
            waiting_name(row.notifications).to_owned(),
            pair(&s.cycle),
            pair(&s.critical),
            pair(&s.release),
            pair(&s.to_next),
        ]);
    }
    table.markdown()
}

fn instance_table(rows: &[Row], cluster: bool) -> String {
    let right = |h| (h, Align::Right);
    let mut table = Table::new(&[
        ("workload", Align::Left),
        ("waiting", Align::Left),
        right("acquisitions by instance 0 / 1"),
        right("P(instance 0 next after instance 0)"),
        right("P(instance 1 next after instance 1)"),
    ]);
    for row in rows {
        let t = &row.streaks;
        let p = |a: usize| {
            let n: usize = t[a].iter().sum();
            if n == 0 {
                "-".to_owned()
            } else {
                format!("{:.2}", t[a][a] as f64 / n as f64)
            }
        };
        let by =
            |i: usize| -> usize { (i..WORKERS).step_by(INSTANCES).map(|w| row.counts[w]).sum() };
        table.row([
            workload(row, cluster),
            waiting_name(row.notifications).to_owned(),
            format!("{} / {}", by(0), by(1)),
            p(0),
            p(1),
        ]);
    }
    table.markdown()
}

fn probe_table(rows: &[Row]) -> String {
    let right = |h| (h, Align::Right);
    let mut table = Table::new(&[
        ("workload", Align::Left),
        ("waiting", Align::Left),
        right("handoffs"),
        right("release() called → message at a fred subscriber mean / p50 / p99 (ms)"),
        right("message → next lock() returned mean / p50 / p99 (ms)"),
    ]);
    let triple = |v: &[Duration]| {
        format!(
            "{} / {} / {}",
            ms(mean(v)),
            ms(percentile_of(v, 50.0)),
            ms(percentile_of(v, 99.0))
        )
    };
    for row in rows {
        let p = &row.probed;
        table.row([
            mode_name(row.mode).to_owned(),
            waiting_name(row.notifications).to_owned(),
            p.to_message.len().to_string(),
            triple(&p.to_message),
            triple(&p.message_to_lock),
        ]);
    }
    table.markdown()
}

/// The workload, with the master on a cluster.
fn workload(row: &Row, cluster: bool) -> String {
    if cluster {
        format!("{}, master {}", mode_name(row.mode), row.master)
    } else {
        mode_name(row.mode).to_owned()
    }
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::FreeForAll => "free-for-all",
        Mode::StrictHandoff => "strict handoff",
    }
}

fn waiting_name(notifications: bool) -> &'static str {
    if notifications {
        "notify"
    } else {
        "polling"
    }
}
