//! Wall-clock times for people: `2026-12-07 19:20:03Z`, and ages; the
//! default holder label (`<host>:<pid>`).

use std::time::{Duration, SystemTime};

/// `at` in UTC, to the second: `YYYY-MM-DD HH:MM:SSZ`.
pub fn utc(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The calendar date of `days` since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// How long ago `since` was (zero if in the future: clocks differ).
pub fn age(since: SystemTime) -> Duration {
    SystemTime::now().duration_since(since).unwrap_or_default()
}

/// Milliseconds since the epoch.
pub fn unix_ms(at: SystemTime) -> u128 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

/// `<host name>:<pid>`: who a `dmutex run` is, by default.
pub fn default_holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && !h.chars().any(char::is_control))
        .unwrap_or_else(|| "unknown-host".to_owned());
    let host: String = host.chars().take(200).collect();
    format!("{host}:{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(utc(at(0)), "1970-01-01 00:00:00Z");
        assert_eq!(utc(at(951_782_400)), "2000-02-29 00:00:00Z");
        assert_eq!(utc(at(1_700_000_000)), "2023-11-14 22:13:20Z");
        assert_eq!(utc(at(4_102_444_799)), "2099-12-31 23:59:59Z");
    }

    #[test]
    fn the_default_holder_names_host_and_pid() {
        let holder = default_holder();
        assert!(holder.ends_with(&format!(":{}", std::process::id())));
        assert!(holder.len() > 2);
    }
}
