//! Finds where a key stands in the TOML text, so that semantic errors found after
//! deserialisation still point at a line.

use toml::de::{DeTable, DeValue};

/// 1-based line number of byte `offset` in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Line of a dotted key path such as `smtp.listen[1].tls`. When the last key is absent (a
/// default is in force), the nearest enclosing table that does appear is named instead.
pub fn line_of_key(text: &str, path: &str) -> Option<usize> {
    let root = DeTable::parse(text).ok()?;
    let mut table = root.get_ref();
    let mut best: Option<usize> = None;
    let mut segments = path.split('.').peekable();
    while let Some(segment) = segments.next() {
        let (name, index) = split_index(segment);
        let Some((key, value)) = table.get_key_value(name) else {
            break;
        };
        best = Some(line_of(text, key.span().start));
        let mut value = value;
        if let Some(index) = index {
            let Some(item) = value.get_ref().as_array().and_then(|a| a.get(index)) else {
                break;
            };
            best = Some(line_of(text, item.span().start));
            value = item;
        }
        match value.get_ref() {
            DeValue::Table(inner) if segments.peek().is_some() => table = inner,
            _ => break,
        }
    }
    best
}

fn split_index(segment: &str) -> (&str, Option<usize>) {
    match segment.split_once('[') {
        Some((name, rest)) => (name, rest.trim_end_matches(']').parse().ok()),
        None => (segment, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[node]\nid = \"a\"\n\n[smtp]\nhostname = \"mx\"\n\n[[smtp.listen]]\naddr = \"127.0.0.1:25\"\n\n[[smtp.listen]]\naddr = \"127.0.0.1:587\"\ntls = \"implicit\"\n";

    #[test]
    fn finds_nested_and_indexed_keys() {
        assert_eq!(line_of_key(TEXT, "node.id"), Some(2));
        assert_eq!(line_of_key(TEXT, "smtp.hostname"), Some(5));
        assert_eq!(line_of_key(TEXT, "smtp.listen[1].tls"), Some(12));
        assert_eq!(line_of_key(TEXT, "smtp.listen[0].addr"), Some(8));
    }

    #[test]
    fn absent_key_points_at_enclosing_table() {
        assert_eq!(line_of_key(TEXT, "smtp.max_line_length"), Some(4));
        assert_eq!(line_of_key(TEXT, "metrics.listen"), None);
    }
}
