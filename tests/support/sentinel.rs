//! A private Redis Sentinel deployment: one master, two replicas and three
//! sentinels, each a [`RedisServer`] on a free loopback port.
//!
//! ```ignore
//! let set = SentinelSet::start();
//! let mutex = DistributedMutex::connect(&set.url()).await?;
//! let old = set.master_port();
//! set.failover(); // SENTINEL FAILOVER on a sentinel
//! let new = set.wait_for_new_master(old, Duration::from_secs(20));
//! ```
//!
//! The sentinels watch the master with `down-after-milliseconds 1000` and
//! quorum 2 (`failover-timeout 10000`), so a SIGKILLed master is replaced
//! within a few seconds. [`SentinelSet::start_with_passwords`] protects the
//! data nodes and/or the sentinels with a password each.
//!
//! Every process is stopped when the `SentinelSet` is dropped (and by each
//! server's watchdog if the test process dies first).

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use super::RedisServer;

/// The service name the sentinels monitor.
pub const SERVICE: &str = "mymaster";
/// Replicas of the master.
pub const REPLICAS: usize = 2;
/// Sentinels.
pub const SENTINELS: usize = 3;
/// How long `start` may take until every sentinel sees the whole set.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One master, two replicas and three sentinels. Stopped on drop.
pub struct SentinelSet {
    /// The data nodes: the master as started first, then its replicas.
    nodes: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
    /// The data nodes' password (`requirepass` and `masterauth`).
    data_password: Option<String>,
    /// The sentinels' own password (`requirepass` on each sentinel).
    sentinel_password: Option<String>,
}

impl SentinelSet {
    /// Starts the set without passwords and waits until every sentinel
    /// reports the master, both replicas and the other two sentinels, and
    /// both replicas are in sync. Panics, with the logs, if that does not
    /// happen in time.
    pub fn start() -> SentinelSet {
        Self::start_with_passwords(None, None)
    }

    /// [`start`](SentinelSet::start), with `data` as the data nodes'
    /// password and `sentinel` as the sentinels' own.
    pub fn start_with_passwords(data: Option<&str>, sentinel: Option<&str>) -> SentinelSet {
        let mut data_args = vec!["--repl-diskless-sync-delay", "0"];
        if let Some(pw) = data {
            data_args.extend(["--requirepass", pw, "--masterauth", pw]);
        }
        let master = RedisServer::start_with(&data_args);
        let master_port = master.port().to_string();
        let mut nodes = vec![master];
        for _ in 0..REPLICAS {
            let mut args = data_args.clone();
            args.extend(["--replicaof", "127.0.0.1", &master_port]);
            nodes.push(RedisServer::start_with(&args));
        }
        let mut config = format!(
            "sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {SERVICE} 1000\n\
             sentinel failover-timeout {SERVICE} 10000\n\
             sentinel parallel-syncs {SERVICE} 2\n"
        );
        if let Some(pw) = data {
            config.push_str(&format!("sentinel auth-pass {SERVICE} {pw}\n"));
        }
        if let Some(pw) = sentinel {
            // The sentinels talk to each other with it too.
            config.push_str(&format!("sentinel sentinel-pass {pw}\n"));
        }
        let mut sentinel_args = vec!["--sentinel"];
        if let Some(pw) = sentinel {
            sentinel_args.extend(["--requirepass", pw]);
        }
        let sentinels = (0..SENTINELS)
            .map(|_| RedisServer::start_with_config(&config, &sentinel_args))
            .collect();
        let set = SentinelSet {
            nodes,
            sentinels,
            data_password: data.map(str::to_owned),
            sentinel_password: sentinel.map(str::to_owned),
        };
        set.wait_ready();
        set
    }

    /// `redis-sentinel://[:DATA_PW@]127.0.0.1:S1?node=127.0.0.1:S2&node=127.0.0.1:S3&sentinelServiceName=mymaster[&sentinelPassword=SENTINEL_PW]`
    /// (every sentinel; fred's URL form).
    pub fn url(&self) -> String {
        let auth = self
            .data_password
            .as_ref()
            .map(|pw| format!(":{pw}@"))
            .unwrap_or_default();
        let mut ports = self.sentinels.iter().map(RedisServer::port);
        let first = ports.next().expect("sentinels");
        let mut query: Vec<String> = ports.map(|p| format!("node=127.0.0.1:{p}")).collect();
        query.push(format!("sentinelServiceName={SERVICE}"));
        if let Some(pw) = &self.sentinel_password {
            query.push(format!("sentinelPassword={pw}"));
        }
        format!(
            "redis-sentinel://{auth}127.0.0.1:{first}?{}",
            query.join("&")
        )
    }

    /// `redis://[:DATA_PW@]127.0.0.1:PORT` of the data node on `port`.
    pub fn node_url(&self, port: u16) -> String {
        let auth = self
            .data_password
            .as_ref()
            .map(|pw| format!(":{pw}@"))
            .unwrap_or_default();
        format!("redis://{auth}127.0.0.1:{port}")
    }

    /// The data nodes, the first master first.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    pub fn sentinels(&self) -> &[RedisServer] {
        &self.sentinels
    }

    /// The data node listening on `port`.
    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no data node on port {port}"))
    }

    /// `redis-cli` on the data node on `port` (with its password).
    pub fn node_cli(&self, port: u16, args: &[&str]) -> String {
        let mut all: Vec<&str> = Vec::new();
        if let Some(pw) = &self.data_password {
            all.extend(["-a", pw, "--no-auth-warning"]);
        }
        all.extend(args);
        self.node(port).cli(&all)
    }

    /// `redis-cli` on the `i`-th sentinel (with its password).
    pub fn sentinel_cli(&self, i: usize, args: &[&str]) -> String {
        let mut all: Vec<&str> = Vec::new();
        if let Some(pw) = &self.sentinel_password {
            all.extend(["-a", pw, "--no-auth-warning"]);
        }
        all.extend(args);
        self.sentinels[i].cli(&all)
    }

    /// The master port the `i`-th sentinel reports (`None` if it does not
    /// answer within a second: read over a socket with timeouts, never
    /// `redis-cli`, which could wait forever).
    pub fn master_port_at(&self, i: usize) -> Option<u16> {
        let reply = self
            .sentinel_query(i, &["SENTINEL", "get-master-addr-by-name", SERVICE])
            .ok()?;
        reply.get(1)?.parse().ok()
    }

    /// Sends one command to the `i`-th sentinel (after `AUTH` if it has a
    /// password) and returns its reply as lines: a simple string, or the
    /// elements of an array of bulk strings; an error reply is an `Err`.
    pub fn sentinel_query(&self, i: usize, args: &[&str]) -> io::Result<Vec<String>> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.sentinels[i].port()));
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        stream.set_write_timeout(Some(Duration::from_secs(1)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut stream = stream;
        if let Some(pw) = &self.sentinel_password {
            stream.write_all(&resp(&["AUTH", pw]))?;
            read_reply(&mut reader)?;
        }
        stream.write_all(&resp(args))?;
        read_reply(&mut reader)
    }

    /// The master port the first answering sentinel reports.
    pub fn master_port(&self) -> u16 {
        (0..self.sentinels.len())
            .find_map(|i| self.master_port_at(i))
            .unwrap_or_else(|| self.fail("no sentinel reports a master"))
    }

    /// `SENTINEL FAILOVER mymaster` on the first sentinel; panics unless it
    /// answers `OK`. Returns when it answered.
    pub fn failover(&self) -> Instant {
        let out = self.sentinel_query(0, &["SENTINEL", "FAILOVER", SERVICE]);
        let at = Instant::now();
        assert_eq!(
            out.as_ref().ok().map(Vec::as_slice),
            Some(&["OK".to_owned()][..]),
            "SENTINEL FAILOVER refused: {out:?}"
        );
        at
    }

    /// SIGKILLs the data node on `port` (by its pid). Returns when the
    /// signal was sent.
    pub fn kill_node(&mut self, port: u16) -> Instant {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no data node on port {port}"));
        node.sigkill()
    }

    /// SIGKILLs every sentinel.
    pub fn kill_sentinels(&mut self) {
        for s in &mut self.sentinels {
            s.sigkill();
        }
    }

    /// Waits until every live sentinel reports a master other than `old`;
    /// returns its port. Panics, with the logs, after `limit`.
    pub fn wait_for_new_master(&self, old: u16, limit: Duration) -> u16 {
        let deadline = Instant::now() + limit;
        loop {
            let ports: Vec<Option<u16>> = (0..self.sentinels.len())
                .filter(|&i| self.sentinels[i].pid().is_some())
                .map(|i| self.master_port_at(i))
                .collect();
            if let Some(Some(new)) = ports.first() {
                if *new != old && ports.iter().all(|p| *p == Some(*new)) {
                    return *new;
                }
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "the sentinels did not all move off port {old} within {limit:?}: {ports:?}"
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until any live sentinel reports a master other than `old`
    /// (the first to know; the others follow within a couple of seconds);
    /// returns its port.
    pub fn wait_for_any_new_master(&self, old: u16, limit: Duration) -> u16 {
        let deadline = Instant::now() + limit;
        loop {
            for i in 0..self.sentinels.len() {
                if self.sentinels[i].pid().is_none() {
                    continue;
                }
                if let Some(new) = self.master_port_at(i) {
                    if new != old {
                        return new;
                    }
                }
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "no sentinel moved off port {old} within {limit:?}"
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// `role:...` of the data node on `port` (`master`, `slave`), empty if
    /// it does not answer.
    pub fn role_of(&self, port: u16) -> String {
        self.node_cli(port, &["ROLE"])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits until the master on `port` has `replicas` replicas online.
    pub fn wait_replicas_online(&self, port: u16, replicas: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let info = self.node_cli(port, &["INFO", "replication"]);
            let online = info
                .lines()
                .filter(|l| l.starts_with("slave") && l.contains("state=online"))
                .count();
            if online >= replicas {
                return;
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "the master on {port} has {online} replicas online, not {replicas}: {info}"
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_ready(&self) {
        let master = self.nodes[0].port();
        self.wait_replicas_online(master, REPLICAS, READY_TIMEOUT);
        let deadline = Instant::now() + READY_TIMEOUT;
        for i in 0..self.sentinels.len() {
            loop {
                let fields = self
                    .sentinel_query(i, &["SENTINEL", "master", SERVICE])
                    .unwrap_or_default();
                let field = |name: &str| -> Option<String> {
                    let at = fields.iter().position(|f| f == name)?;
                    fields.get(at + 1).cloned()
                };
                let ready = field("port").as_deref() == Some(&master.to_string())
                    && field("num-slaves").as_deref() == Some(&REPLICAS.to_string())
                    && field("num-other-sentinels").as_deref()
                        == Some(&(SENTINELS - 1).to_string())
                    && field("flags").as_deref() == Some("master");
                if ready {
                    break;
                }
                if Instant::now() >= deadline {
                    self.fail(&format!("sentinel {i} is not ready: {fields:?}"));
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Panics with `msg` and every process's log.
    pub fn fail(&self, msg: &str) -> ! {
        let mut logs = String::new();
        for n in &self.nodes {
            logs.push_str(&format!("--- data node {} ---\n{}\n", n.port(), n.log()));
        }
        for s in &self.sentinels {
            logs.push_str(&format!("--- sentinel {} ---\n{}\n", s.port(), s.log()));
        }
        panic!("{msg}\n{logs}");
    }
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

fn read_line(reader: &mut BufReader<TcpStream>) -> io::Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
    }
    Ok(line.trim_end().to_owned())
}

/// A simple string, a nil, or an array of bulk strings (what the sentinel
/// commands used here answer).
fn read_reply(reader: &mut BufReader<TcpStream>) -> io::Result<Vec<String>> {
    let header = read_line(reader)?;
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    match header.chars().next() {
        Some('+') => Ok(vec![header[1..].to_owned()]),
        Some('-') => Err(bad(&header)),
        Some('*') if header == "*-1" => Ok(Vec::new()),
        Some('*') => {
            let n: usize = header[1..].parse().map_err(|_| bad(&header))?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                let len = read_line(reader)?;
                let len: usize = len
                    .strip_prefix('$')
                    .and_then(|l| l.parse().ok())
                    .ok_or_else(|| bad(&len))?;
                let mut body = vec![0u8; len + 2];
                io::Read::read_exact(reader, &mut body)?;
                body.truncate(len);
                items.push(String::from_utf8_lossy(&body).into_owned());
            }
            Ok(items)
        }
        _ => Err(bad(&header)),
    }
}
