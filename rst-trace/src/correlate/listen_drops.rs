//! Listener drops already reported per packet, kept until the poller's next reading of the
//! same namespace, so the poller reports only the drops no per-packet hook saw.
use crate::occupancy::TableFigure;
use std::collections::HashMap;

/// (netns, port) pairs tracked at once; the poller drains them every interval, so only a
/// stalled poller reaches this.
const MAX_PORTS: usize = 65_536;

#[derive(Default)]
pub struct ListenDropLedger {
    /// ACK-time accept-queue overflows, per (netns, port).
    ack_time: HashMap<(u32, u16), u64>,
    /// SYN-queue overflows, per (netns, port).
    syn_queue: HashMap<(u32, u16), u64>,
}

fn add(map: &mut HashMap<(u32, u16), u64>, key: (u32, u16)) {
    if map.len() >= MAX_PORTS && !map.contains_key(&key) {
        // Dropping the ledger makes the poller report these drops again, as aggregates:
        // counted twice in events, never lost.
        map.clear();
    }
    *map.entry(key).or_insert(0) += 1;
}

fn take(map: &mut HashMap<(u32, u16), u64>, netns: u32) -> HashMap<u16, u64> {
    let keys: Vec<(u32, u16)> = map.keys().filter(|(n, _)| *n == netns).copied().collect();
    keys.into_iter()
        .filter_map(|k| map.remove(&k).map(|v| (k.1, v)))
        .collect()
}

impl ListenDropLedger {
    /// How full its two ledgers are, for the stats line.
    pub fn figures(&self) -> [TableFigure; 2] {
        [
            TableFigure::new("ack_time_drops", self.ack_time.len(), MAX_PORTS),
            TableFigure::new("syn_queue_drops", self.syn_queue.len(), MAX_PORTS),
        ]
    }

    pub fn ack_time_drop(&mut self, netns: u32, port: u16) {
        add(&mut self.ack_time, (netns, port));
    }

    pub fn syn_queue_drop(&mut self, netns: u32, port: u16) {
        add(&mut self.syn_queue, (netns, port));
    }

    /// ACK-time drops reported per packet in `netns` since the last call, by port.
    pub fn take_ack_time(&mut self, netns: u32) -> HashMap<u16, u64> {
        take(&mut self.ack_time, netns)
    }

    /// SYN-queue overflows reported per packet in `netns` since the last call.
    pub fn take_syn_queue(&mut self, netns: u32) -> u64 {
        take(&mut self.syn_queue, netns).values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_namespace_is_drained_on_its_own() {
        let mut l = ListenDropLedger::default();
        l.ack_time_drop(1, 80);
        l.ack_time_drop(1, 80);
        l.ack_time_drop(2, 80);
        l.syn_queue_drop(1, 81);
        assert_eq!(l.take_ack_time(1), HashMap::from([(80, 2)]));
        assert!(l.take_ack_time(1).is_empty());
        assert_eq!(l.take_ack_time(2), HashMap::from([(80, 1)]));
        assert_eq!(l.take_syn_queue(2), 0);
        assert_eq!(l.take_syn_queue(1), 1);
    }
}
