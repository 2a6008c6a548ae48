//! Graphite-style metric names with dots (`load.shortterm`) in PromQL, which the parser only takes quoted.
//!
//! When a query does not parse, the engine retries once with every bare
//! dotted name outside strings and braces rewritten to the UTF-8 quoted
//! form: `load.shortterm` -> `{"load.shortterm"}` and
//! `load.shortterm{resource="x"}` -> `{"load.shortterm", resource="x"}`.
//! A query that parses as written is never rewritten.

fn is_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':'
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

/// The index just past the string literal opening at `i`.
fn string_end(b: &[u8], i: usize) -> usize {
    let quote = b[i];
    let mut j = i + 1;
    while j < b.len() {
        if b[j] == b'\\' && quote != b'`' {
            j += 2;
            continue;
        }
        if b[j] == quote {
            return j + 1;
        }
        j += 1;
    }
    b.len()
}

fn skip_spaces(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// The query with bare dotted metric names quoted, or `None` if it has none.
pub(crate) fn quote_dotted_names(q: &str) -> Option<String> {
    let b = q.as_bytes();
    let (mut out, mut last, mut i, mut depth) = (String::new(), 0, 0, 0usize);
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' | b'`' => {
                i = string_end(b, i);
                continue;
            }
            b'{' => depth += 1,
            b'}' => depth = depth.saturating_sub(1),
            c if depth == 0
                && is_start(c)
                && (i == 0 || !(is_ident(b[i - 1]) || b[i - 1] == b'.')) =>
            {
                let mut j = i;
                while j < b.len()
                    && (is_ident(b[j]) || (b[j] == b'.' && j + 1 < b.len() && is_ident(b[j + 1])))
                {
                    j += 1;
                }
                let word = &q[i..j];
                if word.contains('.') {
                    out.push_str(&q[last..i]);
                    let k = skip_spaces(b, j);
                    if k < b.len() && b[k] == b'{' {
                        let empty = b.get(skip_spaces(b, k + 1)) == Some(&b'}');
                        out.push_str(&format!("{{\"{word}\"{}", if empty { "" } else { ", " }));
                        depth += 1;
                        i = k + 1;
                    } else {
                        out.push_str(&format!("{{\"{word}\"}}"));
                        i = j;
                    }
                    last = i;
                } else {
                    i = j;
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    if last == 0 {
        return None;
    }
    out.push_str(&q[last..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::quote_dotted_names;

    fn check(q: &str, expected: Option<&str>) {
        assert_eq!(quote_dotted_names(q).as_deref(), expected, "{q}");
    }

    #[test]
    fn rewrites_only_bare_dotted_names() {
        check("load.shortterm", Some(r#"{"load.shortterm"}"#));
        check(
            r#"rate(if.octets.rx{resource="web01"}[5m]) * 8"#,
            Some(r#"rate({"if.octets.rx", resource="web01"}[5m]) * 8"#),
        );
        check("cpu.usage {}", Some(r#"{"cpu.usage"}"#));
        check(
            "sum by (resource) (a.b) / c.d",
            Some(r#"sum by (resource) ({"a.b"}) / {"c.d"}"#),
        );
        check("a.b > 1.5e3", Some(r#"{"a.b"} > 1.5e3"#));
        check("cpu + 1.5", None);
        check(r#"m{path="a.b"}"#, None);
        check(r#"label_replace(m, "x", "a.b", "y", "(.*)")"#, None);
        check("é.x", None);
        check("m @ 1609746000.123", None);
    }
}
