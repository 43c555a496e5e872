//! Kernel arrays (`BPF_F_MMAPABLE`) read, and written, through shared mappings of a window at
//! a time. Mapping an array whole would put all of it in the agent's resident set while it is
//! read (the kernel maps every page at `mmap`); reading it by syscall would take one per value.
use std::{num::NonZeroUsize, os::fd::AsFd, ptr::NonNull};

use aya::maps::MapData;
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

/// Bytes mapped at a time: whole pages and whole values, about 512 KiB.
const WINDOW_BYTES: usize = 512 * 1024;

/// An array map of `entries` values of `value_size` bytes each.
pub struct MappedArray {
    name: &'static str,
    map: MapData,
    value_size: usize,
    total: usize,
    window: usize,
}

impl MappedArray {
    /// `None` (said at debug level) when the page size cannot be read or the sizes overflow.
    pub fn new(
        name: &'static str,
        map: MapData,
        value_size: usize,
        entries: usize,
    ) -> Option<Self> {
        let page = usize::try_from(nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok()??)
            .ok()?;
        // The kernel lays an array's values out 8-byte aligned.
        if value_size == 0 || !value_size.is_multiple_of(8) {
            log::debug!("{name}: values of {value_size} bytes are not laid out back to back");
            return None;
        }
        let total = entries.checked_mul(value_size)?;
        let unit = lcm(page, value_size)?;
        Some(Self {
            name,
            map,
            value_size,
            total,
            window: unit * (WINDOW_BYTES / unit).max(1),
        })
    }

    /// Maps each window in turn (`writable`: read-write, else read-only) and hands `f` its
    /// base and how many values it holds. The kernel writes
    /// values under the mapping: `f` reads them volatile and judges them by their content.
    pub fn for_each_window(
        &self,
        writable: bool,
        mut f: impl FnMut(NonNull<u8>, usize),
    ) -> nix::Result<()> {
        let prot = if writable {
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
        } else {
            ProtFlags::PROT_READ
        };
        for offset in (0..self.total).step_by(self.window) {
            let bytes = self.window.min(self.total - offset);
            let Some(len) = NonZeroUsize::new(bytes) else {
                break;
            };
            let at = libc::off_t::try_from(offset).map_err(|_| nix::Error::EOVERFLOW)?;
            // SAFETY: a shared mapping of the map's values, unmapped below; nothing of it is
            // kept past `f`.
            let base = unsafe {
                mmap(
                    None,
                    len,
                    prot,
                    MapFlags::MAP_SHARED,
                    self.map.fd().as_fd(),
                    at,
                )?
            };
            f(base.cast(), bytes / self.value_size);
            // SAFETY: the mapping made above, no longer used.
            if let Err(e) = unsafe { munmap(base, bytes) } {
                log::debug!("unmapping {}: {e}", self.name);
            }
        }
        Ok(())
    }
}

/// Least common multiple (`None` on overflow): the smallest window of whole pages and whole
/// values.
fn lcm(a: usize, b: usize) -> Option<usize> {
    let (mut x, mut y) = (a, b);
    while y != 0 {
        (x, y) = (y, x % y);
    }
    (a / x.max(1)).checked_mul(b)
}

#[cfg(test)]
mod tests {
    use super::lcm;

    #[test]
    fn a_window_unit_is_whole_pages_and_whole_values() {
        use rst_trace_common::{fold::FoldSlot, OwnerSet, TwSet};
        assert_eq!(lcm(4096, std::mem::size_of::<TwSet>()), Some(4096));
        assert_eq!(lcm(4096, std::mem::size_of::<OwnerSet>()), Some(45_056));
        assert_eq!(lcm(4096, std::mem::size_of::<FoldSlot>()), Some(4096 * 13));
        assert_eq!(lcm(65_536, 704), Some(720_896));
        assert_eq!(lcm(4096, 512), Some(4096));
        assert_eq!(lcm(65536, 104), Some(65536 * 13));
        assert_eq!(lcm(usize::MAX, 2), None);
    }
}
