//! Reading ClickHouse `TabSeparated` answers: one row a line, fields split at tabs, with
//! backslash escapes (`\t`, `\n`, `\\`, `\'`...). Small answers (reports, column lists,
//! versions) are read whole; large ones (a loader's restored state) a row at a time as they
//! arrive ([`Lines`]).

use std::borrow::Cow;

/// Unescapes one `TabSeparated` field, borrowing it when it holds no escape.
fn unescape(field: &str) -> Cow<'_, str> {
    if !field.contains('\\') {
        return Cow::Borrowed(field);
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
    Cow::Owned(out)
}

/// Splits an answer arriving in pieces into rows: a piece may end inside a line, which is
/// kept until the rest arrives. Holds at most one piece and one partial line.
#[derive(Debug, Default)]
pub(crate) struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    /// Calls `f` with the fields of every row completed by `piece`.
    pub(crate) fn feed(
        &mut self,
        piece: &[u8],
        f: &mut impl FnMut(&[&str]) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut rest = piece;
        if !self.partial.is_empty() {
            let Some(nl) = rest.iter().position(|b| *b == b'\n') else {
                self.partial.extend_from_slice(rest);
                return Ok(());
            };
            self.partial.extend_from_slice(&rest[..nl]);
            let line = std::mem::take(&mut self.partial);
            row(&line, f)?;
            rest = &rest[nl + 1..];
        }
        while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
            row(&rest[..nl], f)?;
            rest = &rest[nl + 1..];
        }
        self.partial.extend_from_slice(rest);
        Ok(())
    }

    /// The answer ended: calls `f` with a last row not ended by a newline.
    pub(crate) fn finish(
        &mut self,
        f: &mut impl FnMut(&[&str]) -> Result<(), String>,
    ) -> Result<(), String> {
        let line = std::mem::take(&mut self.partial);
        row(&line, f)
    }
}

fn row(line: &[u8], f: &mut impl FnMut(&[&str]) -> Result<(), String>) -> Result<(), String> {
    if line.is_empty() {
        return Ok(());
    }
    let text = std::str::from_utf8(line).map_err(|e| e.to_string())?;
    let fields: Vec<Cow<'_, str>> = text.split('\t').map(unescape).collect();
    let fields: Vec<&str> = fields.iter().map(|f| f.as_ref()).collect();
    f(&fields)
}

/// Splits a whole `TabSeparated` body into rows of unescaped fields.
pub(crate) fn parse(body: &[u8]) -> Result<Vec<Vec<String>>, String> {
    let mut rows = Vec::new();
    let mut f = |r: &[&str]| -> Result<(), String> {
        rows.push(r.iter().map(|s| s.to_string()).collect());
        Ok(())
    };
    let mut lines = Lines::default();
    lines.feed(body, &mut f)?;
    lines.finish(&mut f)?;
    Ok(rows)
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

    #[test]
    fn rows_split_across_pieces_are_read_whole_and_once() {
        let body = b"a\t1\nbb\\tx\t22\n\nccc\t333\nlast\t4";
        let whole: Vec<Vec<String>> = [["a", "1"], ["bb\tx", "22"], ["ccc", "333"], ["last", "4"]]
            .iter()
            .map(|r| r.iter().map(|s| s.to_string()).collect())
            .collect();
        assert_eq!(parse(body).expect("utf8"), whole);
        // Every way of cutting the answer in two, three and byte by byte reads the same rows.
        let mut cuts: Vec<Vec<usize>> = (0..=body.len()).map(|i| vec![i]).collect();
        cuts.extend((0..body.len()).flat_map(|i| (i..body.len()).map(move |j| vec![i, j])));
        cuts.push((1..body.len()).collect());
        for cut in cuts {
            let mut lines = Lines::default();
            let mut rows: Vec<Vec<String>> = Vec::new();
            let mut f = |r: &[&str]| -> Result<(), String> {
                rows.push(r.iter().map(|s| s.to_string()).collect());
                Ok(())
            };
            let mut from = 0;
            for &c in cut.iter().chain(std::iter::once(&body.len())) {
                lines.feed(&body[from..c], &mut f).expect("feed");
                from = c;
            }
            lines.finish(&mut f).expect("finish");
            assert_eq!(rows, whole, "cut at {cut:?}");
        }
    }
}
