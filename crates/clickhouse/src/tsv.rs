//! Reading ClickHouse `TabSeparated` answers: one row a line, fields split at tabs, with
//! backslash escapes (`\t`, `\n`, `\\`, `\'`...). Used for small answers (reports, column
//! lists, versions) whose columns are not known at compile time.

/// Unescapes one `TabSeparated` field.
pub(crate) fn unescape(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_string();
    }
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('0') => out.push('\0'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('a') => out.push('\u{7}'),
            Some('v') => out.push('\u{b}'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// Splits a `TabSeparated` body into rows of unescaped fields.
pub(crate) fn parse(body: &[u8]) -> Result<Vec<Vec<String>>, std::str::Utf8Error> {
    let text = std::str::from_utf8(body)?;
    Ok(text
        .split('\n')
        .filter(|line| !line.is_empty())
        .map(|line| line.split('\t').map(unescape).collect())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_what_clickhouse_escapes() {
        assert_eq!(unescape(r"DateTime(\'UTC\')"), "DateTime('UTC')");
        assert_eq!(unescape(r"a\tb\nc\\d"), "a\tb\nc\\d");
        assert_eq!(unescape("plain"), "plain");
        let rows = parse(b"name\ttype\nx\tString\ny\tNullable(String)\n").expect("utf8");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[2], vec!["y", "Nullable(String)"]);
        assert!(parse(&[0xff, 0xfe]).is_err());
    }
}
