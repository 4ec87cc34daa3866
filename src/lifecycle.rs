//! Shutdown as faultline runs it: drain, then exit.
//!
//! Pingora 0.9, on `SIGTERM`, broadcasts its shutdown watch (the accept loops stop and the
//! listening sockets close), then sleeps its whole `grace_period_seconds` whatever is still in
//! flight (`Server::run`, pingora-core `server/mod.rs`), and only then shuts its runtimes down.
//! It offers no way to end that sleep early. faultline therefore:
//!
//! - watches the signals itself (`server::Signals`, given to `Server::run` in place of
//!   Pingora's own watch), so that from the signal on every response carries `Connection: close`
//!   ([`Lifecycle::draining`]) and, on `SIGTERM`, `/readyz` answers 503;
//! - waits, once the client listeners have stopped accepting, until no client connection is
//!   open (the connections' own count), bounded by `server.grace_period_seconds`
//!   ([`Lifecycle::drain`]);
//! - and then, in the binary only, exits the process rather than sleeping out the grace period.
//!
//! `SIGQUIT` (upgrade) goes through the same path after Pingora has handed the listeners over.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::metrics::ClientCounters;

/// faultline's grace period when `server.grace_period_seconds` is not given: the drain must end
/// before Kubernetes' SIGKILL, 30 s after its SIGTERM (Pingora's own default is 300 s).
pub(crate) const DEFAULT_DRAIN_SECONDS: u64 = 25;

/// A connection task Pingora spawned just before its accept loop stopped may not have run yet,
/// and so is not counted; the drain looks again after this long before it ends. (Nothing
/// signals that such a task has started.)
const SETTLE: Duration = Duration::from_millis(50);

/// Longest wait between two looks at the connection count during a drain.
const RECHECK: Duration = Duration::from_millis(100);

/// What signal ended the server's run, if any.
const RUNNING: u8 = 0;
const TERMINATING: u8 = 1;
const UPGRADING: u8 = 2;

/// Readiness and shutdown state.
#[derive(Debug, Default)]
pub struct Lifecycle {
    stopping: AtomicU8,
    ready: AtomicBool,
    /// Set by the binary: exit the process once the drain is over.
    exit_when_drained: AtomicBool,
    /// Set while a drain waits: closing connections then check for the last one.
    waiting: AtomicBool,
    /// Woken when the last client connection closes during a drain.
    idle: Notify,
}

impl Lifecycle {
    /// The first round of active health checks is done: the proxy may take traffic.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Whether `/readyz` answers 200: started and not terminating. An upgrade keeps it: the old
    /// and the new process share the admin listener while both accept, and the service stays.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.terminating()
    }

    /// Whether a shutdown signal came: responses close their connections.
    pub fn draining(&self) -> bool {
        self.stopping.load(Ordering::Relaxed) != RUNNING
    }

    /// Whether the shutdown is a `SIGTERM` (not an upgrade, whose new process has the
    /// listeners).
    pub fn terminating(&self) -> bool {
        self.stopping.load(Ordering::Relaxed) == TERMINATING
    }

    /// A `SIGTERM` (`upgrade: false`) or an upgrade's `SIGQUIT` came.
    pub(crate) fn stopping(&self, upgrade: bool) {
        let to = if upgrade { UPGRADING } else { TERMINATING };
        self.stopping.store(to, Ordering::Relaxed);
    }

    pub(crate) fn exit_when_drained(&self) {
        self.exit_when_drained.store(true, Ordering::Relaxed);
    }

    /// A client connection closed, `still_open` remain.
    pub(crate) fn connection_closed(&self, still_open: usize) {
        if still_open == 0 && self.waiting.load(Ordering::Acquire) {
            self.idle.notify_waiters();
        }
    }

    /// Waits until no client connection is open, `bound` at most; then, in the binary, exits.
    /// Called once the client listeners have stopped accepting.
    pub(crate) async fn drain(&self, clients: &ClientCounters, bound: Duration) {
        self.waiting.store(true, Ordering::Release);
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + bound;
        let drained = async {
            loop {
                let idle = self.idle.notified();
                let mut idle = std::pin::pin!(idle);
                idle.as_mut().enable();
                if clients.open() == 0 {
                    tokio::time::sleep(SETTLE).await;
                    if clients.open() == 0 {
                        return;
                    }
                    continue;
                }
                // A close that raced the start of the wait (the count and the flag are not
                // one atomic step) is caught by the next look.
                let _ = tokio::time::timeout(RECHECK, idle).await;
            }
        };
        let complete = tokio::time::timeout_at(deadline, drained).await.is_ok();
        if complete {
            log::info!("drained in {:?}", started.elapsed());
        } else {
            log::warn!(
                "{} client connections still open after the grace period of {bound:?}; closing them",
                clients.open()
            );
        }
        if self.exit_when_drained.load(Ordering::Relaxed) {
            // Pingora would sleep out the rest of its grace period (`Server::run`); nothing is
            // left to wait for.
            std::process::exit(0);
        }
    }
}
