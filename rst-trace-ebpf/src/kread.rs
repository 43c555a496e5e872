//! Reads of kernel memory at offsets resolved from BTF by the agent.
use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, generated},
    programs::TracePointContext,
    EbpfContext,
};
use rst_trace_common::{
    TaskInfo, TcpSnapshot, Tuple, MEMBER_NONE, OFFSET_NONE, SNAP_BACKLOG, SNAP_LINGER, SNAP_SEQ,
    SNAP_TIMES,
};

use crate::layout::lay;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Reads a tracepoint field, or `None` when the running kernel's format lacks it.
#[inline(always)]
pub fn tp<T>(ctx: &TracePointContext, off: u16) -> Option<T> {
    if off == OFFSET_NONE {
        return None;
    }
    unsafe { ctx.read_at::<T>(off as usize) }.ok()
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Pair<A, B> {
    a: A,
    b: B,
}

/// Whether `b` sits at `a` plus where `Pair<A, B>` puts its second field (padding included):
/// the two can then be taken in one read, a helper call saved.
#[inline(always)]
fn paired<A, B>(a: u32, b: u32) -> bool {
    b == a.wrapping_add(core::mem::offset_of!(Pair<A, B>, b) as u32)
}

/// Reads `base + off`, or `None` when the member is unknown or the read faults.
#[inline(always)]
pub fn member<T>(base: u64, off: u32) -> Option<T> {
    if base == 0 || off == MEMBER_NONE {
        return None;
    }
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.ok()
}

/// Reads `base + off` with a plain load, for `base` the verifier knows the type of (an
/// argument of a BTF tracepoint): it checks the member against that type when loading the
/// program, and a load that faults reads 0. No helper call, so a fraction of [`member`]'s
/// cost. `None` when the member is unknown.
#[inline(always)]
pub fn btf_member<T>(base: u64, off: u32) -> Option<T> {
    // The NULL test comes first: verifiers that know an argument or a loaded pointer may be
    // NULL refuse any offset from it until tested (6.18: tcp_send_reset's `skb`, a packet's
    // socket). Where the verifier takes an argument for non-NULL it drops the test, and a
    // load through NULL reads 0.
    if base == 0 || off == MEMBER_NONE {
        return None;
    }
    // SAFETY: the verifier turns this load into one that cannot fault (PROBE_MEM), after
    // checking that `off` names a member of `base`'s type of this size.
    Some(unsafe { core::ptr::read_volatile((base + off as u64) as *const T) })
}

/// Argument `n` of a BTF-typed program (BTF tracepoint, fentry, fexit) as a number: a typed
/// argument allows no arithmetic but offsets (an owner look-up hashes the socket's address),
/// and some verifiers take it for non-NULL and drop tests against NULL. A copy read through a
/// helper is a plain number.
#[inline(always)]
pub fn arg_value<C: EbpfContext>(ctx: &C, n: usize) -> u64 {
    // SAFETY: the context of these programs is the array of their u64 arguments.
    unsafe { bpf_probe_read_kernel((ctx.as_ptr() as *const u64).wrapping_add(n)) }.unwrap_or(0)
}

/// How a program reads the kernel structs of an event.
pub trait Kmem {
    /// Whether one read may take several members at once: a helper copies bytes, while a
    /// plain load is checked against one member of the pointer's type.
    const SPANS_MEMBERS: bool;
    /// Member `off` of the struct at `base`.
    fn get<T>(base: u64, off: u32) -> Option<T>;
}

/// Through `bpf_probe_read_kernel`: any address.
pub struct Probe;

impl Kmem for Probe {
    const SPANS_MEMBERS: bool = true;
    #[inline(always)]
    fn get<T>(base: u64, off: u32) -> Option<T> {
        member(base, off)
    }
}

/// Plain loads ([`btf_member`]): for the typed pointers a BTF tracepoint passes, and the
/// struct pointers loaded from them. Decisions on whether an argument is NULL are taken on
/// its value as a number (some verifiers take a tracepoint's argument for non-NULL and drop
/// the test); a load through NULL reads nothing.
pub struct Typed;

impl Kmem for Typed {
    const SPANS_MEMBERS: bool = false;
    #[inline(always)]
    fn get<T>(base: u64, off: u32) -> Option<T> {
        btf_member(base, off)
    }
}

/// Two members of the struct at `base`, in one read when they sit as [`Pair`] lays them out;
/// otherwise one read each.
#[inline(always)]
pub fn member_pair<A: Copy, B: Copy>(base: u64, a: u32, b: u32) -> (Option<A>, Option<B>) {
    if a != MEMBER_NONE && b != MEMBER_NONE && paired::<A, B>(a, b) {
        // Where the pair cannot be read, neither half can.
        return member::<Pair<A, B>>(base, a).map_or((None, None), |p| (Some(p.a), Some(p.b)));
    }
    (member(base, a), member(base, b))
}

/// A socket's accept-queue length and cap (`sk_ack_backlog`, `sk_max_ack_backlog`), which sit
/// together: one read.
#[inline(always)]
pub fn accept_queue(sk: u64) -> (Option<u32>, Option<u32>) {
    member_pair(sk, lay!(st.sk_ack_backlog), lay!(st.sk_max_ack_backlog))
}

/// [`member`], logging a faulting read (kernel diagnostics). Only for the first read of an
/// event's socket: each logging site costs the verifier a log call's paths.
#[inline(always)]
fn member_logged<T>(base: u64, off: u32) -> Option<T> {
    if base == 0 || off == MEMBER_NONE {
        return None;
    }
    let addr = base + off as u64;
    match unsafe { bpf_probe_read_kernel(addr as *const T) } {
        Ok(v) => Some(v),
        Err(e) => {
            crate::diag::read_failed(addr, e);
            None
        }
    }
}

/// Network namespace inode of a socket (any `struct sock_common`, including request and
/// TIME_WAIT mini sockets).
#[inline(always)]
pub fn sk_netns(sk: u64) -> u32 {
    let net: u64 = member_logged(sk, lay!(st.skc_net)).unwrap_or(0);
    member(net, lay!(st.net_ns_inum)).unwrap_or(0)
}

/// [`sk_netns`] read as `M` reads.
#[inline(always)]
pub fn sk_netns_in<M: Kmem>(sk: u64) -> u32 {
    if M::SPANS_MEMBERS {
        return sk_netns(sk);
    }
    let net: u64 = M::get(sk, lay!(st.skc_net)).unwrap_or(0);
    M::get(net, lay!(st.net_ns_inum)).unwrap_or(0)
}

/// [`sk_netns`] and the socket's cookie (`skc_cookie`, 0 until something asked for one). The
/// cookie sits a few words after `skc_net`, past the IPv6 addresses: one read takes both where
/// it does, else one read each.
#[inline(always)]
pub fn sk_netns_cookie<M: Kmem>(sk: u64) -> (u32, u64) {
    let (net_off, cookie_off) = (lay!(st.skc_net), lay!(st.skc_cookie));
    if !M::SPANS_MEMBERS {
        return (sk_netns_in::<M>(sk), M::get(sk, cookie_off).unwrap_or(0));
    }
    let words = if net_off != MEMBER_NONE && cookie_off != MEMBER_NONE && cookie_off > net_off {
        let rel = cookie_off - net_off;
        if rel % 8 == 0 && rel / 8 < 6 {
            rel / 8
        } else {
            0
        }
    } else {
        0
    };
    if words == 0 {
        return (sk_netns(sk), member(sk, cookie_off).unwrap_or(0));
    }
    let w: [u64; 6] = member_logged(sk, net_off).unwrap_or([0; 6]);
    // Registers only: a variable index into the array would need a constant offset on older
    // verifiers.
    let cookie = match words {
        1 => w[1],
        2 => w[2],
        3 => w[3],
        4 => w[4],
        _ => w[5],
    };
    (member(w[0], lay!(st.net_ns_inum)).unwrap_or(0), cookie)
}

/// Network namespace inode of a packet, from the device it arrived on, else its socket.
#[inline(always)]
pub fn skb_netns<M: Kmem>(skb: u64) -> u32 {
    // Each read tests its base: a packet without a device reads namespace 0 and falls back to
    // its socket.
    let dev: u64 = M::get(skb, lay!(st.skb_dev)).unwrap_or(0);
    let net: u64 = M::get(dev, lay!(st.netdev_nd_net)).unwrap_or(0);
    let ns = M::get(net, lay!(st.net_ns_inum)).unwrap_or(0);
    if ns != 0 {
        return ns;
    }
    let sk: u64 = M::get(skb, lay!(st.skb_sk)).unwrap_or(0);
    sk_netns_in::<M>(sk)
}

/// The endpoints recorded in a socket, local side first.
#[inline(always)]
pub fn sk_tuple(sk: u64) -> Tuple {
    // Not `Tuple::default()`: zeroing first becomes a `memset` call (a BPF-to-BPF call and its
    // stack frame) in every program that reads a tuple.
    let mut t = core::mem::MaybeUninit::<Tuple>::uninit();
    // SAFETY: fill_tuple writes every field and every address byte on all paths.
    unsafe {
        fill_tuple_state::<Probe>(sk, &mut *t.as_mut_ptr());
        t.assume_init()
    }
}

/// [`sk_tuple`] and the socket's TCP state, from the same read where the layout allows.
#[inline(always)]
pub fn sk_tuple_state<M: Kmem>(sk: u64) -> (Tuple, u8) {
    let mut t = core::mem::MaybeUninit::<Tuple>::uninit();
    // SAFETY: as in `sk_tuple`.
    let (t, state) = unsafe {
        let state = fill_tuple_state::<M>(sk, &mut *t.as_mut_ptr());
        (t.assume_init(), state)
    };
    let state = match state {
        Some(s) => s,
        None => member::<u8>(sk, lay!(st.skc_state)).unwrap_or(0),
    };
    (t, state)
}

/// Words of `struct sock_common` read at once from `skc_daddr` for a connection's key: the
/// IPv4 addresses, the ports, the family, the namespace and the IPv6 addresses lie within its
/// first 96 bytes on every kernel this runs on (`skc_v6_rcv_saddr` ends at byte 88).
pub const COMMON_WORDS: u32 = 12;

/// Where [`sk_conn_words`] reads them: a per-CPU slot the caller owns (on the stack, they made
/// the state-change program's frame too large for 5.10's verifier).
pub type CommonWords = [u64; COMMON_WORDS as usize];

/// Word `i` of the words read from `sock_common`. Registers only: a variable index into the
/// array would need a constant offset on older verifiers.
#[inline(always)]
fn common_word(w: &CommonWords, i: u32) -> u64 {
    match i {
        0 => w[0],
        1 => w[1],
        2 => w[2],
        3 => w[3],
        4 => w[4],
        5 => w[5],
        6 => w[6],
        7 => w[7],
        8 => w[8],
        9 => w[9],
        10 => w[10],
        _ => w[11],
    }
}

/// Which word of the `sock_common` words a member of `size` bytes at `off` starts, if it
/// lies whole, word-aligned, within them.
#[inline(always)]
fn common_index(base: u32, off: u32, size: u32) -> Option<u32> {
    if off == MEMBER_NONE || off < base || !(off - base).is_multiple_of(8) {
        return None;
    }
    let i = (off - base) / 8;
    (i * 8 + size <= COMMON_WORDS * 8).then_some(i)
}

/// What names a connection in the TIME_WAIT owner cache, read alike from a socket that
/// closes and from the TIME_WAIT socket that replaces it (which copies its `sock_common`):
/// the namespace's address (a key only, never reported: one read fewer than its inode), the
/// family and ports, the addresses. One read of `sock_common` where the layout allows, else
/// a read per member; plus the source port where the closing socket's bind hash is already
/// released (recent kernels zero `skc_num` before tracing CLOSE). `w`: room for the read.
#[inline(always)]
pub fn sk_conn_words(sk: u64, w: &mut CommonWords) -> [u64; 6] {
    let base = lay!(st.skc_daddr);
    let (net, ports, a) = match (
        common_index(base, lay!(st.skc_net), 8),
        common_index(base, lay!(st.skc_v6_daddr), 16),
        common_index(base, lay!(st.skc_v6_rcv_saddr), 16),
        read_head_at(base),
    ) {
        (Some(net), Some(v6d), Some(v6s), Some((family, num, dport, saddr))) => {
            read_words(sk, base, w);
            let w = &*w;
            let h = [w[0], w[1], w[2]];
            let family = head_field(&h, family, 2) as u16;
            let num = head_field(&h, num, 2) as u16;
            let dport = head_field(&h, dport, 2) as u16;
            let addrs = if family == AF_INET6 {
                [
                    common_word(w, v6d),
                    common_word(w, v6d + 1),
                    common_word(w, v6s),
                    common_word(w, v6s + 1),
                ]
            } else {
                [head_field(&h, 0, 4), head_field(&h, saddr, 4), 0, 0]
            };
            (common_word(w, net), (u64::from(family), num, dport), addrs)
        }
        _ => {
            let t = sk_tuple(sk);
            let net: u64 = member(sk, lay!(st.skc_net)).unwrap_or(0);
            let word = |a: &[u8; 16], i: usize| {
                // SAFETY: 8-byte reads within the 16-byte address, unaligned allowed.
                unsafe { core::ptr::read_unaligned(a.as_ptr().add(i * 8) as *const u64) }
            };
            (
                net,
                (u64::from(t.family), t.local_port, t.remote_port),
                [
                    word(&t.remote_addr, 0),
                    word(&t.remote_addr, 1),
                    word(&t.local_addr, 0),
                    word(&t.local_addr, 1),
                ],
            )
        }
    };
    let (family, num, dport) = ports;
    let local_port = if num != 0 {
        num
    } else {
        u16::from_be(member::<u16>(sk, lay!(st.inet_sport)).unwrap_or(0))
    };
    [
        net,
        family | (u64::from(local_port) << 16) | (u64::from(dport) << 32),
        a[0],
        a[1],
        a[2],
        a[3],
    ]
}

/// Writes a socket's endpoints into `t` in place. Programs that fill a record in a per-CPU
/// scratch map use this rather than `sk_tuple`: a tuple built on the stack and copied costs
/// stack the 512-byte limit cannot spare where the program also calls `memset`
/// (`inet_csk_accept` fexit on 5.10 and 6.1).
#[inline(always)]
pub fn fill_tuple(sk: u64, t: &mut Tuple) {
    let _ = fill_tuple_state::<Probe>(sk, t);
}

/// Bytes read at once where several members sit together (`struct sock_common` from
/// `skc_daddr` on, `struct sk_buff` from `network_header` to `head`).
const HEAD_BYTES: u32 = 24;

/// Where `off` (a member of `size` bytes) sits in the bytes read from `base`, if it lies within
/// one of their words.
#[inline(always)]
fn head_slot(base: u32, off: u32, size: u32) -> Option<u32> {
    if off == MEMBER_NONE || off < base {
        return None;
    }
    let rel = off - base;
    (rel + size <= HEAD_BYTES && rel % 8 + size <= 8).then_some(rel)
}

/// A member taken out of the head words; `rel` from [`head_slot`]. Registers only: a
/// variable index into a buffer in memory would need a constant offset on older verifiers.
#[inline(always)]
fn head_field(w: &[u64; 3], rel: u32, size: u32) -> u64 {
    let word = match rel / 8 {
        0 => w[0],
        1 => w[1],
        _ => w[2],
    };
    let v = word >> ((rel % 8) * 8);
    if size >= 8 {
        v
    } else {
        v & ((1u64 << (size * 8)) - 1)
    }
}

/// The IPv4 addresses, both ports, the family and the state of a socket sit together at the
/// start of `struct sock_common` (`skc_addrpair`, `skc_portpair`, `skc_family`, `skc_state`):
/// one read there replaces five on every path that reads a tuple. Falls back to a read per
/// member if a kernel ever laid them out otherwise.
#[inline(always)]
fn read_head(sk: u64) -> Option<(u16, u16, u16, u32, u32, u8)> {
    let base = lay!(st.skc_daddr);
    let (family, num, dport, saddr) = read_head_at(base)?;
    let state = head_slot(base, lay!(st.skc_state), 1)?;
    let w: [u64; 3] = member(sk, base).unwrap_or([0; 3]);
    Some((
        head_field(&w, family, 2) as u16,
        head_field(&w, num, 2) as u16,
        head_field(&w, dport, 2) as u16,
        head_field(&w, saddr, 4) as u32,
        head_field(&w, 0, 4) as u32,
        head_field(&w, state, 1) as u8,
    ))
}

/// Reads `w`'s size at `base + off`; zeroes it when the read fails.
#[inline(always)]
fn read_words(base: u64, off: u32, w: &mut CommonWords) {
    let size = core::mem::size_of::<CommonWords>() as u32;
    let dst = w.as_mut_ptr() as *mut core::ffi::c_void;
    // SAFETY: `w` is `size` bytes; the helper zero-fills it when the read faults.
    unsafe {
        if base == 0
            || generated::bpf_probe_read_kernel(dst, size, (base + u64::from(off)) as *const _) != 0
        {
            crate::mem::zero(w);
        }
    }
}

/// Where [`read_head`] finds the family, the local and remote ports and the local IPv4
/// address in the head words from `base` (the remote address starts them).
#[inline(always)]
fn read_head_at(base: u32) -> Option<(u32, u32, u32, u32)> {
    Some((
        head_slot(base, lay!(st.skc_family), 2)?,
        head_slot(base, lay!(st.skc_num), 2)?,
        head_slot(base, lay!(st.skc_dport), 2)?,
        head_slot(base, lay!(st.skc_rcv_saddr), 4)?,
    ))
}

/// [`read_head`] as plain loads, one per member (a load may not span members): the two
/// addresses are one member (`skc_addrpair`), the ports another (`skc_portpair`).
#[inline(always)]
fn read_head_typed<M: Kmem>(sk: u64) -> Option<(u16, u16, u16, u32, u32, u8)> {
    let daddr = lay!(st.skc_daddr);
    if lay!(st.skc_rcv_saddr) != daddr.wrapping_add(4) {
        return None;
    }
    let pair: u64 = M::get(sk, daddr)?;
    Some((
        M::get(sk, lay!(st.skc_family))?,
        M::get(sk, lay!(st.skc_num))?,
        M::get(sk, lay!(st.skc_dport))?,
        (pair >> 32) as u32,
        pair as u32,
        M::get(sk, lay!(st.skc_state))?,
    ))
}

/// Where a packet's network header starts (`skb->head + skb->network_header`). The offset sits
/// a few bytes before `head` (only `mac_header`, `tail` and `end` lie between): one read takes
/// both where the layout allows, else one read each.
#[inline(always)]
pub fn skb_network_header<M: Kmem>(skb: u64) -> Option<u64> {
    let (nh_off, head_off) = (lay!(st.skb_network_header), lay!(st.skb_head));
    if M::SPANS_MEMBERS && nh_off != MEMBER_NONE {
        let base = nh_off & !7;
        if let (Some(nh), Some(head)) = (head_slot(base, nh_off, 2), head_slot(base, head_off, 8)) {
            let w: [u64; 3] = member(skb, base)?;
            return Some(head_field(&w, head, 8) + head_field(&w, nh, 2));
        }
    }
    let head: u64 = M::get(skb, head_off)?;
    let nh: u16 = M::get(skb, nh_off)?;
    Some(head + nh as u64)
}

/// [`fill_tuple`], also returning the socket's state when it came with the same read.
#[inline(always)]
pub fn fill_tuple_state<M: Kmem>(sk: u64, t: &mut Tuple) -> Option<u8> {
    t._pad = 0;
    let head = if M::SPANS_MEMBERS {
        read_head(sk)
    } else {
        read_head_typed::<M>(sk)
    };
    if let Some((family, num, dport, saddr, daddr, state)) = head {
        t.family = family;
        t.local_port = num;
        t.remote_port = u16::from_be(dport);
        if family == AF_INET {
            // Network byte order in memory, kept as bytes.
            write_u32(&mut t.local_addr, 0, saddr);
            write_u32(&mut t.remote_addr, 0, daddr);
            clear_tail(&mut t.local_addr);
            clear_tail(&mut t.remote_addr);
        } else {
            fill_addrs(sk, family, t);
        }
        return Some(state);
    }
    let family: u16 = member(sk, lay!(st.skc_family)).unwrap_or(0);
    t.family = family;
    t.local_port = member::<u16>(sk, lay!(st.skc_num)).unwrap_or(0);
    t.remote_port = u16::from_be(member::<u16>(sk, lay!(st.skc_dport)).unwrap_or(0));
    fill_addrs(sk, family, t);
    None
}

#[inline(always)]
fn fill_addrs(sk: u64, family: u16, t: &mut Tuple) {
    if family == AF_INET {
        // The probe read zero-fills on failure; the IPv6 tail must be cleared either way.
        read_into(sk, lay!(st.skc_rcv_saddr), &mut t.local_addr, 4);
        read_into(sk, lay!(st.skc_daddr), &mut t.remote_addr, 4);
        clear_tail(&mut t.local_addr);
        clear_tail(&mut t.remote_addr);
    } else if family == AF_INET6 {
        read_into(sk, lay!(st.skc_v6_rcv_saddr), &mut t.local_addr, 16);
        read_into(sk, lay!(st.skc_v6_daddr), &mut t.remote_addr, 16);
    } else {
        clear_tail(&mut t.local_addr);
        clear_tail(&mut t.remote_addr);
        write_u32(&mut t.local_addr, 0, 0);
        write_u32(&mut t.remote_addr, 0, 0);
    }
}

/// Reads `len` bytes at `base + off` into the front of `dst`; zero-filled when the read fails.
#[inline(always)]
fn read_into(base: u64, off: u32, dst: &mut [u8; 16], len: u32) {
    if base == 0 || off == MEMBER_NONE {
        write_u32(dst, 0, 0);
        if len == 16 {
            clear_tail(dst);
        }
        return;
    }
    let len = if len > 16 { 16 } else { len };
    unsafe {
        generated::bpf_probe_read_kernel(
            dst.as_mut_ptr() as *mut core::ffi::c_void,
            len,
            (base + off as u64) as *const core::ffi::c_void,
        )
    };
}

/// Zeroes bytes 4..16 with word stores, which the BPF backend emits inline (byte-array
/// assignments become `memset` calls).
#[inline(always)]
fn clear_tail(a: &mut [u8; 16]) {
    write_u32(a, 4, 0);
    write_u32(a, 8, 0);
    write_u32(a, 12, 0);
}

#[inline(always)]
fn write_u32(a: &mut [u8; 16], at: usize, v: u32) {
    if at + 4 <= a.len() {
        unsafe { core::ptr::write_volatile(a.as_mut_ptr().add(at) as *mut u32, v) };
    }
}

/// Whether a TCP state belongs to a full `struct sock` (not TIME_WAIT, not NEW_SYN_RECV).
#[inline(always)]
pub fn is_fullsock_state(state: u32) -> bool {
    state != 6 && state != 12 && state != 0
}

/// Sequence numbers, timestamps, linger setting and backlog of a full socket.
#[inline(always)]
pub fn tcp_snapshot(sk: u64, snap: &mut TcpSnapshot) {
    snap.now_jiffies = unsafe { generated::bpf_jiffies64() };
    if let (Some(rn), Some(cs), Some(su), Some(sn)) = (
        member::<u32>(sk, lay!(st.tcp_rcv_nxt)),
        member::<u32>(sk, lay!(st.tcp_copied_seq)),
        member::<u32>(sk, lay!(st.tcp_snd_una)),
        member::<u32>(sk, lay!(st.tcp_snd_nxt)),
    ) {
        snap.rcv_nxt = rn;
        snap.copied_seq = cs;
        snap.snd_una = su;
        snap.snd_nxt = sn;
        snap.valid |= SNAP_SEQ;
    }
    if let (Some(ls), Some(rt)) = (
        member::<u32>(sk, lay!(st.tcp_lsndtime)),
        member::<u32>(sk, lay!(st.tcp_rcv_tstamp)),
    ) {
        snap.lsndtime = ls;
        snap.rcv_tstamp = rt;
        snap.valid |= SNAP_TIMES;
    }
    if let (Some(fl), Some(lt)) = (
        member::<u64>(sk, lay!(st.sk_flags)),
        member::<u64>(sk, lay!(st.sk_lingertime)),
    ) {
        snap.sk_flags = fl;
        snap.sk_lingertime = lt;
        snap.valid |= SNAP_LINGER;
    }
    if let (Some(a), Some(m)) = accept_queue(sk) {
        snap.sk_ack_backlog = a;
        snap.sk_max_ack_backlog = m;
        snap.valid |= SNAP_BACKLOG;
    }
}

/// SO_LINGER on with a zero timeout: close() will abort with an RST.
#[inline(always)]
pub fn linger_zero(snap: &TcpSnapshot) -> bool {
    let bit = lay!(st.sock_linger_bit);
    snap.valid & SNAP_LINGER != 0
        && bit < 64
        && snap.sk_flags & (1u64 << bit) != 0
        && snap.sk_lingertime == 0
}

/// SO_KEEPALIVE on a socket that is not orphaned.
#[inline(always)]
pub fn keepalive_on(snap: &TcpSnapshot) -> bool {
    let (keep, dead) = (lay!(st.sock_keepopen_bit), lay!(st.sock_dead_bit));
    snap.valid & SNAP_LINGER != 0
        && keep < 64
        && snap.sk_flags & (1u64 << keep) != 0
        && (dead >= 64 || snap.sk_flags & (1u64 << dead) == 0)
}

/// The calling task. Only meaningful in process context (syscalls, listen(), connect()).
#[inline(always)]
pub fn current_task() -> TaskInfo {
    let id = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    let mut t = core::mem::MaybeUninit::<TaskInfo>::uninit();
    let p = t.as_mut_ptr();
    // SAFETY: every field is written below. `comm` goes straight from the helper into place
    // (aya's wrapper zeroes a buffer with a `memset` call, then copies it byte by byte); the
    // helper writes all 16 bytes, zero-padded, even when it fails.
    unsafe {
        core::ptr::addr_of_mut!((*p).tid).write(id as u32);
        core::ptr::addr_of_mut!((*p).pid).write((id >> 32) as u32);
        core::ptr::addr_of_mut!((*p).cgroup_id).write(generated::bpf_get_current_cgroup_id());
        generated::bpf_get_current_comm(
            core::ptr::addr_of_mut!((*p).comm) as *mut core::ffi::c_void,
            16,
        );
        t.assume_init()
    }
}

/// The `struct sock` behind file descriptor `fd` of the current task, or 0.
#[inline(always)]
pub fn current_fd_sock(fd: i32) -> u64 {
    if fd < 0 {
        return 0;
    }
    let (max_fds, fds) = if lay!(st.regs_arg0) != MEMBER_NONE {
        // Where the registers saved at syscall entry can be had (≥ 5.15), the current task
        // comes as a typed pointer too (≥ 5.11): the walk to its descriptor table is plain
        // loads. A fault (no table) reads 0, which no descriptor passes.
        // SAFETY: a helper without arguments.
        let task = unsafe { generated::bpf_get_current_task_btf() } as u64;
        let files: u64 = btf_member(task, lay!(st.task_files)).unwrap_or(0);
        let fdt: u64 = btf_member(files, lay!(st.files_fdt)).unwrap_or(0);
        (
            btf_member::<u32>(fdt, lay!(st.fdtable_max_fds)),
            btf_member::<u64>(fdt, lay!(st.fdtable_fd)),
        )
    } else {
        let task = unsafe { generated::bpf_get_current_task() };
        let files: u64 = member(task, lay!(st.task_files)).unwrap_or(0);
        let fdt: u64 = member(files, lay!(st.files_fdt)).unwrap_or(0);
        // `max_fds` and the array pointer start `struct fdtable`: one read for both.
        member_pair::<u32, u64>(fdt, lay!(st.fdtable_max_fds), lay!(st.fdtable_fd))
    };
    if fd as u32 >= max_fds.unwrap_or(0) {
        return 0;
    }
    let fds = fds.unwrap_or(0);
    let file: u64 = member(fds, (fd as u32) * 8).unwrap_or(0);
    let socket: u64 = member(file, lay!(st.file_private_data)).unwrap_or(0);
    member(socket, lay!(st.socket_sk)).unwrap_or(0)
}

/// Argument `off` (`lay!(st.regs_arg0)`, ...) of the syscall the current task is in, from the
/// registers saved at its entry: read at a syscall's exit, or inside the syscall, it needs no
/// entry tracepoint (one of which adds work to the entry of every syscall on the host). `None`
/// where the kernel cannot hand over the registers: the test comes first, so an older
/// kernel's verifier drops the helper calls that follow.
#[inline(always)]
pub fn syscall_arg(off: u32) -> Option<u64> {
    if off == MEMBER_NONE {
        return None;
    }
    // SAFETY: helpers without memory arguments; the task pointer is the current task's.
    let regs = unsafe {
        let task = generated::bpf_get_current_task_btf();
        generated::bpf_task_pt_regs(task) as u64
    };
    member(regs, off)
}
