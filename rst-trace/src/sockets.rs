//! The agent's picture of the host's listeners with their owners, and the recently closed ones
//! (so a later RST can still name who listened on the port). Connections are not here: their
//! owners live in the kernel (`RST_OWNERS`) and arrive inside the records that need them.
//! Every map is bounded; what does not fit is counted, not silently dropped.
use std::{net::IpAddr, sync::Arc};

use crate::fastmap::FastMap;

use crate::{owner::Owner, records::Endpoint};

pub const MAX_LISTENERS: usize = 65_536;
pub const MAX_CLOSED: usize = 16_384;
/// How long a closed listener's owners are remembered.
pub const CLOSED_RETENTION_NS: u64 = 10 * 60 * 1_000_000_000;

pub type ListenerKey = (u32, u16);

#[derive(Debug, Clone)]
pub struct ListenerSock {
    pub skaddr: Option<u64>,
    pub inode: Option<u64>,
    pub addr: IpAddr,
    pub owners: Vec<Arc<Owner>>,
    pub requested_backlog: Option<u32>,
    pub max_backlog: Option<u32>,
    pub since_ns: u64,
}

#[derive(Debug, Clone)]
pub struct ClosedListener {
    pub owners: Vec<Arc<Owner>>,
    pub addr: IpAddr,
    pub closed_ns: u64,
}

#[derive(Debug, Default)]
pub struct SocketTable {
    listeners: FastMap<ListenerKey, Vec<ListenerSock>>,
    listener_by_sk: FastMap<u64, ListenerKey>,
    closed_listeners: FastMap<ListenerKey, ClosedListener>,
    /// Entries refused because a map was full.
    pub overflow: u64,
}

impl SocketTable {
    /// A socket started listening on `port` in `netns` (its `skaddr` is set).
    pub fn listen(&mut self, netns: u32, port: u16, sock: ListenerSock) {
        let key = (netns, port);
        let Some(group) = self.listener_group(key) else {
            return;
        };
        group.retain(|l| l.skaddr != sock.skaddr);
        let skaddr = sock.skaddr;
        group.push(sock);
        if let Some(sk) = skaddr {
            self.listener_by_sk.insert(sk, key);
        }
        self.closed_listeners.remove(&key);
    }

    /// A listener found in /proc at start-up or by a later scan. Keeps what the kernel
    /// events taught (backlog, skaddr) and adds owners the events could not see (forked
    /// workers share one listening socket).
    pub fn discovered_listener(
        &mut self,
        netns: u32,
        local: Endpoint,
        inode: u64,
        owners: Vec<Arc<Owner>>,
        max: Option<u32>,
        now: u64,
    ) {
        let key = (netns, local.port);
        let Some(group) = self.listener_group(key) else {
            return;
        };
        let existing = group
            .iter_mut()
            .find(|l| l.inode == Some(inode) || (l.inode.is_none() && l.addr == local.addr));
        match existing {
            Some(l) => {
                l.inode = Some(inode);
                for o in owners {
                    if !l.owners.iter().any(|e| e.pid == o.pid) {
                        l.owners.push(o);
                    }
                }
                if l.max_backlog.is_none() {
                    l.max_backlog = max;
                }
            }
            None => group.push(ListenerSock {
                skaddr: None,
                inode: Some(inode),
                addr: local.addr,
                owners,
                requested_backlog: None,
                max_backlog: max,
                since_ns: now,
            }),
        }
    }

    /// The listeners on one port, created if there is room; a full table is counted.
    fn listener_group(&mut self, key: ListenerKey) -> Option<&mut Vec<ListenerSock>> {
        if self.listeners.len() >= MAX_LISTENERS && !self.listeners.contains_key(&key) {
            self.overflow += 1;
            return None;
        }
        Some(self.listeners.entry(key).or_default())
    }

    pub fn close(&mut self, skaddr: u64, now: u64) {
        if let Some(key) = self.listener_by_sk.remove(&skaddr) {
            if let Some(group) = self.listeners.get_mut(&key) {
                if let Some(pos) = group.iter().position(|l| l.skaddr == Some(skaddr)) {
                    let l = group.remove(pos);
                    if self.closed_listeners.len() >= MAX_CLOSED
                        && !self.closed_listeners.contains_key(&key)
                    {
                        // Full: this closed listener is forgotten at once, and counted.
                        self.overflow += 1;
                    } else {
                        self.closed_listeners.insert(
                            key,
                            ClosedListener {
                                owners: l.owners,
                                addr: l.addr,
                                closed_ns: now,
                            },
                        );
                    }
                }
                if group.is_empty() {
                    self.listeners.remove(&key);
                }
            }
        }
    }

    /// The namespace is gone: its listeners with it. Their close may never have been seen (a
    /// record lost in a storm), and no later event can come from there.
    pub fn forget_netns(&mut self, netns: u32) {
        self.listeners.retain(|(n, _), _| *n != netns);
        self.listener_by_sk.retain(|_, (n, _)| *n != netns);
        self.closed_listeners.retain(|(n, _), _| *n != netns);
    }

    /// Forgets closed listeners older than the retention. Walks them all, so it is for a
    /// periodic tick, not for every event.
    pub fn expire(&mut self, now: u64) {
        self.closed_listeners
            .retain(|_, c| now.saturating_sub(c.closed_ns) < CLOSED_RETENTION_NS);
    }

    pub fn listeners(&self, netns: u32, port: u16) -> &[ListenerSock] {
        self.listeners
            .get(&(netns, port))
            .map_or(&[], Vec::as_slice)
    }

    pub fn listener_by_sk(&self, skaddr: u64) -> Option<&ListenerSock> {
        let key = self.listener_by_sk.get(&skaddr)?;
        self.listeners
            .get(key)?
            .iter()
            .find(|l| l.skaddr == Some(skaddr))
    }

    pub fn closed_listener(&self, netns: u32, port: u16) -> Option<&ClosedListener> {
        self.closed_listeners.get(&(netns, port))
    }

    pub fn all_listeners(&self) -> impl Iterator<Item = (&ListenerKey, &Vec<ListenerSock>)> {
        self.listeners.iter()
    }

    /// Ports (per namespace) with at least one listener.
    pub fn listener_ports(&self) -> usize {
        self.listeners.len()
    }

    /// Occupancy of the listener tables, for the stats line; `refused` counts both.
    pub fn figures(&self) -> [crate::occupancy::TableFigure; 2] {
        use crate::occupancy::TableFigure;
        let mut open = TableFigure::new("listeners", self.listeners.len(), MAX_LISTENERS);
        open.refused = Some(self.overflow);
        let closed = TableFigure::new("closed_listeners", self.closed_listeners.len(), MAX_CLOSED);
        [open, closed]
    }

    /// Namespaces with at least one listener.
    pub fn netns_with_listeners(&self) -> impl Iterator<Item = u32> + '_ {
        let mut seen = std::collections::HashSet::new();
        self.listeners
            .keys()
            .map(|(netns, _)| *netns)
            .filter(move |n| seen.insert(*n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owner::Learned;

    fn owner(pid: u32, comm: &str) -> Arc<Owner> {
        Arc::new(Owner {
            pid,
            tid: pid,
            comm: comm.into(),
            cgroup: None,
            container_id: None,
            learned: Learned::Listen,
            learned_at: None,
        })
    }

    /// The table learns a listener as the kernel's listen() record tells it.
    fn listen(
        t: &mut SocketTable,
        netns: u32,
        sk: u64,
        local: Endpoint,
        owner: Arc<Owner>,
        backlog: (Option<u32>, Option<u32>),
        now: u64,
    ) {
        t.listen(
            netns,
            local.port,
            ListenerSock {
                skaddr: Some(sk),
                inode: None,
                addr: local.addr,
                owners: vec![owner],
                requested_backlog: backlog.0,
                max_backlog: backlog.1,
                since_ns: now,
            },
        );
    }

    fn ep(port: u16) -> Endpoint {
        Endpoint {
            addr: "127.0.0.1".parse().expect("ip"),
            port,
        }
    }

    #[test]
    fn closed_listener_is_remembered_with_its_owner() {
        let mut t = SocketTable::default();
        listen(
            &mut t,
            1,
            0xa,
            ep(8080),
            owner(42, "myapp"),
            (Some(128), Some(128)),
            1_000,
        );
        assert_eq!(t.listeners(1, 8080).len(), 1);
        t.close(0xa, 5_000);
        assert!(t.listeners(1, 8080).is_empty());
        let c = t.closed_listener(1, 8080).expect("remembered");
        assert_eq!(c.owners[0].pid, 42);
        assert_eq!(c.closed_ns, 5_000);
        assert!(t.closed_listener(2, 8080).is_none(), "other netns");
        t.expire(5_000 + CLOSED_RETENTION_NS);
        assert!(t.closed_listener(1, 8080).is_none());
    }

    #[test]
    fn a_new_listener_clears_the_closed_record() {
        let mut t = SocketTable::default();
        listen(&mut t, 1, 0xa, ep(80), owner(1, "a"), (None, None), 0);
        t.close(0xa, 1);
        listen(&mut t, 1, 0xb, ep(80), owner(2, "b"), (None, None), 2);
        assert!(t.closed_listener(1, 80).is_none());
    }

    #[test]
    fn discovered_workers_join_the_listener() {
        let mut t = SocketTable::default();
        listen(
            &mut t,
            1,
            0xa,
            ep(80),
            owner(10, "nginx"),
            (Some(511), Some(511)),
            0,
        );
        t.discovered_listener(
            1,
            ep(80),
            777,
            vec![owner(10, "nginx"), owner(11, "nginx")],
            Some(511),
            1,
        );
        let l = &t.listeners(1, 80)[0];
        assert_eq!(
            l.owners.iter().map(|o| o.pid).collect::<Vec<_>>(),
            vec![10, 11]
        );
        assert_eq!(l.requested_backlog, Some(511));
    }

    #[test]
    fn closed_listeners_are_bounded_and_counted() {
        let mut t = SocketTable::default();
        for i in 0..(MAX_CLOSED as u64 + 5) {
            let port = u16::try_from(i % 60_000).unwrap_or(1) + 1;
            let netns = u32::try_from(i / 60_000).unwrap_or(0);
            listen(
                &mut t,
                netns,
                i + 1,
                ep(port),
                owner(1, "x"),
                (None, None),
                0,
            );
            t.close(i + 1, 1);
        }
        assert_eq!(t.closed_listeners.len(), MAX_CLOSED);
        assert_eq!(t.overflow, 5);
    }

    #[test]
    fn listener_ports_are_bounded() {
        let mut t = SocketTable::default();
        for i in 0..(MAX_LISTENERS as u64 + 10) {
            let port = u16::try_from(i % 60_000).unwrap_or(1) + 1;
            let netns = u32::try_from(i / 60_000).unwrap_or(0);
            listen(
                &mut t,
                netns,
                i + 1,
                ep(port),
                owner(1, "x"),
                (None, None),
                0,
            );
        }
        assert_eq!(t.listener_ports(), MAX_LISTENERS);
        assert_eq!(t.overflow, 10);
    }
}
