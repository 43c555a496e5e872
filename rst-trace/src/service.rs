//! Telling a service manager that the agent is ready (systemd `Type=notify`).
//!
//! `rst-trace run` is ready once every hook is attached, the `rst_trace.started` line is
//! written and SIGTERM/SIGINT are handled; a unit with `Type=notify` must not count it as
//! started before then, or a failing attach would look like a crash after a successful start,
//! and a stop sent right after READY=1 would kill it without its final stats line. Outside
//! systemd (no `NOTIFY_SOCKET`) this does nothing.
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("telling the service manager the agent is ready (NOTIFY_SOCKET): {0}")]
    Notify(#[source] std::io::Error),
}

/// Sends `READY=1` (with a one-line status) to `$NOTIFY_SOCKET`; `Ok` without doing anything
/// when the variable is unset.
pub fn try_notify_ready(status: &str) -> Result<(), ServiceError> {
    sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ])
    .map_err(ServiceError::Notify)
}

/// [`try_notify_ready`], logging a failure: the agent keeps running, and systemd reports the
/// start as timed out, which is where an operator looks.
pub fn notify_ready() {
    if let Err(e) = try_notify_ready("observing: every hook attached") {
        log::warn!("{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_notify_socket_it_does_nothing() {
        assert!(
            std::env::var_os("NOTIFY_SOCKET").is_none(),
            "run the unit tests outside a service manager (NOTIFY_SOCKET is set)"
        );
        assert!(try_notify_ready("test").is_ok());
    }
}
