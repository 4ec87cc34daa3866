//! Which backends are answering. A backend that has requests outstanding while the rest of its
//! pool has answered many times over is *lagging*; selection passes it over while another
//! backend can take the request.
//!
//! A backend that accepts connections and never answers is otherwise found only when its first
//! request times out, and until then it keeps receiving its share of new requests, each one
//! stuck for the whole timeout (nginx and HAProxy behave so). Counting the pool's answers since
//! a backend last made progress finds it within a handful of requests, at any request rate, with
//! no time constant to tune: lag is measured in answers, not seconds. A lagging backend is never
//! refused outright: it is only skipped while a backend that answers exists, and it takes
//! requests again as soon as its outstanding ones end, which is also how it recovers.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// One backend's outstanding attempts, the pool's answer count at its last progress, and the
/// answers it may lag by.
#[derive(Debug)]
struct Backend {
    pending: AtomicU32,
    mark: AtomicU64,
    lag: u64,
}

/// Progress of the backends of one pool.
#[derive(Debug)]
pub struct Answering {
    answered: AtomicU64,
    backends: Box<[Backend]>,
}

impl Answering {
    /// For a pool of backends with these selection weights. A backend lags once the pool
    /// answered more than two of its turns (and at least four times) since it last made
    /// progress with work outstanding: a backend with a tenth of the weight gets its turn once
    /// in ten answers, so it may lag by twenty.
    pub fn new(weights: &[usize]) -> Self {
        let total: usize = weights.iter().map(|w| (*w).max(1)).sum();
        Answering {
            answered: AtomicU64::new(0),
            backends: weights
                .iter()
                .map(|w| Backend {
                    pending: AtomicU32::new(0),
                    mark: AtomicU64::new(0),
                    lag: (2 * total.div_ceil((*w).max(1)) as u64).max(4),
                })
                .collect(),
        }
    }

    /// An attempt on backend `i` starts.
    pub fn started(&self, i: usize) {
        if let Some(b) = self.backends.get(i)
            && b.pending.fetch_add(1, Ordering::Relaxed) == 0
        {
            // Idle until now: its lag counts from here.
            b.mark
                .store(self.answered.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// Backend `i` answered an attempt (a response header arrived).
    pub fn answered(&self, i: usize) {
        if let Some(b) = self.backends.get(i) {
            decrement(&b.pending);
            let now = self.answered.fetch_add(1, Ordering::Relaxed) + 1;
            b.mark.store(now, Ordering::Relaxed);
        }
    }

    /// An attempt on backend `i` ended without an answer (a failure, or the client left).
    pub fn ended(&self, i: usize) {
        if let Some(b) = self.backends.get(i) {
            decrement(&b.pending);
        }
    }

    /// Whether backend `i` has work outstanding and made no progress while the pool answered
    /// more than the lag allows.
    pub fn lagging(&self, i: usize) -> bool {
        let Some(b) = self.backends.get(i) else {
            return false;
        };
        b.pending.load(Ordering::Relaxed) > 0
            && self
                .answered
                .load(Ordering::Relaxed)
                .saturating_sub(b.mark.load(Ordering::Relaxed))
                > b.lag
    }

    /// Attempts outstanding on backend `i`.
    pub fn pending(&self, i: usize) -> u32 {
        self.backends
            .get(i)
            .map_or(0, |b| b.pending.load(Ordering::Relaxed))
    }
}

fn decrement(counter: &AtomicU32) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_that_never_answers_lags_after_the_pool_answers_enough() {
        let a = Answering::new(&[1, 1, 1]);
        a.started(1);
        for _ in 0..6 {
            a.started(0);
            a.answered(0);
            assert!(!a.lagging(1), "not yet: the pool answered only a few times");
        }
        a.started(0);
        a.answered(0);
        assert!(a.lagging(1));
        assert!(!a.lagging(0));
        // Its stuck request ends (a timeout): nothing outstanding, so not lagging.
        a.ended(1);
        assert!(!a.lagging(1));
        assert_eq!(a.pending(1), 0);
    }

    #[test]
    fn busy_backends_that_answer_never_lag() {
        let a = Answering::new(&[1, 1]);
        // Both always have work outstanding, and both answer in turn.
        a.started(0);
        a.started(1);
        for _ in 0..1000 {
            a.started(0);
            a.answered(0);
            a.started(1);
            a.answered(1);
            assert!(!a.lagging(0) && !a.lagging(1));
        }
    }

    #[test]
    fn a_light_backend_may_lag_by_more() {
        // Weights 9 and 1: the light backend gets one turn in ten answers.
        let a = Answering::new(&[9, 1]);
        a.started(1);
        for _ in 0..20 {
            a.started(0);
            a.answered(0);
        }
        assert!(!a.lagging(1));
        a.started(0);
        a.answered(0);
        assert!(a.lagging(1));
    }

    #[test]
    fn an_idle_backend_starts_afresh() {
        let a = Answering::new(&[1, 1]);
        for _ in 0..100 {
            a.started(0);
            a.answered(0);
        }
        a.started(1);
        assert!(
            !a.lagging(1),
            "its lag counts from its first outstanding attempt"
        );
        assert_eq!(a.pending(1), 1);
        // Counters never go below zero, whatever the order of events.
        a.ended(1);
        a.ended(1);
        assert_eq!(a.pending(1), 0);
    }
}
