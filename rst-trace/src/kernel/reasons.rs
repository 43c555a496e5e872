//! Reason names as the running kernel spells them (`enum sk_rst_reason`,
//! `enum skb_drop_reason`), read from BTF rather than from a table compiled in.
use std::collections::HashMap;

use super::btf::KernelBtf;

#[derive(Debug, Clone, Default)]
pub struct ReasonNames {
    by_value: HashMap<u64, String>,
    by_name: HashMap<String, u64>,
}

impl ReasonNames {
    /// Reads `enum_name` from BTF, keeping member names without `prefix`.
    pub fn from_btf(btf: &KernelBtf, enum_name: &str, prefix: &str) -> Self {
        Self::from_pairs(btf.enum_values(enum_name).into_iter().map(|(name, value)| {
            let short = name.strip_prefix(prefix).unwrap_or(&name).to_owned();
            (short, value)
        }))
    }

    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, u64)>) -> Self {
        let mut names = Self::default();
        for (name, value) in pairs {
            // Keep the first name for a value: aliases such as *_MAX come after the real one.
            names.by_value.entry(value).or_insert_with(|| name.clone());
            names.by_name.insert(name, value);
        }
        names
    }

    pub fn name(&self, value: u64) -> Option<&str> {
        self.by_value.get(&value).map(String::as_str)
    }

    pub fn value(&self, name: &str) -> Option<u64> {
        self.by_name.get(name).copied()
    }

    pub fn is_empty(&self) -> bool {
        self.by_value.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_name_wins_for_aliases() {
        let r = ReasonNames::from_pairs([
            ("NO_SOCKET".to_owned(), 1),
            ("TCP_ABORT_ON_CLOSE".to_owned(), 11),
            ("MAX".to_owned(), 11),
        ]);
        assert_eq!(r.name(1), Some("NO_SOCKET"));
        assert_eq!(r.name(11), Some("TCP_ABORT_ON_CLOSE"));
        assert_eq!(r.value("MAX"), Some(11));
        assert_eq!(r.name(99), None);
    }
}
