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
    AcceptorKey, CounterFamily, OwnerEntry, OwnerInfo, OwnerSet, SlotTag, TwIdentity, TwSet,
    TwSlot, ACCEPTORS_CAPACITY, OWNERS_WAYS, OWNER_CLOSED, TABLE_LOOKUP_HIT, TABLE_LOOKUP_MISS,
    TABLE_OWNERS_FULL, TABLE_OWNERS_STORED, TABLE_TW_EVICTED, TABLE_TW_STORED, TW_IDS_CAPACITY,
    TW_OWNERS_WAYS,
};

use crate::{
    emit::count,
    kread::{member, sk_conn_words, sk_netns, CommonWords},
    layout::lay,
};

/// The agent maps the caches read-only to count their live slots without a syscall per slot.
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

/// Room for the `sock_common` words a TIME_WAIT key is read from (`kread::sk_conn_words`):
/// slot [`CONN_WORDS_CLOSE`] for the state-change program, [`CONN_WORDS_RESET`] for the reset
/// programs, which may interrupt it on its CPU (a program never interrupts itself there: the
/// kernel skips such a run).
#[map(name = "RST_SCRATCH_CONN")]
static RST_SCRATCH_CONN: PerCpuArray<CommonWords> = PerCpuArray::with_max_entries(2, 0);
const CONN_WORDS_CLOSE: u32 = 0;
const CONN_WORDS_RESET: u32 = 1;

/// A connection's TIME_WAIT key, read through scratch slot `slot`.
#[inline(always)]
fn conn_key(sk: u64, slot: u32) -> Option<[u64; 6]> {
    // SAFETY: a per-CPU slot only this program uses while it runs (see RST_SCRATCH_CONN).
    let w = unsafe { &mut *RST_SCRATCH_CONN.get_ptr_mut(slot)? };
    Some(sk_conn_words(sk, w))
}

/// The owners `RST_TW_OWNERS`'s slots name (the agent counts them as it counts the caches).
#[map(name = "RST_TW_IDS")]
static RST_TW_IDS: Array<TwIdentity> = Array::with_max_entries(TW_IDS_CAPACITY, BPF_F_MMAPABLE);

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
/// millisecond (once a tick, as the owner clock moves) rather than at every connection, three
/// helper calls fewer each time. A name or cgroup changed since (exec, a move between cgroups)
/// shows at most that much later; the agent reports a live process's current name anyway. The
/// slot is also where the owner being stored is built: an owner on the stack does not fit
/// beside a listener's record.
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
    if let Some(owner) = current_owner(how, crate::clock::owner_now_ns()) {
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

/// `sk` never got connected: the entries at its address are its own, no longer needed (a
/// connection that never left SYN_SENT sends no RST on its way out), or were left by an
/// earlier socket there (sockets are SLAB_TYPESAFE_BY_RCU). Every one goes. No lock: a look at
/// the tags of two sets.
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

/// The last owner of a TIME_WAIT mini socket, from the connection it replaced, as of `now_ns`
/// (the record's time).
#[inline(always)]
pub fn tw_owner_into(tw: u64, now_ns: u64, out: &mut OwnerInfo) -> bool {
    let Some(key) = conn_key(tw, CONN_WORDS_RESET) else {
        return false;
    };
    let at = twcache::placement(&key);
    let (Some(a), Some(b)) = (RST_TW_OWNERS.get_ptr(at.a), RST_TW_OWNERS.get_ptr(at.b)) else {
        return false;
    };
    // SAFETY: array elements, valid for this run; other CPUs may be rewriting their slots,
    // which their keys tell.
    let (a, b) = unsafe { (&*a, &*b) };
    match tw_find(a, at.key).or_else(|| tw_find(b, at.key)) {
        Some((owner, closed)) => identity_into(owner, closed, now_ns, out),
        None => false,
    }
}

/// The owner reference and close time in the slot of `set` that holds `key`.
#[inline(always)]
fn tw_find(set: &TwSet, key: u64) -> Option<(u32, u32)> {
    let mut way = 0;
    while way < TW_OWNERS_WAYS as usize {
        let slot = &set.slots[way];
        // SAFETY: fields of a map value, read as they are. A writer empties the key before it
        // changes the rest and sets it last: the same key on both sides of the read means
        // the rest is the key's.
        unsafe {
            if core::ptr::read_volatile(&slot.key) == key {
                let owner = core::ptr::read_volatile(&slot.owner);
                let closed = core::ptr::read_volatile(&slot.closed);
                return (core::ptr::read_volatile(&slot.key) == key).then_some((owner, closed));
            }
        }
        way += 1;
    }
    None
}

/// Copies the identity a slot names into `out`, with the close time the slot kept; `false`
/// when that identity has been replaced since, or was being rewritten.
#[inline(always)]
fn identity_into(owner: u32, closed: u32, now_ns: u64, out: &mut OwnerInfo) -> bool {
    let Some(id) = RST_TW_IDS.get_ptr(twcache::id_index(owner)) else {
        return false;
    };
    // SAFETY: an array element, valid for this run; its sequence tells a copy taken while
    // another CPU rewrote it.
    let id = unsafe { &*id };
    let seq = unsafe { core::ptr::read_volatile(&id.seq) };
    if seq & 1 != 0 {
        return false;
    }
    let words = identity_words(id);
    if unsafe { core::ptr::read_volatile(&id.seq) } != seq
        || !twcache::id_matches(owner, &twcache::id_placement(&words))
    {
        return false;
    }
    out.pid = words[0] as u32;
    out.tid = (words[0] >> 32) as u32;
    out.start_boottime_ns = words[1];
    out.cgroup_id = words[2];
    // SAFETY: `comm` is 16 bytes at 8-byte alignment within `OwnerInfo`.
    unsafe {
        let comm = out.comm.as_mut_ptr() as *mut u64;
        core::ptr::write_volatile(comm, words[3]);
        core::ptr::write_volatile(comm.add(1), words[4]);
    }
    out.how = words[5] as u32;
    out.flags = OWNER_CLOSED;
    // A TIME_WAIT owner keeps no time it was learnt.
    out.since_ns = 0;
    out.closed_ns = twcache::ns_of(closed, now_ns);
    true
}

/// An identity slot's contents as `twcache::id_words` lays them out, read as they are.
#[inline(always)]
fn identity_words(id: &TwIdentity) -> [u64; 6] {
    // SAFETY: fields of a map value, read as they are (another CPU may be writing them);
    // `comm` is 16 bytes at 8-byte alignment.
    unsafe {
        twcache::id_words(
            core::ptr::read_volatile(&id.pid),
            core::ptr::read_volatile(&id.tid),
            core::ptr::read_volatile(&id.start_boottime_ns),
            core::ptr::read_volatile(&id.cgroup_id),
            comm_words(&id.comm),
            core::ptr::read_volatile(&id.how),
        )
    }
}

/// An owner's identity as `twcache::id_words` lays it out.
#[inline(always)]
fn owner_words(o: &OwnerInfo) -> [u64; 6] {
    twcache::id_words(
        o.pid,
        o.tid,
        o.start_boottime_ns,
        o.cgroup_id,
        comm_words(&o.comm),
        o.how,
    )
}

/// A `comm` (8-byte aligned in both structs that hold one) as two words.
#[inline(always)]
fn comm_words(comm: &[u8; 16]) -> [u64; 2] {
    let w = comm.as_ptr() as *const u64;
    // SAFETY: 16 bytes at 8-byte alignment (`OwnerInfo` and `TwIdentity` place it so).
    unsafe {
        [
            core::ptr::read_volatile(w),
            core::ptr::read_volatile(w.add(1)),
        ]
    }
}

/// How often an identity that stays named has its time moved: a store by the same thread
/// within this leaves its slot's line unwritten.
const ID_NAMED_EVERY: u32 = (1_000_000_000u64 >> twcache::CLOCK_SHIFT) as u32;

/// The reference a TIME_WAIT slot names `owner` by: its identity's slot, found or (re)written.
/// A thread closes connection after connection as the same identity, so its slot is found
/// warm in the CPU's cache and left as it is.
#[inline(always)]
fn identity_ref(owner: &OwnerInfo, now: u32) -> Option<u32> {
    let words = owner_words(owner);
    let at = twcache::id_placement(&words);
    // SAFETY: array elements, valid for this run; other CPUs may be writing them, which their
    // sequences tell.
    let (a, b) = unsafe {
        (
            &mut *RST_TW_IDS.get_ptr_mut(at.a)?,
            &mut *RST_TW_IDS.get_ptr_mut(at.b)?,
        )
    };
    if identity_held(a, &words, now) {
        return Some(twcache::id_ref(at.a, at.check));
    }
    if identity_held(b, &words, now) {
        return Some(twcache::id_ref(at.b, at.check));
    }
    // Neither slot holds it: the first that no live TIME_WAIT owner names takes it, else the
    // first slot's identity goes (its owners are lost, counted as evicted).
    if twcache::id_replaceable(a, now) {
        identity_write(a, &words, now);
        return Some(twcache::id_ref(at.a, at.check));
    }
    if twcache::id_replaceable(b, now) {
        identity_write(b, &words, now);
        return Some(twcache::id_ref(at.b, at.check));
    }
    count(CounterFamily::Table, TABLE_TW_EVICTED);
    identity_write(a, &words, now);
    Some(twcache::id_ref(at.a, at.check))
}

/// Whether `id` holds the identity `words`; if it does, it is named now.
#[inline(always)]
fn identity_held(id: &mut TwIdentity, words: &[u64; 6], now: u32) -> bool {
    // SAFETY: fields of a map value, read as they are.
    let seq = unsafe { core::ptr::read_volatile(&id.seq) };
    if seq & 1 != 0 || !crate::mem::same_words(&identity_words(id), words) {
        return false;
    }
    // SAFETY: as above; a racing write of the time by another CPU loses one of two moments.
    unsafe {
        if now.wrapping_sub(core::ptr::read_volatile(&id.named)) >= ID_NAMED_EVERY {
            core::ptr::write_volatile(&mut id.named, now);
        }
    }
    true
}

/// Writes identity `words` into `id` under its sequence.
#[inline(always)]
fn identity_write(id: &mut TwIdentity, words: &[u64; 6], now: u32) {
    // SAFETY: fields of a map value, valid for this run; every access is volatile, so none
    // moves across the sequence writes.
    unsafe {
        let seq = core::ptr::read_volatile(&id.seq) | 1;
        core::ptr::write_volatile(&mut id.seq, seq);
        core::ptr::write_volatile(&mut id.pid, words[0] as u32);
        core::ptr::write_volatile(&mut id.tid, (words[0] >> 32) as u32);
        core::ptr::write_volatile(&mut id.start_boottime_ns, words[1]);
        core::ptr::write_volatile(&mut id.cgroup_id, words[2]);
        let comm = id.comm.as_mut_ptr() as *mut u64;
        core::ptr::write_volatile(comm, words[3]);
        core::ptr::write_volatile(comm.add(1), words[4]);
        core::ptr::write_volatile(&mut id.how, words[5] as u32);
        core::ptr::write_volatile(&mut id.named, now);
        core::ptr::write_volatile(&mut id.seq, seq.wrapping_add(1));
    }
}

/// Stores the last owner of the connection `key` (its [`sk_conn_words`]) names, which just closed actively at
/// `now_ns`: in the first slot that fits, first set then second (the order look-ups read
/// them), else over a live one of the first set (counted). Each way either writes and leaves
/// or goes on: no comparison between slots, so the verifier walks one path per way.
#[inline(always)]
fn tw_store(key: &[u64; 6], owner: &OwnerInfo, now_ns: u64) -> Option<()> {
    let now = twcache::units(now_ns);
    let owner = identity_ref(owner, now)?;
    let at = twcache::placement(key);
    count(CounterFamily::Table, TABLE_TW_STORED);
    // SAFETY: array elements, valid for this run; other CPUs may be writing their slots,
    // which their keys tell.
    let (a, b) = unsafe {
        (
            &mut *RST_TW_OWNERS.get_ptr_mut(at.a)?,
            &mut *RST_TW_OWNERS.get_ptr_mut(at.b)?,
        )
    };
    if tw_place(a, at.key, owner, now) || tw_place(b, at.key, owner, now) {
        return Some(());
    }
    count(CounterFamily::Table, TABLE_TW_EVICTED);
    let way = twcache::evicted_way(at.key) as usize;
    if way < TW_OWNERS_WAYS as usize {
        tw_write(&mut a.slots[way], at.key, owner, now);
    }
    Some(())
}

/// Writes the first slot of `set` that fits; `false` when none does.
#[inline(always)]
fn tw_place(set: &mut TwSet, key: u64, owner: u32, now: u32) -> bool {
    let mut way = 0;
    while way < TW_OWNERS_WAYS as usize {
        let slot = &mut set.slots[way];
        // SAFETY: fields of a map value, read as they are (another CPU may be writing them).
        let (slot_key, closed) = unsafe {
            (
                core::ptr::read_volatile(&slot.key),
                core::ptr::read_volatile(&slot.closed),
            )
        };
        if twcache::fits(slot_key, closed, key, now) {
            tw_write(slot, key, owner, now);
            return true;
        }
        way += 1;
    }
    false
}

/// Fills one slot: its key goes first to 0 and last to `key`, so a reader on another CPU that
/// sees the same key before and after its read read this owner. Two stores that take one
/// slot at the same instant can still leave one's owner under the other's key (no atomic
/// compare-and-swap before 5.12).
#[inline(always)]
fn tw_write(slot: &mut TwSlot, key: u64, owner: u32, now: u32) {
    // SAFETY: fields of a map value, valid for this run; every access is volatile, so none
    // moves across the key writes (x86 keeps stores in order; weaker CPUs may let a reader see
    // a torn slot).
    unsafe {
        core::ptr::write_volatile(&mut slot.key, 0);
        core::ptr::write_volatile(&mut slot.owner, owner);
        core::ptr::write_volatile(&mut slot.closed, now);
        core::ptr::write_volatile(&mut slot.key, key);
    }
}

/// The sockfs inode of a socket that has a file, so the agent can find an owner that
/// predates it; 0 when there is none.
#[inline(always)]
pub fn sock_inode(sk: u64) -> u64 {
    let socket: u64 = member(sk, lay!(st.sk_socket)).unwrap_or(0);
    member::<u64>(socket, lay!(st.socket_ino)).unwrap_or(0)
}

/// `sk` entered CLOSE (from another state). Its entry is marked closed, and its slot is
/// reused once the grace period is over (`ownercache::OWNER_CLOSE_GRACE_NS`): close() sends its
/// abort RST after the state change. An active close leaves a TIME_WAIT socket behind, which
/// inherits the owner as its last owner.
///
/// An entry already closed was left by an earlier socket at this address (a child nobody
/// accepted, closing with its listener, has none of its own): it goes, or the abort RST that
/// follows would be blamed on the earlier socket's process, since that RST's reader takes a
/// closed entry as the closing socket's own. Dropping it here rather than when the child is
/// born spares every incoming connection a look at both sets.
#[inline(always)]
pub fn closed(sk: u64, active_close: bool) -> Option<()> {
    let (tag, entry) = find(sk)?;
    // SAFETY: a slot of a map value, valid for this run. Only this socket's close writes an
    // open slot: no store takes a slot while its socket is open.
    let (tag, entry) = unsafe { (&mut *tag, &mut *entry) };
    if unsafe { core::ptr::read_volatile(&tag.closed_ns) } != 0 {
        clear(tag);
        return None;
    }
    let now = crate::clock::owner_now_ns();
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
        if let Some(key) = conn_key(sk, CONN_WORDS_CLOSE) {
            let _ = tw_store(&key, &entry.owner, now);
        }
    }
    Some(())
}

/// The current task accepted `child`: it owns it, and it serves the child's listener.
#[inline(always)]
pub fn accepted(child: u64) {
    if child == 0 {
        return;
    }
    let now = crate::clock::owner_now_ns();
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
