//! systemd integration for both daemons: readiness (`READY=1`), reloads, stops, a watchdog
//! pinged from the runtime itself, and the listener's socket activation. Every call is a
//! no-op when not started by systemd (`NOTIFY_SOCKET` / `LISTEN_FDS` unset).

use std::time::Duration;

use sd_notify::NotifyState;

/// The socket systemd passed (fd 3, checked against `LISTEN_PID`), if any.
///
/// Call from a plain `fn main` before the runtime starts: it edits the environment.
///
/// # Errors
/// A passed descriptor that is not a TCP listener.
pub fn activated_listener() -> std::io::Result<Option<std::net::TcpListener>> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    let listener = fds.take_tcp_listener(0)?;
    if let Some(l) = &listener {
        // tokio requires non-blocking sockets; a release build would silently block on one.
        l.set_nonblocking(true)?;
    }
    Ok(listener)
}

fn send(state: &[NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(state) {
        tracing::warn!(error = %err, "cannot notify systemd");
    }
}

/// Startup finished; `status` is shown by `systemctl status`.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Reloading the configuration (send [`ready`] after).
pub fn reloading() {
    send(&[NotifyState::Reloading]);
}

/// Shutting down.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// When systemd asks for a watchdog (`WatchdogSec=`), pings it at half the interval from a
/// task on the runtime: if the runtime wedges, the pings stop and systemd restarts us.
pub fn spawn_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let interval = sd_notify::watchdog_enabled()?;
    let every = (interval / 2).max(Duration::from_millis(100));
    tracing::info!(every = ?every, "systemd watchdog enabled");
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    }))
}
