//! The command line: `dmutex [--url URL] [--key-prefix P] [-q] run|status|release|elect|ls ...`.
//!
//! Every mistake is a clear message and exit 64 (EX_USAGE), never a panic;
//! `--help` and `--version` print to stdout and exit 0.

use std::ffi::OsString;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};

use crate::duration;
use crate::exit;
use crate::options::{elect_after_help, ElectArgs, LsArgs};
use crate::values::{parse_holder, parse_key, parse_token, parse_ttl, OnLost};

/// Run a command under a distributed lock in Redis, inspect a lock, or
/// release one by its token.
///
/// The lock is a Redis key holding a random token, taken with SET NX PX and
/// released token-checked: the same protocol as the distributed-mutex
/// library, bsm/redislock and redis-py's Lock, so they exclude each other on
/// the same key.
#[derive(Debug, Parser)]
#[command(name = "dmutex", version, after_help = exit::TABLE)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes (before or after its name).
#[derive(Debug, Args)]
pub struct Global {
    /// The Redis server: redis://host:port/db (user:password@ before the host when needed)
    #[arg(
        long,
        global = true,
        env = "REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379",
        value_name = "URL"
    )]
    pub url: String,

    /// Put PREFIX before KEY in Redis (the lock key is PREFIX + KEY), as the
    /// library's key_prefix does
    #[arg(long, global = true, default_value = "", value_name = "PREFIX")]
    pub key_prefix: String,

    /// No status lines on stderr (waiting, busy, lost, released); errors are
    /// still printed
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Take the lock on KEY, run COMMAND while holding it, release it when
    /// COMMAND exits
    #[command(after_help = run_after_help())]
    Run(RunArgs),
    /// Show whether KEY is held: its token, remaining TTL and fencing
    /// counter (exit 0 held, 1 not held)
    Status(StatusArgs),
    /// Release the lock on KEY if it holds TOKEN (never an unconditional
    /// delete; exit 0 released, 1 not)
    Release(ReleaseArgs),
    /// Wait to lead the election NAME, run COMMAND while leading, resign
    /// when it exits (the exit codes, signals and loss handling of `run`)
    #[command(after_help = elect_after_help())]
    Elect(ElectArgs),
    /// List what is held under the key prefix: locks, semaphores,
    /// read-write locks and elections, with holder, age, TTL and waiters
    /// (SCAN, on every master of a cluster)
    Ls(LsArgs),
}

const RUN_AFTER_HELP: &str = "\
COMMAND runs with DMUTEX_KEY, DMUTEX_TOKEN and (with --fencing)
DMUTEX_FENCING_TOKEN in its environment. The lease is renewed every third of
the TTL while it runs. SIGINT, SIGTERM and SIGHUP are passed on to it, and the
lock is released once it has exited. If the lock is lost (its key deleted or
taken over, or Redis unreachable for longer than the lease), COMMAND gets
SIGTERM, then SIGKILL after the grace period (see --on-lost), and dmutex exits
with 79.

Example (cron): dmutex run --no-wait --quiet nightly-report -- /usr/local/bin/report

";

fn run_after_help() -> String {
    format!("{RUN_AFTER_HELP}{}", exit::TABLE)
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The lease: how long the lock outlives a dmutex that stops renewing it
    /// (e.g. 30s, 5m)
    #[arg(long, default_value = "60s", value_parser = parse_ttl, value_name = "DURATION")]
    pub ttl: Duration,

    /// Wait at most this long for a busy lock, then exit 75 [default: wait
    /// as long as it takes]
    #[arg(long, value_parser = duration::parse, value_name = "DURATION")]
    pub wait: Option<Duration>,

    /// Do not wait: exit 75 at once if the lock is busy
    #[arg(long, conflicts_with = "wait")]
    pub no_wait: bool,

    /// Take the lock with a fencing token (DMUTEX_FENCING_TOKEN), strictly
    /// greater than every earlier holder's of KEY
    #[arg(long)]
    pub fencing: bool,

    /// What to do to COMMAND when the lock is lost (dmutex exits 79 in every
    /// case)
    #[arg(long, value_enum, default_value_t = OnLost::Term, value_name = "ACTION")]
    pub on_lost: OnLost,

    /// How long COMMAND may take to exit after SIGTERM on loss before it gets
    /// SIGKILL
    #[arg(long, default_value = "10s", value_parser = duration::parse, value_name = "DURATION")]
    pub grace: Duration,

    /// The holder label stored with the lock (in its token), shown by
    /// `dmutex status` and `dmutex ls` [default: HOST:PID]
    #[arg(long, value_parser = parse_holder, value_name = "LABEL")]
    pub holder: Option<String>,

    /// The lock's key
    #[arg(value_parser = parse_key)]
    pub key: String,

    /// The command and its arguments (put `--` before it when it starts with
    /// `-`)
    #[arg(required = true, trailing_var_arg = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The lock's key
    #[arg(value_parser = parse_key)]
    pub key: String,

    /// Print one JSON object: key, redis_key, held, token, ttl_ms,
    /// fencing_counter
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// The lock's key
    #[arg(value_parser = parse_key)]
    pub key: String,

    /// The holder's token (DMUTEX_TOKEN of the run, or `dmutex status KEY`)
    #[arg(long, value_parser = parse_token, value_name = "TOKEN")]
    pub token: String,
}

/// Parses the command line; on a mistake prints clap's message and gives
/// the exit code: 0 for `--help`/`--version`, 64 otherwise.
pub fn parse() -> Result<Cli, u8> {
    Cli::try_parse().map_err(|e| {
        // Nothing useful is left to do if stdout/stderr are closed.
        let _ = e.print();
        code_for(&e)
    })
}

/// The exit code for what clap reported: 0 for `--help`/`--version` (on
/// stdout), 64 for a mistake.
fn code_for(e: &clap::Error) -> u8 {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
        _ => exit::USAGE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, u8> {
        Cli::try_parse_from(std::iter::once("dmutex").chain(args.iter().copied()))
            .map_err(|e| code_for(&e))
    }

    #[test]
    fn run_takes_the_command_after_the_key_with_or_without_dashes() {
        for args in [
            &["run", "k", "--", "ls", "-l", "--ttl", "x"][..],
            &["run", "k", "ls", "-l", "--ttl", "x"][..],
        ] {
            let cli = parse(args).unwrap();
            let Command::Run(run) = cli.command else {
                panic!("not run")
            };
            assert_eq!(run.key, "k");
            assert_eq!(run.command, ["ls", "-l", "--ttl", "x"]);
            assert_eq!(run.ttl, Duration::from_secs(60));
            assert_eq!(run.wait, None);
            assert_eq!(run.on_lost, OnLost::Term);
        }
    }

    #[test]
    fn options_before_and_after_the_subcommand() {
        let cli = parse(&[
            "--url",
            "redis://h:1",
            "run",
            "--key-prefix",
            "p:",
            "-q",
            "--ttl",
            "5s",
            "--wait",
            "2m",
            "--fencing",
            "--on-lost",
            "kill",
            "--grace",
            "500ms",
            "k",
            "--",
            "true",
        ])
        .unwrap();
        assert_eq!(cli.global.url, "redis://h:1");
        assert_eq!(cli.global.key_prefix, "p:");
        assert!(cli.global.quiet);
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.ttl, Duration::from_secs(5));
        assert_eq!(run.wait, Some(Duration::from_secs(120)));
        assert!(run.fencing);
        assert_eq!(run.on_lost, OnLost::Kill);
        assert_eq!(run.grace, Duration::from_millis(500));
    }

    #[test]
    fn mistakes_are_usage_errors() {
        for args in [
            &["run", "k"][..],
            &["run", "k", "--"][..],
            &["run", "", "--", "true"][..],
            &["run", "--ttl", "60", "k", "--", "true"][..],
            &["run", "--ttl", "0s", "k", "--", "true"][..],
            &["run", "--wait", "soon", "k", "--", "true"][..],
            &["run", "--wait", "1s", "--no-wait", "k", "--", "true"][..],
            &["run", "--on-lost", "explode", "k", "--", "true"][..],
            &["run", "--holder", "", "k", "--", "true"][..],
            &["elect", "", "--", "true"][..],
            &["elect", "e"][..],
            &["elect", "--ttl", "0s", "e", "--", "true"][..],
            &["status"][..],
            &["status", ""][..],
            &["release", "k"][..],
            &["release", "k", "--token", ""][..],
            &["frobnicate"][..],
            &[][..],
        ] {
            assert_eq!(parse(args).err(), Some(exit::USAGE), "{args:?}");
        }
    }

    #[test]
    fn help_and_version_exit_0() {
        assert_eq!(parse(&["--help"]).err(), Some(0));
        assert_eq!(parse(&["run", "--help"]).err(), Some(0));
        assert_eq!(parse(&["--version"]).err(), Some(0));
    }
}
