//! Malformed input never panics: property tests (proptest) of everything that parses bytes or
//! text the agent does not control — ring buffer records, tracefs formats, BTF (and the layout
//! built from it), sock_diag datagrams, /proc MIB text, cgroup paths.
//!
//! Each property feeds both arbitrary input and input that is well formed up to a point
//! (valid headers with random bodies, truncations, cyclic type graphs), since purely random
//! bytes rarely get past the first length check.
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use proptest::prelude::*;
use rst_trace_common::{RecordHeader, RecordKind, TaskInfo, Tuple, RECORD_VERSION};

use crate::{
    container::container_id_from_cgroup,
    kernel::{
        btf::KernelBtf,
        layout::KernelFacts,
        tracefs::{Format, Tracefs},
    },
    records::{Endpoints, Record, Task},
    sockdiag::{parse_datagram, parse_mib, Dump},
};

fn bytes_of<T: aya::Pod>(v: &T) -> Vec<u8> {
    // SAFETY: Pod types are plain bytes with no padding (checked at compile time in
    // rst-trace-common).
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
        .to_vec()
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // No regression files in the source tree: a failure prints its minimal input.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Ring buffer records

/// The largest record is well under this; bodies up to it cover every kind whole and truncated.
const MAX_RECORD: usize = 1024;

/// A header of `kind` (known or not) and `version`, then `body`, cut to `len` bytes.
fn record_bytes(kind: u16, version: u16, body: &[u8], len: usize) -> Vec<u8> {
    let header = RecordHeader {
        kind,
        version,
        ..RecordHeader::default()
    };
    let mut b = bytes_of(&header);
    b.extend_from_slice(body);
    b.truncate(len);
    b
}

fn any_kind() -> impl Strategy<Value = u16> {
    // Mostly kinds the agent knows (every one of them, whatever the set is), sometimes others.
    prop_oneof![8 => 0u16..=32, 1 => any::<u16>()]
}

fn any_version() -> impl Strategy<Value = u16> {
    prop_oneof![8 => Just(RECORD_VERSION), 1 => any::<u16>()]
}

fn check_record(bytes: &[u8]) {
    if let Ok(rec) = Record::try_from(bytes) {
        let h = rec.header();
        // A decoded record is the kind its header says, of the version this agent reads.
        assert!(RecordKind::from_u16(h.kind).is_some());
        assert_eq!(h.version, RECORD_VERSION);
        assert!(bytes.len() >= std::mem::size_of::<RecordHeader>());
    }
}

proptest! {
    #![proptest_config(config(4096))]

    #[test]
    fn records_from_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..MAX_RECORD)) {
        check_record(&bytes);
    }

    #[test]
    fn records_of_every_kind_with_random_bodies(
        kind in any_kind(),
        version in any_version(),
        body in proptest::collection::vec(any::<u8>(), 0..MAX_RECORD),
        cut in 0usize..MAX_RECORD + 64,
    ) {
        // Whole, truncated anywhere (header included), or with trailing bytes.
        check_record(&record_bytes(kind, version, &body, cut));
        check_record(&record_bytes(kind, version, &body, usize::MAX));
    }

    #[test]
    fn tuples_and_tasks_of_any_content(
        family in prop_oneof![Just(2u16), Just(10u16), any::<u16>()],
        lport in any::<u16>(), rport in any::<u16>(),
        la in any::<[u8; 16]>(), ra in any::<[u8; 16]>(),
        comm in any::<[u8; 16]>(), pid in any::<u32>(), tid in any::<u32>(), cg in any::<u64>(),
    ) {
        let t = Tuple { family, local_port: lport, remote_port: rport, local_addr: la, remote_addr: ra, ..Tuple::default() };
        if let Ok(e) = Endpoints::try_from(&t) {
            prop_assert!(family == 2 || family == 10);
            prop_assert_eq!(e.local.port, lport);
            prop_assert_eq!(e.local.addr.is_ipv4(), family == 2 || Ipv6Addr::from(la).to_ipv4_mapped().is_some());
        }
        let ti = TaskInfo { tid, pid, cgroup_id: cg, comm };
        let task = Task::from(&ti);
        prop_assert!(task.comm.chars().count() <= 16);
        prop_assert_eq!(task.pid, pid);
    }
}

// ---------------------------------------------------------------------------------------------
// tracefs formats

fn format_line() -> impl Strategy<Value = String> {
    let decl = prop_oneof![
        Just("int state".to_owned()),
        Just("const void * skaddr".to_owned()),
        Just("__u8 saddr[28]".to_owned()),
        Just("".to_owned()),
        Just("*".to_owned()),
        Just("[".to_owned()),
        "[a-z_ *\\[\\]0-9]{0,24}",
        ".{0,16}",
    ];
    let num = prop_oneof![
        (0u32..70_000).prop_map(|n| n.to_string()),
        Just("-1".to_owned()),
        Just("".to_owned()),
        "[0-9a-z]{0,6}",
    ];
    let sep = prop_oneof![Just(";\t"), Just(";"), Just(" "), Just(";;")];
    (decl, num.clone(), num, sep, any::<bool>(), any::<bool>()).prop_map(
        |(decl, off, size, sep, signed, prefix)| {
            let mut l = String::new();
            if prefix {
                l.push('\t');
            }
            l.push_str("field:");
            l.push_str(&decl);
            l.push_str(sep);
            l.push_str("offset:");
            l.push_str(&off);
            l.push_str(sep);
            l.push_str("size:");
            l.push_str(&size);
            l.push_str(sep);
            if signed {
                l.push_str("signed:1;");
            }
            l
        },
    )
}

fn format_text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,300}",
        proptest::collection::vec(format_line(), 0..12).prop_map(|ls| ls.join("\n")),
    ]
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn tracefs_formats_of_any_text(text in format_text()) {
        if let Ok(f) = Format::parse(&text, Path::new("t")) {
            for (name, _) in f.fields.iter() {
                prop_assert!(!name.is_empty());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// BTF, and the kernel layout built from it

/// Writes a raw `.BTF` blob: header, type section, string section.
#[derive(Default)]
pub(crate) struct BtfBlob {
    types: Vec<u8>,
    strings: Vec<u8>,
    count: u32,
}

const BTF_KIND_INT: u32 = 1;
const BTF_KIND_PTR: u32 = 2;
const BTF_KIND_STRUCT: u32 = 4;
const BTF_KIND_UNION: u32 = 5;
const BTF_KIND_ENUM: u32 = 6;
const BTF_KIND_TYPEDEF: u32 = 8;
const BTF_KIND_CONST: u32 = 10;
const BTF_KIND_FUNC: u32 = 12;
const BTF_KIND_FUNC_PROTO: u32 = 13;
const BTF_KIND_ENUM64: u32 = 19;

impl BtfBlob {
    pub(crate) fn new() -> Self {
        Self {
            strings: vec![0],
            ..Self::default()
        }
    }

    fn name(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let off = u32::try_from(self.strings.len()).expect("small test blob");
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }

    fn u32(&mut self, v: u32) {
        self.types.extend_from_slice(&v.to_le_bytes());
    }

    /// Appends a type; returns its id (1-based, in order).
    fn ty(&mut self, name: &str, kind: u32, vlen: u32, size_or_type: u32) -> u32 {
        let n = self.name(name);
        self.u32(n);
        self.u32((kind << 24) | (vlen & 0xffff));
        self.u32(size_or_type);
        self.count += 1;
        self.count
    }

    pub(crate) fn int(&mut self, name: &str, size: u32) -> u32 {
        let id = self.ty(name, BTF_KIND_INT, 0, size);
        self.u32(size * 8); // encoding: no flags, offset 0, bits
        id
    }

    /// `members`: (name, type id, bit offset).
    pub(crate) fn structure(
        &mut self,
        name: &str,
        union: bool,
        size: u32,
        members: &[(&str, u32, u32)],
    ) -> u32 {
        let kind = if union {
            BTF_KIND_UNION
        } else {
            BTF_KIND_STRUCT
        };
        let vlen = u32::try_from(members.len()).expect("few members");
        let id = self.ty(name, kind, vlen, size);
        for (m, t, off) in members {
            let n = self.name(m);
            self.u32(n);
            self.u32(*t);
            self.u32(*off);
        }
        id
    }

    pub(crate) fn typedef(&mut self, name: &str, to: u32) -> u32 {
        self.ty(name, BTF_KIND_TYPEDEF, 0, to)
    }

    fn build(&self) -> Vec<u8> {
        let type_len = u32::try_from(self.types.len()).expect("small");
        let str_len = u32::try_from(self.strings.len()).expect("small");
        let mut b = Vec::new();
        b.extend_from_slice(&0xeb9fu16.to_le_bytes()); // magic
        b.push(1); // version
        b.push(0); // flags
        b.extend_from_slice(&24u32.to_le_bytes()); // hdr_len
        b.extend_from_slice(&0u32.to_le_bytes()); // type_off
        b.extend_from_slice(&type_len.to_le_bytes());
        b.extend_from_slice(&type_len.to_le_bytes()); // str_off
        b.extend_from_slice(&str_len.to_le_bytes());
        b.extend_from_slice(&self.types);
        b.extend_from_slice(&self.strings);
        b
    }
}

/// Names the layout looks up, plus noise; "" makes anonymous members. Type names come from
/// the front of the list (mostly "sock"), member names from all of it (often anonymous), so
/// that lookups get deep into random graphs instead of failing at the first name.
const BTF_NAMES: &[&str] = &[
    "sock",
    "sock",
    "tcp_sock",
    "net",
    "sock_flags",
    "sk_rst_reason",
    "tcp_conn_request",
    "btf_trace_kfree_skb",
    "",
    "",
    "",
    "__sk_common",
    "__sk_common",
    "skc_family",
    "skc_net",
    "net",
    "ns",
    "inum",
    "rcv_nxt",
    "SOCK_LINGER",
    "SK_RST_REASON_NO_SOCKET",
    "x",
];
/// Type names: the first eight of BTF_NAMES.
const TYPE_NAMES: usize = 8;

/// One type of a random type graph; references may point anywhere, themselves included, or
/// past the last type.
#[derive(Debug, Clone)]
enum TypeSpec {
    Int(usize),
    Struct {
        union: bool,
        name: usize,
        size: u32,
        members: Vec<(usize, u32, u32)>,
    },
    Typedef(usize, u32),
    Const(u32),
    Ptr(u32),
    Enum(usize, Vec<(usize, u32)>),
    Enum64(usize, Vec<(usize, u64)>),
    Func(usize, u32),
    Proto(Vec<u32>),
}

fn type_spec(n_types: u32) -> impl Strategy<Value = TypeSpec> {
    let name = 0..TYPE_NAMES;
    let member = 0..BTF_NAMES.len();
    let tref = 0..n_types + 3;
    prop_oneof![
        1 => name.clone().prop_map(TypeSpec::Int),
        6 => (
            any::<bool>(),
            name.clone(),
            any::<u32>(),
            proptest::collection::vec(
                (
                    member.clone(),
                    tref.clone(),
                    prop_oneof![4 => (0u32..64).prop_map(|o| o * 8), 1 => any::<u32>()]
                ),
                0..6
            )
        )
            .prop_map(|(union, name, size, members)| TypeSpec::Struct {
                union,
                name,
                size,
                members
            }),
        2 => (name.clone(), tref.clone()).prop_map(|(n, t)| TypeSpec::Typedef(n, t)),
        1 => tref.clone().prop_map(TypeSpec::Const),
        1 => tref.clone().prop_map(TypeSpec::Ptr),
        1 => (
            name.clone(),
            proptest::collection::vec((member.clone(), any::<u32>()), 0..4)
        )
            .prop_map(|(n, m)| TypeSpec::Enum(n, m)),
        1 => (
            name.clone(),
            proptest::collection::vec((member, any::<u64>()), 0..4)
        )
            .prop_map(|(n, m)| TypeSpec::Enum64(n, m)),
        1 => (name, tref.clone()).prop_map(|(n, t)| TypeSpec::Func(n, t)),
        1 => proptest::collection::vec(tref, 0..8).prop_map(TypeSpec::Proto),
    ]
}

fn type_graph() -> impl Strategy<Value = Vec<TypeSpec>> {
    (1u32..16)
        .prop_flat_map(|n| proptest::collection::vec(type_spec(n), usize::try_from(n).unwrap_or(1)))
}

fn blob_of(specs: &[TypeSpec]) -> Vec<u8> {
    let mut b = BtfBlob::new();
    for s in specs {
        match s {
            TypeSpec::Int(n) => {
                b.int(BTF_NAMES[*n], 4);
            }
            TypeSpec::Struct {
                union,
                name,
                size,
                members,
            } => {
                let ms: Vec<(&str, u32, u32)> = members
                    .iter()
                    .map(|(n, t, o)| (BTF_NAMES[*n], *t, *o))
                    .collect();
                b.structure(BTF_NAMES[*name], *union, *size, &ms);
            }
            TypeSpec::Typedef(n, t) => {
                b.typedef(BTF_NAMES[*n], *t);
            }
            TypeSpec::Const(t) => {
                b.ty("", BTF_KIND_CONST, 0, *t);
            }
            TypeSpec::Ptr(t) => {
                b.ty("", BTF_KIND_PTR, 0, *t);
            }
            TypeSpec::Enum(n, ms) => {
                b.ty(BTF_NAMES[*n], BTF_KIND_ENUM, ms.len() as u32, 4);
                for (m, v) in ms {
                    let off = b.name(BTF_NAMES[*m]);
                    b.u32(off);
                    b.u32(*v);
                }
            }
            TypeSpec::Enum64(n, ms) => {
                b.ty(BTF_NAMES[*n], BTF_KIND_ENUM64, ms.len() as u32, 8);
                for (m, v) in ms {
                    let off = b.name(BTF_NAMES[*m]);
                    b.u32(off);
                    b.u32(*v as u32);
                    b.u32((*v >> 32) as u32);
                }
            }
            TypeSpec::Func(n, t) => {
                b.ty(BTF_NAMES[*n], BTF_KIND_FUNC, 0, *t);
            }
            TypeSpec::Proto(ps) => {
                b.ty("", BTF_KIND_FUNC_PROTO, ps.len() as u32, 0);
                for p in ps {
                    b.u32(0);
                    b.u32(*p);
                }
            }
        }
    }
    b.build()
}

/// An empty tracefs tree: `KernelFacts::discover` then exercises every BTF lookup of the
/// layout and reports the formats missing.
struct EmptyTracefs(PathBuf);

impl EmptyTracefs {
    fn new() -> Self {
        let p = std::env::temp_dir().join(format!(
            "rst-trace-malformed-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::create_dir_all(p.join("events"));
        Self(p)
    }
}

impl Drop for EmptyTracefs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn exercise_btf(btf: &KernelBtf) {
    let tracefs = EmptyTracefs::new();
    let facts = KernelFacts::discover(&Tracefs::at(&tracefs.0), btf);
    assert!(
        !facts.warnings.is_empty(),
        "no tracefs formats is warned about"
    );
    for name in BTF_NAMES {
        let _ = btf.offset(name, &[]);
        let _ = btf.offset(name, &["__sk_common", "skc_family"]);
        let _ = btf.offset(name, &["", "x", "net", "ns", "inum"]);
        let _ = btf.func_param_count(name);
        let _ = btf.tracepoint_arg("kfree_skb", name);
        let _ = btf.enum_values(name);
    }
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn btf_of_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(btf) = KernelBtf::from_bytes(&bytes) {
            exercise_btf(&btf);
        }
    }

    #[test]
    fn btf_of_random_type_graphs(specs in type_graph()) {
        // Valid encoding, nonsense content: cycles, dangling references, anonymous members of
        // their own struct, members past the struct's size.
        if let Ok(btf) = KernelBtf::from_bytes(&blob_of(&specs)) {
            exercise_btf(&btf);
        }
    }

    #[test]
    fn btf_of_damaged_blobs(
        specs in type_graph(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut blob = blob_of(&specs);
        let len = blob.len();
        for (at, v) in flips {
            blob[at % len] = v;
        }
        blob.truncate(cut % (len + 1));
        if let Ok(btf) = KernelBtf::from_bytes(&blob) {
            exercise_btf(&btf);
        }
    }
}

#[test]
fn btf_anonymous_member_cycles_end() {
    // struct sock { <anon> struct sock; <anon> struct sock; }: the member search used to
    // recurse into the same struct without end (a stack overflow, i.e. an abort).
    let mut b = BtfBlob::new();
    let int = b.int("int", 4);
    let sock = b.structure("sock", false, 8, &[("", 2, 0), ("", 2, 0), ("x", int, 32)]);
    assert_eq!(sock, 2);
    let btf = KernelBtf::from_bytes(&b.build()).expect("valid encoding");
    assert_eq!(
        btf.offset("sock", &["x"]),
        Some(4),
        "found before any cycle"
    );
    assert_eq!(
        btf.offset("sock", &["skc_family"]),
        None,
        "absent, not a hang"
    );
    exercise_btf(&btf);
}

#[test]
fn btf_offsets_through_anonymous_members_and_typedefs() {
    let mut b = BtfBlob::new();
    let int = b.int("int", 4); // 1
    let common = b.structure("sock_common", false, 16, &[("skc_family", int, 64)]); // 2
    let td = b.typedef("sock_common_t", common); // 3
    let anon = b.structure("", true, 16, &[("__sk_common", td, 0)]); // 4
    b.structure("sock", false, 32, &[("pad", int, 0), ("", anon, 128)]); // 5
    let btf = KernelBtf::from_bytes(&b.build()).expect("valid");
    assert_eq!(
        btf.offset("sock", &["__sk_common", "skc_family"]),
        Some(16 + 8)
    );
    assert_eq!(btf.offset("sock", &["__sk_common", "nope"]), None);
}

// ---------------------------------------------------------------------------------------------
// sock_diag datagrams and /proc MIB text

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const INET_DIAG_MSG_LEN: usize = 72;

/// One netlink message: header (length possibly wrong) + an inet_diag_msg of random content +
/// random attributes.
fn netlink_message() -> impl Strategy<Value = Vec<u8>> {
    let attr = (
        0u16..24,
        proptest::collection::vec(any::<u8>(), 0..48),
        any::<i8>(),
    )
        .prop_map(|(ty, payload, len_skew)| {
            let len = (4 + payload.len()) as i32 + i32::from(len_skew % 8);
            let mut a = Vec::new();
            a.extend_from_slice(&(len.clamp(0, 0xffff) as u16).to_le_bytes());
            a.extend_from_slice(&ty.to_le_bytes());
            a.extend_from_slice(&payload);
            while a.len() % 4 != 0 {
                a.push(0);
            }
            a
        });
    (
        prop_oneof![
            4 => Just(SOCK_DIAG_BY_FAMILY),
            1 => Just(NLMSG_DONE),
            1 => Just(NLMSG_ERROR),
            1 => any::<u16>(),
        ],
        prop_oneof![Just(2u8), Just(10u8), any::<u8>()],
        any::<[u8; INET_DIAG_MSG_LEN - 1]>(),
        proptest::collection::vec(attr, 0..5),
        prop_oneof![4 => Just(0i32), 1 => -40i32..40],
        0usize..INET_DIAG_MSG_LEN + 1,
    )
        .prop_map(|(ty, family, rest, attrs, len_skew, body_len)| {
            let mut body = vec![family];
            body.extend_from_slice(&rest);
            body.truncate(body_len);
            for a in attrs {
                body.extend_from_slice(&a);
            }
            let len = (16 + body.len()) as i32 + len_skew;
            let mut m = Vec::new();
            m.extend_from_slice(&(len.max(0) as u32).to_le_bytes());
            m.extend_from_slice(&ty.to_le_bytes());
            m.extend_from_slice(&0x2u16.to_le_bytes()); // NLM_F_MULTI
            m.extend_from_slice(&1u32.to_le_bytes());
            m.extend_from_slice(&0u32.to_le_bytes());
            m.extend_from_slice(&body);
            m
        })
}

fn check_datagram(bytes: &[u8]) {
    let mut seen = 0usize;
    let mut sockets = 0usize;
    let r = parse_datagram(bytes, &mut seen, &mut |resp| {
        sockets += 1;
        let _ = (resp.header.socket_id.source_port, &resp.nlas);
    });
    if let Ok(d) = r {
        assert!(matches!(d, Dump::More | Dump::Over));
    }
    assert!(sockets <= seen, "every socket is a counted message");
}

fn nl_message(ty: u16, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&(16 + body.len() as u32).to_le_bytes());
    m.extend_from_slice(&ty.to_le_bytes());
    m.extend_from_slice(&0x2u16.to_le_bytes());
    m.extend_from_slice(&[0u8; 8]);
    m.extend_from_slice(body);
    m
}

#[test]
fn sockdiag_well_formed_datagrams_parse() {
    // A listener on 0.0.0.0:8080 (state 10) with an SKMEMINFO attribute, then NLMSG_DONE.
    let mut body = vec![2u8, 10, 0, 0];
    body.extend_from_slice(&8080u16.to_be_bytes());
    body.resize(INET_DIAG_MSG_LEN, 0);
    let mut attr = Vec::new();
    attr.extend_from_slice(&(4u16 + 36).to_le_bytes());
    attr.extend_from_slice(&7u16.to_le_bytes()); // INET_DIAG_SKMEMINFO
    attr.extend_from_slice(&[0u8; 36]);
    body.extend_from_slice(&attr);
    let one = nl_message(SOCK_DIAG_BY_FAMILY, &body);
    let mut ports = Vec::new();
    let mut seen = 0;
    let r = parse_datagram(&one, &mut seen, &mut |resp| {
        ports.push(resp.header.socket_id.source_port)
    });
    assert_eq!(r.ok(), Some(Dump::More));
    assert_eq!(ports, [8080]);
    let mut two = one.clone();
    two.extend_from_slice(&nl_message(NLMSG_DONE, &[0u8; 4]));
    let r = parse_datagram(&two, &mut seen, &mut |_| {});
    assert_eq!(r.ok(), Some(Dump::Over));
    assert_eq!(seen, 2, "NLMSG_DONE ends the dump uncounted");
}

proptest! {
    #![proptest_config(config(4096))]

    #[test]
    fn sockdiag_datagrams_of_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        check_datagram(&bytes);
    }

    #[test]
    fn sockdiag_datagrams_of_random_messages(msgs in proptest::collection::vec(netlink_message(), 0..6), cut in any::<usize>()) {
        let mut d: Vec<u8> = msgs.concat();
        let len = d.len();
        d.truncate(cut % (len + 1));
        check_datagram(&d);
        check_datagram(&msgs.concat());
    }

    #[test]
    fn mib_of_any_text(text in prop_oneof![
        ".{0,400}",
        proptest::collection::vec(("[A-Za-z]{0,6}", "[A-Za-z: ]{0,30}", "[0-9 :a-z-]{0,30}"), 0..6)
            .prop_map(|rows| rows.into_iter().map(|(p, n, v)| format!("{p}: {n}\n{p}: {v}\n")).collect::<String>()),
    ]) {
        let mut m = std::collections::HashMap::new();
        parse_mib(&text, &mut m);
        for k in m.keys() {
            prop_assert!(k.contains('.'));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// cgroup paths

fn cgroup_path() -> impl Strategy<Value = String> {
    let hex64 = "[0-9a-f]{64}";
    let segment = prop_oneof![
        ".{0,20}",
        "[a-z.-]{0,12}",
        hex64.prop_map(|h| format!("docker-{h}.scope")),
        hex64.prop_map(|h| format!("cri-containerd-{h}.scope")),
        hex64.prop_map(|h| format!("crio-{h}")),
        "[0-9a-fA-F]{63,65}",
        "[0-9a-f]{64}[^0-9a-f]{1,3}",
        Just(".scope".to_owned()),
        Just("-".to_owned()),
    ];
    prop_oneof![
        ".{0,200}",
        proptest::collection::vec(segment, 0..6).prop_map(|s| format!("/{}", s.join("/"))),
    ]
}

proptest! {
    #![proptest_config(config(4096))]

    #[test]
    fn container_ids_from_any_cgroup_path(path in cgroup_path()) {
        if let Some(id) = container_id_from_cgroup(&path) {
            prop_assert_eq!(id.len(), 64);
            prop_assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
            // Ids are reported in lower case, as runtimes write them.
            prop_assert!(path.to_ascii_lowercase().contains(&id));
        }
    }
}

/// `cargo xtask fuzz` without nightly: the fuzz target's body (fuzz/fuzz_targets/
/// record_decoder.rs), run for RST_TRACE_FUZZ_SECONDS over random and mutated records.
#[test]
#[ignore = "run by `cargo xtask fuzz` when cargo-fuzz cannot be used"]
fn fuzz_record_decoder_stable() {
    let seconds: u64 = std::env::var("RST_TRACE_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    // xorshift64*: a run is reproduced by setting RST_TRACE_FUZZ_SEED to the seed it prints.
    let seed = std::env::var("RST_TRACE_FUZZ_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
        | 1;
    eprintln!("fuzzing the record decoder for {seconds} s, seed {seed:#x}");
    let mut x = seed;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut runs = 0u64;
    while std::time::Instant::now() < deadline {
        for _ in 0..10_000 {
            let len = (next() % (MAX_RECORD as u64 + 64)) as usize;
            let kind = (next() % 40) as u16;
            let version = if next() % 8 == 0 {
                next() as u16
            } else {
                RECORD_VERSION
            };
            let body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let bytes = record_bytes(kind, version, &body, len);
            crate::records::fuzz_one(&bytes);
            runs += 1;
        }
    }
    eprintln!("{runs} inputs, no panic");
}

#[test]
fn localhost_tuple_sanity() {
    // The generators above are only useful if well-formed input does decode.
    let mut t = Tuple {
        family: 2,
        local_port: 1,
        remote_port: 2,
        ..Tuple::default()
    };
    t.local_addr[..4].copy_from_slice(&Ipv4Addr::LOCALHOST.octets());
    assert!(Endpoints::try_from(&t).is_ok());
    let rec = record_bytes(1, RECORD_VERSION, &[0u8; MAX_RECORD], usize::MAX);
    assert!(Record::try_from(rec.as_slice()).is_ok(), "kind 1 decodes");
}

/// The kfree_skb prototype as BTF has it (`btf_trace_kfree_skb`: a pointer to a prototype
/// whose first parameter is the tracepoint's data), with `args` after it.
fn kfree_skb_prototype(args: &[&str]) -> Vec<u8> {
    let mut b = BtfBlob::new();
    let void_ptr = b.ty("", BTF_KIND_PTR, 0, 0);
    let mut ids = vec![void_ptr];
    for a in args {
        let id = match *a {
            "location" => void_ptr,
            "reason" => b.ty("skb_drop_reason", BTF_KIND_ENUM, 0, 4),
            "skb" => {
                let s = b.structure("sk_buff", false, 8, &[]);
                b.ty("", BTF_KIND_PTR, 0, s)
            }
            "rx_sk" => {
                let s = b.structure("sock", false, 8, &[]);
                let c = b.ty("", BTF_KIND_CONST, 0, s);
                b.ty("", BTF_KIND_PTR, 0, c)
            }
            other => panic!("no such argument {other}"),
        };
        ids.push(id);
    }
    let proto = b.ty("", BTF_KIND_FUNC_PROTO, ids.len() as u32, 0);
    for id in &ids {
        b.u32(0);
        b.u32(*id);
    }
    let ptr = b.ty("", BTF_KIND_PTR, 0, proto);
    b.typedef("btf_trace_kfree_skb", ptr);
    b.build()
}

fn kfree_skb_layout(args: &[&str]) -> (u16, u16, Vec<String>) {
    let btf = KernelBtf::from_bytes(&kfree_skb_prototype(args)).expect("a well-formed blob");
    let tracefs = EmptyTracefs::new();
    let facts = KernelFacts::discover(&Tracefs::at(&tracefs.0), &btf);
    (
        facts.layout.tp.kfs_reason_arg,
        facts.layout.tp.kfs_rx_sk_arg,
        facts.warnings,
    )
}

#[test]
fn kfree_skb_arguments_come_from_the_prototype() {
    use rst_trace_common::{KFREE_SKB_REASON_ARG, KFREE_SKB_RX_SK_ARG, OFFSET_NONE};
    let (reason, rx_sk, _) = kfree_skb_layout(&["skb", "location", "reason", "rx_sk"]);
    assert_eq!((reason, rx_sk), (KFREE_SKB_REASON_ARG, KFREE_SKB_RX_SK_ARG));
    // 5.17 to 6.9: no receiving socket.
    let (reason, rx_sk, _) = kfree_skb_layout(&["skb", "location", "reason"]);
    assert_eq!((reason, rx_sk), (KFREE_SKB_REASON_ARG, OFFSET_NONE));
    // 5.10: no reason at all.
    let (reason, rx_sk, _) = kfree_skb_layout(&["skb", "location"]);
    assert_eq!((reason, rx_sk), (OFFSET_NONE, OFFSET_NONE));
    // A kernel that moved the reason: left out, and said.
    let (reason, _, warnings) = kfree_skb_layout(&["skb", "reason", "location"]);
    assert_eq!(reason, OFFSET_NONE);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("skb_drop_reason as argument 1")),
        "{warnings:?}"
    );
}
