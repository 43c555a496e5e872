//! Kernel struct member offsets and enum values from the running kernel's BTF.
use std::collections::HashMap;

use btf_rs::{Btf, BtfType, Type};
use thiserror::Error;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("this kernel exposes no BTF at {VMLINUX_BTF} (needs CONFIG_DEBUG_INFO_BTF=y): {0}")]
    Unavailable(String),
    #[error("malformed BTF: {0}")]
    Malformed(String),
}

/// How deep anonymous struct/union members are searched, and how many members one lookup may
/// visit. Real kernels nest a handful of levels and `struct sock` has a few hundred members
/// all told; a malformed BTF whose anonymous members refer back to their own struct must end
/// the search, not recurse without end (or visit exponentially many members).
const MAX_ANON_DEPTH: u32 = 32;
const MAX_MEMBERS_VISITED: u32 = 100_000;

pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn load() -> Result<Self, BtfError> {
        Btf::from_file(VMLINUX_BTF)
            .map(|btf| Self { btf })
            .map_err(|e| BtfError::Unavailable(e.to_string()))
    }

    /// BTF from raw bytes (a `.BTF` blob, as in /sys/kernel/btf/vmlinux).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BtfError> {
        Btf::from_bytes(bytes)
            .map(|btf| Self { btf })
            .map_err(|e| BtfError::Malformed(e.to_string()))
    }

    /// Byte offset of `path` (members, descending through named and anonymous members) in
    /// `struct name`. `None` when the kernel has no such member.
    pub fn offset(&self, name: &str, path: &[&str]) -> Option<u32> {
        let root = self
            .btf
            .resolve_types_by_name(name)
            .ok()?
            .into_iter()
            .find(|t| matches!(t, Type::Struct(s) if !s.members.is_empty()))?;
        let mut current = root;
        let mut bits = 0u32;
        for (i, want) in path.iter().enumerate() {
            let (Type::Struct(s) | Type::Union(s)) = &current else {
                return None;
            };
            let mut budget = MAX_MEMBERS_VISITED;
            let (member_bits, member_type) = self.find_member(s, want, 0, &mut budget)?;
            bits = bits.checked_add(member_bits)?;
            if i + 1 < path.len() {
                current = self.strip(member_type)?;
            }
        }
        if !bits.is_multiple_of(8) {
            return None;
        }
        Some(bits / 8)
    }

    /// Finds `want` in `s`, looking inside anonymous struct/union members, and returns its bit
    /// offset relative to `s` and its type id.
    fn find_member(
        &self,
        s: &btf_rs::Struct,
        want: &str,
        depth: u32,
        budget: &mut u32,
    ) -> Option<(u32, u32)> {
        if depth > MAX_ANON_DEPTH {
            return None;
        }
        for m in &s.members {
            *budget = budget.checked_sub(1)?;
            let name = self.btf.resolve_name(m).unwrap_or_default();
            let type_id = m.get_type_id()?;
            if name == want {
                return Some((m.bit_offset(), type_id));
            }
            if name.is_empty() {
                if let Some(Type::Struct(inner) | Type::Union(inner)) = self.strip(type_id) {
                    if let Some((off, id)) = self.find_member(&inner, want, depth + 1, budget) {
                        return Some((m.bit_offset().checked_add(off)?, id));
                    }
                }
            }
        }
        None
    }

    /// Resolves typedefs and qualifiers down to the underlying type.
    fn strip(&self, mut id: u32) -> Option<Type> {
        for _ in 0..16 {
            let t = self.btf.resolve_type_by_id(id).ok()?;
            match &t {
                Type::Typedef(_)
                | Type::Const(_)
                | Type::Volatile(_)
                | Type::Restrict(_)
                | Type::TypeTag(_) => {
                    id = t.as_btf_type()?.get_type_id()?;
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Number of parameters of kernel function `name` (its signature changes across versions).
    pub fn func_param_count(&self, name: &str) -> Option<usize> {
        let funcs = self.btf.resolve_types_by_name(name).ok()?;
        let func = funcs.into_iter().find(|t| matches!(t, Type::Func(_)))?;
        let proto_id = func.as_btf_type()?.get_type_id()?;
        match self.btf.resolve_type_by_id(proto_id).ok()? {
            Type::FuncProto(p) => Some(p.parameters.len()),
            _ => None,
        }
    }

    /// Position, in TP_PROTO order, of the first argument of raw tracepoint `tracepoint` whose
    /// type (or, for a pointer, the type it points to) is named `type_name`: arguments are
    /// added to tracepoints across kernel versions (kfree_skb gained `reason`, then `rx_sk`).
    /// Read from the `btf_trace_<tracepoint>` typedef, whose first parameter is the
    /// tracepoint's private data rather than an argument.
    pub fn tracepoint_arg(&self, tracepoint: &str, type_name: &str) -> Option<usize> {
        let typedef = self
            .btf
            .resolve_types_by_name(&format!("btf_trace_{tracepoint}"))
            .ok()?
            .into_iter()
            .find(|t| matches!(t, Type::Typedef(_)))?;
        let Type::Ptr(ptr) = self.strip(typedef.as_btf_type()?.get_type_id()?)? else {
            return None;
        };
        let Type::FuncProto(proto) = self.strip(ptr.get_type_id()?)? else {
            return None;
        };
        proto.parameters.iter().skip(1).position(|p| {
            p.get_type_id()
                .and_then(|id| self.strip(id))
                .and_then(|t| match t {
                    Type::Ptr(to) => to.get_type_id().and_then(|id| self.strip(id)),
                    other => Some(other),
                })
                .and_then(|t| self.btf.resolve_name(t.as_btf_type()?).ok())
                .is_some_and(|n| n == type_name)
        })
    }

    /// All values of `enum name`, by member name.
    pub fn enum_values(&self, name: &str) -> HashMap<String, u64> {
        let mut out = HashMap::new();
        let Ok(types) = self.btf.resolve_types_by_name(name) else {
            return out;
        };
        for t in types {
            match t {
                Type::Enum(e) => {
                    for m in &e.members {
                        if let Ok(n) = self.btf.resolve_name(m) {
                            out.insert(n, u64::from(m.val()));
                        }
                    }
                }
                Type::Enum64(e) => {
                    for m in &e.members {
                        if let Ok(n) = self.btf.resolve_name(m) {
                            out.insert(n, m.val());
                        }
                    }
                }
                _ => {}
            }
        }
        out
    }
}
