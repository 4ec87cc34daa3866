//! Failed client handshakes (TLS, HTTP/2 preface): each is counted in
//! `faultline_client_handshake_failures_total{protocol}`, and logged at most once a second per
//! protocol with the number of failures held back since the last line, so that a flood of
//! broken handshakes cannot flood the log.
//!
//! A connection that closes or stays silent before its first byte started no handshake (a port
//! probe, a load balancer's TCP check, a browser's unused preconnection): it is closed without a
//! count or a line, as an HTTP/1 connection that sends nothing is.

use std::fmt;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::metrics::{ClientCounters, Handshake};

/// Why a handshake did not complete.
#[derive(Debug)]
pub(crate) enum HandshakeError {
    /// It started but was not complete within `clients.header_timeout` of the connection's start.
    TimedOut,
    /// The client broke it (garbage, an alert, a close mid-way): Pingora's or rustls' error.
    Failed(Box<pingora::Error>),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::TimedOut => f.write_str("not complete within clients.header_timeout"),
            HandshakeError::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// Log lines of one protocol at most once per `every`, counting the ones held back.
#[derive(Debug)]
pub(crate) struct LogThrottle {
    epoch: Instant,
    every: Duration,
    /// Milliseconds since `epoch` before which no line is written.
    next_ms: AtomicU64,
    held_back: AtomicU64,
}

impl LogThrottle {
    /// A throttle that lets one line through per `every`, starting at `epoch`.
    pub(crate) fn new(epoch: Instant, every: Duration) -> Self {
        LogThrottle {
            epoch,
            every,
            next_ms: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// Whether a line may be written at `now`: `Some(lines held back since the last one)`, or
    /// `None` when this one is held back (and counted).
    pub(crate) fn admit(&self, now: Instant) -> Option<u64> {
        let at = u64::try_from(now.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX);
        let next = self.next_ms.load(Ordering::Relaxed);
        let every = u64::try_from(self.every.as_millis()).unwrap_or(u64::MAX);
        // Only the caller that moves `next_ms` on writes; the others count themselves held back.
        if at >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    at.saturating_add(every),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            Some(self.held_back.swap(0, Ordering::Relaxed))
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// One throttle per protocol, for the whole process (the log is the process's).
static THROTTLES: LazyLock<[LogThrottle; Handshake::ALL.len()]> = LazyLock::new(|| {
    let now = Instant::now();
    std::array::from_fn(|_| LogThrottle::new(now, Duration::from_secs(1)))
});

/// Counts a failed handshake of `protocol` from `peer`, and logs it unless a line about this
/// protocol was written less than a second ago.
pub(crate) fn failed(
    counters: &ClientCounters,
    protocol: Handshake,
    peer: &dyn fmt::Display,
    error: &HandshakeError,
) {
    counters.handshake_failed(protocol);
    if let Some(held_back) = THROTTLES[protocol as usize].admit(Instant::now()) {
        let name = match protocol {
            Handshake::Tls => "TLS handshake",
            Handshake::H2 => "HTTP/2 preface",
        };
        log::warn!(
            "client {name} from {peer} failed: {error} ({held_back} more since the last such line; \
             all are counted in faultline_client_handshake_failures_total)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_with_the_count_held_back() {
        let epoch = Instant::now();
        let t = LogThrottle::new(epoch, Duration::from_secs(1));
        let at = |ms| epoch + Duration::from_millis(ms);
        assert_eq!(t.admit(at(0)), Some(0));
        for ms in [1, 10, 500, 999] {
            assert_eq!(t.admit(at(ms)), None, "at {ms} ms");
        }
        assert_eq!(t.admit(at(1000)), Some(4));
        assert_eq!(t.admit(at(1500)), None);
        // A quiet spell: the next line goes out at once, with what was held back.
        assert_eq!(t.admit(at(60_000)), Some(1));
        assert_eq!(t.admit(at(60_001)), None);
    }
}
