//! fd_exhaustion incidents: accept() failing with EMFILE/ENFILE on one listener is one
//! incident, and that incident explains the listener's accept-queue overflows while it lasts.
use crate::fastmap::FastMap;
use crate::occupancy::TableFigure;

/// An fd_exhaustion incident on a listener explains its overflows for this long.
pub const FD_INCIDENT_WINDOW_NS: u64 = 30_000_000_000;
/// Listeners tracked at once; beyond it the oldest incidents are forgotten first.
const MAX_INCIDENTS: usize = 4096;

/// An ongoing fd exhaustion on one listener.
#[derive(Debug, Clone, PartialEq)]
pub struct FdIncident {
    pub id: String,
    pub pid: u32,
    pub comm: String,
    pub first_ns: u64,
    pub last_ns: u64,
    pub failures: u64,
}

#[derive(Default)]
pub struct FdIncidents {
    by_listener: FastMap<(u32, u16), FdIncident>,
}

impl FdIncidents {
    /// How full it is, for the stats line.
    pub fn figure(&self) -> TableFigure {
        TableFigure::new("fd_incidents", self.by_listener.len(), MAX_INCIDENTS)
    }

    /// One more accept() failure on (netns, port): the incident it belongs to, a new one when
    /// the last failure is older than the window.
    pub fn failure(
        &mut self,
        now: u64,
        netns: u32,
        port: u16,
        pid: u32,
        comm: &str,
    ) -> &FdIncident {
        if self.by_listener.len() >= MAX_INCIDENTS && !self.by_listener.contains_key(&(netns, port))
        {
            self.expire(now);
            if self.by_listener.len() >= MAX_INCIDENTS {
                self.by_listener.clear();
            }
        }
        let new_id = || format!("fd_exhaustion:{netns}:{port}:{pid}:{now}");
        let incident = self
            .by_listener
            .entry((netns, port))
            .or_insert_with(|| FdIncident {
                id: new_id(),
                pid,
                comm: comm.to_owned(),
                first_ns: now,
                last_ns: now,
                failures: 0,
            });
        if now.saturating_sub(incident.last_ns) > FD_INCIDENT_WINDOW_NS {
            incident.id = new_id();
            incident.first_ns = now;
            incident.failures = 0;
        }
        incident.last_ns = now;
        incident.failures += 1;
        incident
    }

    /// The live incident on a listener, if any.
    pub fn live(&self, now: u64, netns: u32, port: u16) -> Option<&FdIncident> {
        let i = self.by_listener.get(&(netns, port))?;
        (now.saturating_sub(i.last_ns) <= FD_INCIDENT_WINDOW_NS).then_some(i)
    }

    /// Forgets incidents past their window.
    pub fn expire(&mut self, now: u64) {
        self.by_listener
            .retain(|_, i| now.saturating_sub(i.last_ns) <= FD_INCIDENT_WINDOW_NS);
    }

    pub fn len(&self) -> usize {
        self.by_listener.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_listener.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, FakeClock};

    #[test]
    fn failures_within_the_window_are_one_incident() {
        let clock = FakeClock::at(1_000);
        let mut f = FdIncidents::default();
        let first = f.failure(clock.now_ns(), 1, 80, 7, "app").id.clone();
        clock.set(1_000 + FD_INCIDENT_WINDOW_NS);
        let i = f.failure(clock.now_ns(), 1, 80, 7, "app");
        assert_eq!((i.id.clone(), i.failures), (first.clone(), 2));
        assert!(f.live(clock.now_ns(), 1, 80).is_some());
        assert!(f.live(clock.now_ns(), 1, 81).is_none());
        clock.set(clock.now_ns() + FD_INCIDENT_WINDOW_NS + 1);
        assert!(
            f.live(clock.now_ns(), 1, 80).is_none(),
            "over: no longer explains"
        );
        let i = f.failure(clock.now_ns(), 1, 80, 7, "app");
        assert_ne!(i.id, first, "a new incident after the window");
        assert_eq!(i.failures, 1);
        clock.set(clock.now_ns() + FD_INCIDENT_WINDOW_NS + 1);
        f.expire(clock.now_ns());
        assert!(f.is_empty());
    }
}
