//! The kernel programs' own diagnostics (aya-log): the level they log at, and the reader that
//! forwards their records to this process's logger under the target
//! [`KERNEL_LOG_TARGET`]. Off unless the log filter (`--log-level`, `RUST_LOG`) enables that
//! target: then the programs are loaded with level 0, which makes every log call dead code the
//! verifier removes, and no reader is attached.
use anyhow::Context as _;
use aya::Ebpf;
use log::{Level, Metadata};
use rst_trace_common::names::KERNEL_LOG_TARGET;
use tokio::io::{unix::AsyncFd, Interest};

/// The most verbose level the logger takes for the kernel target, in aya-log's numbering
/// (Error 1 … Trace 5), or 0 when it takes none.
pub fn level() -> u8 {
    [
        (5, Level::Trace),
        (4, Level::Debug),
        (3, Level::Info),
        (2, Level::Warn),
        (1, Level::Error),
    ]
    .into_iter()
    .find(|(_, level)| {
        log::logger().enabled(
            &Metadata::builder()
                .target(KERNEL_LOG_TARGET)
                .level(*level)
                .build(),
        )
    })
    .map_or(0, |(n, _)| n)
}

/// Forwards the kernel programs' log records to the logger until the runtime ends. Needs a
/// tokio runtime.
pub fn spawn_reader(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let logger = aya_log::EbpfLogger::init(ebpf).context("opening the kernel log buffer")?;
    // SAFETY: the AsyncFd owns the logger, and with it the map fd, for as long as the
    // registration lives, so the fd cannot be closed or reused behind tokio's back.
    let mut logger = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .context("watching the kernel log buffer")?;
    tokio::spawn(async move {
        loop {
            match logger.readable_mut().await {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(e) => {
                    log::warn!("kernel log buffer: {e}; kernel diagnostics stop here");
                    break;
                }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn off_without_a_logger() {
        // No logger is installed in unit tests: nothing takes the kernel target.
        assert_eq!(super::level(), 0);
    }
}
