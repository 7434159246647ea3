#![allow(dead_code)]
//! Test fixture: private, throw-away `redis-server` processes.
//!
//! Every [`RedisServer`] is its own `redis-server` child process listening on a
//! free loopback port, with no persistence and its own temporary directory.
//! Nothing here ever touches port 6379 or a shared server, so tests can run in
//! parallel (threads under `cargo test`, processes under `cargo nextest`).
//!
//! Environment overrides: `REDIS_SERVER_BIN` / `REDIS_CLI_BIN` (default:
//! `redis-server` / `redis-cli` from `PATH`).
//!
//! Included by `tests/it/main.rs` (the integration suite),
//! `tests/containers.rs` and the benches. Besides [`RedisServer`]:
//!
//! * [`common`]: the `Fixture` (server + raw client + mutex), mutexes and
//!   builders over a server or URL, raw reads, the server's counters, the
//!   library's scripts, shared assertions;
//! * [`proxy`]: a fault-injecting loopback TCP proxy;
//! * [`queue`]: the wait queue's name and length, and a mutex per waiter;
//! * [`logs`]: capturing the library's `tracing` events in a test;
//! * [`exclusion`]: the mutual-exclusion property test (local and container);
//! * [`audit`]: the rig and fault injector of the mutual-exclusion audit;
//! * [`cluster`]: a private six-node Redis Cluster (3 masters, 3 replicas);
//! * [`redlock`]: N independent masters for Redlock, and its exclusion ledger;
//! * [`sentinel`]: a private Sentinel set (1 master, 2 replicas, 3 sentinels);
//! * [`reshard`]: moving slots between that cluster's masters under traffic;
//! * [`tls`]: a server with a TLS port, and certificates made at test time.

pub mod audit;
pub mod cluster;
pub mod common;
pub mod exclusion;
pub mod logs;
pub mod proxy;
pub mod queue;
pub mod readme_user;
pub mod redlock;
pub mod reshard;
pub mod sentinel;
pub mod tls;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fred::prelude::*;

/// How long a freshly spawned server may take to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many fresh ports `start_with` tries before giving up.
const START_ATTEMPTS: usize = 5;
/// How long `restart` keeps retrying to bind the same port.
const RESTART_TIMEOUT: Duration = Duration::from_secs(10);

static DIR_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A private `redis-server` child process. Killed (and its temp dir removed) on drop.
pub struct RedisServer {
    port: u16,
    extra_args: Vec<String>,
    dir: PathBuf,
    log_path: PathBuf,
    /// Length of the log file when the current incarnation was spawned.
    log_offset: usize,
    /// The running server, `None` after [`RedisServer::kill`].
    child: Option<Child>,
    /// A tiny `sh` that SIGKILLs the server when our process dies without
    /// running `Drop` (e.g. the test binary itself was SIGKILLed): it blocks
    /// reading this pipe, which the kernel closes when we exit.
    watchdog: Option<(Child, ChildStdin)>,
    /// A config file written to the server's directory and passed as the
    /// first argument (sentinel mode needs one, writable); `None` for none.
    config: Option<String>,
}

impl RedisServer {
    /// Start a server on a free loopback port, no persistence.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Start a server with extra `redis-server` arguments, e.g.
    /// `&["--requirepass", "s3cret"]` or
    /// `&["--maxmemory", "1mb", "--maxmemory-policy", "noeviction"]`.
    pub fn start_with(extra_args: &[&str]) -> RedisServer {
        Self::start_on_ports(extra_args, free_port)
    }

    /// [`start_with`](RedisServer::start_with), taking its port from
    /// `pick_port` (called again for each attempt), e.g. a port whose
    /// cluster bus port is free too (see [`cluster`]).
    pub fn start_on_ports(extra_args: &[&str], pick_port: impl FnMut() -> u16) -> RedisServer {
        Self::start_full(None, extra_args, pick_port)
    }

    /// [`start_with`](RedisServer::start_with) with a config file: `config`
    /// is written to `server.conf` in the server's own directory (once: the
    /// server may rewrite it, as a sentinel does) and passed as the first
    /// argument, before the fixture's own options and `extra_args`. For a
    /// sentinel: `start_with_config("sentinel monitor ...", &["--sentinel"])`.
    pub fn start_with_config(config: &str, extra_args: &[&str]) -> RedisServer {
        Self::start_full(Some(config.to_owned()), extra_args, free_port)
    }

    fn start_full(
        config: Option<String>,
        extra_args: &[&str],
        mut pick_port: impl FnMut() -> u16,
    ) -> RedisServer {
        let dir = unique_temp_dir();
        let log_path = dir.join("redis.log");
        let mut server = RedisServer {
            port: 0,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            dir,
            log_path,
            log_offset: 0,
            child: None,
            watchdog: None,
            config,
        };

        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            server.port = pick_port();
            match server.spawn_and_wait() {
                Ready::Yes => return server,
                // Someone else got the port between `free_port` and the bind.
                Ready::Exited(status) if server.log_says_port_in_use() => {
                    failures.push(format!("port {} in use ({status})", server.port));
                }
                Ready::NotOurs => {
                    failures.push(format!("port {} answered by another process", server.port));
                }
                Ready::Exited(status) => {
                    server.fail(&format!("redis-server exited during startup ({status})"))
                }
                Ready::TimedOut(last) => server.fail(&format!(
                    "redis-server did not answer PING within {READY_TIMEOUT:?} (last probe: {last})"
                )),
            }
        }
        server.fail(&format!(
            "could not start redis-server after {START_ATTEMPTS} attempts: {}",
            failures.join("; ")
        ))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT` (never contains a password, even with `--requirepass`).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL the server and reap it. Idempotent.
    pub fn kill(&mut self) {
        // Closing the watchdog's pipe makes it SIGCONT + SIGKILL the server;
        // wait for it so that has happened before we reap the server (until
        // then the pid cannot be reused, so no stray process can be hit).
        self.stop_watchdog();
        if let Some(mut child) = self.child.take() {
            // In case there was no watchdog: continue (if paused) and kill.
            signal(&child, "CONT");
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }

    /// SIGKILL the server at once (one `kill(2)`, no helper process in
    /// between: for a kill timed right after a reply), then reap it as
    /// [`kill`](RedisServer::kill) does. Returns when the signal was sent.
    /// Idempotent.
    pub fn sigkill(&mut self) -> Instant {
        if let Some(child) = self.child.as_mut() {
            // Not reaped yet, so the pid cannot have been reused.
            let _ = child.kill();
        }
        let sent = Instant::now();
        self.kill();
        sent
    }

    /// The server's process id, `None` once killed.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kill the server (if running) and start a fresh one on the SAME port.
    /// All data is lost. Returns once the new server answers `PING`.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + RESTART_TIMEOUT;
        loop {
            let outcome = self.spawn_and_wait();
            let reason = match outcome {
                Ready::Yes => return,
                Ready::Exited(status) if self.log_says_port_in_use() => {
                    format!("port {} still in use ({status})", self.port)
                }
                Ready::NotOurs => format!("port {} taken by another process", self.port),
                Ready::Exited(status) => {
                    self.fail(&format!("redis-server exited during restart ({status})"))
                }
                Ready::TimedOut(last) => self.fail(&format!(
                    "restarted redis-server did not answer PING within {READY_TIMEOUT:?} (last probe: {last})"
                )),
            };
            if Instant::now() >= deadline {
                self.fail(&format!("could not restart on the same port: {reason}"));
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGSTOP the server: connections stay open but nothing is answered.
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            signal(child, "STOP");
        }
    }

    /// SIGCONT a paused server.
    pub fn resume(&self) {
        if let Some(child) = &self.child {
            signal(child, "CONT");
        }
    }

    /// A connected raw fred client for assertions (constant 100 ms reconnect
    /// policy, unlimited attempts; 2 s connection and command timeouts).
    /// Servers started with `--requirepass` need their own client (the URL has
    /// no password).
    pub async fn client(&self) -> Client {
        raw_client(&self.url()).await
    }

    /// Run `redis-cli -h 127.0.0.1 -p PORT <args...>` and return its trimmed
    /// stdout (raw output mode: nil is an empty string, errors are printed as
    /// `ERR ...`). For a `--requirepass` server pass `&["-a", PW, "--no-auth-warning", ...]`.
    pub fn cli(&self, args: &[&str]) -> String {
        let port = self.port.to_string();
        let output = Command::new(redis_cli_bin())
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("failed to run {}: {e}", redis_cli_bin()));
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Run `redis-cli -h 127.0.0.1 -p PORT` with `commands` (one per line)
    /// on its stdin, all on one connection (e.g. `READONLY` then `GET k` on a
    /// cluster replica), and return its trimmed stdout, one reply a line.
    pub fn cli_session(&self, commands: &str) -> String {
        let port = self.port.to_string();
        let mut child = Command::new(redis_cli_bin())
            .args(["-h", "127.0.0.1", "-p", &port])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("failed to run {}: {e}", redis_cli_bin()));
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(commands.as_bytes())
            .expect("write to redis-cli");
        drop(stdin);
        let output = child.wait_with_output().expect("redis-cli output");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Path of the server's log file (stdout + stderr of every incarnation).
    pub fn log_path(&self) -> PathBuf {
        self.log_path.clone()
    }

    /// Contents of the server's log file.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    // ---- internals ------------------------------------------------------

    fn spawn_and_wait(&mut self) -> Ready {
        self.spawn();
        let outcome = self.wait_ready();
        if !matches!(outcome, Ready::Yes) {
            self.kill();
        }
        outcome
    }

    fn spawn(&mut self) {
        fs::create_dir_all(&self.dir).expect("create redis temp dir");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open redis log file");
        let log_err = log.try_clone().expect("clone log file handle");
        self.log_offset = log.metadata().map(|m| m.len() as usize).unwrap_or(0);
        let mut cmd = Command::new(redis_server_bin());
        if let Some(config) = &self.config {
            let path = self.dir.join("server.conf");
            if !path.exists() {
                fs::write(&path, config).expect("write the server's config file");
            }
            cmd.arg(&path);
        }
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--protected-mode", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--loglevel", "warning"]);
        if redis_major_version() >= 7 {
            // DEBUG is disabled by default since 7.0; tests may need it.
            cmd.args(["--enable-debug-command", "yes"]);
        }
        cmd.args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("failed to spawn {}: {e}", redis_server_bin()));
        self.watchdog = spawn_watchdog(child.id());
        self.child = Some(child);
    }

    fn stop_watchdog(&mut self) {
        if let Some((mut watchdog, stdin)) = self.watchdog.take() {
            drop(stdin); // EOF: the watchdog kills the server and exits
            let _ = watchdog.wait();
        }
    }

    fn wait_ready(&mut self) -> Ready {
        let password = self.password();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("server spawned");
            if let Ok(Some(status)) = child.try_wait() {
                return Ready::Exited(status.to_string());
            }
            let pid = child.id();
            let last = match probe(self.port, password.as_deref()) {
                Ok(Probe::Pid(p)) if p == pid => return Ready::Yes,
                Ok(Probe::Pid(_)) => {
                    // Another server answered on "our" port; ours will exit
                    // with EADDRINUSE (or is about to).
                    return Ready::NotOurs;
                }
                Ok(Probe::NoAuth) => {
                    // Password unknown to us (e.g. ACL file): accept if our
                    // process is still alive shortly afterwards.
                    thread::sleep(Duration::from_millis(100));
                    let child = self.child.as_mut().expect("server spawned");
                    match child.try_wait() {
                        Ok(None) => return Ready::Yes,
                        Ok(Some(status)) => return Ready::Exited(status.to_string()),
                        Err(e) => format!("try_wait: {e}"),
                    }
                }
                Ok(Probe::Other(line)) => format!("reply {line:?}"),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Ready::TimedOut(last);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn password(&self) -> Option<String> {
        self.extra_args
            .windows(2)
            .rev()
            .find(|w| w[0] == "--requirepass")
            .map(|w| w[1].clone())
    }

    /// Whether the current incarnation logged a bind failure.
    fn log_says_port_in_use(&self) -> bool {
        let log = fs::read(&self.log_path).unwrap_or_default();
        let log = String::from_utf8_lossy(log.get(self.log_offset..).unwrap_or_default());
        log.contains("Address already in use") || log.contains("EADDRINUSE")
    }

    fn fail(&mut self, msg: &str) -> ! {
        self.kill();
        let args = self.extra_args.join(" ");
        panic!(
            "{msg}\nport: {}, extra args: [{args}], dir: {}\n--- redis log ---\n{}",
            self.port,
            self.dir.display(),
            self.log()
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A connected raw fred client for `url` (a server's or a cluster's), for
/// assertions: constant 100 ms reconnect policy, unlimited attempts, 2 s
/// connection and command timeouts.
pub async fn raw_client(url: &str) -> Client {
    raw_client_with(url, |_| {}).await
}

/// [`raw_client`] with `edit` applied to its connection settings.
pub async fn raw_client_with(
    url: &str,
    edit: impl FnOnce(&mut fred::types::config::ConnectionConfig),
) -> Client {
    let config = Config::from_url(url).expect("valid redis url");
    let client = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
            edit(c);
        })
        .with_performance_config(|p| {
            p.default_command_timeout = Duration::from_secs(2);
        })
        .set_policy(ReconnectPolicy::new_constant(0, 100))
        .build()
        .expect("build fred client");
    client
        .init()
        .await
        .unwrap_or_else(|e| panic!("connect fred client to {url}: {e}"));
    client
}

/// A port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// `redis://127.0.0.1:PORT` where nothing listens.
pub fn unreachable_url() -> String {
    format!("redis://127.0.0.1:{}", free_port())
}

// ---- private helpers ------------------------------------------------------

enum Ready {
    Yes,
    Exited(String),
    NotOurs,
    TimedOut(String),
}

enum Probe {
    /// `PING` answered and `INFO server` reported this `process_id`.
    Pid(u32),
    /// `-NOAUTH` and we do not know the password.
    NoAuth,
    /// Any other reply (e.g. `-LOADING`).
    Other(String),
}

fn redis_server_bin() -> String {
    std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".to_string())
}

fn redis_cli_bin() -> String {
    std::env::var("REDIS_CLI_BIN").unwrap_or_else(|_| "redis-cli".to_string())
}

/// Major version of the `redis-server` binary (0 if it cannot be determined).
fn redis_major_version() -> u32 {
    static VERSION: OnceLock<u32> = OnceLock::new();
    *VERSION.get_or_init(|| {
        let out = Command::new(redis_server_bin())
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("failed to run {} --version: {e}", redis_server_bin()));
        // "Redis server v=7.0.15 sha=..."
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .find_map(|w| w.strip_prefix("v="))
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse().ok())
            .unwrap_or(0)
    })
}

fn unique_temp_dir() -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = DIR_COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "distributed-mutex-redis-{}-{n}-{nanos}",
        std::process::id()
    ));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Send `kill -SIG pid` (SIG without the `SIG` prefix, e.g. "STOP").
fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Start `sh` that SIGCONT+SIGKILLs `pid` once its stdin reaches EOF, i.e. when
/// this test process exits without dropping the fixture. It ignores
/// INT/TERM/HUP so a Ctrl-C of the test run still cleans up paused servers.
fn spawn_watchdog(pid: u32) -> Option<(Child, ChildStdin)> {
    let mut child = Command::new("sh")
        .args([
            "-c",
            "trap '' INT TERM HUP; cat >/dev/null; kill -CONT \"$1\" 2>/dev/null; kill -KILL \"$1\" 2>/dev/null",
            "redis-watchdog",
        ])
        .arg(pid.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let stdin = child.stdin.take()?;
    Some((child, stdin))
}

/// Connect, `PING` (with `AUTH` first if needed and known), then read the
/// server's `process_id` from `INFO server`.
fn probe(port: u16, password: Option<&str>) -> io::Result<Probe> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(250))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.set_write_timeout(Some(Duration::from_secs(1)))?;
    let mut reader = BufReader::new(stream.try_clone()?);

    stream.write_all(b"PING\r\n")?;
    let reply = read_line(&mut reader)?;
    if reply.starts_with("-NOAUTH") {
        let Some(password) = password else {
            return Ok(Probe::NoAuth);
        };
        stream.write_all(&resp_command(&["AUTH", password]))?;
        let reply = read_line(&mut reader)?;
        if !reply.starts_with("+OK") {
            return Ok(Probe::Other(reply));
        }
    } else if !reply.starts_with("+PONG") {
        return Ok(Probe::Other(reply));
    }

    stream.write_all(b"INFO server\r\n")?;
    let header = read_line(&mut reader)?;
    let Some(len) = header
        .strip_prefix('$')
        .and_then(|n| n.parse::<usize>().ok())
    else {
        return Ok(Probe::Other(header));
    };
    let mut body = vec![0u8; len + 2];
    reader.read_exact(&mut body)?;
    let body = String::from_utf8_lossy(&body);
    match body
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
    {
        Some(pid) => Ok(Probe::Pid(pid)),
        None => Ok(Probe::Other("INFO without process_id".to_string())),
    }
}

fn read_line(reader: &mut BufReader<TcpStream>) -> io::Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    Ok(line.trim_end().to_string())
}

fn resp_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}
