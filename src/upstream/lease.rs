//! What a request holds of an upstream while it runs: a place among the upstream's requests in
//! flight, the outstanding attempt on a backend, the half-open probe of an ejected backend. Each
//! is a value that gives itself back when dropped, so that no path through a request (a failure,
//! a refusal, a client that leaves, a body over the limit) can keep one for ever: the request
//! context drops them at the end of the request at the latest.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use super::answering::Answering;
use super::health::{PassiveHealth, Verdict};

/// A place among an upstream's requests in flight (`max_in_flight`).
#[derive(Debug)]
pub struct InFlight {
    /// The upstream's count; `None` when it has no limit and nothing is counted.
    count: Option<Arc<AtomicU32>>,
}

impl InFlight {
    /// Takes a place from `count` unless `max` are taken; without a limit, always a place.
    pub fn take(count: &Arc<AtomicU32>, max: Option<u32>) -> Option<InFlight> {
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

/// An attempt outstanding on a backend, for [`Answering`]: it ends as answered (a response
/// header came) or, when dropped without that, as ended without an answer.
#[derive(Debug)]
pub struct Pending {
    answering: Option<Arc<Answering>>,
    backend: usize,
}

impl Pending {
    /// An attempt on `backend` starts.
    pub fn start(answering: &Arc<Answering>, backend: usize) -> Pending {
        answering.started(backend);
        Pending {
            answering: Some(answering.clone()),
            backend,
        }
    }

    /// The backend answered: a response header arrived.
    pub fn answered(mut self) {
        if let Some(a) = self.answering.take() {
            a.answered(self.backend);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(a) = self.answering.take() {
            a.ended(self.backend);
        }
    }
}

/// The half-open probe of a backend: the one request whose outcome decides whether its
/// ejection ends. Reported with its verdict, or, when dropped unreported (the request ended
/// before its attempt did), given back so that another request can probe.
#[derive(Debug)]
pub struct Probe {
    health: Option<Arc<PassiveHealth>>,
    backend: usize,
}

impl Probe {
    /// The probe of `backend`, which [`PassiveHealth::admit`] granted.
    pub fn granted(health: &Arc<PassiveHealth>, backend: usize) -> Probe {
        Probe {
            health: Some(health.clone()),
            backend,
        }
    }

    /// The backend it probes.
    pub fn backend(&self) -> usize {
        self.backend
    }

    /// Reports the probe's outcome; returns whether it ejected the backend again.
    pub fn report(mut self, verdict: Verdict) -> bool {
        self.health
            .take()
            .is_some_and(|h| h.record(self.backend, verdict, true))
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(h) = self.health.take() {
            h.release_probe(self.backend);
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
        let answering = Arc::new(Answering::new(&[1, 1]));
        let p = Pending::start(&answering, 0);
        assert_eq!(answering.pending(0), 1);
        p.answered();
        assert_eq!(answering.pending(0), 0);
        let q = Pending::start(&answering, 1);
        drop(q);
        assert_eq!(answering.pending(1), 0);
    }
}
