//! Which lock, semaphore, read-write lock or election a scanned key belongs
//! to (the README's "Redis layout"), and the PATTERN filter. Pure.
//!
//! Under a prefix `P`: a lock is `P K`; every derived key is `P \xff
//! {T}:<what>:<name>` (`queue`, `fence`, `sem`, `rw-readers`, `rw-writer`,
//! `rw-intents`, `election`); an election's lock is `P {T}\0election:NAME`.

use std::collections::BTreeMap;

/// One thing `ls` lists, with the keys its details are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entity {
    Lock {
        name: String,
        key: Vec<u8>,
        queue: Option<Vec<u8>>,
    },
    Semaphore {
        name: String,
        set: Vec<u8>,
    },
    RwLock {
        name: String,
        readers: Option<Vec<u8>>,
        writer: Option<Vec<u8>>,
        intents: Option<Vec<u8>>,
    },
    Election {
        name: String,
        info: Vec<u8>,
        lock: Vec<u8>,
        queue: Option<Vec<u8>>,
    },
}

impl Entity {
    pub fn name(&self) -> &str {
        match self {
            Entity::Lock { name, .. }
            | Entity::Semaphore { name, .. }
            | Entity::RwLock { name, .. }
            | Entity::Election { name, .. } => name,
        }
    }
}

/// A derived key's parts: `{T}:<what>:<name>` after `P \xff`.
fn derived(rest: &[u8]) -> Option<(&str, &str, &str)> {
    let text = std::str::from_utf8(rest).ok()?;
    let text = text.strip_prefix('{')?;
    let close = text.find('}')?;
    let (tag, after) = (&text[..close], text[close + 1..].strip_prefix(':')?);
    let (what, name) = after.split_once(':')?;
    Some((tag, what, name))
}

const ELECTION_LOCK: &str = "\0election:";

/// Groups the scanned `keys` (all starting with `prefix`) into entities,
/// sorted by kind and name; keys of nothing this crate makes are left out.
pub fn entities(prefix: &[u8], keys: &[Vec<u8>]) -> Vec<Entity> {
    let mut queues = BTreeMap::new();
    let mut found = BTreeMap::new();
    for key in keys {
        let Some(rest) = key.strip_prefix(prefix) else {
            continue;
        };
        if let Some(derived_rest) = rest.strip_prefix(&[0xFF]) {
            if let Some((tag, what, name)) = derived(derived_rest) {
                add_derived(&mut found, &mut queues, prefix, key, tag, what, name);
            }
        } else if let Ok(name) = std::str::from_utf8(rest) {
            if !name.contains(ELECTION_LOCK) && !name.contains('\0') {
                let lock = Entity::Lock {
                    name: name.to_owned(),
                    key: key.clone(),
                    queue: None,
                };
                found.insert((0, name.to_owned()), lock);
            }
        }
    }
    found
        .into_values()
        .map(|mut entity| {
            match &mut entity {
                Entity::Lock { name, queue, .. } => *queue = queues.get(name.as_str()).cloned(),
                Entity::Election { lock, queue, .. } => {
                    let lock_name = std::str::from_utf8(&lock[prefix.len()..]).unwrap_or("");
                    *queue = queues.get(lock_name).cloned();
                }
                _ => {}
            }
            entity
        })
        .collect()
}

fn add_derived(
    found: &mut BTreeMap<(u8, String), Entity>,
    queues: &mut BTreeMap<String, Vec<u8>>,
    prefix: &[u8],
    key: &[u8],
    tag: &str,
    what: &str,
    name: &str,
) {
    let key = key.to_vec();
    match what {
        "queue" => {
            queues.insert(name.to_owned(), key);
        }
        "sem" => {
            let entity = Entity::Semaphore {
                name: name.to_owned(),
                set: key,
            };
            found.insert((1, name.to_owned()), entity);
        }
        "rw-readers" | "rw-writer" | "rw-intents" => {
            let entity = found.entry((2, name.to_owned())).or_insert(Entity::RwLock {
                name: name.to_owned(),
                readers: None,
                writer: None,
                intents: None,
            });
            if let Entity::RwLock {
                readers,
                writer,
                intents,
                ..
            } = entity
            {
                let slot = match what {
                    "rw-readers" => readers,
                    "rw-writer" => writer,
                    _ => intents,
                };
                *slot = Some(key);
            }
        }
        "election" => {
            let mut lock = prefix.to_vec();
            lock.extend_from_slice(format!("{{{tag}}}{ELECTION_LOCK}{name}").as_bytes());
            let entity = Entity::Election {
                name: name.to_owned(),
                info: key,
                lock,
                queue: None,
            };
            found.insert((3, name.to_owned()), entity);
        }
        _ => {}
    }
}

/// A SCAN pattern matching every key under `prefix` (its glob characters
/// escaped).
pub fn scan_pattern(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('*');
    out
}

/// Whether `text` matches the glob `pattern` (`*` any run, `?` one
/// character, anything else itself).
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) && p[pi] != '*' {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(prefix: &str, tag: &str, what: &str, name: &str) -> Vec<u8> {
        let mut k = prefix.as_bytes().to_vec();
        k.push(0xFF);
        k.extend_from_slice(format!("{{{tag}}}:{what}:{name}").as_bytes());
        k
    }

    #[test]
    fn keys_group_into_what_they_belong_to() {
        let p = "app:";
        let keys = vec![
            b"app:job".to_vec(),
            d(p, "app:job", "queue", "job"),
            d(p, "app:job", "fence", "job"),
            d(p, "app:dl", "sem", "dl"),
            d(p, "app:cfg", "rw-readers", "cfg"),
            d(p, "app:cfg", "rw-intents", "cfg"),
            d(p, "app:sched", "election", "sched"),
            b"app:{app:sched}\0election:sched".to_vec(),
            d(p, "app:sched", "queue", "{app:sched}\0election:sched"),
            d(p, "x", "fence", "gone"),
            b"other:key".to_vec(),
        ];
        let found = entities(p.as_bytes(), &keys);
        let names: Vec<_> = found.iter().map(Entity::name).collect();
        assert_eq!(names, ["job", "dl", "cfg", "sched"]);
        assert_eq!(
            found[0],
            Entity::Lock {
                name: "job".into(),
                key: b"app:job".to_vec(),
                queue: Some(d(p, "app:job", "queue", "job")),
            }
        );
        let Entity::RwLock {
            readers,
            writer,
            intents,
            ..
        } = &found[2]
        else {
            panic!("{:?}", found[2]);
        };
        assert!(readers.is_some() && writer.is_none() && intents.is_some());
        let Entity::Election { lock, queue, .. } = &found[3] else {
            panic!("{:?}", found[3]);
        };
        assert_eq!(lock, b"app:{app:sched}\0election:sched");
        assert!(queue.is_some());
    }

    #[test]
    fn globs_and_scan_patterns() {
        assert!(glob("*", "anything"));
        assert!(glob("job*", "job:1"));
        assert!(!glob("job*", "a-job"));
        assert!(glob("*:1?", "job:12"));
        assert!(!glob("*:1?", "job:1"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(glob("", ""));
        assert!(!glob("", "x"));
        assert_eq!(scan_pattern(""), "*");
        assert_eq!(scan_pattern("a*[b]:"), "a\\*\\[b\\]:*");
    }
}
