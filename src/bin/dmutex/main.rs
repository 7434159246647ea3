//! `dmutex`: run a command under a distributed lock or while leading an
//! election, inspect or list locks, or release one by its token. Built with the cargo feature `cli`.
//!
//! | file | owns |
//! |---|---|
//! | `args.rs` | the command line (clap) and its checks |
//! | `options.rs` | the options of `elect` and `ls` |
//! | `duration.rs` | `500ms`, `60s`, `2m`, `1h30m`: parsing and printing |
//! | `exit.rs` | the exit codes, and which error gets which |
//! | `connect.rs` | the mutex from `--url` and `--key-prefix` |
//! | `run.rs` | `dmutex run`: lock, run the child, watch, release |
//! | `held.rs` | what `run` supervises: a lock or a leadership |
//! | `elect.rs` | `dmutex elect`: campaign, then run the child as `run` does |
//! | `progress.rs` | the status line while waiting for a busy lock |
//! | `signals.rs` | SIGINT/SIGTERM/SIGHUP in, signals out to the child |
//! | `status.rs` | `dmutex status` |
//! | `clock.rs` | UTC times and ages for people; the default holder label |
//! | `ls/` | `dmutex ls`: what is held under the prefix (its `mod.rs` lists its files) |
//! | `release.rs` | `dmutex release` (token-checked) |
//! | `json.rs` | the few lines of JSON `status --json` prints |
#![forbid(unsafe_code)]

mod args;
mod clock;
mod connect;
mod duration;
mod elect;
mod exit;
mod held;
mod json;
mod ls;
mod options;
mod progress;
mod release;
mod run;
mod signals;
mod status;
mod values;

use std::process::ExitCode;

use args::Command;

fn main() -> ExitCode {
    let cli = match args::parse() {
        Ok(cli) => cli,
        Err(code) => return ExitCode::from(code),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("dmutex: error: could not start the async runtime: {e}");
            return ExitCode::from(exit::SOFTWARE);
        }
    };
    let code = runtime.block_on(async move {
        let global = cli.global;
        match cli.command {
            Command::Run(args) => run::run(&global, args).await,
            Command::Status(args) => status::status(&global, args).await,
            Command::Release(args) => release::release(&global, args).await,
            Command::Elect(args) => elect::elect(&global, args).await,
            Command::Ls(args) => ls::ls(&global, args).await,
        }
    });
    ExitCode::from(code)
}
