//! The property's bookkeeping for one cell: who holds what now (each
//! holder with a view of its own validity), the overlaps seen, which guards
//! found out they had lost their lease, and the counts that show the cell
//! contended.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use super::prim::{Role, View};

struct Entry {
    id: u64,
    role: Role,
    view: View,
}

/// Two or more holders of a resource that all believed they held it.
#[derive(Debug, Clone)]
pub struct Overlap {
    pub at: Instant,
    /// The guard that came in, then the valid holders it met.
    pub ids: Vec<u64>,
    pub text: String,
}

#[derive(Default)]
pub struct Ledger {
    holders: Mutex<HashMap<String, Vec<Entry>>>,
    overlaps: Mutex<Vec<Overlap>>,
    found_out: Mutex<HashSet<u64>>,
    violations: Mutex<Vec<String>>,
    next_id: AtomicUsize,
    /// Guards obtained.
    pub taken: AtomicUsize,
    /// One-attempt acquisitions that found the resource busy, and waits
    /// that ran out.
    pub refused: AtomicUsize,
    /// Waiting acquisitions that got in after finding a holder there.
    pub waited: AtomicUsize,
    /// Guards that reported their lease lost (or were told `NotHeld`).
    pub lost: AtomicUsize,
    /// Transient errors (a fault's).
    pub transient: AtomicUsize,
}

/// Whether `new` (in `role`) may hold alongside the valid holders `others`.
fn conflicts(role: Role, others: &[&Entry]) -> bool {
    match role {
        Role::Exclusive => !others.is_empty(),
        Role::Reader => others.iter().any(|e| e.role == Role::Exclusive),
        Role::Permit(n) => others.len() >= n as usize,
    }
}

impl Ledger {
    pub fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) as u64
    }

    /// Guards entered so far.
    pub fn entered(&self) -> usize {
        self.next_id.load(Ordering::Relaxed)
    }

    /// A guard `id` just obtained, claiming `claims`: records an overlap
    /// for each resource where valid holders exclude it.
    pub fn enter(&self, id: u64, claims: Vec<(String, Role)>, view: View) {
        let mut holders = self.holders.lock().unwrap();
        let now = Instant::now();
        for (resource, role) in claims {
            let entries = holders.entry(resource.clone()).or_default();
            // Only a guard that believes it holds counts.
            if view.valid() {
                let valid: Vec<&Entry> = entries.iter().filter(|e| e.view.valid()).collect();
                if conflicts(role, &valid) {
                    let mut ids = vec![id];
                    ids.extend(valid.iter().map(|e| e.id));
                    let text = format!(
                        "{resource}: guard {id} ({role:?}) obtained while {:?} held it with valid leases",
                        valid.iter().map(|e| (e.id, e.role)).collect::<Vec<_>>()
                    );
                    self.overlaps
                        .lock()
                        .unwrap()
                        .push(Overlap { at: now, ids, text });
                }
            }
            entries.push(Entry {
                id,
                role,
                view: view.clone(),
            });
        }
    }

    /// Guard `id` leaves (before it is released or dropped).
    pub fn leave(&self, id: u64) {
        let mut holders = self.holders.lock().unwrap();
        for entries in holders.values_mut() {
            entries.retain(|e| e.id != id);
        }
    }

    /// Guard `id` found out its lease was lost (or could not tell).
    pub fn found_out(&self, id: u64) {
        self.found_out.lock().unwrap().insert(id);
    }

    pub fn violation(&self, text: String) {
        self.violations.lock().unwrap().push(text);
    }

    /// The overlaps and violations: in a `strict` cell every overlap is a
    /// violation; otherwise one is tolerated when it began after `fault`
    /// started and one of its guards found out it had lost its lease (the
    /// README's window of asynchronous replication, for the primitives
    /// without `min_replicas`). Returns (violations, tolerated overlaps).
    pub fn judge(&self, strict: bool, fault: Option<Instant>) -> (Vec<String>, usize) {
        let mut violations = self.violations.lock().unwrap().clone();
        let found_out = self.found_out.lock().unwrap();
        let mut tolerated = 0;
        for o in self.overlaps.lock().unwrap().iter() {
            let after_fault = fault.is_some_and(|f| o.at >= f);
            let noticed = o.ids.iter().any(|id| found_out.contains(id));
            if !strict && after_fault && noticed {
                tolerated += 1;
            } else {
                let told: Vec<u64> = o
                    .ids
                    .iter()
                    .copied()
                    .filter(|id| found_out.contains(id))
                    .collect();
                violations.push(format!(
                    "(1) exclusion broken: {} (of them, found out they had lost: {told:?})",
                    o.text
                ));
            }
        }
        (violations, tolerated)
    }

    pub fn count(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::Relaxed)
    }
}
