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

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The answers of one pool, counted across its backends (and across reloads: every generation
/// of the pool shares it).
pub(crate) type Answers = Arc<AtomicU64>;

/// The answers a backend may lag by, given its selection weight among the pool's: more than
/// two of its turns, and at least four. A backend with a tenth of the weight gets its turn
/// once in ten answers, so it may lag by twenty.
pub(crate) fn allowed_lag(weight: usize, total_weight: usize) -> u64 {
    (2 * total_weight.max(1).div_ceil(weight.max(1)) as u64).max(4)
}

/// One backend's outstanding attempts and the pool's answer count at its last progress.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    pending: AtomicU32,
    mark: AtomicU64,
}

impl Progress {
    /// An attempt starts.
    pub(crate) fn started(&self, answers: &AtomicU64) {
        if self.pending.fetch_add(1, Ordering::Relaxed) == 0 {
            // Idle until now: its lag counts from here.
            self.mark
                .store(answers.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// An attempt was answered (a response header arrived).
    pub(crate) fn answered(&self, answers: &AtomicU64) {
        decrement(&self.pending);
        let now = answers.fetch_add(1, Ordering::Relaxed) + 1;
        self.mark.store(now, Ordering::Relaxed);
    }

    /// An attempt ended without an answer (a failure, or the client left).
    pub(crate) fn ended(&self) {
        decrement(&self.pending);
    }

    /// Whether the backend has work outstanding and made no progress while the pool answered
    /// more than `lag` times.
    pub(crate) fn lagging(&self, answers: &AtomicU64, lag: u64) -> bool {
        self.pending.load(Ordering::Relaxed) > 0
            && answers
                .load(Ordering::Relaxed)
                .saturating_sub(self.mark.load(Ordering::Relaxed))
                > lag
    }

    /// Attempts outstanding.
    pub(crate) fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }
}

fn decrement(counter: &AtomicU32) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool's answer count and its backends' progress, with lags from the weights.
    struct Pool {
        answers: AtomicU64,
        backends: Vec<(Progress, u64)>,
    }

    impl Pool {
        fn new(weights: &[usize]) -> Pool {
            let total = weights.iter().sum();
            Pool {
                answers: AtomicU64::new(0),
                backends: weights
                    .iter()
                    .map(|w| (Progress::default(), allowed_lag(*w, total)))
                    .collect(),
            }
        }
        fn started(&self, i: usize) {
            self.backends[i].0.started(&self.answers);
        }
        fn answered(&self, i: usize) {
            self.backends[i].0.answered(&self.answers);
        }
        fn ended(&self, i: usize) {
            self.backends[i].0.ended();
        }
        fn lagging(&self, i: usize) -> bool {
            let (p, lag) = &self.backends[i];
            p.lagging(&self.answers, *lag)
        }
        fn pending(&self, i: usize) -> u32 {
            self.backends[i].0.pending()
        }
    }

    #[test]
    fn a_backend_that_never_answers_lags_after_the_pool_answers_enough() {
        let a = Pool::new(&[1, 1, 1]);
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
        let a = Pool::new(&[1, 1]);
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
        let a = Pool::new(&[9, 1]);
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
        let a = Pool::new(&[1, 1]);
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
