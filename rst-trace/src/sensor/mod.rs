//! The sensor: the kernel's ring buffer drained and decoded into typed kernel records
//! ([`records::Record`]). It knows nothing of causes; what it decodes goes to the pipeline.
pub mod folds;
pub mod records;

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use records::{DecodeError, Record};

pub struct Sensor {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl Sensor {
    pub fn watch(ring: RingBuf<MapData>) -> std::io::Result<Self> {
        // SAFETY: the AsyncFd owns the RingBuf, and with it the map fd, for as long as the
        // registration lives, so the fd cannot be closed or reused behind tokio's back.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }?;
        Ok(Self { ring })
    }

    /// Waits for the kernel's wake-up (it wakes the agent only once records pile up, see
    /// deliver() in the eBPF crate; the agent also drains on a timer).
    pub async fn woken(&mut self) -> std::io::Result<()> {
        let mut guard = self.ring.readable_mut().await?;
        // Cleared before draining: a record written during the drain then wakes us again,
        // rather than waiting for the timer.
        guard.clear_ready();
        Ok(())
    }

    /// Every record waiting in the ring buffer, decoded, in order.
    pub fn drain(&mut self, mut sink: impl FnMut(Result<Record, DecodeError>)) {
        let rb = self.ring.get_mut();
        while let Some(item) = rb.next() {
            let bytes: &[u8] = &item;
            sink(Record::try_from(bytes));
        }
    }
}
