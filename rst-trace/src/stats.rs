//! Totals: exact kernel counters, per-cause counts, and every record that did not make it.
use std::collections::BTreeMap;

use rst_trace_common::event::{Counts, KernelCounts, Lookups, OwnerTableCounts};
use rst_trace_common::{CounterFamily, Errno, RecordKind, TcpState, COUNTER_SLOTS, SLOT_NO_REASON};

use crate::{
    attribution::{classify_drop, classify_received_reset, classify_sent_reset, SentReset},
    cause::Cause,
    kernel::reasons::ReasonNames,
};

/// Summed per-CPU counters, indexed like the kernel's `RST_COUNTERS`.
#[derive(Debug, Clone, Default)]
pub struct KernelCounters {
    pub values: Vec<u64>,
}

impl KernelCounters {
    pub fn get(&self, family: CounterFamily, slot: u32) -> u64 {
        let i =
            usize::try_from(rst_trace_common::counter_index(family, slot)).unwrap_or(usize::MAX);
        self.values.get(i).copied().unwrap_or(0)
    }

    fn family(&self, family: CounterFamily) -> impl Iterator<Item = (u32, u64)> + '_ {
        (0..COUNTER_SLOTS)
            .map(move |s| (s, self.get(family, s)))
            .filter(|(_, v)| *v > 0)
    }

    pub fn lost(&self) -> u64 {
        self.family(CounterFamily::Lost).map(|(_, v)| v).sum()
    }

    /// Every RST the TCP stack sent (what Tcp.OutRsts counts), whatever its reason.
    pub fn resets_sent(&self) -> u64 {
        [CounterFamily::ResetSent, CounterFamily::ResetSentLingerZero]
            .into_iter()
            .flat_map(|f| self.family(f))
            .map(|(_, v)| v)
            .sum()
    }

    /// The kernel's ownership tables: what was stored, what did not fit, how often an event
    /// found its socket's owner.
    pub fn owner_tables(&self) -> OwnerTableCounts {
        let t = self.owner_table_counts();
        OwnerTableCounts {
            capacity: t.capacity,
            stored: t.stored,
            full: t.full,
            timewait_capacity: t.timewait_capacity,
            timewait_stored: t.timewait_stored,
            lookups: Lookups {
                found: t.lookups_found,
                not_found: t.lookups_not_found,
            },
        }
    }

    /// The same figures typed, for the metrics endpoint.
    pub fn owner_table_counts(&self) -> OwnerTables {
        use rst_trace_common::{
            OWNERS_CAPACITY, TABLE_LOOKUP_HIT, TABLE_LOOKUP_MISS, TABLE_OWNERS_FULL,
            TABLE_OWNERS_STORED, TABLE_TW_EVICTED, TABLE_TW_STORED, TW_OWNERS_CAPACITY,
        };
        let t = |slot| self.get(CounterFamily::Table, slot);
        OwnerTables {
            capacity: u64::from(OWNERS_CAPACITY),
            stored: t(TABLE_OWNERS_STORED),
            full: t(TABLE_OWNERS_FULL),
            timewait_capacity: u64::from(TW_OWNERS_CAPACITY),
            timewait_stored: t(TABLE_TW_STORED),
            timewait_evicted: t(TABLE_TW_EVICTED),
            lookups_found: t(TABLE_LOOKUP_HIT),
            lookups_not_found: t(TABLE_LOOKUP_MISS),
        }
    }
}

/// The kernel's ownership tables (`sockets.owners` of the stats line). `stored`, `full` and
/// the lookups count events since the agent loaded; the capacities are fixed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnerTables {
    pub capacity: u64,
    /// Owners stored in the per-socket table.
    pub stored: u64,
    /// Owners that did not fit.
    pub full: u64,
    pub timewait_capacity: u64,
    /// Last owners stored for TIME_WAIT tuples.
    pub timewait_stored: u64,
    /// Last owners that took the slot of another connection's still live one.
    pub timewait_evicted: u64,
    /// Events that found their socket's owner in the kernel's tables, and those that did not.
    pub lookups_found: u64,
    pub lookups_not_found: u64,
}

/// Counts the agent keeps itself.
#[derive(Debug, Clone, Default)]
pub struct AgentCounts {
    pub delivered: u64,
    pub undecodable: u64,
    pub suppressed: u64,
    /// Incidents per cause: each kernel event a cause stands for, once.
    pub by_cause: BTreeMap<Cause, u64>,
    /// RSTs this host sent, per cause (an incident may or may not send one).
    pub resets_sent: BTreeMap<Cause, u64>,
}

impl AgentCounts {
    /// Counts one reported event. An accept-queue overflow is one dropped connection whether
    /// or not the kernel also sent an RST for it (`tcp_abort_on_overflow=1`): the RST is tallied
    /// with the RSTs sent, not as a second overflow.
    pub fn tally(&mut self, d: &crate::diagnosis::Diagnosis) {
        use crate::cause::Direction;
        if d.direction == Direction::Sent {
            *self.resets_sent.entry(d.cause).or_insert(0) += d.count;
        }
        if is_incident(d) {
            *self.by_cause.entry(d.cause).or_insert(0) += d.count;
        }
    }
}

/// Whether a diagnosis counts as incidents of its cause: not the RST the kernel sends for an
/// accept-queue overflow (`tcp_abort_on_overflow=1`), which is the same dropped connection.
/// Everything that counts per cause (stats, metrics, `top`) goes by this.
pub fn is_incident(d: &crate::diagnosis::Diagnosis) -> bool {
    !(d.cause == Cause::AcceptQueueOverflow && d.direction == crate::cause::Direction::Sent)
}

/// Per-cause totals that the kernel counters alone determine (the reason decides the cause
/// without looking at the socket). They are exact even when records were lost.
pub fn exact_cause_counts(
    k: &KernelCounters,
    rst: &ReasonNames,
    watched_drops: &[&str],
) -> BTreeMap<Cause, u64> {
    let mut out = BTreeMap::new();
    for family in [CounterFamily::ResetSent, CounterFamily::ResetSentLingerZero] {
        for (slot, n) in k.family(family) {
            let reason = if slot == SLOT_NO_REASON {
                None
            } else {
                rst.name(u64::from(slot))
            };
            let Some(reason) = reason else { continue };
            if matches!(reason, "INVALID_SYN" | "NOT_SPECIFIED") {
                continue; // the cause depends on the socket's state: counted from records
            }
            let (cause, _) = classify_sent_reset(&SentReset {
                reason: Some(reason),
                has_sock: true,
                ..Default::default()
            });
            *out.entry(cause).or_insert(0) += n;
        }
    }
    for (state, n) in k.family(CounterFamily::ResetReceived) {
        *out.entry(classify_received_reset(state)).or_insert(0) += n;
    }
    for (slot, n) in k.family(CounterFamily::SkbDrop) {
        // A netfilter drop is a REJECT when an RST went out for it: decided from records.
        let reason = watched_drops.get(slot as usize).copied();
        if reason == Some("NETFILTER_DROP") {
            continue;
        }
        if let Some(cause) = reason.and_then(classify_drop) {
            *out.entry(cause).or_insert(0) += n;
        }
    }
    for (_, n) in k.family(CounterFamily::ForeignReset) {
        *out.entry(Cause::FirewallReject).or_insert(0) += n;
    }
    for (errno, n) in k.family(CounterFamily::Accept) {
        if errno == 23 || errno == 24 {
            *out.entry(Cause::FdExhaustion).or_insert(0) += n;
        }
    }
    for (errno, n) in k.family(CounterFamily::Connect) {
        if errno == 99 {
            *out.entry(Cause::EphemeralPortExhaustion).or_insert(0) += n;
        }
    }
    out
}

/// Causes whose occurrences come only from records (or from polling), never from a counter
/// that would double-count them: the kernel's number wins where it has one.
pub fn merged_causes(
    exact: &BTreeMap<Cause, u64>,
    agent: &BTreeMap<Cause, u64>,
    reset_sent_ambiguous: bool,
) -> BTreeMap<Cause, u64> {
    let mut out = agent.clone();
    for (cause, n) in exact {
        // Accept-queue overflow is also reported by polling: the agent's own count covers both,
        // the kernel's only the ACK-time drops.
        if *cause == Cause::AcceptQueueOverflow
            || (reset_sent_ambiguous && *cause == Cause::ProtocolViolation)
        {
            continue;
        }
        out.insert(*cause, *n);
    }
    out
}

/// The kernel programs' counters, by family and name (`kernel` of the stats line).
pub fn kernel_counts(
    k: &KernelCounters,
    rst: &ReasonNames,
    watched_drops: &[&str],
) -> KernelCounts {
    let reason = |slot: u32| {
        if slot == SLOT_NO_REASON {
            "NONE".to_owned()
        } else {
            rst.name(u64::from(slot))
                .map_or_else(|| format!("REASON_{slot}"), str::to_owned)
        }
    };
    let fam = |f: CounterFamily, name: &dyn Fn(u32) -> String| -> Counts {
        k.family(f).map(|(s, v)| (name(s), v)).collect()
    };
    let errno = |e: u32| match (e, Errno::try_from(e)) {
        (0, _) => "OK".to_owned(),
        (_, Ok(known)) => known.name().to_owned(),
        (other, Err(_)) => format!("ERRNO_{other}"),
    };
    let kind = |k: u32| {
        u16::try_from(k)
            .ok()
            .and_then(RecordKind::from_u16)
            .map_or_else(|| format!("KIND_{k}"), |k| format!("{k:?}"))
    };
    KernelCounts {
        resets_sent: fam(CounterFamily::ResetSent, &reason),
        resets_sent_linger_zero: fam(CounterFamily::ResetSentLingerZero, &reason),
        resets_received: fam(CounterFamily::ResetReceived, &|s| {
            TcpState::name_of(s).to_owned()
        }),
        drops: fam(CounterFamily::SkbDrop, &|s| {
            watched_drops
                .get(s as usize)
                .map_or_else(|| format!("SLOT_{s}"), |r| (*r).to_owned())
        }),
        accept: fam(CounterFamily::Accept, &errno),
        connect_errors: fam(CounterFamily::Connect, &errno),
        lost_records: fam(CounterFamily::Lost, &kind),
        foreign_resets: k
            .family(CounterFamily::ForeignReset)
            .map(|(_, v)| v)
            .sum::<u64>(),
        skipped_runs: Counts::new(),
    }
}

#[cfg(test)]
mod tests {
    use rst_trace_common::{counter_index, COUNTERS_LEN};

    #[test]
    fn errno_values_are_this_architectures() {
        use rst_trace_common::Errno;
        for (e, libc_value) in [
            (Errno::Enfile, libc::ENFILE),
            (Errno::Emfile, libc::EMFILE),
            (Errno::Eaddrnotavail, libc::EADDRNOTAVAIL),
            (Errno::Econnreset, libc::ECONNRESET),
            (Errno::Etimedout, libc::ETIMEDOUT),
            (Errno::Econnrefused, libc::ECONNREFUSED),
        ] {
            assert_eq!(e.code(), libc_value, "{}", e.name());
        }
    }

    use super::*;

    #[test]
    fn kernel_counters_give_exact_causes() {
        let mut k = KernelCounters {
            values: vec![0; COUNTERS_LEN as usize],
        };
        k.values[counter_index(CounterFamily::ResetSent, 1) as usize] = 5;
        k.values[counter_index(CounterFamily::ResetSent, 10) as usize] = 2; // INVALID_SYN: ambiguous
        k.values[counter_index(CounterFamily::ResetSentLingerZero, 14) as usize] = 3;
        k.values[counter_index(CounterFamily::Accept, 24) as usize] = 7;
        k.values[counter_index(CounterFamily::Accept, 0) as usize] = 100;
        k.values[counter_index(CounterFamily::Lost, 1) as usize] = 4;
        let names = ReasonNames::from_pairs([
            ("NO_SOCKET".into(), 1),
            ("INVALID_SYN".into(), 10),
            ("TCP_STATE".into(), 14),
        ]);
        let c = exact_cause_counts(&k, &names, &["TCP_LISTEN_OVERFLOW"]);
        assert_eq!(c.get(&Cause::NoListener), Some(&5));
        assert_eq!(c.get(&Cause::AbortByApplication), Some(&3));
        assert_eq!(c.get(&Cause::FdExhaustion), Some(&7));
        assert_eq!(c.get(&Cause::ProtocolViolation), None);
        assert_eq!(k.lost(), 4);
        let j = serde_json::to_value(kernel_counts(&k, &names, &[])).expect("json");
        assert_eq!(j["resets_sent"]["NO_SOCKET"], 5);
        assert_eq!(j["accept"]["EMFILE"], 7);
        assert_eq!(j["lost_records"]["ResetSent"], 4);
    }

    #[test]
    fn an_overflow_and_its_rst_are_one_incident_and_one_rst() {
        use crate::cause::{Direction, Origin};
        use crate::diagnosis::Diagnosis;
        let at = std::time::SystemTime::UNIX_EPOCH;
        let ev = |direction| {
            Diagnosis::new(
                at,
                "e",
                Cause::AcceptQueueOverflow,
                direction,
                Origin::TcpStack,
                1,
            )
        };
        let mut c = AgentCounts::default();
        // tcp_abort_on_overflow=1, ACK time: the dropped handshake and the RST answering it.
        c.tally(&ev(Direction::Dropped));
        c.tally(&ev(Direction::Sent));
        // SYN time: a drop with no RST.
        c.tally(&ev(Direction::Dropped));
        assert_eq!(c.by_cause.get(&Cause::AcceptQueueOverflow), Some(&2));
        assert_eq!(c.resets_sent.get(&Cause::AcceptQueueOverflow), Some(&1));
        let mut nl = ev(Direction::Sent);
        nl.cause = Cause::NoListener;
        c.tally(&nl);
        assert_eq!(
            c.by_cause.get(&Cause::NoListener),
            Some(&1),
            "the RST is the incident"
        );
        assert_eq!(c.resets_sent.get(&Cause::NoListener), Some(&1));
    }
}
