//! Printing: tables (aligned plain text for summaries, Markdown for tables
//! meant to be pasted) and number formats. Takes figures already reduced by
//! [`stats`](super::stats); measures nothing.

use std::fmt::Write as _;
use std::time::Duration;

use super::stats::Spread;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Align {
    Left,
    Right,
}

/// A table: a header, then rows of cells already formatted.
pub struct Table {
    columns: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&str, Align)]) -> Table {
        Table {
            columns: columns.iter().map(|(h, a)| (h.to_string(), *a)).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; it must have one cell per column.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let row: Vec<String> = cells.into_iter().map(Into::into).collect();
        assert_eq!(row.len(), self.columns.len(), "one cell per column");
        self.rows.push(row);
    }

    /// `| a | b |` rows under a header and a `|---|---:|` line.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let line = |cells: &mut dyn Iterator<Item = &str>| {
            let cells: Vec<&str> = cells.collect();
            format!("| {} |\n", cells.join(" | "))
        };
        out.push_str(&line(&mut self.columns.iter().map(|(h, _)| h.as_str())));
        let rule: Vec<&str> = self
            .columns
            .iter()
            .map(|(_, a)| match a {
                Align::Left => "---",
                Align::Right => "---:",
            })
            .collect();
        let _ = writeln!(out, "|{}|", rule.join("|"));
        for row in &self.rows {
            out.push_str(&line(&mut row.iter().map(String::as_str)));
        }
        out
    }

    /// Columns padded to their widest cell, two spaces apart.
    pub fn plain(&self) -> String {
        let width = |i: usize| {
            self.rows
                .iter()
                .map(|r| r[i].chars().count())
                .chain([self.columns[i].0.chars().count()])
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.columns.len()).map(width).collect();
        let mut out = String::new();
        let mut line = |cells: Vec<&str>| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&self.columns)
                .zip(&widths)
                .map(|((cell, (_, align)), &w)| match align {
                    Align::Left => format!("{cell:<w$}"),
                    Align::Right => format!("{cell:>w$}"),
                })
                .collect();
            let _ = writeln!(out, "{}", padded.join("  ").trim_end());
        };
        line(self.columns.iter().map(|(h, _)| h.as_str()).collect());
        for row in &self.rows {
            line(row.iter().map(String::as_str).collect());
        }
        out
    }
}

/// Milliseconds with three decimals (`0.153`).
pub fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// Microseconds with one decimal and the unit (`132.3 µs`).
pub fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// `1.016x [0.62-1.73]`: the median ratio and the range over the rounds.
pub fn spread(s: Spread) -> String {
    format!("{:.3}x [{:.2}-{:.2}]", s.median, s.min, s.max)
}

/// `ok` or `MISS`.
pub fn check(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISS"
    }
}
