//! Aligned text tables for people (kubectl style: left-aligned columns, two spaces apart).

use std::fmt::Write as _;

/// Rows with left-aligned columns, two spaces apart; the last column is not padded.
pub fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn aligns_on_the_widest_cell() {
        let rows = vec![
            vec!["A".to_string(), "BB".into(), "x".into()],
            vec!["CCC".to_string(), "D".into(), "y".into()],
        ];
        assert_eq!(super::columns(&rows), "A    BB  x\nCCC  D   y\n");
    }
}
