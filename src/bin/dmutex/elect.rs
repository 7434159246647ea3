//! `dmutex elect NAME [--value V] -- COMMAND`: wait to lead the election
//! NAME, run COMMAND while leading, resign when it exits.
//!
//! The same supervision as `dmutex run` (`run::supervise`): signals passed
//! on, `--on-lost` on loss (exit 79), the command's exit code or 128 + its
//! signal. COMMAND gets `DMUTEX_KEY` (the election's name), `DMUTEX_TOKEN`
//! and `DMUTEX_FENCING_TOKEN` (the term). A signal while waiting to lead
//! gives up the campaign (leaving nothing behind) and exits 128 + signal;
//! `--wait` bounds the campaign (exit 75 when it runs out).

use std::time::{Duration, Instant};

use distributed_mutex::{Election, Leadership};

use crate::args::{Global, RunArgs};
use crate::clock;
use crate::connect::connect;
use crate::duration::human;
use crate::exit::{self, Failure};
use crate::options::ElectArgs;
use crate::run::{self, CLOSE_TIMEOUT};
use crate::signals::Signals;

pub async fn elect(global: &Global, args: ElectArgs) -> u8 {
    let quiet = global.quiet;
    let mut signals = match run::catch_signals(quiet) {
        Ok(signals) => signals,
        Err(code) => return code,
    };
    let value = args.value.clone().unwrap_or_else(clock::default_holder);
    let mutex = match connect(global, |b| b.holder(clock::default_holder())).await {
        Ok(mutex) => mutex,
        Err(failure) => return failure.report(quiet),
    };
    let election = mutex.election(&args.name).ttl(args.ttl);
    let code = match campaign(&election, &value, &args, quiet, &mut signals).await {
        Ok(leadership) => {
            if !quiet {
                eprintln!(
                    "dmutex: leading `{}` (term {}) as {value:?}",
                    args.name,
                    leadership.term()
                );
            }
            let run_args = as_run_args(args);
            run::supervise(leadership, &run_args, quiet, &mut signals).await
        }
        Err(failure) => failure.report(quiet),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, mutex.shutdown()).await;
    code
}

/// Campaigns until leading, `--wait` runs out, or a signal comes.
async fn campaign(
    election: &Election,
    value: &str,
    args: &ElectArgs,
    quiet: bool,
    signals: &mut Signals,
) -> Result<Leadership, Failure> {
    let started = Instant::now();
    let limit = args.wait.unwrap_or(Duration::MAX);
    let mut campaign = std::pin::pin!(election.campaign(value));
    // The first answer comes at once when no one leads; say so otherwise.
    let first = tokio::time::timeout(Duration::from_millis(200).min(limit), &mut campaign);
    let result = tokio::select! {
        result = first => result,
        caught = signals.recv() => return Err(interrupted(caught, &args.name)),
    };
    if let Ok(result) = result {
        return result.map_err(|e| Failure::from_lib("cannot campaign", &e));
    }
    if !quiet {
        let leader = match election.leader().await {
            Ok(Some(leader)) => format!("{:?} leads (term {})", leader.value, leader.term),
            _ => "another campaigner is ahead".to_owned(),
        };
        eprintln!("dmutex: waiting to lead `{}`: {leader}", args.name);
    }
    let left = limit.saturating_sub(started.elapsed());
    let deadline = tokio::time::Instant::now()
        .checked_add(left)
        .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 86_400));
    tokio::select! {
        result = &mut campaign => result.map_err(|e| Failure::from_lib("cannot campaign", &e)),
        () = tokio::time::sleep_until(deadline) => Err(Failure::status(
            exit::BUSY,
            format!(
                "did not lead `{}` within {}; not running the command",
                args.name,
                human(started.elapsed())
            ),
        )),
        caught = signals.recv() => Err(interrupted(caught, &args.name)),
    }
}

fn interrupted(caught: crate::signals::Caught, name: &str) -> Failure {
    Failure::status(
        caught.exit_code(),
        format!(
            "{} while waiting to lead `{name}`; not running the command",
            caught.name()
        ),
    )
}

/// The supervision settings `run` reads.
fn as_run_args(args: ElectArgs) -> RunArgs {
    RunArgs {
        ttl: args.ttl,
        wait: args.wait,
        no_wait: false,
        fencing: true,
        on_lost: args.on_lost,
        grace: args.grace,
        holder: None,
        key: args.name,
        command: args.command,
    }
}
