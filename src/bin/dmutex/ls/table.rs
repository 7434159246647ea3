//! How `ls` prints: a table a person reads at a glance, or JSON lines.

use std::time::SystemTime;

use super::inspect::Row;
use crate::clock;
use crate::duration::human;
use crate::json;

/// The widest a NAME or HOLDER cell gets before it is cut with `…`.
const CELL: usize = 40;

fn cut(text: &str) -> String {
    if text.chars().count() <= CELL {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(CELL - 1).collect();
    out.push('…');
    out
}

/// The cells of one row, in the table's column order.
fn cells(row: &Row, now: SystemTime) -> [String; 7] {
    let dash = || "-".to_owned();
    let age = row
        .since
        .map(|since| human(now.duration_since(since).unwrap_or_default()));
    [
        row.kind.to_owned(),
        cut(&row.name),
        row.holder.as_deref().map_or_else(dash, cut),
        age.unwrap_or_else(dash),
        row.ttl.map_or_else(dash, human),
        row.waiting.map_or_else(dash, |n| n.to_string()),
        row.detail.clone(),
    ]
}

/// The table: a header, then one line per row, columns aligned.
pub fn text(rows: &[Row], now: SystemTime) -> String {
    let header = ["KIND", "NAME", "HOLDER", "AGE", "TTL", "WAITING", "DETAIL"].map(str::to_owned);
    let body: Vec<[String; 7]> = rows.iter().map(|r| cells(r, now)).collect();
    let mut widths = [0usize; 7];
    for line in std::iter::once(&header).chain(&body) {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in std::iter::once(&header).chain(&body) {
        let mut text = String::new();
        for (i, (cell, w)) in line.iter().zip(widths).enumerate() {
            if i + 1 == line.len() {
                text.push_str(cell);
            } else {
                text.push_str(cell);
                text.push_str(&" ".repeat(w - cell.chars().count() + 2));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// One JSON object per row, one per line.
pub fn json_lines(rows: &[Row], now: SystemTime) -> String {
    let mut out = String::new();
    for row in rows {
        let age = row
            .since
            .map(|since| now.duration_since(since).unwrap_or_default().as_millis());
        let mut line = format!(
            "{{\"kind\":{},\"name\":{},\"holder\":{},\"token\":{},\"since_ms\":{},\"age_ms\":{},\"ttl_ms\":{},\"waiting\":{}",
            json::string(row.kind),
            json::string(&row.name),
            json::or_null(row.holder.as_deref(), json::string),
            json::or_null(row.token.as_deref(), json::string),
            json::or_null(row.since, |s| clock::unix_ms(s).to_string()),
            json::or_null(age, |a| a.to_string()),
            json::or_null(row.ttl, |t| t.as_millis().to_string()),
            json::or_null(row.waiting, |n| n.to_string()),
        );
        for (field, value) in &row.extra {
            line.push_str(&format!(",{}:{value}", json::string(field)));
        }
        line.push_str("}\n");
        out.push_str(&line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rows() -> (Vec<Row>, SystemTime) {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_100);
        let lock = Row {
            kind: "lock",
            name: "nightly-report".into(),
            holder: Some("web-3".into()),
            token: Some("t1".into()),
            since: Some(now - Duration::from_secs(90)),
            ttl: Some(Duration::from_millis(41_300)),
            waiting: Some(2),
            detail: String::new(),
            extra: Vec::new(),
        };
        let election = Row {
            kind: "election",
            name: "n".repeat(60),
            holder: Some("10.0.0.7:8080".into()),
            token: Some("t2".into()),
            since: None,
            ttl: None,
            waiting: Some(0),
            detail: "term 7".into(),
            extra: vec![("term", "7".into())],
        };
        (vec![lock, election], now)
    }

    #[test]
    fn the_table_aligns_its_columns() {
        let (rows, now) = rows();
        let text = text(&rows, now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("KIND      NAME"), "{text}");
        let holder_at = lines[0].find("HOLDER").unwrap();
        // Aligned by characters (the `…` of a cut name is one).
        let at = |line: &str, n: usize| line.chars().skip(holder_at).take(n).collect::<String>();
        assert_eq!(at(lines[1], 5), "web-3", "{text}");
        assert_eq!(at(lines[2], 4), "10.0", "{text}");
        assert!(lines[1].contains("1m30s"), "{text}");
        assert!(lines[2].contains('…'), "long names are cut: {text}");
        assert!(lines[2].ends_with("term 7"), "{text}");
    }

    #[test]
    fn json_lines_have_every_field() {
        let (rows, now) = rows();
        let json = json_lines(&rows, now);
        let lines: Vec<&str> = json.lines().collect();
        assert_eq!(
            lines[0],
            r#"{"kind":"lock","name":"nightly-report","holder":"web-3","token":"t1","since_ms":1700000010000,"age_ms":90000,"ttl_ms":41300,"waiting":2}"#
        );
        assert!(
            lines[1]
                .ends_with(r#""since_ms":null,"age_ms":null,"ttl_ms":null,"waiting":0,"term":7}"#),
            "{json}"
        );
    }
}
