//! The little JSON `status --json` prints, without a serialisation crate.

use std::fmt::Write;

/// `text` as a JSON string, quotes included.
pub fn string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An optional value: `null`, or what `some` makes of it.
pub fn or_null<T>(value: Option<T>, some: impl FnOnce(T) -> String) -> String {
    value.map_or_else(|| "null".to_owned(), some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped() {
        assert_eq!(string("plain"), "\"plain\"");
        assert_eq!(string("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
        assert_eq!(string("ключ"), "\"ключ\"");
        assert_eq!(or_null(None::<u64>, |n| n.to_string()), "null");
        assert_eq!(or_null(Some(3u64), |n| n.to_string()), "3");
    }
}
