//! Tracepoint formats from tracefs (`events/<category>/<name>/format`).
use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TracefsError {
    #[error("tracefs is not mounted (tried {tried}); mount it with: mount -t tracefs tracefs /sys/kernel/tracing")]
    NotMounted { tried: String },
    #[error("tracepoint {0} does not exist on this kernel")]
    NoSuchTracepoint(String),
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("malformed format line in {path}: {line:?}")]
    Malformed { path: PathBuf, line: String },
}

/// One field of a tracepoint record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u16,
    pub size: u16,
}

/// The fields of one tracepoint, by name.
#[derive(Debug, Clone, Default)]
pub struct Format {
    pub fields: HashMap<String, Field>,
}

impl Format {
    pub fn parse(text: &str, origin: &Path) -> Result<Self, TracefsError> {
        let mut fields = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let mut decl = None;
            let mut offset = None;
            let mut size = None;
            for part in rest.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse::<u16>().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse::<u16>().ok();
                } else if !part.starts_with("signed:") && decl.is_none() {
                    decl = Some(part);
                }
            }
            let malformed = || TracefsError::Malformed {
                path: origin.to_owned(),
                line: line.to_owned(),
            };
            let (decl, offset, size) = match (decl, offset, size) {
                (Some(d), Some(o), Some(s)) => (d, o, s),
                _ => return Err(malformed()),
            };
            // The name is the last identifier of the C declaration, minus any array suffix.
            let name = decl
                .rsplit(|c: char| c.is_whitespace() || c == '*')
                .next()
                .map(|n| n.split('[').next().unwrap_or(n))
                .filter(|n| !n.is_empty())
                .ok_or_else(malformed)?;
            fields.insert(name.to_owned(), Field { offset, size });
        }
        Ok(Self { fields })
    }

    pub fn get(&self, name: &str) -> Option<Field> {
        self.fields.get(name).copied()
    }
}

/// A mounted tracefs.
#[derive(Debug, Clone)]
pub struct Tracefs {
    root: PathBuf,
}

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

impl Tracefs {
    /// Finds tracefs, mounting it at /sys/kernel/tracing when it is not mounted yet.
    pub fn locate_or_mount() -> Result<Self, TracefsError> {
        if let Some(found) = Self::locate() {
            return Ok(found);
        }
        let target = Path::new(CANDIDATES[0]);
        let mounted = nix::mount::mount(
            Some("tracefs"),
            target,
            Some("tracefs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
        match mounted {
            Ok(()) => {
                log::info!("mounted tracefs at {}", target.display());
                Self::locate().ok_or_else(|| TracefsError::NotMounted {
                    tried: CANDIDATES.join(", "),
                })
            }
            Err(e) => {
                log::warn!("mounting tracefs at {} failed: {e}", target.display());
                Err(TracefsError::NotMounted {
                    tried: CANDIDATES.join(", "),
                })
            }
        }
    }

    /// A tracefs-like tree at `root` (`events/<category>/<name>/format`), e.g. formats copied
    /// from another machine, or a test's own.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn locate() -> Option<Self> {
        CANDIDATES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.join("events").is_dir())
            .map(|root| Self { root })
    }

    pub fn format(&self, category: &str, name: &str) -> Result<Format, TracefsError> {
        let path = self
            .root
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        match fs::read_to_string(&path) {
            Ok(text) => Format::parse(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(TracefsError::NoSuchTracepoint(format!("{category}:{name}")))
            }
            Err(source) => Err(TracefsError::Io { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND_RESET_6_18: &str = "name: tcp_send_reset
ID: 1234
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;
\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;
\tfield:__u8 daddr[28];\toffset:60;\tsize:28;\tsigned:0;

print fmt: \"skbaddr=%p\"
";

    const SEND_RESET_6_1: &str = "name: tcp_send_reset
format:
\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:32;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:34;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:38;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:42;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:58;\tsize:16;\tsigned:0;
";

    #[test]
    fn parses_6_18_layout() {
        let f = Format::parse(SEND_RESET_6_18, Path::new("t")).expect("parse");
        assert_eq!(
            f.get("skaddr"),
            Some(Field {
                offset: 16,
                size: 8
            })
        );
        assert_eq!(
            f.get("reason"),
            Some(Field {
                offset: 28,
                size: 4
            })
        );
        assert_eq!(
            f.get("saddr"),
            Some(Field {
                offset: 32,
                size: 28
            })
        );
        assert_eq!(f.get("sport"), None);
    }

    #[test]
    fn parses_6_1_layout_without_reason() {
        let f = Format::parse(SEND_RESET_6_1, Path::new("t")).expect("parse");
        assert_eq!(f.get("reason"), None);
        assert_eq!(
            f.get("family"),
            Some(Field {
                offset: 32,
                size: 2
            })
        );
        assert_eq!(
            f.get("saddr_v6"),
            Some(Field {
                offset: 42,
                size: 16
            })
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Format::parse("\tfield:int x;\toffset:zz;\tsize:4;", Path::new("t")).is_err());
        assert!(Format::parse("\tfield:;", Path::new("t")).is_err());
        assert!(Format::parse("no fields at all", Path::new("t"))
            .expect("ok")
            .fields
            .is_empty());
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// A field as the kernel prints it: a C type, the name (maybe an array), its place.
        fn field() -> impl Strategy<Value = (String, String, u16, u16, bool)> {
            let ty = prop::sample::select(vec![
                "int",
                "const void *",
                "__u8",
                "__u16",
                "enum sk_rst_reason",
                "unsigned long",
                "const char *",
                "__data_loc char[]",
            ]);
            let array = prop::option::of(1u16..64);
            (
                ty,
                "[a-z_][a-z0-9_]{0,20}",
                array,
                any::<u16>(),
                any::<u16>(),
                any::<bool>(),
            )
                .prop_map(|(ty, name, array, offset, size, signed)| {
                    let decl = match array {
                        Some(n) => format!("{ty} {name}[{n}]"),
                        None => format!("{ty} {name}"),
                    };
                    (decl, name, offset, size, signed)
                })
        }

        proptest! {
            /// Every field of a well-formed format file reads back with its offset and size,
            /// whatever the header and print-format lines around it (the last of a repeated
            /// name wins).
            #[test]
            fn well_formed_fields_read_back(fields in prop::collection::vec(field(), 0..24)) {
                let mut text = String::from("name: t\nID: 1\nformat:\n");
                let mut want = HashMap::new();
                for (decl, name, offset, size, signed) in &fields {
                    text.push_str(&format!(
                        "\tfield:{decl};\toffset:{offset};\tsize:{size};\tsigned:{};\n",
                        u8::from(*signed)
                    ));
                    want.insert(name.clone(), Field { offset: *offset, size: *size });
                }
                text.push_str("\nprint fmt: \"x=%p\", REC->x\n");
                let f = Format::parse(&text, Path::new("t")).expect("well-formed format");
                prop_assert_eq!(f.fields, want);
            }

            /// A field line without an offset or size is an error, never a guess.
            #[test]
            fn a_field_without_its_place_is_an_error(
                (decl, _, offset, size, _) in field(),
                drop_offset in any::<bool>(),
            ) {
                let line = if drop_offset {
                    format!("\tfield:{decl};\tsize:{size};\n")
                } else {
                    format!("\tfield:{decl};\toffset:{offset};\n")
                };
                prop_assert!(Format::parse(&line, Path::new("t")).is_err());
            }
        }
    }
}
