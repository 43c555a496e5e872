//! Socket ownership kept in the kernel. Owners are learnt where the current task is by
//! definition the owner (listen(), connect(), accept() return) and stored per socket; the
//! programs that see a reset or a drop read them from here. A healthy connection therefore
//! costs two array slot writes (its owner, then its close), and sends nothing to userspace.
use aya_ebpf::{
    helpers::generated,
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
};
use rst_trace_common::{
    ownercache::{self, OWNERS_SETS},
    twcache::{self, TW_OWNERS_SETS},
    AcceptorKey, CounterFamily, OwnerEntry, OwnerInfo, OwnerSet, SlotTag, TwKey, TwSet,
    ACCEPTORS_CAPACITY, OWNERS_WAYS, OWNER_CLOSED, TABLE_LOOKUP_HIT, TABLE_LOOKUP_MISS,
    TABLE_OWNERS_FULL, TABLE_OWNERS_STORED, TABLE_TW_EVICTED, TABLE_TW_STORED, TW_OWNERS_WAYS,
};

use crate::{
    emit::count,
    kread::{member, sk_netns, sk_tuple},
    layout::lay,
};

/// The agent maps both caches read-only to count their live slots without a syscall per slot.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Owners of live sockets: a set-associative cache (placement in
/// `rst_trace_common::ownercache`), written by every healthy connection. Not an LRU: the
/// owner of an open socket is never displaced (an LRU would evict the owners of long-lived
/// idle connections under churn, the very connections load balancers reset); an owner that
/// finds no slot is counted.
#[map(name = "RST_OWNERS")]
static RST_OWNERS: Array<OwnerSet> = Array::with_max_entries(OWNERS_SETS, BPF_F_MMAPABLE);

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

/// The calling thread's identity as last read in full on this CPU: a thread that connects or
/// accepts again and again (a client pool, a server's accept loop) is read once a
/// millisecond rather than at every connection, three helper calls fewer each time. A name or
/// cgroup changed since (exec, a move between cgroups) shows at most that much later; the
/// agent reports a live process's current name anyway. The slot is also where the owner being
/// stored is built: an owner on the stack does not fit beside a listener's record.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TaskMemo {
    pid_tgid: u64,
    read_ns: u64,
    owner: OwnerInfo,
}

const TASK_MEMO_NS: u64 = 1_000_000;

#[map(name = "RST_TASK_MEMO")]
static RST_TASK_MEMO: PerCpuArray<TaskMemo> = PerCpuArray::with_max_entries(1, 0);

/// The calling task as an owner since `now`, in this CPU's memo slot. Only in process
/// context: programs there do not nest on one CPU, so nothing else writes the slot meanwhile.
#[inline(always)]
fn current_owner(how: u32, now: u64) -> Option<&'static OwnerInfo> {
    let id = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    // SAFETY: a per-CPU slot, used only as said above, never across a sleep.
    let m = unsafe { &mut *RST_TASK_MEMO.get_ptr_mut(0)? };
    if m.pid_tgid != id || now.wrapping_sub(m.read_ns) >= TASK_MEMO_NS {
        // Field by field, in place: an owner built on the stack and copied made the program's
        // stack too large for 5.10's verifier (544 bytes over its calls).
        let o = &mut m.owner;
        o.tid = id as u32;
        o.pid = (id >> 32) as u32;
        // SAFETY: helpers without memory arguments but `comm`, which gets its 16 bytes
        // (zero-padded) even when the helper fails.
        unsafe {
            o.cgroup_id = generated::bpf_get_current_cgroup_id();
            generated::bpf_get_current_comm(o.comm.as_mut_ptr() as *mut core::ffi::c_void, 16);
        }
        let task = unsafe { generated::bpf_get_current_task() };
        // A process's main thread is its own group leader: one read fewer for most callers.
        let leader: u64 = if o.tid == o.pid {
            task
        } else {
            member(task, lay!(st.task_group_leader)).unwrap_or(task)
        };
        o.start_boottime_ns = member(leader, lay!(st.task_start_boottime)).unwrap_or(0);
        m.pid_tgid = id;
        m.read_ns = now;
    }
    m.owner.since_ns = now;
    m.owner.closed_ns = 0;
    m.owner.how = how;
    m.owner.flags = 0;
    Some(&m.owner)
}

/// The current task owns `sk` from now on.
#[inline(always)]
pub fn learn(sk: u64, how: u32) {
    if sk == 0 {
        return;
    }
    if let Some(owner) = current_owner(how, unsafe { generated::bpf_ktime_get_ns() }) {
        store(sk, owner);
    }
}

/// The two sets `sk` may sit in, and its check.
#[inline(always)]
fn owner_sets(sk: u64) -> Option<(*mut OwnerSet, *mut OwnerSet, u32)> {
    let at = ownercache::placement(sk);
    Some((
        RST_OWNERS.get_ptr_mut(at.a)?,
        RST_OWNERS.get_ptr_mut(at.b)?,
        at.check,
    ))
}

/// Whether way `way` of `set` holds `sk`'s entry (a closed one included).
#[inline(always)]
fn holds(set: &OwnerSet, way: usize, check: u32, sk: u64) -> bool {
    // SAFETY: fields of a map value; another CPU may be writing them, which the callers'
    // sequence checks tell.
    unsafe {
        core::ptr::read_volatile(&set.tags[way].check) == check
            && core::ptr::read_volatile(&set.entries[way].sk) == sk
    }
}

/// The slot of `sk`'s newest entry: the first that holds it in look-up order (the ways of its
/// two sets interleaved, as stores take them).
#[inline(always)]
fn find(sk: u64) -> Option<(*mut SlotTag, *mut OwnerEntry)> {
    let (a, b, check) = owner_sets(sk)?;
    // SAFETY: array elements, valid for this run.
    let (a, b) = unsafe { (&mut *a, &mut *b) };
    let mut way = 0;
    while way < OWNERS_WAYS as usize {
        if holds(a, way, check, sk) {
            return Some((&mut a.tags[way], &mut a.entries[way]));
        }
        if holds(b, way, check, sk) {
            return Some((&mut b.tags[way], &mut b.entries[way]));
        }
        way += 1;
    }
    None
}

/// Stores `sk`'s owner in the first slot that fits, in look-up order; counted as stored, or
/// as full when no slot fits or another CPU wrote the slot at the same instant.
#[inline(always)]
fn store(sk: u64, owner: &OwnerInfo) {
    let stored = match owner_sets(sk) {
        // SAFETY: array elements, valid for this run.
        Some((a, b, check)) => unsafe { place(&mut *a, &mut *b, check, sk, owner) },
        None => false,
    };
    count(
        CounterFamily::Table,
        if stored {
            TABLE_OWNERS_STORED
        } else {
            TABLE_OWNERS_FULL
        },
    );
}

/// [`store`]'s search. Each way either writes and leaves or goes on: no comparison between
/// slots, so the verifier walks one path per way.
#[inline(always)]
fn place(a: &mut OwnerSet, b: &mut OwnerSet, check: u32, sk: u64, owner: &OwnerInfo) -> bool {
    let now = owner.since_ns;
    let mut way = 0;
    while way < OWNERS_WAYS as usize {
        if slot_fits(a, way, check, sk, now) {
            return slot_write(&mut a.tags[way], &mut a.entries[way], check, sk, owner);
        }
        if slot_fits(b, way, check, sk, now) {
            return slot_write(&mut b.tags[way], &mut b.entries[way], check, sk, owner);
        }
        way += 1;
    }
    false
}

#[inline(always)]
fn slot_fits(set: &OwnerSet, way: usize, check: u32, sk: u64, now: u64) -> bool {
    let tag = &set.tags[way];
    // SAFETY: fields of a map value, read as they are (another CPU may be writing them).
    let (seq, tag_check, closed) = unsafe {
        (
            core::ptr::read_volatile(&tag.seq),
            core::ptr::read_volatile(&tag.check),
            core::ptr::read_volatile(&tag.closed_ns),
        )
    };
    let same =
        tag_check == check && unsafe { core::ptr::read_volatile(&set.entries[way].sk) } == sk;
    ownercache::fits(seq & 1 != 0, tag_check, same, closed, now)
}

/// Fills one slot under its sequence, then reads it back: a store of another CPU that took the
/// same slot at the same instant and landed before the read-back shows as a difference, and
/// the slot is emptied rather than left holding a mix of two owners (`false` then). Without an
/// atomic compare-and-swap (BPF has one only from 5.12) two stores that interleave exactly can
/// still leave one owner in place of the other.
#[inline(always)]
fn slot_write(
    tag: &mut SlotTag,
    entry: &mut OwnerEntry,
    check: u32,
    sk: u64,
    owner: &OwnerInfo,
) -> bool {
    // SAFETY: fields of a map value, valid for this run.
    let seq = unsafe { core::ptr::read_volatile(&tag.seq) } | 1;
    unsafe {
        core::ptr::write_volatile(&mut tag.seq, seq);
        core::ptr::write_volatile(&mut tag.check, check);
        core::ptr::write_volatile(&mut tag.closed_ns, 0);
        core::ptr::write_volatile(&mut entry.sk, sk);
    }
    crate::mem::copy(&mut entry.owner, owner);
    unsafe { core::ptr::write_volatile(&mut tag.seq, seq.wrapping_add(1)) };
    // SAFETY: as above.
    let kept = unsafe {
        core::ptr::read_volatile(&tag.check) == check
            && core::ptr::read_volatile(&entry.sk) == sk
            && core::ptr::read_volatile(&tag.closed_ns) == 0
    } && crate::mem::same(&entry.owner, owner);
    if !kept {
        clear(tag);
    }
    kept
}

/// Empties a slot.
#[inline(always)]
fn clear(tag: &mut SlotTag) {
    // SAFETY: fields of a map value, valid for this run.
    unsafe {
        let seq = core::ptr::read_volatile(&tag.seq) | 1;
        core::ptr::write_volatile(&mut tag.seq, seq);
        core::ptr::write_volatile(&mut tag.check, 0);
        core::ptr::write_volatile(&mut tag.closed_ns, 0);
        core::ptr::write_volatile(&mut tag.seq, seq.wrapping_add(1));
    }
}

/// `sk` is a new socket that no task owns yet, or one that never got connected: whatever
/// entries are at its address were left by an earlier socket there (sockets are
/// SLAB_TYPESAFE_BY_RCU), or are its own and no longer needed. Every one goes: a child aborted
/// before any accept() (the listener closing with it in its queue) would otherwise be blamed
/// on the earlier socket's process, since the abort's reader takes a closed entry as the
/// closing socket's own. No lock: a look at the tags of two sets.
#[inline(always)]
pub fn forget(sk: u64) {
    let Some((a, b, check)) = owner_sets(sk) else {
        return;
    };
    // SAFETY: array elements, valid for this run.
    let (a, b) = unsafe { (&mut *a, &mut *b) };
    let mut way = 0;
    while way < OWNERS_WAYS as usize {
        if holds(a, way, check, sk) {
            clear(&mut a.tags[way]);
        }
        if holds(b, way, check, sk) {
            clear(&mut b.tags[way]);
        }
        way += 1;
    }
}

/// Copies the owner of full socket `sk` into `out`; counts the hit or miss. `closing`: the
/// socket is in CLOSE (close() sends its abort RST after the state change), so an entry marked
/// closed is its own; otherwise such an entry was left by an earlier socket at this address.
#[inline(always)]
pub fn owner_into(sk: u64, closing: bool, out: &mut OwnerInfo) -> bool {
    let found = find(sk).is_some_and(|(tag, entry)| {
        // SAFETY: a slot of a map value, valid for this run; its sequence tells a copy taken
        // while another CPU rewrote it.
        let (tag, entry) = unsafe { (&*tag, &*entry) };
        let (seq, closed) = unsafe {
            (
                core::ptr::read_volatile(&tag.seq),
                core::ptr::read_volatile(&tag.closed_ns),
            )
        };
        if seq & 1 != 0 || !ownercache::belongs(closed, closing) {
            return false;
        }
        crate::mem::copy(out, &entry.owner);
        if unsafe { core::ptr::read_volatile(&tag.seq) } == seq {
            return true;
        }
        // Rewritten under the copy: what was read may be another socket's.
        crate::mem::zero(out);
        false
    });
    count(
        CounterFamily::Table,
        if found {
            TABLE_LOOKUP_HIT
        } else {
            TABLE_LOOKUP_MISS
        },
    );
    found
}

/// The last owner of a TIME_WAIT mini socket, from the connection it replaced.
#[inline(always)]
pub fn tw_owner_into(tw: u64, out: &mut OwnerInfo) -> bool {
    let key = tw_key(tw);
    let at = twcache::placement(&key_words(&key));
    let (Some(a), Some(b)) = (RST_TW_OWNERS.get_ptr(at.a), RST_TW_OWNERS.get_ptr(at.b)) else {
        return false;
    };
    // SAFETY: array elements, valid for this run; other CPUs may be writing their slots,
    // which their sequences tell.
    let (a, b) = unsafe { (&*a, &*b) };
    let mut way = 0;
    while way < TW_OWNERS_WAYS as usize {
        if let Some(found) = tw_find(a, way, at.check, &key, out) {
            return found;
        }
        if let Some(found) = tw_find(b, way, at.check, &key, out) {
            return found;
        }
        way += 1;
    }
    false
}

/// Whether way `way` of `set` holds `key`: `Some(copied)` when it does (`false`: it was
/// rewritten while being copied), `None` when it does not.
#[inline(always)]
fn tw_find(set: &TwSet, way: usize, check: u32, key: &TwKey, out: &mut OwnerInfo) -> Option<bool> {
    let (tag, entry) = (&set.tags[way], &set.entries[way]);
    // SAFETY: fields of a map value, read as they are.
    let seq = unsafe { core::ptr::read_volatile(&tag.seq) };
    if seq & 1 != 0
        || unsafe { core::ptr::read_volatile(&tag.check) } != check
        || !crate::mem::same(&entry.key, key)
    {
        return None;
    }
    crate::mem::copy(out, &entry.owner);
    if unsafe { core::ptr::read_volatile(&tag.seq) } == seq {
        return Some(true);
    }
    // Rewritten under the copy: what was read may be another connection's.
    crate::mem::zero(out);
    Some(false)
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
/// in the first slot that fits, in look-up order (the ways of the two sets interleaved), else
/// over a live one (counted). Each way either writes and leaves or goes on: no comparison
/// between slots, so the verifier walks one path per way.
#[inline(always)]
fn tw_store(key: &TwKey, owner: &OwnerInfo, now: u64) -> Option<()> {
    let at = twcache::placement(&key_words(key));
    count(CounterFamily::Table, TABLE_TW_STORED);
    // SAFETY: array elements, valid for this run; other CPUs may be writing their slots,
    // which their sequences tell.
    let (a, b) = unsafe {
        (
            &mut *RST_TW_OWNERS.get_ptr_mut(at.a)?,
            &mut *RST_TW_OWNERS.get_ptr_mut(at.b)?,
        )
    };
    let mut way = 0;
    while way < TW_OWNERS_WAYS as usize {
        if tw_fits(a, way, at.check, key, now) {
            tw_write(a, way, at.check, key, owner, now);
            return Some(());
        }
        if tw_fits(b, way, at.check, key, now) {
            tw_write(b, way, at.check, key, owner, now);
            return Some(());
        }
        way += 1;
    }
    count(CounterFamily::Table, TABLE_TW_EVICTED);
    let way = twcache::evicted_way(at.check) as usize;
    if way < TW_OWNERS_WAYS as usize {
        tw_write(a, way, at.check, key, owner, now);
    }
    Some(())
}

#[inline(always)]
fn tw_fits(set: &TwSet, way: usize, check: u32, key: &TwKey, now: u64) -> bool {
    let tag = &set.tags[way];
    // SAFETY: fields of a map value, read as they are (another CPU may be writing them).
    let (seq, tag_check, closed) = unsafe {
        (
            core::ptr::read_volatile(&tag.seq),
            core::ptr::read_volatile(&tag.check),
            core::ptr::read_volatile(&tag.closed_ns),
        )
    };
    let same = tag_check == check && crate::mem::same(&set.entries[way].key, key);
    twcache::fits(seq & 1 != 0, same, closed, now)
}

/// Fills one slot. Readers on other CPUs see its sequence odd while it changes; every access
/// is volatile, so none moves across the sequence writes (x86 keeps stores in order; weaker
/// CPUs may let a reader see a torn slot).
#[inline(always)]
fn tw_write(set: &mut TwSet, way: usize, check: u32, key: &TwKey, owner: &OwnerInfo, now: u64) {
    let (tag, entry) = (&mut set.tags[way], &mut set.entries[way]);
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

/// `sk` entered CLOSE. Its entry is marked closed, and its slot is reused once the grace
/// period is over (`ownercache::OWNER_CLOSE_GRACE_NS`): close() sends its abort RST after the
/// state change. An active close leaves a TIME_WAIT socket behind, which inherits the owner as
/// its last owner. An entry already closed was left by an earlier socket at this address.
#[inline(always)]
pub fn closed(sk: u64, active_close: bool) -> Option<()> {
    let (tag, entry) = find(sk)?;
    // SAFETY: a slot of a map value, valid for this run. Only this socket's close writes an
    // open slot: no store takes a slot while its socket is open.
    let (tag, entry) = unsafe { (&mut *tag, &mut *entry) };
    if unsafe { core::ptr::read_volatile(&tag.closed_ns) } != 0 {
        return None;
    }
    let now = unsafe { generated::bpf_ktime_get_ns() };
    // SAFETY: as above.
    unsafe {
        let seq = core::ptr::read_volatile(&tag.seq) | 1;
        core::ptr::write_volatile(&mut tag.seq, seq);
        core::ptr::write_volatile(&mut tag.closed_ns, now);
        core::ptr::write_volatile(&mut entry.owner.closed_ns, now);
        let flags = core::ptr::read_volatile(&entry.owner.flags);
        core::ptr::write_volatile(&mut entry.owner.flags, flags | OWNER_CLOSED);
        core::ptr::write_volatile(&mut tag.seq, seq.wrapping_add(1));
    }
    if active_close {
        let mut key = tw_key(sk);
        if key.tuple.local_port == 0 {
            // Recent kernels trace CLOSE after releasing the bind hash, which zeroes skc_num.
            key.tuple.local_port =
                u16::from_be(member::<u16>(sk, lay!(st.inet_sport)).unwrap_or(0));
        }
        let _ = tw_store(&key, &entry.owner, now);
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
    let Some(owner) = current_owner(rst_trace_common::OWNER_ACCEPT, now) else {
        return;
    };
    store(child, owner);
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
            let _ = RST_ACCEPTORS.insert(&key, owner, 0);
        }
    }
}
