//! Leader election with whole processes SIGKILLed and SIGSTOPped (a
//! proptest over fault schedules), on one server and on the cluster: three
//! child processes campaign in a loop and, while leading, log "valid from
//! T until D" records (wall clock, from `remaining()`) to a separate ledger
//! server; no two records of different terms may overlap in time.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use distributed_mutex::DistributedMutex;
use fred::prelude::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};

use crate::support::cluster::RedisCluster;
use crate::support::common::ms;
use crate::support::RedisServer;

const CHILDREN: usize = 3;
const LEDGER: &str = "ledger";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Not a test on its own: a campaigner process of the tests below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of the election process tests; they run it"]
async fn child_campaigns() {
    let var = |name: &str| std::env::var(name).expect("run by the election process tests only");
    let (url, name, ledger_url, id) = (
        var("DMUTEX_CHILD_URL"),
        var("DMUTEX_CHILD_ELECTION"),
        var("DMUTEX_CHILD_LEDGER"),
        var("DMUTEX_CHILD_ID"),
    );
    let mutex = DistributedMutex::connect(&url).await.unwrap();
    let ledger = crate::support::raw_client(&ledger_url).await;
    let election = mutex.election(&name).ttl(ms(600)).retry_period(ms(50));
    // A child its parent left behind (the parent was killed) ends itself.
    let end_of_life = tokio::time::Instant::now() + Duration::from_secs(120);
    while tokio::time::Instant::now() < end_of_life {
        let campaign = tokio::time::timeout(Duration::from_secs(5), election.campaign(id.clone()));
        let Ok(Ok(leadership)) = campaign.await else {
            continue;
        };
        let until = tokio::time::Instant::now() + ms(fastrand::u64(100..400));
        while tokio::time::Instant::now() < until {
            // Read the clock before the lease: the record never claims
            // more than the lease said at that moment.
            let at = now_ms();
            let left = leadership.remaining();
            if left.is_zero() || leadership.is_lost() {
                break;
            }
            let record = format!(
                "{id} {} {at} {}",
                leadership.term(),
                at + left.as_millis() as u64
            );
            let _: Result<i64, _> = ledger.rpush(LEDGER, record).await;
            tokio::time::sleep(ms(20)).await;
        }
        // Giving the lead up ends the claims of this term from now on
        // (logged before the release, so before anyone else can lead).
        let end = format!("end {id} {} {}", leadership.term(), now_ms());
        let _: i64 = ledger.rpush(LEDGER, end).await.expect("ledger");
        if fastrand::bool() {
            let _ = leadership.resign().await;
        } else {
            drop(leadership);
        }
    }
}

/// A fault on one child: SIGKILL (then a new child), or SIGSTOP for a
/// while (then SIGCONT).
#[derive(Debug, Clone)]
enum Fault {
    Kill(usize),
    Stop(usize, u64),
    Nothing,
}

fn schedule() -> impl Strategy<Value = Vec<(u64, Fault)>> {
    let fault = prop_oneof![
        (0..CHILDREN).prop_map(Fault::Kill),
        (0..CHILDREN, 100u64..1500).prop_map(|(n, t)| Fault::Stop(n, t)),
        Just(Fault::Nothing),
    ];
    proptest::collection::vec((100u64..700, fault), 3..8)
}

struct Children {
    url: String,
    ledger: String,
    name: String,
    procs: Vec<Child>,
}

impl Children {
    fn spawn(&self, id: usize) -> Child {
        Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "election_procs::child_campaigns",
                "--ignored",
                "--test-threads=1",
            ])
            .env("DMUTEX_CHILD_URL", &self.url)
            .env("DMUTEX_CHILD_ELECTION", &self.name)
            .env("DMUTEX_CHILD_LEDGER", &self.ledger)
            .env("DMUTEX_CHILD_ID", format!("c{id}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a child")
    }

    fn signal(&self, i: usize, sig: &str) {
        let pid = self.procs[i].id().to_string();
        let _ = Command::new("kill").args([sig, &pid]).status();
    }

    fn apply(&mut self, fault: &Fault) {
        match *fault {
            Fault::Kill(i) => {
                let _ = self.procs[i].kill();
                let _ = self.procs[i].wait();
                self.procs[i] = self.spawn(i);
            }
            Fault::Stop(i, t) => {
                self.signal(i, "-STOP");
                std::thread::sleep(ms(t));
                self.signal(i, "-CONT");
            }
            Fault::Nothing => {}
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.procs {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `(id, term, from, until)` records.
type Record = (String, u64, u64, u64);

/// The validity records, each cut at the end its leader logged for its
/// term (a resignation or drop gives the lease up before it runs out).
fn parse(lines: &str) -> Vec<Record> {
    let mut records = Vec::new();
    let mut ends = std::collections::HashMap::new();
    for line in lines.lines().filter(|l| !l.is_empty()) {
        let parts: Vec<&str> = line.split(' ').collect();
        let num = |i: usize| parts[i].parse::<u64>().expect("a number");
        if parts[0] == "end" {
            ends.insert(num(2), num(3));
        } else {
            records.push((parts[0].to_owned(), num(1), num(2), num(3)));
        }
    }
    for record in &mut records {
        if let Some(&end) = ends.get(&record.1) {
            record.3 = record.3.min(end);
        }
    }
    records
}

/// Records of different terms whose intervals overlap.
fn overlaps(records: &[Record]) -> Vec<String> {
    let mut found = Vec::new();
    for (i, a) in records.iter().enumerate() {
        for b in &records[i + 1..] {
            if a.1 != b.1 && a.2 < b.3 && b.2 < a.3 {
                found.push(format!("{a:?} overlaps {b:?}"));
            }
        }
    }
    found
}

/// Runs one schedule against `url`; the ledger's records.
fn run_case(url: &str, ledger: &RedisServer, name: String, faults: &[(u64, Fault)]) -> Vec<Record> {
    let mut children = Children {
        url: url.to_owned(),
        ledger: ledger.url(),
        name,
        procs: Vec::new(),
    };
    children.procs = (0..CHILDREN).map(|i| children.spawn(i)).collect();
    std::thread::sleep(ms(800));
    for (pause, fault) in faults {
        std::thread::sleep(ms(*pause));
        children.apply(fault);
    }
    std::thread::sleep(ms(500));
    drop(children);
    let lines = ledger.cli(&["LRANGE", LEDGER, "0", "-1"]);
    ledger.cli(&["DEL", LEDGER]);
    parse(&lines)
}

fn check(url: &str, cases: u32) {
    let ledger = RedisServer::start();
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        max_shrink_iters: 4,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let round = AtomicUsize::new(0);
    let (records, terms) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let result = runner.run(&schedule(), |faults| {
        let n = round.fetch_add(1, Ordering::SeqCst);
        let found = run_case(url, &ledger, format!("{{e:procs}}:{n}"), &faults);
        let mut distinct: Vec<u64> = found.iter().map(|r| r.1).collect();
        distinct.sort_unstable();
        distinct.dedup();
        records.fetch_add(found.len(), Ordering::SeqCst);
        terms.fetch_add(distinct.len(), Ordering::SeqCst);
        let bad = overlaps(&found);
        prop_assert!(bad.is_empty(), "{:#?}", bad);
        prop_assert!(distinct.len() >= 2, "no handover in the case: {distinct:?}");
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!(
        "{cases} cases: {} leaderships, {} validity records, no overlap",
        terms.into_inner(),
        records.into_inner()
    );
}

/// Three campaigner processes, SIGKILLed and SIGSTOPped at random, on one
/// server: no two leaders' validity intervals overlap.
#[test]
fn no_two_valid_leaders_with_processes_killed_and_stopped_on_one_server() {
    let server = RedisServer::start();
    check(&server.url(), 4);
}

/// The same on the cluster.
#[test]
fn no_two_valid_leaders_with_processes_killed_and_stopped_on_the_cluster() {
    let cluster = RedisCluster::start();
    check(&cluster.url(), 3);
}
