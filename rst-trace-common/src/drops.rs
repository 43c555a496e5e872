//! The skb drop reasons the kfree_skb program watches, in counter-slot order: the agent puts
//! their values (from the running kernel's BTF) into [`crate::KernelLayout::drop_reasons`] in
//! this order, and the program counts a drop in [`crate::CounterFamily::SkbDrop`] at the slot
//! of its reason. The order is this enum's, in one place.

/// One watched drop reason; its discriminant is its slot.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WatchedDrop {
    /// The handshake's final ACK found the accept queue full (6.15+).
    TcpListenOverflow = 0,
    /// A netfilter rule dropped the segment.
    NetfilterDrop = 1,
    /// No socket for the segment. The kernel program reports it only for a full listener's
    /// handshake ACK (the SYN-cookie path of an ACK-time overflow).
    NoSocket = 2,
}

impl WatchedDrop {
    /// Every watched reason, in slot order.
    pub const ALL: [WatchedDrop; 3] = [
        WatchedDrop::TcpListenOverflow,
        WatchedDrop::NetfilterDrop,
        WatchedDrop::NoSocket,
    ];

    pub const fn slot(self) -> u32 {
        self as u32
    }

    /// The name in `enum skb_drop_reason`, without its `SKB_DROP_REASON_` prefix.
    pub const fn kernel_name(self) -> &'static str {
        match self {
            WatchedDrop::TcpListenOverflow => "TCP_LISTEN_OVERFLOW",
            WatchedDrop::NetfilterDrop => "NETFILTER_DROP",
            WatchedDrop::NoSocket => "NO_SOCKET",
        }
    }

    pub const fn from_slot(slot: u32) -> Option<WatchedDrop> {
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i] as u32 == slot {
                return Some(Self::ALL[i]);
            }
            i += 1;
        }
        None
    }
}

/// The watched reasons' kernel names, in slot order.
pub const WATCHED_DROP_REASONS: [&str; WatchedDrop::ALL.len()] = {
    let mut names = [""; WatchedDrop::ALL.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = WatchedDrop::ALL[i].kernel_name();
        i += 1;
    }
    names
};

const _: () = {
    assert!(WatchedDrop::ALL.len() <= crate::MAX_DROP_REASONS);
    let mut i = 0;
    while i < WatchedDrop::ALL.len() {
        assert!(WatchedDrop::ALL[i] as usize == i);
        i += 1;
    }
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip() {
        for d in WatchedDrop::ALL {
            assert_eq!(WatchedDrop::from_slot(d.slot()), Some(d));
            assert_eq!(WATCHED_DROP_REASONS[d.slot() as usize], d.kernel_name());
        }
        assert_eq!(WatchedDrop::from_slot(3), None);
    }
}
