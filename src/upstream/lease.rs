//! What a request holds of an upstream while it runs: a place among the upstream's requests in
//! flight, the outstanding attempt on a backend, the half-open probe of an ejected backend. Each
//! is a value that gives itself back when dropped, so that no path through a request (a failure,
//! a refusal, a client that leaves, a body over the limit) can keep one for ever: the request
//! context drops them at the end of the request at the latest.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use super::backend::Backend;

/// A place among an upstream's requests in flight (`max_in_flight`).
#[derive(Debug)]
pub(crate) struct InFlight {
    /// The upstream's count; `None` when it has no limit and nothing is counted.
    count: Option<Arc<AtomicU32>>,
}

impl InFlight {
    /// Takes a place from `count` unless `max` are taken; without a limit, always a place.
    pub(crate) fn take(count: &Arc<AtomicU32>, max: Option<u32>) -> Option<InFlight> {
        let Some(max) = max else {
            return Some(InFlight { count: None });
        };
        let before = count.fetch_add(1, Ordering::AcqRel);
        if before >= max {
            count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(InFlight {
            count: Some(count.clone()),
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(count) = &self.count {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// An attempt outstanding on a backend, for answering: it ends as answered (a response header
/// came) or, when dropped without that, as ended without an answer.
#[derive(Debug)]
pub(crate) struct Pending {
    backend: Option<Arc<Backend>>,
}

impl Pending {
    /// An attempt on `backend` starts.
    pub(crate) fn start(backend: &Arc<Backend>) -> Pending {
        backend.started();
        Pending {
            backend: Some(backend.clone()),
        }
    }

    /// The backend answered: a response header arrived.
    pub(crate) fn answered(mut self) {
        if let Some(b) = self.backend.take() {
            b.answered();
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(b) = self.backend.take() {
            b.ended();
        }
    }
}

/// The half-open probe of a backend: the one request whose outcome decides whether its
/// ejection ends. Reported with its verdict, or, when dropped unreported (the request ended
/// before its attempt did), given back so that another request can probe.
#[derive(Debug)]
pub struct Probe {
    backend: Option<Arc<Backend>>,
}

impl Probe {
    /// The probe of `backend`, which its breaker granted.
    pub(crate) fn granted(backend: &Arc<Backend>) -> Probe {
        Probe {
            backend: Some(backend.clone()),
        }
    }

    /// The backend it probes.
    pub(crate) fn backend(&self) -> Option<&Backend> {
        self.backend.as_deref()
    }

    /// Its outcome was reported to the breaker, which ended the probe.
    pub(crate) fn reported(mut self) {
        self.backend = None;
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(b) = self.backend.take() {
            b.breaker().release_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_in_flight_place_comes_back_when_dropped() {
        let count = Arc::new(AtomicU32::new(0));
        let a = InFlight::take(&count, Some(2));
        let b = InFlight::take(&count, Some(2));
        assert!(a.is_some() && b.is_some());
        assert!(InFlight::take(&count, Some(2)).is_none(), "at the limit");
        drop(a);
        assert_eq!(count.load(Ordering::Relaxed), 1);
        assert!(InFlight::take(&count, Some(2)).is_some());
        assert_eq!(
            count.load(Ordering::Relaxed),
            1,
            "the place taken was dropped"
        );
        assert!(InFlight::take(&count, None).is_some());
        assert_eq!(count.load(Ordering::Relaxed), 1, "no limit counts nothing");
    }

    #[test]
    fn a_pending_attempt_ends_once_answered_or_dropped() {
        let pool = super::super::tests::pool(
            "[{ address: \"127.0.0.1:9001\" }, { address: \"127.0.0.1:9002\" }]",
            "",
        );
        let [a, b] = [0, 1].map(|i| pool.backend(i).expect("a backend").clone());
        let p = Pending::start(&a);
        assert_eq!(a.pending(), 1);
        p.answered();
        assert_eq!(a.pending(), 0);
        let q = Pending::start(&b);
        assert_eq!(b.pending(), 1);
        drop(q);
        assert_eq!(b.pending(), 0);
    }

    #[test]
    fn a_probe_dropped_unreported_lets_another_request_probe() {
        let pool = super::super::tests::pool(
            "[{ address: \"127.0.0.1:9001\" }]",
            "    health: { passive: { consecutive_failures: 1, base_ejection: 0s, max_ejected_percent: 100 } }\n",
        );
        pool.record_failure(
            0,
            None,
            false,
            crate::failure::FailureKind::ConnectionRefused,
        );
        let first = pool.select(b"", |_| false).expect("the half-open backend");
        assert!(first.probe.is_some(), "the first request probes");
        assert!(pool.select(b"", |_| false).is_none(), "one probe at a time");
        drop(first);
        let second = pool.select(b"", |_| false).expect("probed again");
        assert!(second.probe.is_some());
    }
}
