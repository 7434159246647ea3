//! The `dmutex` binary (feature `cli`), run as a real process against a
//! private `redis-server` per test.
//!
//! A test binary of its own, declared in Cargo.toml with
//! `required-features = ["cli"]`: it needs the built binary
//! (`CARGO_BIN_EXE_dmutex`), which exists only with the feature, so without
//! it cargo leaves this file out instead of failing to build it, and the
//! default suite (`tests/it`) stays as it is.
//!
//! ```text
//! cargo nextest run --features cli --test cli
//! ```
//!
//! The commands dmutex runs are small `sh` scripts that talk to the test
//! through files in a scratch directory (started, go, what they saw); every
//! wait is bounded, and a dmutex that outlives its bound is killed and the
//! test fails. `overhead_of_run_over_the_bare_command` is `#[ignore]`d: it is
//! a measurement, run by hand (see its docs).

#[path = "support/mod.rs"]
mod support;

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use support::RedisServer;

/// The longest any one dmutex here may run before the test gives up on it.
const LIMIT: Duration = Duration::from_secs(20);

/// A `dmutex` command against `url`, with nothing inherited that could
/// change it (REDIS_URL, an outer DMUTEX_FENCING_TOKEN).
fn dmutex(url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dmutex"));
    command
        .arg("--url")
        .arg(url)
        .env_remove("REDIS_URL")
        .env_remove("DMUTEX_FENCING_TOKEN")
        .stdin(Stdio::null());
    command
}

/// A throw-away directory for one test: the commands' files and dmutex's
/// stderr. Removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "dmutex-cli-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).expect("create the scratch directory");
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// `path(name)` as a string, for the `sh` scripts.
    fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn read(&self, name: &str) -> String {
        fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    fn exists(&self, name: &str) -> bool {
        self.path(name).exists()
    }

    fn touch(&self, name: &str) {
        fs::write(self.path(name), "").expect("touch");
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A dmutex process started by a test; its stderr goes to a file.
struct Running {
    child: Child,
    stderr: PathBuf,
    started: Instant,
}

impl Running {
    fn start(mut command: Command, scratch: &Scratch, name: &str) -> Running {
        let stderr = scratch.path(&format!("{name}.stderr"));
        let file = fs::File::create(&stderr).expect("create the stderr file");
        command.stdout(Stdio::null()).stderr(file);
        Running {
            child: command.spawn().expect("spawn dmutex"),
            stderr,
            started: Instant::now(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits for dmutex to exit: its exit code, its stderr, how long it ran.
    fn finish(mut self) -> Finished {
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if self.started.elapsed() > LIMIT {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "dmutex ran for more than {LIMIT:?}; its stderr: {}",
                    fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(10));
        };
        let stderr = fs::read_to_string(&self.stderr).unwrap_or_default();
        assert!(!stderr.contains("panicked"), "dmutex panicked: {stderr}");
        Finished {
            code: code(status),
            stderr,
            took: self.started.elapsed(),
        }
    }
}

struct Finished {
    code: i32,
    stderr: String,
    took: Duration,
}

/// Runs a dmutex command to its end.
fn finish(command: Command, scratch: &Scratch, name: &str) -> Finished {
    Running::start(command, scratch, name).finish()
}

fn code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| panic!("dmutex itself was killed by signal {:?}", status.signal()))
}

/// Polls `done` every 10 ms for up to `limit`.
fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    done()
}

/// A script that says it started, then runs until the test creates `go`,
/// then appends `mark` to `log`.
fn hold_until_go(scratch: &Scratch, started: &str, mark: &str) -> String {
    format!(
        "touch {started}; while [ ! -e {go} ]; do sleep 0.02; done; echo {mark} >> {log}",
        started = scratch.p(started),
        go = scratch.p("go"),
        log = scratch.p("log"),
    )
}

fn key_exists(server: &RedisServer, key: &str) -> bool {
    server.cli(&["EXISTS", key]) == "1"
}

fn send_signal(pid: u32, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a pid");
    rustix::process::kill_process(pid, signal).expect("send the signal");
}

#[test]
fn a_second_run_with_no_wait_exits_75_a_bounded_wait_runs_out_and_sigterm_ends_a_wait() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let mut holder = dmutex(&server.url());
    holder.args(["run", "job", "--", "sh", "-c"]);
    holder.arg(hold_until_go(&scratch, "a-started", "a"));
    let holder = Running::start(holder, &scratch, "holder");
    assert!(eventually(LIMIT, || scratch.exists("a-started")));

    let mut second = dmutex(&server.url());
    second.args(["run", "--no-wait", "job", "--", "touch"]);
    second.arg(scratch.p("b-ran"));
    let second = finish(second, &scratch, "second");
    assert_eq!(second.code, 75, "{}", second.stderr);
    assert!(second.stderr.contains("busy"), "{}", second.stderr);
    assert!(
        !scratch.exists("b-ran"),
        "the busy run must not run its command"
    );

    let mut quiet = dmutex(&server.url());
    quiet.args(["run", "--quiet", "--no-wait", "job", "--", "true"]);
    let quiet = finish(quiet, &scratch, "quiet");
    assert_eq!((quiet.code, quiet.stderr.as_str()), (75, ""));

    let mut third = dmutex(&server.url());
    third.args(["run", "--wait", "300ms", "job", "--", "touch"]);
    third.arg(scratch.p("c-ran"));
    let third = finish(third, &scratch, "third");
    assert_eq!(third.code, 75, "{}", third.stderr);
    assert!(third.took >= Duration::from_millis(300), "{:?}", third.took);
    assert!(third.stderr.contains("waiting"), "{}", third.stderr);
    assert!(third.stderr.contains("still busy"), "{}", third.stderr);
    assert!(!scratch.exists("c-ran"));

    // A waiter given SIGTERM gives up: 128 + 15, its command never runs.
    let holders_token = server.cli(&["GET", "job"]);
    let mut fourth = dmutex(&server.url());
    fourth.args(["run", "job", "--", "touch"]);
    fourth.arg(scratch.p("d-ran"));
    let fourth = Running::start(fourth, &scratch, "fourth");
    let stderr = scratch.path("fourth.stderr");
    let said = || fs::read_to_string(&stderr).unwrap_or_default();
    assert!(
        eventually(LIMIT, || said().contains("waiting")),
        "{}",
        said()
    );
    send_signal(fourth.pid(), rustix::process::Signal::TERM);
    let fourth = fourth.finish();
    assert_eq!(fourth.code, 143, "{}", fourth.stderr);
    assert!(
        fourth.stderr.contains("SIGTERM while waiting"),
        "{}",
        fourth.stderr
    );
    assert!(!scratch.exists("d-ran"));
    assert_eq!(server.cli(&["GET", "job"]), holders_token);

    scratch.touch("go");
    let holder = holder.finish();
    assert_eq!(holder.code, 0, "{}", holder.stderr);
    assert!(!key_exists(&server, "job"), "released after the command");
}

#[test]
fn a_second_run_that_waits_runs_its_command_after_the_first_ends() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let mut first = dmutex(&server.url());
    first.args(["run", "job", "--", "sh", "-c"]);
    first.arg(hold_until_go(&scratch, "a-started", "a"));
    let first = Running::start(first, &scratch, "first");
    assert!(eventually(LIMIT, || scratch.exists("a-started")));

    let mut second = dmutex(&server.url());
    second.args(["run", "--wait", "15s", "job", "--", "sh", "-c"]);
    second.arg(format!("echo b >> {}", scratch.p("log")));
    let mut second = Running::start(second, &scratch, "second");
    thread::sleep(Duration::from_millis(400));
    assert!(second.is_running(), "the second run waits");
    assert_eq!(scratch.read("log"), "", "nothing ran in the meantime");

    scratch.touch("go");
    let first = first.finish();
    let second = second.finish();
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(scratch.read("log"), "a\nb\n", "one after the other");
    // Not a terminal here: plain lines, the first at once, then "got".
    assert!(
        second
            .stderr
            .contains("lock `job` is busy; waiting, up to 15s"),
        "{}",
        second.stderr
    );
    assert!(
        second.stderr.contains("got lock `job` after"),
        "{}",
        second.stderr
    );
    assert!(!key_exists(&server, "job"));
}

#[test]
fn a_key_deleted_behind_the_command_gets_it_sigterm_and_exit_79() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let mut run = dmutex(&server.url());
    // Renewal every 500 ms: the loss is seen within about that.
    run.args(["run", "--ttl", "1500ms", "job", "--", "sh", "-c"]);
    run.arg(format!(
        "trap 'echo term > {got}; exit 0' TERM; touch {started}; while :; do sleep 0.02; done",
        got = scratch.p("got"),
        started = scratch.p("started"),
    ));
    let run = Running::start(run, &scratch, "run");
    assert!(eventually(LIMIT, || scratch.exists("started")));
    assert_eq!(server.cli(&["DEL", "job"]), "1");
    let deleted = Instant::now();
    let run = run.finish();
    assert_eq!(run.code, 79, "{}", run.stderr);
    assert_eq!(scratch.read("got"), "term\n", "the command got SIGTERM");
    assert!(
        deleted.elapsed() < Duration::from_secs(5),
        "{:?}",
        deleted.elapsed()
    );
    assert!(
        run.stderr
            .contains("lost lock `job` (its key is gone from Redis)"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_command_that_ignores_sigterm_on_loss_gets_sigkill_after_the_grace() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let mut run = dmutex(&server.url());
    run.args([
        "run", "--ttl", "1500ms", "--grace", "300ms", "job", "--", "sh", "-c",
    ]);
    run.arg(format!(
        "trap '' TERM; touch {started}; while :; do sleep 0.02; done",
        started = scratch.p("started"),
    ));
    let run = Running::start(run, &scratch, "run");
    assert!(eventually(LIMIT, || scratch.exists("started")));
    // Another holder takes the key over.
    assert_eq!(
        server.cli(&["SET", "job", "someone-else", "PX", "60000"]),
        "OK"
    );
    let run = run.finish();
    assert_eq!(run.code, 79, "{}", run.stderr);
    assert!(
        run.stderr.contains("another holder's token"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("sending SIGKILL"), "{}", run.stderr);
    assert_eq!(
        server.cli(&["GET", "job"]),
        "someone-else",
        "the new holder's lock is left alone"
    );
}

#[test]
fn on_lost_kill_and_ignore_do_what_they_say_and_both_exit_79() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    for action in ["kill", "ignore"] {
        let started = format!("started-{action}");
        let done = format!("done-{action}");
        let _ = fs::remove_file(scratch.path("go"));
        let mut run = dmutex(&server.url());
        run.args([
            "run",
            "--ttl",
            "1500ms",
            "--on-lost",
            action,
            "job",
            "--",
            "sh",
            "-c",
        ]);
        run.arg(format!(
            "trap 'echo term >> {log}' TERM; touch {started}; \
             while [ ! -e {go} ]; do sleep 0.02; done; touch {done}",
            log = scratch.p("log"),
            started = scratch.p(&started),
            go = scratch.p("go"),
            done = scratch.p(&done),
        ));
        let mut run = Running::start(run, &scratch, action);
        assert!(eventually(LIMIT, || scratch.exists(&started)));
        assert_eq!(server.cli(&["DEL", "job"]), "1");
        if action == "ignore" {
            let stderr = scratch.path("ignore.stderr");
            let said = || fs::read_to_string(&stderr).unwrap_or_default();
            assert!(
                eventually(LIMIT, || said().contains("letting it run on")),
                "{}",
                said()
            );
            assert!(run.is_running(), "the command runs on");
            scratch.touch("go");
        }
        let run = run.finish();
        assert_eq!(run.code, 79, "{action}: {}", run.stderr);
        assert_eq!(scratch.read("log"), "", "{action}: no SIGTERM");
        assert_eq!(scratch.exists(&done), action == "ignore", "{action}");
    }
}

#[test]
fn sigterm_and_sigint_to_dmutex_reach_the_command_and_the_key_is_released() {
    use rustix::process::Signal;
    let server = RedisServer::start();
    let scratch = Scratch::new();
    for (signal, name) in [(Signal::TERM, "TERM"), (Signal::INT, "INT")] {
        let started = format!("started-{name}");
        let got = format!("got-{name}");
        let mut run = dmutex(&server.url());
        run.args(["run", "job", "--", "sh", "-c"]);
        run.arg(format!(
            "trap 'echo {name} > {got}; exit 3' {name}; touch {started}; \
             while :; do sleep 0.02; done",
            got = scratch.p(&got),
            started = scratch.p(&started),
        ));
        let run = Running::start(run, &scratch, name);
        assert!(eventually(LIMIT, || scratch.exists(&started)));
        assert!(key_exists(&server, "job"));
        send_signal(run.pid(), signal);
        let run = run.finish();
        assert_eq!(run.code, 3, "the command's own code: {}", run.stderr);
        assert_eq!(scratch.read(&got), format!("{name}\n"));
        assert!(
            !key_exists(&server, "job"),
            "released once the command exited"
        );
    }
}

#[test]
fn the_commands_exit_code_passes_through() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    for (script, expected) in [
        ("exit 0", 0),
        ("exit 7", 7),
        ("exit 255", 255),
        // Killed by a signal: 128 + its number, as shells say.
        ("kill -KILL $$", 137),
    ] {
        let mut run = dmutex(&server.url());
        run.args(["run", "job", "--", "sh", "-c", script]);
        let run = finish(run, &scratch, "run");
        assert_eq!(run.code, expected, "{script}: {}", run.stderr);
        assert_eq!(run.stderr, "", "{script}");
        assert!(!key_exists(&server, "job"), "{script}: released");
    }
    let mut missing = dmutex(&server.url());
    missing.args(["run", "job", "--", "/nonexistent/dmutex-test-command"]);
    let missing = finish(missing, &scratch, "missing");
    assert_eq!(missing.code, 127, "{}", missing.stderr);
    assert!(missing.stderr.contains("cannot run"), "{}", missing.stderr);
    assert!(!key_exists(&server, "job"));
}

#[test]
fn an_unreachable_redis_exits_69_within_the_connect_timeout() {
    let scratch = Scratch::new();
    let url = support::unreachable_url();
    let mut run = dmutex(&url);
    run.args(["run", "job", "--", "touch"]);
    run.arg(scratch.p("ran"));
    let mut status = dmutex(&url);
    status.args(["status", "job"]);
    let mut release = dmutex(&url);
    release.args(["release", "job", "--token", "t"]);
    for (name, command) in [("run", run), ("status", status), ("release", release)] {
        let done = finish(command, &scratch, name);
        assert_eq!(done.code, 69, "{name}: {}", done.stderr);
        // The connect timeout is 2 s; a refused port answers at once.
        assert!(
            done.took < Duration::from_secs(4),
            "{name}: {:?}",
            done.took
        );
        assert!(
            done.stderr.contains("cannot connect to Redis"),
            "{name}: {}",
            done.stderr
        );
    }
    assert!(!scratch.exists("ran"));
}

#[test]
fn the_fencing_token_is_in_the_environment_and_increases_between_runs() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let seen = |run: usize| {
        let env = format!("env-{run}");
        let held = format!("held-{run}");
        let mut command = dmutex(&server.url());
        command.args(["run", "--fencing", "job", "--", "sh", "-c"]);
        command.arg(format!(
            "printf '%s %s %s' \"$DMUTEX_KEY\" \"$DMUTEX_TOKEN\" \"$DMUTEX_FENCING_TOKEN\" > {env}; \
             \"${{REDIS_CLI_BIN:-redis-cli}}\" -p {port} --raw GET job > {held}",
            env = scratch.p(&env),
            held = scratch.p(&held),
            port = server.port(),
        ));
        let done = finish(command, &scratch, &env);
        assert_eq!(done.code, 0, "{}", done.stderr);
        let env = scratch.read(&env);
        let fields: Vec<&str> = env.split(' ').collect();
        assert_eq!(fields.len(), 3, "{env:?}");
        assert_eq!(fields[0], "job");
        assert_eq!(
            fields[1],
            scratch.read(&held).trim(),
            "DMUTEX_TOKEN is the lock's value"
        );
        // `<uuid>:<unix ms>:<host>:<pid>`: the default holder label.
        support::common::assert_uuid_v4(&fields[1][..36]);
        assert!(fields[1][36..].starts_with(':'), "{env:?}");
        fields[2].parse::<u64>().expect("a fencing token")
    };
    let first = seen(1);
    let second = seen(2);
    assert!(second > first, "{first} then {second}");

    // Without --fencing, none (not even one inherited from an outer run).
    let mut plain = dmutex(&server.url());
    plain.env("DMUTEX_FENCING_TOKEN", "999");
    plain.args(["run", "job", "--", "sh", "-c"]);
    plain.arg(format!(
        "printf '%s' \"${{DMUTEX_FENCING_TOKEN-unset}}\" > {}",
        scratch.p("plain")
    ));
    let done = finish(plain, &scratch, "plain");
    assert_eq!(done.code, 0, "{}", done.stderr);
    assert_eq!(scratch.read("plain"), "unset");
}

#[test]
fn status_shows_the_holder_its_ttl_and_the_fencing_counter() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let status = |json: bool| {
        let mut command = dmutex(&server.url());
        command.args(["--key-prefix", "app:", "status", "job"]);
        if json {
            command.arg("--json");
        }
        let out = command.stderr(Stdio::inherit()).output().expect("status");
        (
            out.status.code().expect("an exit code"),
            String::from_utf8(out.stdout).expect("UTF-8"),
        )
    };
    let (code, free) = status(true);
    assert_eq!(code, 1, "not held: exit 1");
    assert_eq!(
        free.trim(),
        r#"{"key":"job","redis_key":"app:job","held":false,"token":null,"ttl_ms":null,"fencing_counter":null}"#
    );

    let mut holder = dmutex(&server.url());
    holder.args([
        "--key-prefix",
        "app:",
        "run",
        "--fencing",
        "job",
        "--",
        "sh",
        "-c",
    ]);
    holder.arg(format!(
        "printf '%s' \"$DMUTEX_TOKEN\" > {token}; {hold}",
        token = scratch.p("token"),
        hold = hold_until_go(&scratch, "started", "a"),
    ));
    let holder = Running::start(holder, &scratch, "holder");
    assert!(eventually(LIMIT, || scratch.exists("started")));
    let token = scratch.read("token");
    assert!(key_exists(&server, "app:job"), "the prefix is in the key");

    let (code, held) = status(true);
    assert_eq!(code, 0, "held: exit 0");
    let expected_start =
        format!(r#"{{"key":"job","redis_key":"app:job","held":true,"token":"{token}","ttl_ms":"#);
    assert!(held.starts_with(&expected_start), "{held}");
    assert!(held.trim().ends_with(r#","fencing_counter":1}"#), "{held}");
    let ttl_ms: u64 = held[expected_start.len()..]
        .split(',')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("ttl_ms");
    assert!(ttl_ms > 0 && ttl_ms <= 60_000, "{ttl_ms}");

    let (code, text) = status(false);
    assert_eq!(code, 0);
    assert!(text.contains("held:     yes"), "{text}");
    assert!(text.contains(&format!("token:    {token}")), "{text}");
    assert!(text.contains("lock key: app:job"), "{text}");
    assert!(text.contains("fencing:  1"), "{text}");

    scratch.touch("go");
    assert_eq!(holder.finish().code, 0);
    let (code, after) = status(false);
    assert_eq!(code, 1);
    assert!(after.contains("held:     no"), "{after}");
    assert!(after.contains("fencing:  1"), "the counter stays: {after}");
}

#[test]
fn release_needs_the_holders_token_and_a_lock_value() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let release = |token: &str| {
        let mut command = dmutex(&server.url());
        command.args(["release", "job", "--token", token]);
        finish(command, &scratch, "release")
    };
    assert_eq!(server.cli(&["SET", "job", "tok-1", "PX", "60000"]), "OK");
    let wrong = release("tok-2");
    assert_eq!(wrong.code, 1, "{}", wrong.stderr);
    assert!(wrong.stderr.contains("another token"), "{}", wrong.stderr);
    assert_eq!(server.cli(&["GET", "job"]), "tok-1", "left alone");

    let right = release("tok-1");
    assert_eq!(right.code, 0, "{}", right.stderr);
    assert!(!key_exists(&server, "job"));

    let again = release("tok-1");
    assert_eq!(again.code, 1, "{}", again.stderr);
    assert!(again.stderr.contains("the key is gone"), "{}", again.stderr);

    // A key that holds another type is no lock: 65, and never touched.
    assert_eq!(server.cli(&["RPUSH", "list", "x"]), "1");
    let mut run = dmutex(&server.url());
    run.args(["run", "list", "--", "true"]);
    let run = finish(run, &scratch, "run-list");
    assert_eq!(run.code, 65, "{}", run.stderr);
    let mut status = dmutex(&server.url());
    status.args(["status", "list"]);
    let status = finish(status, &scratch, "status-list");
    assert_eq!(status.code, 65, "{}", status.stderr);
    assert_eq!(server.cli(&["LLEN", "list"]), "1");
}

#[test]
fn bad_input_exits_64_with_a_message_and_never_a_panic() {
    let scratch = Scratch::new();
    // No server: every one of these is refused before connecting.
    let url = support::unreachable_url();
    let cases: &[(&[&str], &str)] = &[
        (&["run", "job"], "<COMMAND>"),
        (&["run", "job", "--"], "<COMMAND>"),
        (&["run", "--ttl", "60", "job", "--", "true"], "has no unit"),
        (
            &["run", "--wait", "soon", "job", "--", "true"],
            "not a duration",
        ),
        (&["run", "--grace", "5x", "job", "--", "true"], "not a unit"),
        (&["run", "", "--", "true"], "must not be empty"),
        (
            &["run", "--no-wait", "--wait", "1s", "job", "--", "true"],
            "cannot be used with",
        ),
        (
            &["run", "--on-lost", "explode", "job", "--", "true"],
            "explode",
        ),
        (
            &["run", "--frobnicate", "job", "--", "true"],
            "--frobnicate",
        ),
        (&["status"], "<KEY>"),
        (&["release", "job"], "--token"),
        (&[], "Usage"),
    ];
    for (args, says) in cases {
        let mut command = dmutex(&url);
        command.args(*args);
        let done = finish(command, &scratch, "bad");
        assert_eq!(done.code, 64, "{args:?}: {}", done.stderr);
        assert!(done.stderr.contains(says), "{args:?}: {}", done.stderr);
    }
    let too_long = "k".repeat(distributed_mutex::MAX_KEY_LEN + 1);
    let mut command = dmutex(&url);
    command.args(["run", &too_long, "--", "true"]);
    assert_eq!(finish(command, &scratch, "long").code, 64);

    // `rediss://` is a bad URL only without the `tls` feature; with it,
    // nothing listens on port 1: unavailable (69).
    let rediss = if cfg!(feature = "tls") { 69 } else { 64 };
    for (url, code) in [
        ("foo://127.0.0.1:6379", 64),
        ("redis://127.0.0.1:notaport", 64),
        ("rediss://127.0.0.1:1", rediss),
    ] {
        let mut command = dmutex(url);
        command.args(["run", "job", "--", "true"]);
        let done = finish(command, &scratch, "url");
        assert_eq!(done.code, code, "{url}: {}", done.stderr);
        assert!(
            done.stderr.contains("dmutex: error: "),
            "{url}: {}",
            done.stderr
        );
    }

    let help = dmutex(&url).arg("--help").output().expect("--help");
    assert_eq!(help.status.code(), Some(0));
    let help = String::from_utf8_lossy(&help.stdout);
    for code in ["64", "69", "75", "79", "126", "127", "128+N"] {
        assert!(help.contains(&format!("  {code} ")), "{code} in --help");
    }
}

/// `dmutex run KEY -- true` against `true`, 20 runs each, alternating, on a
/// private redis-server; prints the medians and the difference. A
/// measurement, not a check. The binary under test is `DMUTEX_BIN` when set,
/// so a release build can be timed without building the test suite's
/// dependencies optimised:
///
/// ```text
/// cargo build --release --features cli --bin dmutex
/// DMUTEX_BIN=target/release/dmutex cargo test --features cli --test cli -- --ignored --nocapture overhead
/// ```
#[test]
#[ignore = "a measurement: run by hand (see its docs)"]
fn overhead_of_run_over_the_bare_command() {
    const RUNS: usize = 20;
    let server = RedisServer::start();
    let time = |command: &mut Command| {
        let started = Instant::now();
        let status = command.status().expect("run");
        let took = started.elapsed();
        assert!(status.success());
        took
    };
    let bin = std::env::var_os("DMUTEX_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_dmutex")));
    let mut bare = Command::new("true");
    let mut locked = Command::new(&bin);
    locked
        .args(["--url", &server.url(), "run", "overhead", "--", "true"])
        .env_remove("REDIS_URL")
        .stdin(Stdio::null());
    // Warm-up: caches, the script cache on the server.
    time(&mut bare);
    time(&mut locked);
    let (mut bare_times, mut locked_times) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        bare_times.push(time(&mut bare));
        locked_times.push(time(&mut locked));
    }
    let median = |times: &mut Vec<Duration>| {
        times.sort();
        (times[RUNS / 2 - 1] + times[RUNS / 2]) / 2
    };
    let (bare, locked) = (median(&mut bare_times), median(&mut locked_times));
    println!(
        "{}: median of {RUNS}: true {bare:?}, dmutex run KEY -- true {locked:?}, overhead {:?}",
        bin.display(),
        locked.saturating_sub(bare),
    );
}

// ---- dmutex elect ---------------------------------------------------------------

/// `dmutex elect NAME -- sh -c SCRIPT` with `--value VALUE`.
fn elect(server: &RedisServer, value: &str, extra: &[&str], script: &str) -> Command {
    let mut command = dmutex(&server.url());
    command.args(["elect", "--value", value]);
    command.args(extra);
    command.args(["sched", "--", "sh", "-c", script]);
    command
}

#[test]
fn elect_runs_the_command_only_while_leading_and_hands_over_on_exit() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let first = elect(
        &server,
        "a",
        &[],
        &format!(
            "echo $DMUTEX_FENCING_TOKEN > {term}; {hold}",
            term = scratch.p("term-a"),
            hold = hold_until_go(&scratch, "started-a", "a"),
        ),
    );
    let first = Running::start(first, &scratch, "a");
    assert!(eventually(LIMIT, || scratch.exists("started-a")));
    let second = elect(
        &server,
        "b",
        &[],
        &format!(
            "echo $DMUTEX_FENCING_TOKEN > {term}; echo b >> {log}; exit 3",
            term = scratch.p("term-b"),
            log = scratch.p("log"),
        ),
    );
    let mut second = Running::start(second, &scratch, "b");
    thread::sleep(Duration::from_millis(700));
    assert!(second.is_running(), "b waits while a leads");
    assert!(!scratch.exists("term-b"), "b's command did not run");
    scratch.touch("go");
    let first = first.finish();
    assert_eq!(first.code, 0, "{}", first.stderr);
    let second = second.finish();
    assert_eq!(second.code, 3, "the command's code: {}", second.stderr);
    assert!(
        second.stderr.contains("waiting to lead `sched`"),
        "{}",
        second.stderr
    );
    assert!(second.stderr.contains("\"a\" leads"), "{}", second.stderr);
    assert_eq!(scratch.read("log"), "a\nb\n", "one after the other");
    let term_a: u64 = scratch.read("term-a").trim().parse().unwrap();
    let term_b: u64 = scratch.read("term-b").trim().parse().unwrap();
    assert!(term_b > term_a, "{term_a} then {term_b}");
}

#[test]
fn elect_on_loss_sigterms_the_command_and_exits_79() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let leader = elect(
        &server,
        "a",
        &["--ttl", "1500ms"],
        &format!(
            "trap 'echo term > {got}; exit 0' TERM; touch {started}; while :; do sleep 0.02; done",
            got = scratch.p("got"),
            started = scratch.p("started"),
        ),
    );
    let leader = Running::start(leader, &scratch, "leader");
    assert!(eventually(LIMIT, || scratch.exists("started")));
    assert_eq!(server.cli(&["FLUSHALL"]), "OK");
    let leader = leader.finish();
    assert_eq!(leader.code, 79, "{}", leader.stderr);
    assert_eq!(scratch.read("got"), "term\n", "the command got SIGTERM");
}

#[test]
fn elect_gives_up_at_its_wait_and_on_sigterm_while_waiting() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let leader = elect(&server, "a", &[], &hold_until_go(&scratch, "started", "a"));
    let leader = Running::start(leader, &scratch, "leader");
    assert!(eventually(LIMIT, || scratch.exists("started")));

    let bounded = elect(&server, "b", &["--wait", "600ms"], "echo ran > never");
    let bounded = finish(bounded, &scratch, "bounded");
    assert_eq!(bounded.code, 75, "{}", bounded.stderr);
    assert!(
        bounded.took >= Duration::from_millis(500),
        "{:?}",
        bounded.took
    );

    let waiting = elect(&server, "c", &[], "echo ran > never");
    let waiting = Running::start(waiting, &scratch, "waiting");
    thread::sleep(Duration::from_millis(500));
    send_signal(waiting.pid(), rustix::process::Signal::TERM);
    let waiting = waiting.finish();
    assert_eq!(waiting.code, 128 + 15, "{}", waiting.stderr);

    scratch.touch("go");
    assert_eq!(leader.finish().code, 0);
}

#[test]
fn status_shows_the_holder_label_and_since() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let status = |json: bool| {
        let mut command = dmutex(&server.url());
        command.args(["status", "job"]);
        if json {
            command.arg("--json");
        }
        let out = command.stderr(Stdio::inherit()).output().expect("status");
        String::from_utf8(out.stdout).expect("UTF-8")
    };
    for (label, shown) in [(Some("web-3"), "web-3".to_owned()), (None, String::new())] {
        let mut holder = dmutex(&server.url());
        holder.arg("run");
        if let Some(label) = label {
            holder.args(["--holder", label]);
        }
        holder.args(["job", "--", "sh", "-c"]);
        holder.arg(hold_until_go(&scratch, "started", "a"));
        let running = Running::start(holder, &scratch, "holder");
        assert!(eventually(LIMIT, || scratch.exists("started")));
        let pid = running.pid();
        // Without --holder: the host and dmutex's pid.
        let shown = if label.is_some() {
            shown
        } else {
            format!(":{pid}")
        };
        let text = status(false);
        let holder_line = text
            .lines()
            .find(|l| l.starts_with("holder:"))
            .unwrap_or("");
        assert!(holder_line.ends_with(&shown), "{text}");
        assert!(text.contains("since:    20"), "{text}");
        let json = status(true);
        assert!(json.contains(",\"holder\":\""), "{json}");
        assert!(json.contains(",\"since_ms\":"), "{json}");
        scratch.touch("go");
        assert_eq!(running.finish().code, 0);
        fs::remove_file(scratch.path("go")).unwrap();
        fs::remove_file(scratch.path("started")).unwrap();
    }
}

// ---- dmutex ls -------------------------------------------------------------------

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `dmutex [--key-prefix app:] ls ARGS`: its exit code and stdout.
fn ls(url: &str, prefix: Option<&str>, args: &[&str]) -> (i32, String) {
    let mut command = dmutex(url);
    if let Some(prefix) = prefix {
        command.args(["--key-prefix", prefix]);
    }
    command.arg("ls").args(args);
    let out = command.stderr(Stdio::inherit()).output().expect("ls");
    (
        out.status.code().expect("an exit code"),
        String::from_utf8(out.stdout).expect("UTF-8"),
    )
}

#[test]
fn ls_lists_locks_semaphores_rwlocks_and_elections_with_holders_and_waiters() {
    use distributed_mutex::{Builder, RetryStrategy};
    let server = RedisServer::start();
    let url = server.url();
    let rt = runtime();
    let held = rt.block_on(async {
        let mutex = |label: &'static str| {
            let url = url.clone();
            async move {
                Builder::connect(&url)
                    .await
                    .unwrap()
                    .key_prefix("app:")
                    .holder(label)
                    .build()
                    .unwrap()
            }
        };
        let (a, b) = (mutex("web-3").await, mutex("web-4").await);
        let lock = a.lock("job").await.unwrap();
        let waiter = tokio::spawn(async move {
            b.acquire("job")
                .retry(RetryStrategy::linear(Duration::from_secs(5), 10))
                .await
        });
        let permits = (
            a.semaphore("downloads", 3).acquire().await.unwrap(),
            a.semaphore("downloads", 3).acquire().await.unwrap(),
        );
        let read = a.rw("config").read().await.unwrap();
        let leader = a
            .election("scheduler")
            .campaign("10.0.0.7:8080")
            .await
            .unwrap();
        let outside = Builder::connect(&url).await.unwrap().build().unwrap();
        let other = outside.lock("not-under-the-prefix").await.unwrap();
        (lock, waiter, permits, read, leader, other, a, outside)
    });
    // The waiter queues in Redis: one waiting on `job`.
    assert!(eventually(LIMIT, || ls(&url, Some("app:"), &["--json"])
        .1
        .contains(r#""name":"job","holder":"web-3""#)
        && ls(&url, Some("app:"), &["--json"])
            .1
            .contains(r#""waiting":1"#)));
    let (code, json) = ls(&url, Some("app:"), &["--json"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = json.lines().collect();
    assert_eq!(lines.len(), 4, "{json}");
    assert!(
        lines[0].starts_with(r#"{"kind":"lock","name":"job","holder":"web-3","token":""#),
        "{json}"
    );
    assert!(lines[0].ends_with(r#","waiting":1}"#), "{json}");
    assert!(
        lines[1].starts_with(r#"{"kind":"semaphore","name":"downloads""#),
        "{json}"
    );
    assert!(lines[1].ends_with(r#","permits_held":2}"#), "{json}");
    assert!(
        lines[2].starts_with(r#"{"kind":"rwlock","name":"config""#),
        "{json}"
    );
    assert!(
        lines[2].ends_with(r#","readers":1,"writer":false,"waiting_writers":0}"#),
        "{json}"
    );
    assert!(
        lines[3].starts_with(r#"{"kind":"election","name":"scheduler","holder":"10.0.0.7:8080""#),
        "{json}"
    );
    assert!(lines[3].contains(r#","waiting":0,"term":"#), "{json}");
    assert!(!json.contains("not-under-the-prefix"));

    let (code, text) = ls(&url, Some("app:"), &[]);
    assert_eq!(code, 0);
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["KIND", "NAME", "HOLDER", "AGE", "TTL", "WAITING", "DETAIL"],
        "{text}"
    );
    assert_eq!(&rows[1][..3], ["lock", "job", "web-3"], "{text}");
    assert_eq!(rows[1][5], "1", "{text}");
    assert_eq!(
        &rows[4][..3],
        ["election", "scheduler", "10.0.0.7:8080"],
        "{text}"
    );
    assert_eq!(rows[4][6], "term", "{text}");
    assert!(rows[4][7].parse::<u64>().is_ok(), "{text}");

    // A pattern on the names.
    let (_, only) = ls(&url, Some("app:"), &["sched*", "--json"]);
    assert_eq!(only.lines().count(), 1, "{only}");
    assert!(only.contains(r#""kind":"election""#));
    // Without the prefix, unprefixed locks (and every string key with an
    // expiry) are listed too.
    let (_, all) = ls(&url, None, &["--json"]);
    assert!(all.contains(r#""name":"not-under-the-prefix""#), "{all}");

    rt.block_on(async move {
        let (lock, waiter, permits, read, leader, other, a, outside) = held;
        drop((permits, read, leader, other));
        lock.release().await.unwrap();
        drop(waiter.await.unwrap().unwrap());
        a.shutdown().await;
        outside.shutdown().await;
    });
    let (code, empty) = ls(&url, Some("app:"), &[]);
    assert_eq!(code, 0);
    assert_eq!(empty.lines().count(), 1, "only the header: {empty}");
}

#[test]
fn ls_reads_every_master_of_a_cluster() {
    use support::cluster::{RedisCluster, MASTERS};
    let cluster = RedisCluster::start();
    let rt = runtime();
    let keys: Vec<String> = (0..MASTERS)
        .map(|i| cluster.key_on_master(i, "ls:"))
        .collect();
    let held = rt.block_on(async {
        let mutex = distributed_mutex::Builder::connect(&cluster.url())
            .await
            .unwrap()
            .holder("node-a")
            .build()
            .unwrap();
        let mut guards = Vec::new();
        for key in &keys {
            guards.push(mutex.lock(key).await.unwrap());
        }
        let leader = mutex
            .election("cluster-leader")
            .campaign("v")
            .await
            .unwrap();
        (guards, leader, mutex)
    });
    let (code, json) = ls(&cluster.url(), None, &["--json"]);
    assert_eq!(code, 0, "{json}");
    for key in &keys {
        assert!(
            json.contains(&format!(
                r#""kind":"lock","name":"{key}","holder":"node-a""#
            )),
            "{key}: {json}"
        );
    }
    assert!(
        json.contains(r#""kind":"election","name":"cluster-leader","holder":"v""#),
        "{json}"
    );
    rt.block_on(async move {
        let (guards, leader, mutex) = held;
        drop((guards, leader));
        mutex.shutdown().await;
    });
}

/// `dmutex ls`, `status` and `elect` as the README's least-privilege ACL
/// user (its `ACL SETUSER locker ...` line, run as written for the prefix
/// `app:`): everything works and the server logs no denial.
#[test]
fn ls_status_and_elect_work_as_the_readme_acl_user() {
    let readme = include_str!("../README.md");
    let line = readme
        .lines()
        .find(|l| l.starts_with("ACL SETUSER locker "))
        .expect("the README's ACL line");
    let server = RedisServer::start();
    let words: Vec<&str> = line.split_whitespace().collect();
    let words: Vec<&str> = words
        .iter()
        .map(|w| if *w == ">CHANGE-ME" { ">pw" } else { w })
        .collect();
    assert_eq!(server.cli(&words), "OK");
    let url = format!("redis://locker:pw@127.0.0.1:{}", server.port());
    let scratch = Scratch::new();
    let mut leader = dmutex(&url);
    leader.args([
        "--key-prefix",
        "app:",
        "elect",
        "--value",
        "v",
        "sched",
        "--",
        "sh",
        "-c",
    ]);
    leader.arg(hold_until_go(&scratch, "started", "a"));
    let leader = Running::start(leader, &scratch, "leader");
    assert!(eventually(LIMIT, || scratch.exists("started")));
    let (code, json) = ls(&url, Some("app:"), &["--json"]);
    assert_eq!(code, 0, "{json}");
    assert!(
        json.contains(r#""kind":"election","name":"sched","holder":"v""#),
        "{json}"
    );
    let mut status = dmutex(&url);
    status.args(["--key-prefix", "app:", "status", "job"]);
    assert_eq!(status.output().unwrap().status.code(), Some(1), "not held");
    scratch.touch("go");
    assert_eq!(leader.finish().code, 0);
    let denials = server.cli(&["ACL", "LOG"]);
    assert!(denials.is_empty(), "denied: {denials}");
}
