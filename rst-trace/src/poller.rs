//! Which namespaces' listen-drop counters to read, and when. SYN-time listen drops have no
//! per-packet hook on every kernel, so their counts come from each namespace's MIB and
//! listeners. Reading them costs a thread, a setns and two sock_diag dumps per namespace, so a
//! namespace is read only after the kernel signalled that one of its listeners needs a look
//! (a queue filling up, a SYN-ACK retransmitted, a per-packet drop): idle namespaces and
//! healthy listeners cost nothing.
use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::{
    listeners::NetnsAccount,
    netns::{inode_of, Netns},
    sockdiag::{self, NetnsSnapshot},
};

/// How long a signal keeps a namespace under watch.
pub const HOT_FOR: Duration = Duration::from_secs(3);
/// Namespaces read in one poll at most; the rest wait for the next tick.
const MAX_PER_POLL: usize = 64;
/// How often namespaces no longer under watch are checked for having gone away: one that
/// was never read again after it cooled down would otherwise keep its account forever.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Namespaces with an account at most: beyond it (thousands of live namespaces each with a
/// listener signalling), a new namespace gets no listen-drop polling, and that is counted.
pub const MAX_ACCOUNTS: usize = 16_384;

pub struct Poller {
    only: Option<Netns>,
    accept_per_packet: bool,
    /// Counter baselines, per namespace seen so far.
    pub accounts: HashMap<u32, NetnsAccount>,
    /// Namespaces that existed when the agent started: the others began with zero counters.
    known_at_start: HashSet<u32>,
    /// A file that enters each namespace (a name under /run/netns or a process's ns/net).
    paths: HashMap<u32, PathBuf>,
    hot_until: HashMap<u32, Instant>,
    last_poll: HashMap<u32, Instant>,
    swept_at: Instant,
    /// Namespaces turned away because [`MAX_ACCOUNTS`] were watched already.
    pub refused: u64,
    /// Namespaces forgotten because they went away.
    pub forgotten: u64,
    /// Those not yet handed to the agent ([`Poller::take_gone`]), so it can drop what it keeps
    /// about them; bounded like the accounts.
    gone: Vec<u32>,
}

/// One namespace's counters and listeners, read off the agent's event loop.
pub struct Reading {
    pub netns: u32,
    pub snapshot: NetnsSnapshot,
    /// Seconds since this namespace was last read.
    pub interval_s: f64,
}

impl Poller {
    /// Takes the baseline of every namespace in scope (all of them, or `only`).
    pub fn start(only: Option<Netns>, accept_per_packet: bool) -> Self {
        let namespaces = match &only {
            Some(ns) => vec![ns.clone()],
            None => Netns::all(),
        };
        Self {
            only,
            accept_per_packet,
            accounts: HashMap::new(),
            known_at_start: namespaces.iter().map(|n| n.inode).collect(),
            paths: namespaces
                .iter()
                .map(|n| (n.inode, n.path.clone()))
                .collect(),
            hot_until: HashMap::new(),
            last_poll: HashMap::new(),
            swept_at: Instant::now(),
            refused: 0,
            forgotten: 0,
            gone: Vec::new(),
        }
    }

    /// Namespaces found gone since the last call.
    pub fn take_gone(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.gone)
    }

    /// Namespaces known to the poller (their baselines and handles), for the stats line.
    pub fn figures(&self) -> crate::occupancy::TableFigure {
        let mut f = crate::occupancy::TableFigure::new(
            "netns_accounts",
            self.accounts.len().max(self.paths.len()),
            MAX_ACCOUNTS,
        );
        f.refused = Some(self.refused);
        f.evicted = Some(self.forgotten);
        f
    }

    /// Forgets namespaces that are gone and no longer under watch (those under watch are
    /// checked when they are read).
    fn sweep(&mut self, now: Instant) {
        if now.duration_since(self.swept_at) < SWEEP_EVERY {
            return;
        }
        self.swept_at = now;
        let cold: Vec<u32> = self
            .paths
            .keys()
            .chain(self.accounts.keys())
            .chain(self.last_poll.keys())
            .filter(|n| !self.hot_until.contains_key(n))
            .copied()
            .collect::<HashSet<u32>>()
            .into_iter()
            .collect();
        for netns in cold {
            let alive = self
                .paths
                .get(&netns)
                .is_some_and(|p| inode_of(p).ok() == Some(netns));
            if !alive {
                // Another way in (a process still living there) keeps the account.
                let _ = self.handle(netns);
            }
        }
    }

    /// The namespaces to read for the baselines, before the agent reports anything.
    pub fn baseline_namespaces(&mut self) -> Vec<Netns> {
        let all: Vec<u32> = self.known_at_start.iter().copied().collect();
        all.into_iter().filter_map(|n| self.handle(n)).collect()
    }

    /// A signal from the kernel about `netns`; `pid` is a process known to live in it.
    pub fn heat(&mut self, netns: u32, pid: Option<u32>) {
        if netns == 0 || self.only.as_ref().is_some_and(|o| o.inode != netns) {
            return;
        }
        if !self.paths.contains_key(&netns)
            && self.paths.len().max(self.accounts.len()) >= MAX_ACCOUNTS
        {
            self.refused += 1;
            return;
        }
        if let std::collections::hash_map::Entry::Vacant(e) = self.paths.entry(netns) {
            if let Some(path) = pid
                .map(|p| PathBuf::from(format!("/proc/{p}/ns/net")))
                .filter(|p| inode_of(p).ok() == Some(netns))
            {
                e.insert(path);
            }
        }
        self.hot_until.insert(netns, Instant::now() + HOT_FOR);
    }

    /// Namespaces to read now: those under watch, at most [`MAX_PER_POLL`].
    pub fn due(&mut self) -> Vec<Netns> {
        let now = Instant::now();
        self.hot_until.retain(|_, until| *until >= now);
        self.sweep(now);
        // Never read yet first (None sorts first), then the longest unread.
        let mut hot: Vec<(u32, Option<Instant>)> = self
            .hot_until
            .keys()
            .map(|n| (*n, self.last_poll.get(n).copied()))
            .collect();
        hot.sort_by_key(|(_, t)| *t);
        hot.truncate(MAX_PER_POLL);
        hot.into_iter()
            .filter_map(|(n, _)| self.handle(n))
            .collect()
    }

    /// Every namespace with a baseline: read once more when the agent stops.
    pub fn everything(&mut self) -> Vec<Netns> {
        let all: Vec<u32> = self.accounts.keys().copied().collect();
        all.into_iter().filter_map(|n| self.handle(n)).collect()
    }

    fn handle(&mut self, netns: u32) -> Option<Netns> {
        if let Some(path) = self.paths.get(&netns) {
            if inode_of(path).ok() == Some(netns) {
                return Some(Netns {
                    inode: netns,
                    path: path.clone(),
                });
            }
        }
        // The process we knew left: look for another way in (rare: a /proc walk).
        let ns = Netns::find_by_inode(netns);
        match &ns {
            Some(ns) => {
                self.paths.insert(netns, ns.path.clone());
            }
            None => self.forget(netns),
        }
        ns
    }

    /// The namespace is gone.
    fn forget(&mut self, netns: u32) {
        if self.accounts.contains_key(&netns) || self.paths.contains_key(&netns) {
            self.forgotten += 1;
            if self.gone.len() < MAX_ACCOUNTS {
                self.gone.push(netns);
            }
        }
        self.paths.remove(&netns);
        self.hot_until.remove(&netns);
        self.accounts.remove(&netns);
        self.last_poll.remove(&netns);
    }

    /// The account of `netns`, created with the right baseline the first time.
    pub fn account(&mut self, netns: u32) -> &mut NetnsAccount {
        let fresh = !self.known_at_start.contains(&netns);
        let per_packet = self.accept_per_packet;
        self.accounts.entry(netns).or_insert_with(|| {
            if fresh {
                NetnsAccount::from_zero(per_packet)
            } else {
                NetnsAccount::new(per_packet)
            }
        })
    }

    /// Seconds since `netns` was last read (0 the first time).
    pub fn interval(&mut self, netns: u32) -> f64 {
        let now = Instant::now();
        self.last_poll
            .insert(netns, now)
            .map_or(0.0, |t| now.duration_since(t).as_secs_f64())
    }

    /// Keeps `netns` under watch: it has a listener near its cap, or its counters moved.
    pub fn keep_hot(&mut self, netns: u32) {
        self.hot_until.insert(netns, Instant::now() + HOT_FOR);
    }
}

/// Reads each namespace from a thread that enters it; run off the event loop.
pub fn read(namespaces: Vec<Netns>) -> Vec<(u32, Result<NetnsSnapshot, String>)> {
    namespaces
        .into_iter()
        .map(|ns| {
            let r = match ns.run(sockdiag::snapshot_here) {
                Ok(Ok(s)) => Ok(s),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            (ns.inode, r)
        })
        .collect()
}
