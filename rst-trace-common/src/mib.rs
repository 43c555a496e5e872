//! The kernel's SNMP/MIB counters as /proc/net/netstat and /proc/net/snmp print them: pairs of
//! a header line and a value line with the same prefix,
//! ```text
//! TcpExt: SyncookiesSent SyncookiesRecv ...
//! TcpExt: 0 0 ...
//! ```
//! read as "TcpExt.SyncookiesSent" → 0. One parser for the agent, the tests and xtask.
use std::{collections::BTreeMap, fmt, format, string::String, vec::Vec};

/// What is wrong with a MIB text. Lines are numbered from 1, blank lines included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MibError {
    /// A line without the "Prefix:" that starts every MIB line.
    NoPrefix { line: usize },
    /// A header line at the end of the text, with no value line after it.
    NoValueLine { line: usize, table: String },
    /// The value line's prefix differs from its header's.
    PrefixMismatch {
        line: usize,
        header: String,
        values: String,
    },
    /// The header names more (or fewer) counters than the value line holds.
    CountMismatch {
        line: usize,
        table: String,
        names: usize,
        values: usize,
    },
    /// A value that is not a (signed 64-bit) integer.
    NotInteger { key: String, value: String },
    /// No counter at all.
    Empty,
}

impl fmt::Display for MibError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MibError::NoPrefix { line } => write!(f, "line {line}: no 'Prefix:'"),
            MibError::NoValueLine { line, table } => {
                write!(f, "line {line}: header {table:?} without a value line")
            }
            MibError::PrefixMismatch {
                line,
                header,
                values,
            } => write!(
                f,
                "line {line}: value line prefix {values:?} does not match header {header:?}"
            ),
            MibError::CountMismatch {
                line,
                table,
                names,
                values,
            } => write!(f, "line {line}: {table}: {names} names but {values} values"),
            MibError::NotInteger { key, value } => write!(f, "{key}: not an integer: {value:?}"),
            MibError::Empty => write!(f, "no counters found"),
        }
    }
}

impl std::error::Error for MibError {}

/// The counters of one header/value pair, keyed "Prefix.Name".
pub type Table = Vec<(String, i64)>;

/// Each header/value pair of `text`, in order; blank lines are skipped. A malformed pair is an
/// error and the next two lines are read as the next pair.
pub fn tables(text: &str) -> impl Iterator<Item = Result<Table, MibError>> + '_ {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty());
    core::iter::from_fn(move || {
        let (hline, header) = lines.next()?;
        Some(match lines.next() {
            None => match header.split_once(':') {
                Some((table, _)) => Err(MibError::NoValueLine {
                    line: hline,
                    table: table.into(),
                }),
                None => Err(MibError::NoPrefix { line: hline }),
            },
            Some((vline, values)) => table(hline, header, vline, values),
        })
    })
}

fn table(hline: usize, header: &str, vline: usize, values: &str) -> Result<Table, MibError> {
    let (hp, names) = header
        .split_once(':')
        .ok_or(MibError::NoPrefix { line: hline })?;
    let (vp, values) = values
        .split_once(':')
        .ok_or(MibError::NoPrefix { line: vline })?;
    if hp != vp {
        return Err(MibError::PrefixMismatch {
            line: vline,
            header: hp.into(),
            values: vp.into(),
        });
    }
    let names: Vec<&str> = names.split_whitespace().collect();
    let values: Vec<&str> = values.split_whitespace().collect();
    if names.len() != values.len() {
        return Err(MibError::CountMismatch {
            line: vline,
            table: hp.into(),
            names: names.len(),
            values: values.len(),
        });
    }
    names
        .iter()
        .zip(values)
        .map(|(n, v)| {
            let key = format!("{hp}.{n}");
            match v.parse::<i64>() {
                Ok(v) => Ok((key, v)),
                Err(_) => Err(MibError::NotInteger {
                    key,
                    value: v.into(),
                }),
            }
        })
        .collect()
}

/// Every counter of `text`; any malformed pair, or no counter at all, is an error. For tests
/// and tools, which must notice a format change.
pub fn parse(text: &str) -> Result<BTreeMap<String, i64>, MibError> {
    let mut out = BTreeMap::new();
    for t in tables(text) {
        out.extend(t?);
    }
    if out.is_empty() {
        return Err(MibError::Empty);
    }
    Ok(out)
}

/// The counters of every well-formed pair of `text`, skipping the others: for the agent, which
/// keeps what it can read. A pair whose names and values disagree in number is skipped whole,
/// since no value in it can be matched to its name by position.
pub fn parse_lenient(text: &str) -> BTreeMap<String, i64> {
    tables(text).filter_map(Result::ok).flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::{string::ToString, vec};

    const NETSTAT: &str = "\
TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops
TcpExt: 0 0 17 21
IpExt: InNoRoutes InOctets
IpExt: 0 123456789012
";
    const SNMP: &str = "\
Tcp: RtoAlgorithm MaxConn OutRsts
Tcp: 1 -1 7
";

    #[test]
    fn reads_netstat_and_snmp() {
        let m = parse(&format!("{NETSTAT}{SNMP}")).unwrap();
        assert_eq!(m["TcpExt.ListenOverflows"], 17);
        assert_eq!(m["IpExt.InOctets"], 123456789012);
        assert_eq!(m["Tcp.MaxConn"], -1);
        assert_eq!(m["Tcp.OutRsts"], 7);
        assert_eq!(m.len(), 9);
    }

    #[test]
    fn names_each_defect() {
        let err = |t: &str| parse(t).unwrap_err();
        assert!(matches!(
            err("Tcp: A\nUdp: 1\n"),
            MibError::PrefixMismatch { line: 2, .. }
        ));
        assert!(matches!(
            err("Tcp: A B\nTcp: 1\n"),
            MibError::CountMismatch {
                names: 2,
                values: 1,
                ..
            }
        ));
        assert!(matches!(
            err("Tcp: A B\n"),
            MibError::NoValueLine { line: 1, .. }
        ));
        assert!(matches!(
            err("Tcp: A\nTcp: x\n"),
            MibError::NotInteger { .. }
        ));
        assert!(matches!(
            err("garbage\nmore\n"),
            MibError::NoPrefix { line: 1 }
        ));
        assert_eq!(err(""), MibError::Empty);
    }

    #[test]
    fn lenient_keeps_the_good_pairs() {
        let m = parse_lenient("A: x y\nA: 1\nB: z\nB: 2\ngarbage\nC: w\n");
        assert_eq!(m.get("B.z"), Some(&2));
        assert!(
            !m.contains_key("A.x"),
            "a pair with a missing value is skipped whole"
        );
        assert_eq!(m.len(), 1);
    }

    fn ident() -> impl Strategy<Value = String> {
        "[A-Za-z][A-Za-z0-9_]{0,12}"
    }

    fn mib_tables() -> impl Strategy<Value = Vec<(String, Vec<(String, i64)>)>> {
        prop::collection::vec(
            (
                ident(),
                prop::collection::vec((ident(), any::<i64>()), 1..12),
            ),
            1..6,
        )
    }

    fn render(tables: &[(String, Vec<(String, i64)>)], sep: &str) -> String {
        let mut text = String::new();
        for (prefix, counters) in tables {
            let names: Vec<&str> = counters.iter().map(|(n, _)| n.as_str()).collect();
            let values: Vec<String> = counters.iter().map(|(_, v)| v.to_string()).collect();
            text.push_str(&format!("{prefix}:{sep}{}\n", names.join(sep)));
            text.push_str(&format!("{prefix}:{sep}{}\n", values.join(sep)));
        }
        text
    }

    proptest! {
        /// Whatever the kernel prints in this format reads back exactly (the last of a
        /// repeated key wins, as in a map built in order).
        #[test]
        fn rendered_tables_read_back(tables in mib_tables(), sep in prop::sample::select(vec![" ", "  ", "\t"])) {
            let mut want = BTreeMap::new();
            for (prefix, counters) in &tables {
                for (n, v) in counters {
                    want.insert(format!("{prefix}.{n}"), *v);
                }
            }
            let text = render(&tables, sep);
            prop_assert_eq!(parse(&text).unwrap(), want.clone());
            prop_assert_eq!(parse_lenient(&text), want);
        }

        /// Arbitrary text never panics, and the lenient reading holds exactly the counters of
        /// the well-formed pairs.
        #[test]
        fn arbitrary_text_is_safe(text in "[A-Za-z0-9: \n-]{0,200}") {
            let lenient = parse_lenient(&text);
            match parse(&text) {
                Ok(strict) => prop_assert_eq!(strict, lenient),
                Err(_) => {
                    let good: usize = tables(&text).filter_map(Result::ok).map(|t| t.len()).sum();
                    prop_assert!(lenient.len() <= good);
                }
            }
        }

        /// Dropping one value makes exactly that pair unreadable.
        #[test]
        fn a_missing_value_is_found(tables in mib_tables(), which in any::<prop::sample::Index>()) {
            let mut broken = tables.clone();
            let t = which.index(broken.len());
            let text = render(&broken, " ");
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            let vline = 2 * t + 1;
            let cut = lines[vline].rfind(' ').unwrap();
            lines[vline].truncate(cut);
            broken.remove(t);
            let text = lines.join("\n");
            let is_count_mismatch = matches!(parse(&text), Err(MibError::CountMismatch { .. }));
            prop_assert!(is_count_mismatch);
        }
    }
}
