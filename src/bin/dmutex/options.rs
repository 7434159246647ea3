//! The options of `dmutex elect` and `dmutex ls` (the rest of the command
//! line is in `args.rs`).

use std::ffi::OsString;
use std::time::Duration;

use clap::Args;
use distributed_mutex::{MAX_ELECTION_NAME_LEN, MAX_ELECTION_VALUE_LEN};

use crate::duration;
use crate::exit;
use crate::values::{parse_ttl, OnLost};

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only names matching this glob (`*` any run, `?` one character),
    /// without the prefix
    #[arg(default_value = "*", value_name = "PATTERN")]
    pub pattern: String,

    /// One JSON object per line: kind, name, holder, token, since_ms,
    /// age_ms, ttl_ms, waiting, and per kind permits_held, readers, writer,
    /// waiting_writers, term
    #[arg(long)]
    pub json: bool,
}

const ELECT_AFTER_HELP: &str = "\
COMMAND runs with DMUTEX_KEY (the election's name), DMUTEX_TOKEN and
DMUTEX_FENCING_TOKEN (the leadership's term, strictly increasing across
leaders) in its environment. The lease is renewed while it runs; a
resignation (COMMAND exits) hands the lead to the next campaigner at once,
a crashed dmutex's lead passes on after --ttl. On loss, COMMAND gets what
--on-lost says and dmutex exits 79, as `dmutex run` does.

Example: dmutex elect --value \"$(hostname)\" scheduler -- /usr/local/bin/scheduler

";

pub fn elect_after_help() -> String {
    format!("{ELECT_AFTER_HELP}{}", exit::TABLE)
}

#[derive(Debug, Args)]
pub struct ElectArgs {
    /// The leader's lease: how long the lead outlives a dmutex that stops
    /// renewing it (a crash), so how long a failover can take
    #[arg(long, default_value = "15s", value_parser = parse_ttl, value_name = "DURATION")]
    pub ttl: Duration,

    /// Wait at most this long to lead, then exit 75 [default: as long as it
    /// takes]
    #[arg(long, value_parser = duration::parse, value_name = "DURATION")]
    pub wait: Option<Duration>,

    /// The value published while leading (`dmutex ls` shows it; library
    /// callers read it with Election::leader) [default: HOST:PID]
    #[arg(long, value_parser = parse_value, value_name = "VALUE")]
    pub value: Option<String>,

    /// What to do to COMMAND when the lead is lost (dmutex exits 79)
    #[arg(long, value_enum, default_value_t = OnLost::Term, value_name = "ACTION")]
    pub on_lost: OnLost,

    /// How long COMMAND may take to exit after SIGTERM on loss before it gets
    /// SIGKILL
    #[arg(long, default_value = "10s", value_parser = duration::parse, value_name = "DURATION")]
    pub grace: Duration,

    /// The election's name
    #[arg(value_parser = parse_election)]
    pub name: String,

    /// The command and its arguments (put `--` before it when it starts with
    /// `-`)
    #[arg(required = true, trailing_var_arg = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

fn parse_election(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > MAX_ELECTION_NAME_LEN {
        return Err(format!(
            "an election name must be 1 to {MAX_ELECTION_NAME_LEN} bytes long"
        ));
    }
    Ok(text.to_owned())
}

fn parse_value(text: &str) -> Result<String, String> {
    if text.len() > MAX_ELECTION_VALUE_LEN {
        return Err(format!(
            "an election value must be at most {MAX_ELECTION_VALUE_LEN} bytes long"
        ));
    }
    Ok(text.to_owned())
}
