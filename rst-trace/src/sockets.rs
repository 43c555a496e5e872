//! The agent's picture of the host's TCP sockets: listeners and connections with their
//! owners, and the recently closed ones (so a later RST can still name who owned the port).
//! Every map is bounded; what does not fit is counted, not silently dropped.
use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::Arc,
};

use crate::{
    owner::Owner,
    records::{Endpoint, Endpoints},
};

pub const MAX_CONNS: usize = 262_144;
pub const MAX_LISTENERS: usize = 65_536;
pub const MAX_CLOSED: usize = 16_384;
/// How long a closed socket's owner is remembered.
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
pub struct ConnEntry {
    pub netns: u32,
    pub endpoints: Option<Endpoints>,
    pub owner: Arc<Owner>,
    pub since_ns: u64,
}

#[derive(Debug, Clone)]
pub struct ClosedListener {
    pub owners: Vec<Arc<Owner>>,
    pub addr: IpAddr,
    pub closed_ns: u64,
}

#[derive(Debug, Clone)]
pub struct ClosedConn {
    pub owner: Arc<Owner>,
    pub since_ns: u64,
    pub closed_ns: u64,
}

#[derive(Debug, Default)]
pub struct SocketTable {
    conns: HashMap<u64, ConnEntry>,
    by_tuple: HashMap<(u32, Endpoints), u64>,
    listeners: HashMap<ListenerKey, Vec<ListenerSock>>,
    listener_by_sk: HashMap<u64, ListenerKey>,
    closed_listeners: HashMap<ListenerKey, ClosedListener>,
    closed_conns: HashMap<(u32, Endpoints), ClosedConn>,
    closed_order: VecDeque<(u64, (u32, Endpoints))>,
    /// Processes seen calling accept() on each listener, most recent last.
    accepters: HashMap<ListenerKey, Vec<(Arc<Owner>, u64)>>,
    /// Entries refused because a map was full.
    pub overflow: u64,
}

impl SocketTable {
    pub fn listen(
        &mut self,
        netns: u32,
        skaddr: u64,
        local: Endpoint,
        owner: Arc<Owner>,
        requested: Option<u32>,
        max: Option<u32>,
        now: u64,
    ) {
        let key = (netns, local.port);
        let Some(group) = self.listener_group(key) else {
            return;
        };
        group.retain(|l| l.skaddr != Some(skaddr));
        group.push(ListenerSock {
            skaddr: Some(skaddr),
            inode: None,
            addr: local.addr,
            owners: vec![owner],
            requested_backlog: requested,
            max_backlog: max,
            since_ns: now,
        });
        self.listener_by_sk.insert(skaddr, key);
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

    pub fn connect(
        &mut self,
        netns: u32,
        skaddr: u64,
        endpoints: Option<Endpoints>,
        owner: Arc<Owner>,
        now: u64,
    ) {
        if self.conns.len() >= MAX_CONNS && !self.conns.contains_key(&skaddr) {
            self.overflow += 1;
            return;
        }
        if let Some(old) = self.conns.insert(
            skaddr,
            ConnEntry {
                netns,
                endpoints,
                owner,
                since_ns: now,
            },
        ) {
            if let Some(e) = old.endpoints {
                self.by_tuple.remove(&(old.netns, e));
            }
        }
        if let Some(e) = endpoints {
            self.by_tuple.insert((netns, e), skaddr);
        }
    }

    /// The handshake finished: the local port is known now.
    pub fn established(&mut self, skaddr: u64, endpoints: Endpoints) {
        if let Some(c) = self.conns.get_mut(&skaddr) {
            c.endpoints = Some(endpoints);
            self.by_tuple.insert((c.netns, endpoints), skaddr);
        }
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
        if let Some(c) = self.conns.remove(&skaddr) {
            if let Some(e) = c.endpoints {
                self.by_tuple.remove(&(c.netns, e));
                if self.closed_conns.len() >= MAX_CLOSED {
                    self.expire_oldest_closed();
                }
                self.closed_conns.insert(
                    (c.netns, e),
                    ClosedConn {
                        owner: c.owner,
                        since_ns: c.since_ns,
                        closed_ns: now,
                    },
                );
                self.closed_order.push_back((now, (c.netns, e)));
            }
        }
    }

    fn expire_oldest_closed(&mut self) {
        if let Some((_, key)) = self.closed_order.pop_front() {
            self.closed_conns.remove(&key);
        }
    }

    /// Forgets closed sockets older than the retention. Walks the closed listeners, so it is
    /// for a periodic tick, not for every event.
    pub fn expire(&mut self, now: u64) {
        while let Some((t, _)) = self.closed_order.front() {
            if now.saturating_sub(*t) < CLOSED_RETENTION_NS {
                break;
            }
            self.expire_oldest_closed();
        }
        self.closed_listeners
            .retain(|_, c| now.saturating_sub(c.closed_ns) < CLOSED_RETENTION_NS);
    }

    pub fn conn(&self, skaddr: u64) -> Option<&ConnEntry> {
        self.conns.get(&skaddr)
    }

    pub fn conn_by_tuple(&self, netns: u32, e: &Endpoints) -> Option<&ConnEntry> {
        self.by_tuple
            .get(&(netns, *e))
            .and_then(|sk| self.conns.get(sk))
    }

    pub fn closed_conn(&self, netns: u32, e: &Endpoints) -> Option<&ClosedConn> {
        self.closed_conns.get(&(netns, *e))
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

    /// Remembers that `owner` called accept() on the listener at `key`.
    pub fn accepted_by(&mut self, key: ListenerKey, owner: Arc<Owner>, now: u64) {
        if self.accepters.len() >= MAX_LISTENERS && !self.accepters.contains_key(&key) {
            self.overflow += 1;
            return;
        }
        let list = self.accepters.entry(key).or_default();
        list.retain(|(o, _)| o.pid != owner.pid);
        list.push((owner, now));
        if list.len() > 16 {
            list.remove(0);
        }
    }

    /// Processes that called accept() on the listener within `window_ns`, most recent first.
    pub fn accepters(&self, key: ListenerKey, now: u64, window_ns: u64) -> Vec<Arc<Owner>> {
        self.accepters
            .get(&key)
            .map(|l| {
                l.iter()
                    .rev()
                    .filter(|(_, t)| now.saturating_sub(*t) <= window_ns)
                    .map(|(o, _)| o.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn all_listeners(&self) -> impl Iterator<Item = (&ListenerKey, &Vec<ListenerSock>)> {
        self.listeners.iter()
    }

    pub fn len(&self) -> (usize, usize) {
        (self.listeners.len(), self.conns.len())
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
        })
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
        t.listen(
            1,
            0xa,
            ep(8080),
            owner(42, "myapp"),
            Some(128),
            Some(128),
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
        t.listen(1, 0xa, ep(80), owner(1, "a"), None, None, 0);
        t.close(0xa, 1);
        t.listen(1, 0xb, ep(80), owner(2, "b"), None, None, 2);
        assert!(t.closed_listener(1, 80).is_none());
    }

    #[test]
    fn discovered_workers_join_the_listener() {
        let mut t = SocketTable::default();
        t.listen(1, 0xa, ep(80), owner(10, "nginx"), Some(511), Some(511), 0);
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
    fn connection_found_by_tuple_after_handshake() {
        let mut t = SocketTable::default();
        t.connect(1, 0xc, None, owner(5, "curl"), 0);
        let e = Endpoints {
            local: ep(40000),
            remote: ep(80),
        };
        assert!(t.conn_by_tuple(1, &e).is_none());
        t.established(0xc, e);
        assert_eq!(t.conn_by_tuple(1, &e).expect("found").owner.pid, 5);
        t.close(0xc, 9);
        assert!(t.conn(0xc).is_none());
        assert_eq!(t.closed_conn(1, &e).expect("closed").owner.pid, 5);
    }

    #[test]
    fn closed_listeners_are_bounded_and_counted() {
        let mut t = SocketTable::default();
        for i in 0..(MAX_CLOSED as u64 + 5) {
            let port = u16::try_from(i % 60_000).unwrap_or(1) + 1;
            let netns = u32::try_from(i / 60_000).unwrap_or(0);
            t.listen(netns, i + 1, ep(port), owner(1, "x"), None, None, 0);
            t.close(i + 1, 1);
        }
        assert_eq!(t.closed_listeners.len(), MAX_CLOSED);
        assert_eq!(t.overflow, 5);
    }

    #[test]
    fn maps_are_bounded() {
        let mut t = SocketTable::default();
        for i in 0..(MAX_CONNS as u64 + 10) {
            t.connect(1, i + 1, None, owner(1, "x"), 0);
        }
        assert_eq!(t.len().1, MAX_CONNS);
        assert_eq!(t.overflow, 10);
    }
}
