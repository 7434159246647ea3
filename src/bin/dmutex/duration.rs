//! Durations on the command line: `500ms`, `60s`, `2m`, `1h30m`, `1.5s`, and
//! `0`. A unit is required (a bare `60000` could mean seconds or
//! milliseconds).

use std::time::Duration;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// What every parse error ends with.
const EXPECTED: &str = "expected a number and a unit (ms, s, m, h, d), e.g. 500ms, 60s, 2m, 1h30m";

/// Parses a duration: one or more `<number><unit>` parts, summed.
pub fn parse(text: &str) -> Result<Duration, String> {
    if text.is_empty() {
        return Err(format!("the duration is empty; {EXPECTED}"));
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        if number.is_empty() {
            return Err(format!("`{text}` is not a duration; {EXPECTED}"));
        }
        let per_unit: u128 = match unit {
            "ms" => 1_000_000,
            "s" => NANOS_PER_SEC,
            "m" => 60 * NANOS_PER_SEC,
            "h" => 3600 * NANOS_PER_SEC,
            "d" => 86_400 * NANOS_PER_SEC,
            "" => return Err(format!("`{text}` has no unit; {EXPECTED}")),
            other => return Err(format!("`{other}` in `{text}` is not a unit; {EXPECTED}")),
        };
        let nanos = scaled(number, per_unit)
            .ok_or_else(|| format!("`{number}` in `{text}` is not a number; {EXPECTED}"))?;
        total = total
            .checked_add(nanos)
            .ok_or_else(|| format!("`{text}` is too long a duration"))?;
        rest = after;
    }
    let secs = u64::try_from(total / NANOS_PER_SEC)
        .map_err(|_| format!("`{text}` is too long a duration"))?;
    Ok(Duration::new(secs, (total % NANOS_PER_SEC) as u32))
}

/// `number` (digits, at most one `.`) times `per_unit` nanoseconds, rounded
/// down to whole nanoseconds; `None` if it is not such a number.
fn scaled(number: &str, per_unit: u128) -> Option<u128> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    if fraction.contains('.') || whole.len() > 20 {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    // Nanoseconds are the finest unit: digits past the 18th cannot count.
    let fraction = &fraction[..fraction.len().min(18)];
    let mut part: u128 = 0;
    if !fraction.is_empty() {
        let digits: u128 = fraction.parse().ok()?;
        part = digits * per_unit / 10u128.pow(fraction.len() as u32);
    }
    whole.checked_mul(per_unit)?.checked_add(part)
}

/// A duration for people: `250ms`, `4.2s`, `42s`, `3m05s`, `2h07m`.
pub fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d < Duration::from_secs(10) {
        format!("{:.1}s", d.as_secs_f64())
    } else if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_sums() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse(".25s"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1m0.5s"), Ok(Duration::from_millis(60_500)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(
            parse("1.000000000000000000001s"),
            Ok(Duration::from_secs(1))
        );
    }

    #[test]
    fn bad_durations_say_what_is_expected() {
        for bad in [
            "", "60", "s", "5x", "-1s", "1 s", "1..2s", ".s", "1s2", "ms5", "1sec",
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains("e.g. 500ms"), "{bad}: {e}");
        }
        let e = parse("99999999999999999999d").expect_err("too long");
        assert!(e.contains("too long") || e.contains("not a number"), "{e}");
        assert!(parse("999999999999999999999999s").is_err());
    }

    #[test]
    fn human_forms() {
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(human(Duration::from_millis(4200)), "4.2s");
        assert_eq!(human(Duration::from_secs(42)), "42s");
        assert_eq!(human(Duration::from_secs(185)), "3m05s");
        assert_eq!(human(Duration::from_secs(7620)), "2h07m");
    }
}
