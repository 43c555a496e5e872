//! Builds the `KernelLayout` handed to the eBPF programs, and records which hooks the
//! running kernel can serve.
use rst_trace_common::{
    KernelLayout, StructOffsets, TracepointOffsets, KFREE_SKB_REASON_ARG, KFREE_SKB_RX_SK_ARG,
    MAX_DROP_REASONS, MEMBER_NONE, OFFSET_NONE, TCP_SEND_RESET_REASON_ARG,
};

use super::{
    btf::KernelBtf,
    reasons::ReasonNames,
    tracefs::{Format, Tracefs},
};

/// What was learnt about the running kernel.
pub struct KernelFacts {
    pub layout: KernelLayout,
    pub rst_reasons: ReasonNames,
    pub drop_reasons: ReasonNames,
    /// Tracepoints whose format could be read, by "category:name".
    pub formats_found: Vec<String>,
    /// Problems that disable one hook, never the agent.
    pub warnings: Vec<String>,
}

/// The drop reasons the kfree_skb program reports, in counter-slot order (defined, with the
/// slot order, in rst-trace-common).
pub use rst_trace_common::WATCHED_DROP_REASONS;

fn off(fmt: Option<&Format>, name: &str) -> u16 {
    fmt.and_then(|f| f.get(name))
        .map_or(OFFSET_NONE, |f| f.offset)
}

fn member(btf: &KernelBtf, s: &str, path: &[&str]) -> u32 {
    btf.offset(s, path).unwrap_or(MEMBER_NONE)
}

impl KernelFacts {
    pub fn discover(tracefs: &Tracefs, btf: &KernelBtf) -> Self {
        let mut warnings = Vec::new();
        let mut layout = KernelLayout::UNKNOWN;
        let (tp, found) = tracepoint_offsets(tracefs, &mut warnings);
        layout.tp = tp;
        kfree_skb_args(btf, &mut layout.tp, &mut warnings);
        tcp_send_reset_args(btf, &mut layout.tp, &mut warnings);
        layout.st = struct_offsets(btf);
        let rst_reasons = ReasonNames::from_btf(btf, "sk_rst_reason", "SK_RST_REASON_");
        let drop_reasons = ReasonNames::from_btf(btf, "skb_drop_reason", "SKB_DROP_REASON_");
        watch_drop_reasons(&drop_reasons, &mut layout, &mut warnings);
        for (what, v) in [
            ("sock.skc_net", layout.st.skc_net),
            ("net.ns.inum", layout.st.net_ns_inum),
            ("task_struct.files", layout.st.task_files),
            ("tcp_sock.rcv_nxt", layout.st.tcp_rcv_nxt),
            ("sock.sk_flags", layout.st.sk_flags),
            ("sock.sk_lingertime", layout.st.sk_lingertime),
        ] {
            if v == MEMBER_NONE {
                warnings.push(format!("BTF has no {what}; some evidence will be missing"));
            }
        }
        Self {
            layout,
            rst_reasons,
            drop_reasons,
            formats_found: found,
            warnings,
        }
    }

    /// Index of a watched drop reason in the counter slots, by the reason's kernel value.
    pub fn drop_reason_slot(&self, value: u32) -> Option<usize> {
        let n = usize::try_from(self.layout.drop_reason_count).unwrap_or(0);
        self.layout
            .drop_reasons
            .iter()
            .take(n)
            .position(|v| *v == value && *v != rst_trace_common::REASON_NONE)
    }
}

/// The offsets of the tracepoint fields the programs read, from tracefs `format` files; also
/// the tracepoints whose format was found.
fn tracepoint_offsets(
    tracefs: &Tracefs,
    warnings: &mut Vec<String>,
) -> (TracepointOffsets, Vec<String>) {
    let mut found = Vec::new();
    let mut fmt = |cat: &str, name: &str| match tracefs.format(cat, name) {
        Ok(f) => {
            found.push(format!("{cat}:{name}"));
            Some(f)
        }
        Err(e) => {
            warnings.push(e.to_string());
            None
        }
    };
    let send_reset = fmt("tcp", "tcp_send_reset");
    // tcp_receive_reset runs raw and passes only the socket: its format is read so that a
    // kernel without it is reported among the formats not found.
    let _ = fmt("tcp", "tcp_receive_reset");
    let kfree = fmt("skb", "kfree_skb");
    let enter_listen = fmt("syscalls", "sys_enter_listen");
    let exit_accept = fmt("syscalls", "sys_exit_accept4");
    let synack = fmt("tcp", "tcp_retransmit_synack");

    let mut tp = KernelLayout::UNKNOWN.tp;
    let t = &mut tp;
    // Both reset tracepoints run raw, which takes arguments, not format fields. A `reason` field
    // in tcp_send_reset's format says that the tracepoint fires for every RST the stack sends
    // (≥ 6.10) and that `reason` is its third argument; `tcp_send_reset_args` checks that
    // position against the prototype in BTF.
    t.rst_reason = off(send_reset.as_ref(), "reason");
    t.rst_reason_arg = if t.rst_reason == OFFSET_NONE {
        OFFSET_NONE
    } else {
        TCP_SEND_RESET_REASON_ARG
    };
    // kfree_skb runs as a raw tracepoint, which takes arguments, not format fields. Its format
    // says which arguments this kernel passes, at the positions they were added at (after
    // skb and location); `kfree_skb_args` replaces these with the prototype in BTF.
    let kf = kfree.as_ref();
    let has = |name: &str| kf.and_then(|f| f.get(name)).is_some();
    t.kfs_reason_arg = if has("reason") {
        KFREE_SKB_REASON_ARG
    } else {
        OFFSET_NONE
    };
    t.kfs_rx_sk_arg = if has("rx_sk") {
        KFREE_SKB_RX_SK_ARG
    } else {
        OFFSET_NONE
    };
    t.sys_enter_fd = off(enter_listen.as_ref(), "fd");
    t.sys_enter_listen_backlog = off(enter_listen.as_ref(), "backlog");
    t.sys_exit_ret = off(exit_accept.as_ref(), "ret");
    t.rsa_skaddr = off(synack.as_ref(), "skaddr");
    t.rsa_sport = off(synack.as_ref(), "sport");

    (tp, found)
}

/// Whether kfree_skb passes `reason` and `rx_sk` where its program reads them, from its
/// prototype in BTF when the kernel has one (the format-derived answer stays otherwise). An
/// argument found elsewhere is left out, with a warning: the drops it serves go unseen.
fn kfree_skb_args(btf: &KernelBtf, tp: &mut TracepointOffsets, warnings: &mut Vec<String>) {
    if btf.tracepoint_arg("kfree_skb", "sk_buff") != Some(0) {
        return;
    }
    let mut check = |type_name: &str, expected: u16| {
        let at = btf.tracepoint_arg("kfree_skb", type_name)?;
        if usize::from(expected) == at {
            return Some(expected);
        }
        warnings.push(format!(
            "skb:kfree_skb passes its {type_name} as argument {at}, not {expected}: drops by reason are not reported"
        ));
        None
    };
    tp.kfs_reason_arg = check("skb_drop_reason", KFREE_SKB_REASON_ARG).unwrap_or(OFFSET_NONE);
    tp.kfs_rx_sk_arg = check("sock", KFREE_SKB_RX_SK_ARG).unwrap_or(OFFSET_NONE);
}

/// Whether tcp_send_reset passes `reason` where its program reads it, from its prototype in
/// BTF when the kernel has one. Found elsewhere: RSTs are reported without the kernel's reason
/// (their causes inferred), with a warning.
fn tcp_send_reset_args(btf: &KernelBtf, tp: &mut TracepointOffsets, warnings: &mut Vec<String>) {
    if tp.rst_reason_arg == OFFSET_NONE || btf.tracepoint_arg("tcp_send_reset", "sock") != Some(0) {
        return;
    }
    match btf.tracepoint_arg("tcp_send_reset", "sk_rst_reason") {
        Some(at) if at == usize::from(TCP_SEND_RESET_REASON_ARG) => {}
        found => {
            warnings.push(format!(
                "tcp:tcp_send_reset passes its reason as argument {found:?}, not {TCP_SEND_RESET_REASON_ARG}: RST causes are inferred"
            ));
            tp.rst_reason_arg = OFFSET_NONE;
        }
    }
}

/// The offsets of the kernel struct members the programs read, from the kernel's BTF.
fn struct_offsets(btf: &KernelBtf) -> StructOffsets {
    let mut st = KernelLayout::UNKNOWN.st;
    let s = &mut st;
    s.skc_family = member(btf, "sock", &["__sk_common", "skc_family"]);
    s.skc_state = member(btf, "sock", &["__sk_common", "skc_state"]);
    s.skc_num = member(btf, "sock", &["__sk_common", "skc_num"]);
    s.skc_dport = member(btf, "sock", &["__sk_common", "skc_dport"]);
    s.skc_rcv_saddr = member(btf, "sock", &["__sk_common", "skc_rcv_saddr"]);
    s.skc_daddr = member(btf, "sock", &["__sk_common", "skc_daddr"]);
    s.skc_v6_rcv_saddr = member(btf, "sock", &["__sk_common", "skc_v6_rcv_saddr"]);
    s.skc_v6_daddr = member(btf, "sock", &["__sk_common", "skc_v6_daddr"]);
    s.skc_net = member(btf, "sock", &["__sk_common", "skc_net", "net"]);
    // `sk_flags` is a macro for `__sk_common.skc_flags` on recent kernels, a member on old ones.
    s.sk_flags = btf
        .offset("sock", &["__sk_common", "skc_flags"])
        .or_else(|| btf.offset("sock", &["sk_flags"]))
        .unwrap_or(MEMBER_NONE);
    s.sk_lingertime = member(btf, "sock", &["sk_lingertime"]);
    s.sk_ack_backlog = member(btf, "sock", &["sk_ack_backlog"]);
    s.sk_max_ack_backlog = member(btf, "sock", &["sk_max_ack_backlog"]);
    s.tcp_rcv_nxt = member(btf, "tcp_sock", &["rcv_nxt"]);
    s.tcp_copied_seq = member(btf, "tcp_sock", &["copied_seq"]);
    s.tcp_snd_una = member(btf, "tcp_sock", &["snd_una"]);
    s.tcp_snd_nxt = member(btf, "tcp_sock", &["snd_nxt"]);
    s.tcp_lsndtime = member(btf, "tcp_sock", &["lsndtime"]);
    s.tcp_rcv_tstamp = member(btf, "tcp_sock", &["rcv_tstamp"]);
    s.icsk_syn_qlen = member(btf, "inet_connection_sock", &["icsk_accept_queue", "qlen"]);
    s.net_ns_inum = member(btf, "net", &["ns", "inum"]);
    s.skb_dev = member(btf, "sk_buff", &["dev"]);
    s.skb_sk = member(btf, "sk_buff", &["sk"]);
    s.skb_head = member(btf, "sk_buff", &["head"]);
    s.skb_network_header = member(btf, "sk_buff", &["network_header"]);
    s.skb_protocol = member(btf, "sk_buff", &["protocol"]);
    s.skb_len = member(btf, "sk_buff", &["len"]);
    s.sk_protocol = member(btf, "sock", &["sk_protocol"]);
    s.netdev_nd_net = member(btf, "net_device", &["nd_net", "net"]);
    s.task_files = member(btf, "task_struct", &["files"]);
    s.files_fdt = member(btf, "files_struct", &["fdt"]);
    s.fdtable_fd = member(btf, "fdtable", &["fd"]);
    s.fdtable_max_fds = member(btf, "fdtable", &["max_fds"]);
    s.file_private_data = member(btf, "file", &["private_data"]);
    s.socket_sk = member(btf, "socket", &["sk"]);
    s.sk_socket = member(btf, "sock", &["sk_socket"]);
    s.socket_ino = match (
        btf.offset("socket_alloc", &["socket"]),
        btf.offset("socket_alloc", &["vfs_inode"]),
        btf.offset("inode", &["i_ino"]),
    ) {
        (Some(sock), Some(inode), Some(ino)) if inode >= sock => inode - sock + ino,
        _ => MEMBER_NONE,
    };
    s.task_start_boottime = btf
        .offset("task_struct", &["start_boottime"])
        .or_else(|| btf.offset("task_struct", &["real_start_time"]))
        .unwrap_or(MEMBER_NONE);
    s.task_group_leader = member(btf, "task_struct", &["group_leader"]);
    s.inet_sport = member(btf, "inet_sock", &["inet_sport"]);
    s.skc_cookie = member(btf, "sock", &["__sk_common", "skc_cookie"]);
    let sock_flags = btf.enum_values("sock_flags");
    let bit = |name: &str| {
        sock_flags
            .get(name)
            .and_then(|v| u32::try_from(*v).ok())
            .unwrap_or(MEMBER_NONE)
    };
    s.sock_linger_bit = bit("SOCK_LINGER");
    s.sock_keepopen_bit = bit("SOCK_KEEPOPEN");
    s.sock_dead_bit = bit("SOCK_DEAD");
    syscall_regs(btf, s);
    st
}

/// Where a returning syscall's number and first arguments are read (see
/// `StructOffsets::regs_arg0`). Only where a tracepoint program can get its task's registers
/// (`bpf_task_pt_regs`, ≥ 5.15, which the kernel's helper enum says): the programs' reads are
/// behind a test of these offsets, so an older kernel's verifier never sees the helper.
fn syscall_regs(btf: &KernelBtf, s: &mut StructOffsets) {
    if !btf
        .enum_values("bpf_func_id")
        .contains_key("BPF_FUNC_task_pt_regs")
    {
        return;
    }
    let Some((nr, arg0, arg1)) = syscall_regs_members(btf) else {
        return;
    };
    let Ok(listen) = u32::try_from(libc::SYS_listen) else {
        return;
    };
    s.regs_syscall_nr = nr;
    s.regs_arg0 = arg0;
    s.regs_arg1 = arg1;
    s.listen_syscall_nr = listen;
}

#[cfg(target_arch = "x86_64")]
fn syscall_regs_members(btf: &KernelBtf) -> Option<(u32, u32, u32)> {
    Some((
        btf.offset("pt_regs", &["orig_ax"])?,
        btf.offset("pt_regs", &["di"])?,
        btf.offset("pt_regs", &["si"])?,
    ))
}

/// The syscall's first argument is `orig_x0`: `regs[0]` becomes the return value.
#[cfg(target_arch = "aarch64")]
fn syscall_regs_members(btf: &KernelBtf) -> Option<(u32, u32, u32)> {
    Some((
        btf.offset("pt_regs", &["syscallno"])?,
        btf.offset("pt_regs", &["orig_x0"])?,
        btf.offset("pt_regs", &["regs"])?.checked_add(8)?,
    ))
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn syscall_regs_members(_: &KernelBtf) -> Option<(u32, u32, u32)> {
    None
}

/// Puts the watched drop reasons' values on this kernel into their slots. Slots keep their
/// position even when a reason is missing: the kernel program and the counters address them by
/// index.
fn watch_drop_reasons(
    drop_reasons: &ReasonNames,
    layout: &mut KernelLayout,
    warnings: &mut Vec<String>,
) {
    for (slot, name) in WATCHED_DROP_REASONS
        .iter()
        .enumerate()
        .take(MAX_DROP_REASONS)
    {
        match drop_reasons.value(name).and_then(|v| u32::try_from(v).ok()) {
            Some(v) => layout.drop_reasons[slot] = v,
            None => warnings.push(format!("this kernel has no drop reason {name}")),
        }
    }
    layout.drop_reason_count =
        u32::try_from(WATCHED_DROP_REASONS.len().min(MAX_DROP_REASONS)).unwrap_or(0);
}
