//! Socket ownership kept in the kernel. Owners are learnt where the current task is by
//! definition the owner (listen(), connect(), accept() return) and stored per socket; the
//! programs that see a reset or a drop read them from here. A healthy connection therefore
//! costs a map insert and a delete, and sends nothing to userspace.
use aya_ebpf::{
    helpers::generated,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use rst_trace_common::{
    twcache::{self, TW_OWNERS_SETS},
    AcceptorKey, CounterFamily, OwnerInfo, TwEntry, TwKey, TwSet, TwTag, ACCEPTORS_CAPACITY,
    CLOSE_DEFER_SLOTS, OWNERS_CAPACITY, OWNER_CLOSED, TABLE_LOOKUP_HIT, TABLE_LOOKUP_MISS,
    TABLE_OWNERS_FULL, TABLE_OWNERS_STORED, TABLE_TW_EVICTED, TABLE_TW_STORED, TW_OWNERS_WAYS,
};

use crate::{
    emit::count,
    kread::{current_task, member, sk_netns, sk_tuple},
    layout::lay,
};

/// Not an LRU: an LRU would silently evict the owners of long-lived idle connections under
/// churn, the very connections load balancers reset. Entries leave when their socket closes;
/// an insert into a full map is counted.
#[map(name = "RST_OWNERS")]
static RST_OWNERS: HashMap<u64, OwnerInfo> = HashMap::with_max_entries(OWNERS_CAPACITY, 0);

/// The agent maps it read-only to count the live slots without a syscall per slot.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Last owners of TIME_WAIT sockets: a set-associative cache (placement in
/// `rst_trace_common::twcache`), written on every active close.
#[map(name = "RST_TW_OWNERS")]
static RST_TW_OWNERS: Array<TwSet> = Array::with_max_entries(TW_OWNERS_SETS, BPF_F_MMAPABLE);

#[map(name = "RST_ACCEPTORS")]
static RST_ACCEPTORS: LruHashMap<AcceptorKey, OwnerInfo> =
    LruHashMap::with_max_entries(ACCEPTORS_CAPACITY, 0);

/// The last acceptor entry written on this CPU (see [`accepted`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LastAccept {
    pid: u32,
    port: u16,
    _pad: u16,
    at_ns: u64,
}

const ACCEPTOR_REFRESH_NS: u64 = 1_000_000_000;

#[map(name = "RST_LAST_ACCEPT")]
static RST_LAST_ACCEPT: PerCpuArray<LastAccept> = PerCpuArray::with_max_entries(1, 0);

/// Sockets that entered CLOSE recently on this CPU, whose owner entries are removed only when
/// their slot is reused: close() sends its abort RST after the state change.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CloseDefer {
    next: u32,
    _pad: u32,
    sk: [u64; CLOSE_DEFER_SLOTS as usize],
    /// `since_ns` of the entry when it was deferred: a socket address reused by a new socket
    /// (sockets are SLAB_TYPESAFE_BY_RCU) must not lose its new owner to the old deferral.
    since: [u64; CLOSE_DEFER_SLOTS as usize],
}

#[map(name = "RST_CLOSE_DEFER")]
static RST_CLOSE_DEFER: PerCpuArray<CloseDefer> = PerCpuArray::with_max_entries(1, 0);

/// The calling task as an owner. Only meaningful in process context.
#[inline(always)]
fn current_owner(how: u32, now: u64) -> OwnerInfo {
    let t = current_task();
    let task = unsafe { generated::bpf_get_current_task() };
    // A process's main thread is its own group leader: one read fewer for most callers.
    let leader: u64 = if t.tid == t.pid {
        task
    } else {
        member(task, lay!(st.task_group_leader)).unwrap_or(task)
    };
    OwnerInfo {
        pid: t.pid,
        tid: t.tid,
        cgroup_id: t.cgroup_id,
        comm: t.comm,
        since_ns: now,
        closed_ns: 0,
        start_boottime_ns: member(leader, lay!(st.task_start_boottime)).unwrap_or(0),
        how,
        flags: 0,
    }
}

/// The current task owns `sk` from now on.
#[inline(always)]
pub fn learn(sk: u64, how: u32) {
    if sk == 0 {
        return;
    }
    let owner = current_owner(how, unsafe { generated::bpf_ktime_get_ns() });
    if RST_OWNERS.insert(&sk, &owner, 0).is_ok() {
        count(CounterFamily::Table, TABLE_OWNERS_STORED);
    } else {
        count(CounterFamily::Table, TABLE_OWNERS_FULL);
    }
}

/// `sk` is a new socket that no task owns yet: whatever entry is at its address was left by an
/// earlier socket there (sockets are SLAB_TYPESAFE_BY_RCU).
#[inline(always)]
pub fn forget(sk: u64) {
    let _ = RST_OWNERS.remove(&sk);
}

/// [`forget`], where an entry is rarely there (a child socket just cloned: every incoming
/// connection): a look-up takes no lock, a delete takes the bucket's even when it finds
/// nothing.
#[inline(always)]
pub fn forget_stale(sk: u64) {
    // SAFETY: only tested for presence.
    if unsafe { RST_OWNERS.get(&sk) }.is_some() {
        let _ = RST_OWNERS.remove(&sk);
    }
}

/// Copies the owner of full socket `sk` into `out`; counts the hit or miss. `closing`: the
/// socket is in CLOSE (close() sends its abort RST after the state change), so an entry marked
/// closed is its own; otherwise such an entry was left by an earlier socket at this address.
#[inline(always)]
pub fn owner_into(sk: u64, closing: bool, out: &mut OwnerInfo) -> bool {
    match unsafe { RST_OWNERS.get(&sk) } {
        Some(o) if closing || o.flags & OWNER_CLOSED == 0 => {
            crate::mem::copy(out, o);
            count(CounterFamily::Table, TABLE_LOOKUP_HIT);
            true
        }
        _ => {
            count(CounterFamily::Table, TABLE_LOOKUP_MISS);
            false
        }
    }
}

/// The last owner of a TIME_WAIT mini socket, from the connection it replaced.
#[inline(always)]
pub fn tw_owner_into(tw: u64, out: &mut OwnerInfo) -> bool {
    let key = tw_key(tw);
    let at = twcache::placement(&key_words(&key));
    tw_find(at.a, at.check, &key, out).or_else(|| tw_find(at.b, at.check, &key, out)) == Some(true)
}

/// Looks for `key` in `set`: `Some(found)` when its slot is there (`false`: it was rewritten
/// while being copied), `None` when it is not.
#[inline(always)]
fn tw_find(set: u32, check: u32, key: &TwKey, out: &mut OwnerInfo) -> Option<bool> {
    // SAFETY: an array element, valid for this run; other CPUs may be writing its slots,
    // which their sequences tell.
    let set = unsafe { &*RST_TW_OWNERS.get_ptr(set)? };
    let mut way = 0;
    while way < TW_OWNERS_WAYS as usize {
        let (tag, entry) = (&set.tags[way], &set.entries[way]);
        let seq = unsafe { core::ptr::read_volatile(&tag.seq) };
        if seq & 1 == 0
            && unsafe { core::ptr::read_volatile(&tag.check) } == check
            && crate::mem::same(&entry.key, key)
        {
            crate::mem::copy(out, &entry.owner);
            if unsafe { core::ptr::read_volatile(&tag.seq) } == seq {
                return Some(true);
            }
            // Rewritten under the copy: what was read may be another connection's.
            crate::mem::zero(out);
            return Some(false);
        }
        way += 1;
    }
    None
}

#[inline(always)]
fn key_words(key: &TwKey) -> [u64; 6] {
    use crate::mem::word;
    [
        word(key, 0),
        word(key, 1),
        word(key, 2),
        word(key, 3),
        word(key, 4),
        word(key, 5),
    ]
}

/// Stores the last owner of the connection `key` names, which just closed actively at `now`:
/// in the first slot that fits, in look-up order, else over a live one (counted).
#[inline(always)]
fn tw_store(key: &TwKey, owner: &OwnerInfo, now: u64) -> Option<()> {
    let at = twcache::placement(&key_words(key));
    count(CounterFamily::Table, TABLE_TW_STORED);
    if tw_place(at.a, at.check, key, owner, now) || tw_place(at.b, at.check, key, owner, now) {
        return Some(());
    }
    count(CounterFamily::Table, TABLE_TW_EVICTED);
    // SAFETY: an array element, valid for this run.
    let set = unsafe { &mut *RST_TW_OWNERS.get_ptr_mut(at.a)? };
    let way = twcache::evicted_way(at.check) as usize;
    if way < TW_OWNERS_WAYS as usize {
        tw_write(
            &mut set.tags[way],
            &mut set.entries[way],
            at.check,
            key,
            owner,
            now,
        );
    }
    Some(())
}

/// Writes the entry into the first slot of `set` that fits; `false` when none does. Each way
/// either writes and leaves or goes on: no comparison between slots, so the verifier walks
/// one path per way.
#[inline(always)]
fn tw_place(set: u32, check: u32, key: &TwKey, owner: &OwnerInfo, now: u64) -> bool {
    // SAFETY: an array element, valid for this run; other CPUs may be writing its slots,
    // which their sequences tell.
    let Some(set) = RST_TW_OWNERS.get_ptr_mut(set) else {
        return false;
    };
    let set = unsafe { &mut *set };
    let mut way = 0;
    while way < TW_OWNERS_WAYS as usize {
        let tag = &set.tags[way];
        let (seq, tag_check, closed) = unsafe {
            (
                core::ptr::read_volatile(&tag.seq),
                core::ptr::read_volatile(&tag.check),
                core::ptr::read_volatile(&tag.closed_ns),
            )
        };
        let busy = seq & 1 != 0;
        let same = tag_check == check && crate::mem::same(&set.entries[way].key, key);
        if twcache::fits(busy, same, closed, now) {
            tw_write(
                &mut set.tags[way],
                &mut set.entries[way],
                check,
                key,
                owner,
                now,
            );
            return true;
        }
        way += 1;
    }
    false
}

/// Fills one slot. Readers on other CPUs see its sequence odd while it changes; every access
/// is volatile, so none moves across the sequence writes (x86 keeps stores in order; weaker
/// CPUs may let a reader see a torn slot).
#[inline(always)]
fn tw_write(
    tag: &mut TwTag,
    entry: &mut TwEntry,
    check: u32,
    key: &TwKey,
    owner: &OwnerInfo,
    now: u64,
) {
    // SAFETY: fields of a map value, valid for this run.
    let seq = unsafe { core::ptr::read_volatile(&tag.seq) } | 1;
    unsafe {
        core::ptr::write_volatile(&mut tag.seq, seq);
        core::ptr::write_volatile(&mut tag.check, check);
        core::ptr::write_volatile(&mut tag.closed_ns, now);
    }
    crate::mem::copy(&mut entry.key, key);
    crate::mem::copy(&mut entry.owner, owner);
    unsafe { core::ptr::write_volatile(&mut tag.seq, seq.wrapping_add(1)) };
}

#[inline(always)]
fn tw_key(sk: u64) -> TwKey {
    // Not `Default::default()` then a fill: zeroing the tuple first is a `memset` call.
    TwKey {
        netns: sk_netns(sk),
        _pad: 0,
        tuple: sk_tuple(sk),
    }
}

/// The sockfs inode of a socket that has a file, so the agent can find an owner that
/// predates it; 0 when there is none.
#[inline(always)]
pub fn sock_inode(sk: u64) -> u64 {
    let socket: u64 = member(sk, lay!(st.sk_socket)).unwrap_or(0);
    member::<u64>(socket, lay!(st.socket_ino)).unwrap_or(0)
}

/// `sk` entered CLOSE. Its entry is marked closed now and removed a few closes later (see
/// [`CloseDefer`]); an active close leaves a TIME_WAIT socket behind, which inherits the
/// owner as its last owner.
#[inline(always)]
pub fn closed(sk: u64, active_close: bool) -> Option<()> {
    let entry = RST_OWNERS.get_ptr_mut(&sk)?;
    let now = unsafe { generated::bpf_ktime_get_ns() };
    // SAFETY: a value pointer from the map, valid for this program run.
    let since = unsafe {
        (*entry).closed_ns = now;
        (*entry).flags |= OWNER_CLOSED;
        (*entry).since_ns
    };
    if active_close {
        let mut key = tw_key(sk);
        if key.tuple.local_port == 0 {
            // Recent kernels trace CLOSE after releasing the bind hash, which zeroes skc_num.
            key.tuple.local_port =
                u16::from_be(member::<u16>(sk, lay!(st.inet_sport)).unwrap_or(0));
        }
        // SAFETY: as above.
        let _ = tw_store(&key, unsafe { &*entry }, now);
    }
    // SAFETY: a per-CPU slot, used by this program only and never across a sleep.
    let ring = unsafe { &mut *RST_CLOSE_DEFER.get_ptr_mut(0)? };
    let slot = (ring.next % CLOSE_DEFER_SLOTS) as usize;
    if slot < CLOSE_DEFER_SLOTS as usize {
        let old = ring.sk[slot];
        if old != 0 {
            // SAFETY: read-only look at a map value.
            let same =
                unsafe { RST_OWNERS.get(&old) }.is_some_and(|o| o.since_ns == ring.since[slot]);
            if same {
                let _ = RST_OWNERS.remove(&old);
            }
        }
        ring.sk[slot] = sk;
        ring.since[slot] = since;
        ring.next = ring.next.wrapping_add(1);
    }
    Some(())
}

/// The current task accepted `child`: it owns it, and it serves the child's listener.
#[inline(always)]
pub fn accepted(child: u64) {
    if child == 0 {
        return;
    }
    let now = unsafe { generated::bpf_ktime_get_ns() };
    let owner = current_owner(rst_trace_common::OWNER_ACCEPT, now);
    if RST_OWNERS.insert(&child, &owner, 0).is_ok() {
        count(CounterFamily::Table, TABLE_OWNERS_STORED);
    } else {
        count(CounterFamily::Table, TABLE_OWNERS_FULL);
    }
    let port = member::<u16>(child, lay!(st.skc_num)).unwrap_or(0);
    // A server accepts again and again on the same port: its acceptor entry is refreshed at most
    // once a second per CPU, which keeps the map look-up off most accepts.
    if let Some(last) = RST_LAST_ACCEPT.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, used by this program only.
        let last = unsafe { &mut *last };
        if last.pid == owner.pid
            && last.port == port
            && now.wrapping_sub(last.at_ns) < ACCEPTOR_REFRESH_NS
        {
            return;
        }
        last.pid = owner.pid;
        last.port = port;
        last.at_ns = now;
    }
    let key = AcceptorKey {
        netns: sk_netns(child),
        port,
        _pad: 0,
        pid: owner.pid,
        _pad2: 0,
    };
    match RST_ACCEPTORS.get_ptr_mut(&key) {
        // The same process accepting again only moves its time: no hash update.
        Some(a) => unsafe { (*a).since_ns = now },
        None => {
            let _ = RST_ACCEPTORS.insert(&key, &owner, 0);
        }
    }
}
