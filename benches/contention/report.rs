//! The contention bench's tables, from rows already reduced by
//! [`analysis`](crate::analysis). Prints; measures nothing.

use std::time::Duration;

use crate::analysis::Row;
use crate::common::report::{check, ms, Align, Table};
use crate::common::stats::{mean, median_duration, percentile, percentile_of};
use crate::{Mode, Reference, INSTANCES, WORKERS};
use crate::{TARGET_ACQ_PER_SEC, TARGET_CMDS, TARGET_P50, TARGET_P99, TARGET_SHARE};

/// Every table, with the notes under them.
pub fn print(rows: &[Row], probe: bool, reference: &Reference) {
    println!();
    print!("{}", main_table(rows));
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
    print!("{}", time_table(rows));
    println!();
    println!(
        "which mutex instance wins (workers 0, 2, 4, 6 use instance 0; 1, 3, 5, 7 instance 1):"
    );
    println!();
    print!("{}", instance_table(rows));
    println!();
    if probe {
        println!(
            "release messages seen by a fred subscriber outside the library (CONTENTION_PROBE):"
        );
        println!();
        print!("{}", probe_table(rows));
        println!();
    }
    println!(
        "reference round trips on idle connections (p50): PING {} ms; PUBLISH → fred \
         subscriber's message_rx {} ms",
        ms(percentile_of(&reference.pings, 50.0)),
        ms(percentile_of(&reference.deliveries, 50.0))
    );
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
    if row.top_level() > TARGET_CMDS {
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

fn main_table(rows: &[Row]) -> String {
    let right = |h| (h, Align::Right);
    let mut table = Table::new(&[
        ("workload", Align::Left),
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
            waiting_name(row.notifications).to_owned(),
            format!("{:.0}", row.per_sec()),
            format!("{} / {} / {}", ms(p50), ms(p99), ms(max)),
            row.inversions.to_string(),
            ms(percentile(&row.lock_calls, 50.0)),
            format!("{:.2}", row.share()),
            format!("{:.2}", row.evalsha()),
            format!("{:.2}", row.top_level()),
            format!("{:.2}", row.all()),
            targets(row, p50, p99),
        ]);
    }
    table.markdown()
}

fn time_table(rows: &[Row]) -> String {
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
            mode_name(row.mode).to_owned(),
            waiting_name(row.notifications).to_owned(),
            pair(&s.cycle),
            pair(&s.critical),
            pair(&s.release),
            pair(&s.to_next),
        ]);
    }
    table.markdown()
}

fn instance_table(rows: &[Row]) -> String {
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
            mode_name(row.mode).to_owned(),
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
