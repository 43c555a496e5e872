//! Records shared by the eBPF programs and the agent.
//!
//! Every record that crosses the ring buffer starts with a [`RecordHeader`] whose `kind` says
//! which body follows. All types are `#[repr(C)]` with explicit padding fields, so the kernel
//! and userspace agree on every byte and no uninitialised padding ever reaches userspace.
//! Layout assertions at the bottom of this file fail the build if a field is added carelessly.
#![cfg_attr(not(any(test, feature = "std")), no_std)]

pub mod drops;
pub mod errno;
pub mod fold;
#[cfg(any(test, feature = "std"))]
pub mod mib;
pub mod names;
pub mod ownercache;
pub mod setcache;
pub mod tcp;
pub mod tickclock;
pub mod twcache;

pub use drops::{WatchedDrop, WATCHED_DROP_REASONS};
pub use errno::Errno;
pub use tcp::TcpState;

// The event types (serde, JSON) are for userspace only and use std.
#[cfg(feature = "serde")]
extern crate std;

pub mod cause;
#[cfg(feature = "serde")]
pub mod event;

/// Ring buffer carrying records to userspace.
pub const EVENTS_MAP: &str = "RST_EVENTS";
/// Per-CPU exact counters, indexed by [`counter_index`].
pub const COUNTERS_MAP: &str = "RST_COUNTERS";
/// Flags the agent sets at run time (an array of u32).
pub const RUNTIME_MAP: &str = "RST_RUNTIME";
/// `RUNTIME_MAP` index: accepted sockets are reported by the `inet_csk_accept` hook.
pub const RUNTIME_ACCEPT_VIA_FUNCTION: u32 = 0;
/// Per-thread scratch for syscall arguments seen at entry and needed at exit.
pub const SYSCALL_ARGS_MAP: &str = "RST_SYSCALL_ARGS";
/// Read-only global holding [`KernelLayout`], set by the agent at load time.
pub const LAYOUT_GLOBAL: &str = "RST_LAYOUT";
/// [`OwnerSet`]s: who owns each live socket (`struct sock *`), learnt in process context
/// (listen, connect, accept) and read by the programs that see a problem, so a healthy
/// connection never sends a record to userspace. A set-associative cache in an array (see
/// [`ownercache`]): a hash map's insert and delete took a bucket lock and a free-list
/// operation on every healthy connection.
pub const OWNERS_MAP: &str = "RST_OWNERS";
/// [`TwSet`]s: the last owner of a connection that closed actively (it lives on as a
/// TIME_WAIT mini socket, which has no owner of its own). A set-associative cache in an array
/// (see [`twcache`]): every healthy active close stores here, and an array slot costs no lock
/// and no allocation. An LRU hash did, and once full it took 40 % of the state-change
/// program's samples in a profile of healthy churn.
pub const TW_OWNERS_MAP: &str = "RST_TW_OWNERS";
/// [`TwIdentity`]s: the owners that [`TW_OWNERS_MAP`]'s slots name, one per (process, thread,
/// how learnt), so that a slot is 16 bytes (see [`twcache`]).
pub const TW_IDS_MAP: &str = "RST_TW_IDS";
/// [`AcceptorKey`] → [`OwnerInfo`]: processes that accepted on a (netns, port), with the time
/// of their latest accept: "the process serving the queue" of a listener.
pub const ACCEPTORS_MAP: &str = "RST_ACCEPTORS";
/// Capacity of [`OWNERS_MAP`] (slots; a power of two, a multiple of [`OWNERS_WAYS`]); an
/// owner that finds no slot is counted ([`CounterFamily::Table`], [`TABLE_OWNERS_FULL`]).
pub const OWNERS_CAPACITY: u32 = 131_072;
/// Slots of one set of [`OWNERS_MAP`].
pub const OWNERS_WAYS: u32 = 8;
/// Capacity of [`TW_OWNERS_MAP`] (slots; a power of two, a multiple of [`TW_OWNERS_WAYS`]).
pub const TW_OWNERS_CAPACITY: u32 = 131_072;
/// Slots of one set of [`TW_OWNERS_MAP`]: four to a cache line.
pub const TW_OWNERS_WAYS: u32 = 8;
/// Capacity of [`TW_IDS_MAP`] (a power of two).
pub const TW_IDS_CAPACITY: u32 = 16_384;
/// Capacity of [`ACCEPTORS_MAP`].
pub const ACCEPTORS_CAPACITY: u32 = 16_384;

/// Default ring buffer size (bytes, power of two, multiple of the page size).
pub const EVENTS_RING_BYTES: u32 = 1 << 22;

/// Offset value meaning "this field does not exist on the running kernel".
pub const OFFSET_NONE: u16 = u16::MAX;
/// Struct offset value meaning "this member does not exist on the running kernel".
pub const MEMBER_NONE: u32 = u32::MAX;
/// Reason value meaning "the hook carries no reason on this kernel".
pub const REASON_NONE: u32 = u32::MAX;

/// How many skb drop reasons the kernel side filters on (see [`KernelLayout::drop_reasons`]).
pub const MAX_DROP_REASONS: usize = 8;

/// Layout version of the records; bumped whenever a record changes shape.
pub const RECORD_VERSION: u16 = 2;

#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// The local stack sent an RST (`tcp:tcp_send_reset` and its equivalents).
    ResetSent = 1,
    /// An RST arrived on a socket (`tcp:tcp_receive_reset`).
    ResetReceived = 2,
    /// A listener started or stopped listening (`sock:inet_sock_set_state`). Other sockets'
    /// state changes stay in the kernel (their owners live in [`OWNERS_MAP`]).
    SockState = 3,
    /// A TCP segment was freed with one of the configured drop reasons (`skb:kfree_skb`).
    SkbDrop = 4,
    /// `accept()`/`accept4()` failed with EMFILE/ENFILE (or, where `inet_csk_accept` cannot be
    /// hooked and the agent asks for it, returned a socket).
    Accept = 5,
    /// `connect()` could not pick a local port (EADDRNOTAVAIL): seen as the socket falling back
    /// from SYN_SENT to CLOSE with no local port, in the caller's context.
    Connect = 6,
    /// A TCP RST left a device without any socket behind it: built outside the TCP stack
    /// (netfilter REJECT --reject-with tcp-reset), which TCP's counters never see.
    ForeignReset = 7,
    /// A listener dropped a SYN or a handshake's final ACK, seen per packet on the drop path
    /// itself (fentry/kprobe on `tcp_conn_request`, fexit/kretprobe on `tcp_v*_syn_recv_sock`).
    ListenDrop = 8,
    /// A listener needs a look: its accept queue was at least 80 % full when a connection
    /// joined it, or it retransmitted a SYN-ACK (half-open connections fill its SYN queue).
    /// The agent reads a namespace's listen-drop counters only after such a signal, so idle
    /// namespaces cost nothing.
    ListenerHot = 9,
}

impl RecordKind {
    pub const fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::ResetSent,
            2 => Self::ResetReceived,
            3 => Self::SockState,
            4 => Self::SkbDrop,
            5 => Self::Accept,
            6 => Self::Connect,
            7 => Self::ForeignReset,
            8 => Self::ListenDrop,
            9 => Self::ListenerHot,
            _ => return None,
        })
    }
}

/// Counter families; each has 256 slots (see [`counter_index`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterFamily {
    /// RSTs sent, slot = reason code (or 255 when the kernel has no reason).
    ResetSent = 0,
    /// RSTs sent on a socket with SO_LINGER {on, 0}, slot = reason code.
    ResetSentLingerZero = 1,
    /// RSTs received, slot = TCP state of the socket.
    ResetReceived = 2,
    /// Segments dropped, slot = index into [`KernelLayout::drop_reasons`].
    SkbDrop = 3,
    /// accept() results, slot = errno (0 for success).
    Accept = 4,
    /// connect() failures, slot = errno.
    Connect = 5,
    /// Records that could not be reserved in the ring buffer, slot = [`RecordKind`].
    Lost = 6,
    /// RSTs transmitted without a socket (netfilter), slot 0.
    ForeignReset = 7,
    /// Listener drops seen per packet, slot = `LISTEN_DROP_*` stage.
    ListenDrop = 8,
    /// Kernel ownership tables, slot = `TABLE_*`.
    Table = 9,
}

pub const COUNTER_FAMILIES: u32 = 10;

/// An owner could not be stored: both of its sets in [`OWNERS_MAP`] held open sockets'
/// owners, or another CPU wrote the same slot at the same instant.
pub const TABLE_OWNERS_FULL: u32 = 0;
/// Owners stored in [`OWNERS_MAP`].
pub const TABLE_OWNERS_STORED: u32 = 1;
/// Last owners stored in [`TW_OWNERS_MAP`].
pub const TABLE_TW_STORED: u32 = 2;
/// A last owner stored in [`TW_OWNERS_MAP`] took the slot of another connection's that was
/// still live (its sets were full), or its identity took the [`TW_IDS_MAP`] slot of another
/// owner still named by live slots: those TIME_WAIT sockets' RSTs will have no owner.
pub const TABLE_TW_EVICTED: u32 = 3;
/// An event's socket had an owner entry.
pub const TABLE_LOOKUP_HIT: u32 = 4;
/// An event's full socket had no owner entry (older than the agent, or never listened,
/// connected or accepted by a process).
pub const TABLE_LOOKUP_MISS: u32 = 5;
/// A storm's RST found no room in [`fold::FOLDS_MAP`] and was sent as a record instead.
pub const TABLE_FOLDS_FULL: u32 = 6;

/// SYN arrived with the accept queue full: it is dropped (ListenOverflows).
pub const LISTEN_DROP_SYN_ACCEPT_FULL: u32 = 1;
/// SYN arrived with the SYN queue full: answered with a cookie, or dropped.
pub const LISTEN_DROP_SYN_QUEUE_FULL: u32 = 2;
/// The handshake's final ACK found the accept queue full: the child is not created.
pub const LISTEN_DROP_ACK_ACCEPT_FULL: u32 = 3;
pub const COUNTER_SLOTS: u32 = 256;
pub const COUNTERS_LEN: u32 = COUNTER_FAMILIES * COUNTER_SLOTS;
/// Slot used when the kernel provides no reason code.
pub const SLOT_NO_REASON: u32 = 255;

#[inline(always)]
pub const fn counter_index(family: CounterFamily, slot: u32) -> u32 {
    let slot = if slot >= COUNTER_SLOTS {
        COUNTER_SLOTS - 1
    } else {
        slot
    };
    (family as u32) * COUNTER_SLOTS + slot
}

/// Common prefix of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RecordHeader {
    pub kind: u16,
    pub version: u16,
    pub cpu: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the hook fired.
    pub ktime_ns: u64,
    /// Network namespace inode of the socket or packet, 0 when unknown.
    pub netns: u32,
    pub _pad: u32,
}

/// A connection's endpoints, as seen from this host: `local` is our side.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuple {
    /// AF_INET (2) or AF_INET6 (10); 0 when unknown.
    pub family: u16,
    /// Host byte order.
    pub local_port: u16,
    /// Host byte order.
    pub remote_port: u16,
    pub _pad: u16,
    /// IPv4 in the first 4 bytes, or IPv6.
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// The task running a syscall: only ever filled in process context, where it is the caller.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskInfo {
    /// Thread id (kernel pid).
    pub tid: u32,
    /// Process id (kernel tgid).
    pub pid: u32,
    /// cgroup v2 id (inode of the cgroup directory).
    pub cgroup_id: u64,
    pub comm: [u8; 16],
}

/// How an owner was learnt ([`OwnerInfo::how`]).
pub const OWNER_NONE: u32 = 0;
pub const OWNER_LISTEN: u32 = 1;
pub const OWNER_CONNECT: u32 = 2;
pub const OWNER_ACCEPT: u32 = 3;

/// [`OwnerInfo::flags`]: this is the last owner of a connection that has closed (its TIME_WAIT
/// successor, or a socket whose owner entry outlived its close).
pub const OWNER_CLOSED: u32 = 1 << 0;

/// Who owns a socket, as the kernel programs stored it in process context.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnerInfo {
    /// Process id (kernel tgid); 0 when no owner is known.
    pub pid: u32,
    /// Thread that called listen(), connect() or accept().
    pub tid: u32,
    pub cgroup_id: u64,
    /// `comm` when the owner was learnt; the agent reports the current name.
    pub comm: [u8; 16],
    /// When the owner was learnt (for accepts in [`ACCEPTORS_MAP`]: the latest accept), as
    /// [`tickclock`] reads CLOCK_MONOTONIC: up to two ticks early; 0 for a TIME_WAIT socket's
    /// last owner, which keeps no such time.
    pub since_ns: u64,
    /// When the socket entered CLOSE ([`tickclock`]'s time, as `since_ns`); 0 while open.
    pub closed_ns: u64,
    /// `task_struct.start_boottime` of the process (ns since boot, suspend included): with the
    /// pid it names one process even after the pid is reused.
    pub start_boottime_ns: u64,
    /// One of `OWNER_*`.
    pub how: u32,
    /// Bit set of `OWNER_CLOSED`.
    pub flags: u32,
}

/// What a store or a look-up reads first of a slot of [`OWNERS_MAP`]: a set's tags sit
/// together at its start (four to a cache line), so a set is judged without touching the
/// entries (the cache is megabytes, and every slot read from it is likely a cache miss).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotTag {
    /// Odd while a program writes the slot: a reader on another CPU that sees it odd, or sees
    /// it change across its read, discards what it read.
    pub seq: u32,
    /// A check of the key from its hash (never 0); 0 for a slot never used.
    pub check: u32,
    /// When the socket entered CLOSE ([`tickclock`]'s time), which ages the slot; 0 while
    /// its socket is open.
    pub closed_ns: u64,
}

/// One slot of [`TW_OWNERS_MAP`]: a connection that closed actively, and who owned it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TwSlot {
    /// The connection's key hash (never 0; see [`twcache::placement`]); 0 for an empty slot,
    /// and while a program rewrites the slot.
    pub key: u64,
    /// The owner: a [`TW_IDS_MAP`] slot and a check of its identity ([`twcache::IdRef`]).
    pub owner: u32,
    /// When the connection closed, in [`twcache::CLOCK_SHIFT`] units of `bpf_ktime_get_ns`.
    pub closed: u32,
}

/// One set of [`TW_OWNERS_MAP`] (an array of them): two cache lines; a store touches only the
/// first while it has room.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default)]
pub struct TwSet {
    pub slots: [TwSlot; TW_OWNERS_WAYS as usize],
}

/// An owner that [`TW_OWNERS_MAP`]'s slots name (the fields of [`OwnerInfo`] that say who, not
/// when). One cache line.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TwIdentity {
    /// Odd while a program writes the slot, as [`SlotTag::seq`].
    pub seq: u32,
    pub how: u32,
    pub pid: u32,
    pub tid: u32,
    pub cgroup_id: u64,
    pub start_boottime_ns: u64,
    pub comm: [u8; 16],
    /// When a slot last named it, in [`twcache::CLOCK_SHIFT`] units: one unnamed for longer
    /// than a TIME_WAIT lasts may be replaced.
    pub named: u32,
    pub _pad: u32,
    pub _pad2: u64,
}

/// The rest of an [`OWNERS_MAP`] slot, read once its tag matched.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OwnerEntry {
    /// The socket's address (`struct sock *`).
    pub sk: u64,
    pub owner: OwnerInfo,
}

/// One set of [`OWNERS_MAP`] (an array of them), the tags in its first two cache lines. An
/// empty slot is all zeroes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OwnerSet {
    pub tags: [SlotTag; OWNERS_WAYS as usize],
    pub entries: [OwnerEntry; OWNERS_WAYS as usize],
}

/// Key of [`ACCEPTORS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AcceptorKey {
    pub netns: u32,
    pub port: u16,
    pub _pad: u16,
    pub pid: u32,
    pub _pad2: u32,
}

/// TCP socket state read from `struct tcp_sock` when the hook fired.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpSnapshot {
    pub rcv_nxt: u32,
    pub copied_seq: u32,
    pub snd_una: u32,
    pub snd_nxt: u32,
    /// jiffies (low 32 bits) of the last data sent.
    pub lsndtime: u32,
    /// jiffies (low 32 bits) of the last segment received.
    pub rcv_tstamp: u32,
    /// `bpf_jiffies64()` when the hook fired.
    pub now_jiffies: u64,
    pub sk_lingertime: u64,
    pub sk_flags: u64,
    pub sk_ack_backlog: u32,
    pub sk_max_ack_backlog: u32,
    /// Bit set of `SNAP_*`: which of the fields above were read.
    pub valid: u32,
    pub _pad: u32,
}

pub const SNAP_SEQ: u32 = 1 << 0;
pub const SNAP_TIMES: u32 = 1 << 1;
pub const SNAP_LINGER: u32 = 1 << 2;
pub const SNAP_BACKLOG: u32 = 1 << 3;

/// Flags on [`ResetSentRecord::flags`].
pub const RST_HAS_SOCK: u32 = 1 << 0;
/// The socket had SO_LINGER set with a zero timeout when the RST was sent.
pub const RST_LINGER_ZERO: u32 = 1 << 1;
/// The socket pointer was a full socket (not a request or TIME_WAIT mini socket).
pub const RST_FULLSOCK: u32 = 1 << 2;
/// The full socket had SO_KEEPALIVE on and was not orphaned: a timer-sent RST from it with no
/// reason (before 6.10) is a keepalive expiry.
pub const RST_KEEPALIVE_ON: u32 = 1 << 3;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ResetSentRecord {
    pub header: RecordHeader,
    pub tuple: Tuple,
    pub skaddr: u64,
    /// TCP state of the socket (0 when there is none).
    pub state: u32,
    /// `enum sk_rst_reason` value, or [`REASON_NONE`].
    pub reason: u32,
    pub flags: u32,
    pub _pad: u32,
    pub snap: TcpSnapshot,
    /// The socket's owner (`pid` 0: none known); for a TIME_WAIT socket its last owner.
    pub owner: OwnerInfo,
    /// sockfs inode of the socket when it has no owner entry (0 otherwise, or when it has
    /// no file): the agent looks it up among the sockets that predate it.
    pub sock_inode: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ResetReceivedRecord {
    pub header: RecordHeader,
    pub tuple: Tuple,
    pub skaddr: u64,
    pub sock_cookie: u64,
    pub state: u32,
    pub _pad: u32,
    pub snap: TcpSnapshot,
    pub owner: OwnerInfo,
    pub sock_inode: u64,
}

/// Flags on [`SockStateRecord::flags`].
pub const STATE_TASK_VALID: u32 = 1 << 0;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockStateRecord {
    pub header: RecordHeader,
    pub tuple: Tuple,
    pub skaddr: u64,
    pub old_state: u32,
    pub new_state: u32,
    pub flags: u32,
    /// Backlog passed to `listen()` by this thread, when the new state is LISTEN; else 0.
    pub requested_backlog: u32,
    /// `sk_max_ack_backlog` when the new state is LISTEN.
    pub max_ack_backlog: u32,
    pub _pad: u32,
    /// The caller, valid only when `flags & STATE_TASK_VALID` (listen() and connect() run the
    /// transition in the caller's own context).
    pub task: TaskInfo,
    /// sockfs inode of a listener that just started: it tells apart the members of an
    /// SO_REUSEPORT group in sock_diag dumps.
    pub sock_inode: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SkbDropRecord {
    pub header: RecordHeader,
    /// As the packet travelled: `local` = destination of the dropped segment when it was
    /// received, `remote` = its source. [`SKB_OUTBOUND`] flips that.
    pub tuple: Tuple,
    pub skbaddr: u64,
    pub rx_sk: u64,
    pub location: u64,
    pub reason: u32,
    /// TCP flags byte of the dropped segment.
    pub tcp_flags: u8,
    pub _pad1: [u8; 3],
    pub flags: u32,
    pub _pad2: u32,
    /// Owner of the segment's socket (the receiving one, else the sending one), if known.
    pub owner: OwnerInfo,
}

/// The dropped segment was leaving this host (it had a local socket as sender).
pub const SKB_OUTBOUND: u32 = 1 << 0;
/// The tuple was parsed from the packet headers.
pub const SKB_TUPLE_VALID: u32 = 1 << 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AcceptRecord {
    pub header: RecordHeader,
    pub task: TaskInfo,
    /// The listening socket behind the fd passed to accept().
    pub listener: Tuple,
    pub listener_skaddr: u64,
    /// The accepted connection (zeroed on failure).
    pub conn: Tuple,
    pub conn_skaddr: u64,
    /// fd passed to accept().
    pub listen_fd: i32,
    /// Return value: new fd, or -errno.
    pub ret: i32,
    pub listener_ack_backlog: u32,
    pub listener_max_ack_backlog: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectRecord {
    pub header: RecordHeader,
    pub task: TaskInfo,
    /// Destination asked for in connect(); local side zeroed.
    pub tuple: Tuple,
    pub fd: i32,
    pub ret: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ForeignResetRecord {
    pub header: RecordHeader,
    /// `local` = the RST's source (this host), `remote` = where it goes.
    pub tuple: Tuple,
    pub skbaddr: u64,
    pub tcp_flags: u8,
    pub _pad: [u8; 7],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ListenDropRecord {
    pub header: RecordHeader,
    /// `local` = the listener's address and port, `remote` = the client.
    pub tuple: Tuple,
    pub skaddr: u64,
    /// One of `LISTEN_DROP_*`.
    pub stage: u32,
    pub ack_backlog: u32,
    pub max_ack_backlog: u32,
    /// Request sockets in the SYN queue (`icsk_accept_queue.qlen`).
    pub syn_qlen: u32,
}

/// [`ListenerHotRecord::why`]: a connection joined an accept queue at least 80 % full.
pub const HOT_QUEUE_FILLING: u32 = 1;
/// [`ListenerHotRecord::why`]: the listener retransmitted a SYN-ACK.
pub const HOT_SYNACK_RETRANSMIT: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ListenerHotRecord {
    pub header: RecordHeader,
    /// The listener's socket (0 when only its port is known).
    pub skaddr: u64,
    pub port: u16,
    pub _pad: u16,
    /// One of `HOT_*`.
    pub why: u32,
    /// Accept queue length and cap when the signal fired (`HOT_QUEUE_FILLING`).
    pub queue: u32,
    pub cap: u32,
}

/// Per-thread stash between syscall entry and exit, in an array slot chosen by the thread id
/// ([`STASH_SLOTS`]): an array store costs a fraction of a hash insert, and every accept() pays
/// for one. The slot's `tid` says whose it is; a thread whose slot another thread took over
/// reports its failure without the listener.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SyscallArgs {
    pub tid: u32,
    /// Which syscall stashed this (a [`RecordKind`] or [`STASH_LISTEN`]).
    pub what: u32,
    pub fd: i32,
    pub backlog: u32,
}

/// Slots of the syscall stash (a power of two: the slot is `tid & (STASH_SLOTS - 1)`).
pub const STASH_SLOTS: u32 = 1 << 16;

pub const STASH_LISTEN: u32 = 100;

/// Positions of kfree_skb's `reason` and `rx_sk` arguments since they were added (5.17,
/// 6.10). The programs read only these: a context offset must be a constant, so they cannot
/// index the arguments by a variable. The agent passes any other position as absent.
pub const KFREE_SKB_REASON_ARG: u16 = 2;
pub const KFREE_SKB_RX_SK_ARG: u16 = 3;
/// Position of tcp_send_reset's `reason` argument (≥ 6.10), after `sk` and `skb`.
pub const TCP_SEND_RESET_REASON_ARG: u16 = 2;

/// Offsets of the tracepoint fields the programs read, from tracefs `format` files.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TracepointOffsets {
    /// tcp:tcp_send_reset's `reason` field in its format: present (≥ 6.10) where the
    /// tracepoint fires for every RST the stack sends, with or without a full socket.
    pub rst_reason: u16,
    /// tcp:tcp_send_reset, a raw tracepoint: the position of its `reason` argument
    /// ([`TCP_SEND_RESET_REASON_ARG`]) from its prototype in BTF; [`OFFSET_NONE`] when absent.
    /// (tcp:tcp_receive_reset passes only the socket.)
    pub rst_reason_arg: u16,
    /// skb:kfree_skb, a raw tracepoint: the positions of `reason` (≥ 5.17) and `rx_sk`
    /// (≥ 6.10) among its arguments, from its prototype in BTF; [`OFFSET_NONE`] when absent.
    /// (sock:inet_sock_set_state and net:net_dev_queue are raw tracepoints too, but their
    /// arguments have not moved since they were added.)
    pub kfs_reason_arg: u16,
    pub kfs_rx_sk_arg: u16,
    // syscalls:sys_enter_* / sys_exit_*
    pub sys_enter_fd: u16,
    pub sys_enter_listen_backlog: u16,
    pub sys_exit_ret: u16,
    // tcp:tcp_retransmit_synack
    pub rsa_skaddr: u16,
    pub rsa_sport: u16,
    pub _pad: u16,
}

/// Offsets of kernel struct members, from the running kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StructOffsets {
    // struct sock / sock_common
    pub skc_family: u32,
    pub skc_state: u32,
    pub skc_num: u32,
    pub skc_dport: u32,
    pub skc_rcv_saddr: u32,
    pub skc_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub skc_v6_daddr: u32,
    pub skc_net: u32,
    pub sk_flags: u32,
    pub sk_lingertime: u32,
    pub sk_ack_backlog: u32,
    pub sk_max_ack_backlog: u32,
    // struct tcp_sock
    pub tcp_rcv_nxt: u32,
    pub tcp_copied_seq: u32,
    pub tcp_snd_una: u32,
    pub tcp_snd_nxt: u32,
    pub tcp_lsndtime: u32,
    pub tcp_rcv_tstamp: u32,
    // inet_connection_sock.icsk_accept_queue.qlen
    pub icsk_syn_qlen: u32,
    // struct net -> ns.inum
    pub net_ns_inum: u32,
    // struct sk_buff
    pub skb_dev: u32,
    pub skb_sk: u32,
    pub skb_head: u32,
    pub skb_network_header: u32,
    /// `sk_buff.protocol` (network order) and `sk_buff.len`.
    pub skb_protocol: u32,
    pub skb_len: u32,
    /// `sock.sk_protocol`.
    pub sk_protocol: u32,
    // struct net_device -> nd_net
    pub netdev_nd_net: u32,
    // fd -> socket chain: task_struct.files, files_struct.fdt, fdtable.{fd,max_fds},
    // file.private_data, socket.sk
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdtable_fd: u32,
    pub fdtable_max_fds: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    /// `struct sock.sk_socket`.
    pub sk_socket: u32,
    /// From a `struct socket` to its inode number: the socket is embedded in `struct
    /// socket_alloc` next to its `vfs_inode`.
    pub socket_ino: u32,
    /// `task_struct.start_boottime` (`real_start_time` before 5.5).
    pub task_start_boottime: u32,
    /// `task_struct.group_leader`: /proc/<pid>/stat shows the leader's start time.
    pub task_group_leader: u32,
    /// `inet_sock.inet_sport` (network order): still set when the bind hash has released
    /// `skc_num`, as when a connection turns into a TIME_WAIT socket.
    pub inet_sport: u32,
    /// Bit number of SOCK_LINGER in `sk_flags`.
    pub sock_linger_bit: u32,
    /// Bit numbers of SOCK_KEEPOPEN (SO_KEEPALIVE) and SOCK_DEAD (orphaned) in `sk_flags`.
    pub sock_keepopen_bit: u32,
    pub sock_dead_bit: u32,
    /// `sock_common.skc_cookie` (an `atomic64_t`): 0 until something asks for the cookie.
    pub skc_cookie: u32,
    /// Where `struct pt_regs` keeps a syscall's number and its first two arguments as they were
    /// at entry (x86-64: `orig_ax`, `di`, `si`; arm64: `syscallno`, `orig_x0`, `regs[1]`),
    /// still there when the syscall returns. [`MEMBER_NONE`] when the kernel cannot hand a
    /// tracepoint program its task's registers (`bpf_task_pt_regs`, ≥ 5.15) or the
    /// architecture is not one of these: the entry tracepoints are then attached instead.
    pub regs_syscall_nr: u32,
    pub regs_arg0: u32,
    pub regs_arg1: u32,
    /// listen()'s syscall number on this architecture (not an offset).
    pub listen_syscall_nr: u32,
}

/// Everything the kernel programs need to know about the running kernel and the filters.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KernelLayout {
    pub tp: TracepointOffsets,
    pub st: StructOffsets,
    /// Only report this network namespace (inode), 0 for all.
    pub filter_netns: u32,
    /// Only report events whose local or remote port is this, 0 for all.
    pub filter_port: u16,
    pub _pad1: u16,
    /// skb drop reasons reported by the kfree_skb program (values of `enum skb_drop_reason`).
    pub drop_reasons: [u32; MAX_DROP_REASONS],
    pub drop_reason_count: u32,
    /// A CPU wakes the agent each time its output into the ring buffer crosses a multiple of
    /// `1 << ring_wake_shift` bytes ([`ring_wake_shift`]).
    pub ring_wake_shift: u32,
}

/// Wake-up marks of 64 KiB per CPU where few CPUs write the ring.
pub const RING_WAKE_SHIFT_MAX: u32 = 16;
/// 4 KiB: a wake-up per ~16 records at most.
pub const RING_WAKE_SHIFT_MIN: u32 = 12;

/// The per-CPU wake-up mark for `cpus` CPUs: every CPU may sit just under its mark when the
/// agent last drained, so together they must stay well inside the ring (a quarter of it)
/// until its 100 ms timer comes round.
pub fn ring_wake_shift(cpus: u32) -> u32 {
    let room = u64::from(EVENTS_RING_BYTES) / 4 / u64::from(cpus.max(1));
    // The largest power of two within the room, within the bounds.
    let shift = 63 - room.max(1).leading_zeros();
    shift.clamp(RING_WAKE_SHIFT_MIN, RING_WAKE_SHIFT_MAX)
}

impl KernelLayout {
    /// Every offset unknown: programs that find an offset unknown do nothing with that field.
    pub const UNKNOWN: Self = Self {
        tp: TracepointOffsets {
            rst_reason: OFFSET_NONE,
            rst_reason_arg: OFFSET_NONE,
            kfs_reason_arg: OFFSET_NONE,
            kfs_rx_sk_arg: OFFSET_NONE,
            sys_enter_fd: OFFSET_NONE,
            sys_enter_listen_backlog: OFFSET_NONE,
            sys_exit_ret: OFFSET_NONE,
            rsa_skaddr: OFFSET_NONE,
            rsa_sport: OFFSET_NONE,
            _pad: 0,
        },
        st: StructOffsets {
            skc_family: MEMBER_NONE,
            skc_state: MEMBER_NONE,
            skc_num: MEMBER_NONE,
            skc_dport: MEMBER_NONE,
            skc_rcv_saddr: MEMBER_NONE,
            skc_daddr: MEMBER_NONE,
            skc_v6_rcv_saddr: MEMBER_NONE,
            skc_v6_daddr: MEMBER_NONE,
            skc_net: MEMBER_NONE,
            sk_flags: MEMBER_NONE,
            sk_lingertime: MEMBER_NONE,
            sk_ack_backlog: MEMBER_NONE,
            sk_max_ack_backlog: MEMBER_NONE,
            tcp_rcv_nxt: MEMBER_NONE,
            tcp_copied_seq: MEMBER_NONE,
            tcp_snd_una: MEMBER_NONE,
            tcp_snd_nxt: MEMBER_NONE,
            tcp_lsndtime: MEMBER_NONE,
            tcp_rcv_tstamp: MEMBER_NONE,
            net_ns_inum: MEMBER_NONE,
            skb_dev: MEMBER_NONE,
            skb_sk: MEMBER_NONE,
            skb_head: MEMBER_NONE,
            skb_network_header: MEMBER_NONE,
            skb_protocol: MEMBER_NONE,
            skb_len: MEMBER_NONE,
            sk_protocol: MEMBER_NONE,
            netdev_nd_net: MEMBER_NONE,
            task_files: MEMBER_NONE,
            files_fdt: MEMBER_NONE,
            fdtable_fd: MEMBER_NONE,
            fdtable_max_fds: MEMBER_NONE,
            file_private_data: MEMBER_NONE,
            socket_sk: MEMBER_NONE,
            sk_socket: MEMBER_NONE,
            socket_ino: MEMBER_NONE,
            task_start_boottime: MEMBER_NONE,
            task_group_leader: MEMBER_NONE,
            inet_sport: MEMBER_NONE,
            sock_linger_bit: MEMBER_NONE,
            sock_keepopen_bit: MEMBER_NONE,
            sock_dead_bit: MEMBER_NONE,
            skc_cookie: MEMBER_NONE,
            icsk_syn_qlen: MEMBER_NONE,
            regs_syscall_nr: MEMBER_NONE,
            regs_arg0: MEMBER_NONE,
            regs_arg1: MEMBER_NONE,
            listen_syscall_nr: MEMBER_NONE,
        },
        filter_netns: 0,
        filter_port: 0,
        _pad1: 0,
        drop_reasons: [REASON_NONE; MAX_DROP_REASONS],
        drop_reason_count: 0,
        ring_wake_shift: RING_WAKE_SHIFT_MAX,
    };
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), contain only integers and byte arrays, and have no
    // implicit padding (checked by the assertions below), so any bit pattern is valid.
    unsafe impl aya::Pod for KernelLayout {}
    unsafe impl aya::Pod for RecordHeader {}
    unsafe impl aya::Pod for SyscallArgs {}
    unsafe impl aya::Pod for ResetSentRecord {}
    unsafe impl aya::Pod for ResetReceivedRecord {}
    unsafe impl aya::Pod for SockStateRecord {}
    unsafe impl aya::Pod for SkbDropRecord {}
    unsafe impl aya::Pod for AcceptRecord {}
    unsafe impl aya::Pod for ConnectRecord {}
    unsafe impl aya::Pod for ForeignResetRecord {}
    unsafe impl aya::Pod for ListenDropRecord {}
    unsafe impl aya::Pod for ListenerHotRecord {}
    unsafe impl aya::Pod for OwnerInfo {}
    unsafe impl aya::Pod for TwSet {}
    unsafe impl aya::Pod for TwIdentity {}
    unsafe impl aya::Pod for OwnerSet {}
    unsafe impl aya::Pod for AcceptorKey {}
    unsafe impl aya::Pod for crate::fold::FoldKey {}
    unsafe impl aya::Pod for crate::fold::FoldBudget {}
}

// No implicit padding anywhere: each size equals the sum of its fields.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<RecordHeader>() == 24);
    assert!(size_of::<Tuple>() == 8 + 32);
    assert!(size_of::<TaskInfo>() == 8 + 8 + 16);
    assert!(size_of::<TcpSnapshot>() == 6 * 4 + 8 * 3 + 4 * 4);
    assert!(size_of::<OwnerInfo>() == 8 + 8 + 16 + 8 * 3 + 8);
    assert!(size_of::<SlotTag>() == 16);
    assert!(size_of::<TwSlot>() == 16);
    assert!(size_of::<TwSet>() == 128 && TW_OWNERS_WAYS * 16 == 128);
    assert!(size_of::<TwIdentity>() == 4 * 4 + 8 * 2 + 16 + 4 * 2 + 8);
    assert!(TW_IDS_CAPACITY.is_power_of_two());
    assert!(size_of::<OwnerEntry>() == 8 + 64);
    assert!(size_of::<OwnerSet>() == 8 * 16 + 8 * 72);
    assert!(OWNERS_CAPACITY.is_power_of_two() && OWNERS_CAPACITY.is_multiple_of(OWNERS_WAYS));
    // The agent counts the owner cache's slots from the tags at the start of each set.
    assert!(core::mem::offset_of!(OwnerSet, tags) == 0);
    assert!(
        TW_OWNERS_CAPACITY.is_power_of_two() && TW_OWNERS_CAPACITY.is_multiple_of(TW_OWNERS_WAYS)
    );
    assert!(size_of::<AcceptorKey>() == 16);
    assert!(size_of::<ResetSentRecord>() == 24 + 40 + 8 + 16 + 64 + 64 + 8);
    assert!(size_of::<ResetReceivedRecord>() == 24 + 40 + 8 + 8 + 8 + 64 + 64 + 8);
    assert!(size_of::<SockStateRecord>() == 24 + 40 + 8 + 24 + 32 + 8);
    assert!(size_of::<SkbDropRecord>() == 24 + 40 + 24 + 16 + 64);
    assert!(size_of::<AcceptRecord>() == 24 + 32 + 40 + 8 + 40 + 8 + 16);
    assert!(size_of::<ConnectRecord>() == 24 + 32 + 40 + 8);
    assert!(size_of::<SyscallArgs>() == 16);
    assert!(size_of::<ForeignResetRecord>() == 24 + 40 + 8 + 8);
    assert!(size_of::<ListenDropRecord>() == 24 + 40 + 8 + 16);
    assert!(size_of::<TracepointOffsets>() == 10 * 2);
    assert!(size_of::<StructOffsets>() == 48 * 4);
    assert!(size_of::<KernelLayout>() == 20 + 192 + 4 + 2 + 2 + 32 + 4 + 4);
    assert!(size_of::<ListenerHotRecord>() == 24 + 8 + 8 + 8);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_marks_leave_most_of_the_ring_free_with_every_cpu_just_under_its_own() {
        assert_eq!(ring_wake_shift(1), RING_WAKE_SHIFT_MAX);
        assert_eq!(ring_wake_shift(2), RING_WAKE_SHIFT_MAX);
        assert_eq!(ring_wake_shift(0), RING_WAKE_SHIFT_MAX);
        for cpus in [1u32, 2, 3, 16, 64, 96, 256, 4096] {
            let shift = ring_wake_shift(cpus);
            assert!((RING_WAKE_SHIFT_MIN..=RING_WAKE_SHIFT_MAX).contains(&shift));
            if shift > RING_WAKE_SHIFT_MIN {
                assert!(
                    u64::from(cpus) << shift <= u64::from(EVENTS_RING_BYTES) / 4,
                    "{cpus} CPUs at 1 << {shift}"
                );
            }
        }
        assert_eq!(ring_wake_shift(64), 14);
    }
}
