//! Names of the eBPF programs and maps, as the agent looks them up in the object. The kernel
//! crate's macros take only literals (a program is named by its function), so the kernel side
//! spells them itself; the loader's unit test `object_has_every_name` checks each name here
//! against the built object, so a rename on either side fails the build's tests.

/// Set to 1 in the agent's environment, hooks that have a raw tracepoint program beside their
/// BTF one attach the raw one: for diagnosis, and so that the tests run the fallbacks on kernels
/// where the BTF programs load.
pub const RAW_TRACEPOINTS_ENV: &str = "RST_TRACE_RAW_TRACEPOINTS";

/// Every map the agent opens by name.
pub const MAPS: [&str; 4] = [
    crate::EVENTS_MAP,
    crate::COUNTERS_MAP,
    crate::RUNTIME_MAP,
    crate::ACCEPTORS_MAP,
];

/// Program names (the function names in rst-trace-ebpf).
pub mod program {
    // Tracepoints.
    pub const TCP_SEND_RESET: &str = "tcp_send_reset";
    /// [`TCP_SEND_RESET`] for raw arguments, where BTF tracepoints are refused.
    pub const TCP_SEND_RESET_RAW: &str = "tcp_send_reset_raw";
    pub const TCP_RECEIVE_RESET: &str = "tcp_receive_reset";
    /// [`TCP_RECEIVE_RESET`] for raw arguments, where BTF tracepoints are refused.
    pub const TCP_RECEIVE_RESET_RAW: &str = "tcp_receive_reset_raw";
    pub const INET_SOCK_SET_STATE: &str = "inet_sock_set_state";
    pub const KFREE_SKB: &str = "kfree_skb";
    pub const NET_DEV_QUEUE: &str = "net_dev_queue";
    /// [`NET_DEV_QUEUE`] for raw arguments, where BTF tracepoints are refused.
    pub const NET_DEV_QUEUE_RAW: &str = "net_dev_queue_raw";
    pub const TCP_RETRANSMIT_SYNACK: &str = "tcp_retransmit_synack";
    pub const SYS_ENTER_LISTEN: &str = "sys_enter_listen";
    pub const SYS_ENTER_ACCEPT: &str = "sys_enter_accept";
    pub const SYS_EXIT_ACCEPT: &str = "sys_exit_accept";

    // Function hooks: fentry/fexit programs, one per arity where the arity varies.
    pub const INET_CSK_ACCEPT_FEXIT2: &str = "inet_csk_accept_fexit2";
    pub const INET_CSK_ACCEPT_FEXIT4: &str = "inet_csk_accept_fexit4";
    pub const TCP_V4_SEND_RESET_FENTRY: &str = "tcp_v4_send_reset_fentry";
    pub const TCP_V6_SEND_RESET_FENTRY: &str = "tcp_v6_send_reset_fentry";
    pub const TCP_CONN_REQUEST_FENTRY: &str = "tcp_conn_request_fentry";
    pub const TCP_V4_SYN_RECV_SOCK_FEXIT6: &str = "tcp_v4_syn_recv_sock_fexit6";
    pub const TCP_V4_SYN_RECV_SOCK_FEXIT7: &str = "tcp_v4_syn_recv_sock_fexit7";
    pub const TCP_V6_SYN_RECV_SOCK_FEXIT6: &str = "tcp_v6_syn_recv_sock_fexit6";
    pub const TCP_V6_SYN_RECV_SOCK_FEXIT7: &str = "tcp_v6_syn_recv_sock_fexit7";
    pub const SYS_LISTEN_FENTRY: &str = "sys_listen_fentry";
    pub const SYS_ACCEPT4_FEXIT: &str = "sys_accept4_fexit";

    // Function hooks: the kprobe tier.
    pub const INET_CSK_ACCEPT_KRETPROBE: &str = "inet_csk_accept_kretprobe";
    pub const SEND_RESET_KPROBE: &str = "send_reset_kprobe";
    pub const TCP_CONN_REQUEST_KPROBE: &str = "tcp_conn_request_kprobe";
    pub const TCP_V4_SYN_RECV_SOCK_KPROBE: &str = "tcp_v4_syn_recv_sock_kprobe";
    pub const TCP_V6_SYN_RECV_SOCK_KPROBE: &str = "tcp_v6_syn_recv_sock_kprobe";
}

/// aya-log's ring buffer of kernel-side log records: opened only when kernel logging is on.
pub const KERNEL_LOG_MAP: &str = "AYA_LOGS";
/// aya-log's level global, set at load time: 0 turns every kernel-side log call into dead code
/// the verifier removes.
pub const KERNEL_LOG_LEVEL_GLOBAL: &str = "AYA_LOG_LEVEL";
/// The `log` target of kernel-side records (`RUST_LOG=rst_trace_kernel=debug`).
pub const KERNEL_LOG_TARGET: &str = "rst_trace_kernel";
