//! Passive health (outlier detection) of the backends of one pool, fed by every attempt.
//!
//! `consecutive_failures` gateway failures in a row, or (when configured) a failure rate over a
//! window with a minimum number of attempts, eject a backend for `base_ejection` × the number of
//! its ejections, capped at `max_ejection`, lengthened by up to a tenth at random so that
//! ejected backends do not all return at once. No more than `max_ejected_percent` of the
//! pool is ever ejected. When an ejection ends, the backend is half-open: one probe request is
//! let through, and its outcome either closes the breaker or ejects it again, for longer. An
//! active health-check success ends an ejection early. Origin statuses count as failures only
//! when listed in `failure_statuses`; client aborts never count.
//!
//! The state is a handful of atomics per backend: selection reads it on every request without a
//! lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;

use super::window::{self, Window};
use crate::config::PassiveHealth as Settings;

/// Why a backend was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `consecutive_failures` in a row.
    ConsecutiveFailures,
    /// The failure rate over the window.
    FailureRate,
    /// The half-open probe failed.
    ProbeFailed,
}

impl Reason {
    /// Every reason, in index order.
    pub const ALL: [Reason; 3] = [
        Reason::ConsecutiveFailures,
        Reason::FailureRate,
        Reason::ProbeFailed,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ConsecutiveFailures => "consecutive_failures",
            Reason::FailureRate => "failure_rate",
            Reason::ProbeFailed => "probe_failed",
        }
    }
}

/// Milliseconds since the process started (never 0, which means "not ejected").
fn now_ms() -> u64 {
    window::now_ms() + 1
}

/// Where a backend stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Takes traffic.
    Healthy,
    /// Takes no traffic for this long yet.
    Ejected(Duration),
    /// The ejection ended; the next request is a probe (or a probe is under way).
    HalfOpen,
}

impl State {
    /// The `/status` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Ejected(_) => "ejected",
            State::HalfOpen => "half_open",
        }
    }
}

/// The passive-health state of one backend. Shared through an `Arc`, so a reload that keeps
/// the backend keeps its state (an ejected backend stays ejected).
#[derive(Debug, Default)]
pub struct BackendState {
    consecutive: AtomicU32,
    ejections: AtomicU32,
    /// `now_ms()` at which the ejection ends; 0 when not ejected.
    ejected_until: AtomicU64,
    /// When the last ejection was closed by a success, to forget old ejections.
    recovered_at: AtomicU64,
    probing: AtomicBool,
    ejections_by: [AtomicU64; Reason::ALL.len()],
    /// (attempts, failures) over the failure-rate window, when configured.
    window: Option<Window>,
}

/// What an attempt meant for its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The backend worked.
    Success,
    /// The backend failed (a gateway failure, or a status in `failure_statuses`).
    Failure,
    /// Says nothing about the backend (the client went away, the proxy failed).
    Neutral,
}

/// Passive health of one pool.
#[derive(Debug)]
pub struct PassiveHealth {
    settings: Option<Settings>,
    backends: Vec<Arc<BackendState>>,
}

impl PassiveHealth {
    /// Fresh state for `n` backends; without settings every backend stays healthy.
    pub fn new(settings: Option<Settings>, n: usize) -> Self {
        Self::with_states(settings, (0..n).map(|_| None).collect())
    }

    /// State for backends that keep the given state (`Some`) or start fresh (`None`).
    pub fn with_states(settings: Option<Settings>, states: Vec<Option<Arc<BackendState>>>) -> Self {
        let window = settings
            .as_ref()
            .and_then(|s| s.failure_rate.as_ref())
            .map(|r| r.window);
        let backends = states
            .into_iter()
            .map(|kept| {
                kept.unwrap_or_else(|| {
                    Arc::new(BackendState {
                        window: window.map(Window::new),
                        ..BackendState::default()
                    })
                })
            })
            .collect();
        PassiveHealth { settings, backends }
    }

    /// The state of backend `i`, to carry over into a reloaded pool.
    pub fn backend_state(&self, i: usize) -> Option<Arc<BackendState>> {
        self.backends.get(i).cloned()
    }

    /// Whether origin `status` counts as a failure of its backend.
    pub fn is_failure_status(&self, status: u16) -> bool {
        self.settings
            .as_ref()
            .is_some_and(|s| s.failure_statuses.contains(&status))
    }

    /// The state of backend `i`.
    pub fn state(&self, i: usize) -> State {
        let Some(b) = self.backends.get(i) else {
            return State::Healthy;
        };
        match b.ejected_until.load(Ordering::Acquire) {
            0 => State::Healthy,
            until => {
                let now = now_ms();
                if now < until {
                    State::Ejected(Duration::from_millis(until - now))
                } else {
                    State::HalfOpen
                }
            }
        }
    }

    /// Failures in a row of backend `i`.
    pub fn consecutive_failures(&self, i: usize) -> u32 {
        self.backends
            .get(i)
            .map_or(0, |b| b.consecutive.load(Ordering::Relaxed))
    }

    /// Ejections of backend `i` since it started.
    pub fn ejections_total(&self, i: usize) -> u64 {
        Reason::ALL.iter().map(|r| self.ejections(i, *r)).sum()
    }

    /// Ejections of backend `i` for `reason`.
    pub fn ejections(&self, i: usize, reason: Reason) -> u64 {
        self.backends.get(i).map_or(0, |b| {
            b.ejections_by[reason as usize].load(Ordering::Relaxed)
        })
    }

    /// Whether backend `i` may take this request. Returns `Some(true)` when the request is the
    /// half-open probe (the caller must report its outcome), `Some(false)` for an ordinary
    /// admission, `None` when the backend is ejected or its probe is already under way.
    pub fn admit(&self, i: usize) -> Option<bool> {
        let b = self.backends.get(i)?;
        match self.state(i) {
            State::Healthy => Some(false),
            State::Ejected(_) => None,
            State::HalfOpen => b
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
                .then_some(true),
        }
    }

    /// Records the outcome of an attempt on backend `i`; `probe` when it was the half-open probe.
    /// Returns true when this outcome ejected the backend.
    pub fn record(&self, i: usize, verdict: Verdict, probe: bool) -> bool {
        let (Some(s), Some(b)) = (&self.settings, self.backends.get(i)) else {
            return false;
        };
        let ejected = match verdict {
            Verdict::Success => {
                if let Some(w) = &b.window {
                    w.add(1, 0);
                }
                b.consecutive.store(0, Ordering::Relaxed);
                if probe {
                    self.close(b);
                }
                false
            }
            Verdict::Failure => {
                if let Some(w) = &b.window {
                    w.add(1, 1);
                }
                let n = b.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
                if probe {
                    // The probe failed: straight back out, for longer.
                    self.eject(s, b, Reason::ProbeFailed)
                } else if b.ejected_until.load(Ordering::Acquire) != 0 {
                    false
                } else if n >= s.consecutive_failures {
                    self.eject(s, b, Reason::ConsecutiveFailures)
                } else if Self::rate_breached(s, b) {
                    self.eject(s, b, Reason::FailureRate)
                } else {
                    false
                }
            }
            Verdict::Neutral => false,
        };
        if probe {
            b.probing.store(false, Ordering::Release);
        }
        ejected
    }

    /// Gives back a probe whose attempt never reported an outcome.
    pub fn release_probe(&self, i: usize) {
        if let Some(b) = self.backends.get(i) {
            b.probing.store(false, Ordering::Release);
        }
    }

    /// An active health check succeeded: any ejection of backend `i` ends now.
    pub fn active_success(&self, i: usize) {
        if let Some(b) = self.backends.get(i)
            && b.ejected_until.load(Ordering::Acquire) != 0
        {
            b.consecutive.store(0, Ordering::Relaxed);
            self.close(b);
        }
    }

    /// Time until the first ejected backend comes back, if any is ejected.
    pub fn next_return(&self) -> Option<Duration> {
        (0..self.backends.len())
            .filter_map(|i| match self.state(i) {
                State::Ejected(left) => Some(left),
                _ => None,
            })
            .min()
    }

    fn close(&self, b: &BackendState) {
        b.ejected_until.store(0, Ordering::Release);
        b.recovered_at.store(now_ms(), Ordering::Relaxed);
    }

    fn ejected_count(&self) -> usize {
        self.backends
            .iter()
            .filter(|b| b.ejected_until.load(Ordering::Acquire) != 0)
            .count()
    }

    fn rate_breached(s: &Settings, b: &BackendState) -> bool {
        let (Some(rate), Some(w)) = (&s.failure_rate, &b.window) else {
            return false;
        };
        let (attempts, failures) = w.totals();
        attempts >= rate.min_requests && failures * 100 >= u64::from(rate.percent) * attempts
    }

    fn eject(&self, s: &Settings, b: &BackendState, reason: Reason) -> bool {
        let already_out = reason == Reason::ProbeFailed;
        // The cap counts this backend as ejected already when it is half-open.
        let others = self
            .ejected_count()
            .saturating_sub(usize::from(already_out));
        if (others + 1) * 100 > usize::from(s.max_ejected_percent) * self.backends.len() {
            if already_out {
                // Cannot stay out: back in, as a normal backend.
                self.close(b);
            }
            return false;
        }
        let now = now_ms();
        // A backend that stayed healthy for a whole max_ejection starts over at the base time.
        let recovered = b.recovered_at.load(Ordering::Relaxed);
        let max_ms = u64::try_from(s.max_ejection.as_millis()).unwrap_or(u64::MAX);
        if !already_out && recovered != 0 && now.saturating_sub(recovered) > max_ms {
            b.ejections.store(0, Ordering::Relaxed);
        }
        let n = b.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let base = s.base_ejection.saturating_mul(n).min(s.max_ejection);
        let jitter = rand::thread_rng().gen_range(Duration::ZERO..=base / 10);
        let span = (base + jitter).min(s.max_ejection.max(base));
        let until = now + u64::try_from(span.as_millis()).unwrap_or(u64::MAX);
        b.ejected_until.store(until, Ordering::Release);
        b.ejections_by[reason as usize].fetch_add(1, Ordering::Relaxed);
        // The rate starts over: a returning backend is judged on its new attempts.
        if let Some(w) = &b.window {
            w.clear();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(percent: u8) -> Settings {
        Settings {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: percent,
            failure_statuses: vec![503],
            failure_rate: None,
        }
    }

    #[test]
    fn ejects_after_consecutive_failures_only() {
        let h = PassiveHealth::new(Some(settings(50)), 2);
        assert!(!h.record(0, Verdict::Failure, false));
        assert!(!h.record(0, Verdict::Failure, false));
        assert!(
            !h.record(0, Verdict::Success, false),
            "a success resets the count"
        );
        assert!(!h.record(0, Verdict::Failure, false));
        assert!(!h.record(0, Verdict::Failure, false));
        assert!(h.record(0, Verdict::Failure, false));
        assert!(matches!(h.state(0), State::Ejected(d) if d > Duration::from_secs(29)));
        assert_eq!(h.admit(0), None);
        assert_eq!(h.admit(1), Some(false));
        assert_eq!(h.ejections_total(0), 1);
    }

    #[test]
    fn never_more_than_the_cap() {
        let h = PassiveHealth::new(Some(settings(50)), 2);
        for _ in 0..3 {
            h.record(0, Verdict::Failure, false);
            h.record(1, Verdict::Failure, false);
        }
        assert!(matches!(h.state(0), State::Ejected(_)));
        assert_eq!(
            h.state(1),
            State::Healthy,
            "ejecting both would empty the pool"
        );
        let none = PassiveHealth::new(Some(settings(0)), 4);
        for _ in 0..10 {
            none.record(2, Verdict::Failure, false);
        }
        assert_eq!(none.state(2), State::Healthy);
    }

    #[test]
    fn half_open_admits_one_probe_and_it_decides() {
        let s = Settings {
            base_ejection: Duration::ZERO,
            ..settings(100)
        };
        let h = PassiveHealth::new(Some(s), 1);
        for _ in 0..3 {
            h.record(0, Verdict::Failure, false);
        }
        assert_eq!(h.state(0), State::HalfOpen);
        assert_eq!(h.admit(0), Some(true));
        assert_eq!(h.admit(0), None, "one probe at a time");
        h.record(0, Verdict::Success, true);
        assert_eq!(h.state(0), State::Healthy);
        assert_eq!(h.admit(0), Some(false));
    }

    #[test]
    fn failed_probe_ejects_for_longer() {
        let h = PassiveHealth::new(Some(settings(100)), 1);
        for _ in 0..3 {
            h.record(0, Verdict::Failure, false);
        }
        let State::Ejected(first) = h.state(0) else {
            panic!("not ejected")
        };
        // Pretend the ejection is over.
        h.backends[0].ejected_until.store(1, Ordering::Release);
        assert_eq!(h.admit(0), Some(true));
        assert!(h.record(0, Verdict::Failure, true));
        let State::Ejected(second) = h.state(0) else {
            panic!("not ejected again")
        };
        assert!(
            second > first + Duration::from_secs(20),
            "{first:?} then {second:?}"
        );
        assert_eq!(h.ejections_total(0), 2);
    }

    #[test]
    fn neutral_outcomes_change_nothing_and_release_the_probe() {
        let h = PassiveHealth::new(Some(settings(100)), 1);
        for _ in 0..10 {
            h.record(0, Verdict::Neutral, false);
        }
        assert_eq!(h.state(0), State::Healthy);
        assert_eq!(h.consecutive_failures(0), 0);
    }

    #[test]
    fn active_success_ends_an_ejection() {
        let h = PassiveHealth::new(Some(settings(100)), 1);
        for _ in 0..3 {
            h.record(0, Verdict::Failure, false);
        }
        assert!(matches!(h.state(0), State::Ejected(_)));
        h.active_success(0);
        assert_eq!(h.state(0), State::Healthy);
    }

    /// Only the failure rate can eject: 50% over a minute, from 10 attempts.
    fn rate_settings() -> Settings {
        Settings {
            consecutive_failures: 100,
            failure_rate: Some(crate::config::FailureRate {
                percent: 50,
                window: Duration::from_secs(60),
                min_requests: 10,
            }),
            ..settings(100)
        }
    }

    #[test]
    fn failure_rate_ejects_with_enough_attempts() {
        let s = rate_settings();
        let h = PassiveHealth::new(Some(s), 1);
        // Alternating: 50% failures, but below the minimum until the tenth attempt.
        for i in 0..9 {
            let v = if i % 2 == 0 {
                Verdict::Failure
            } else {
                Verdict::Success
            };
            assert!(!h.record(0, v, false), "attempt {i}");
        }
        // The tenth attempt fails: 6 of 10.
        assert!(h.record(0, Verdict::Failure, false));
        assert!(matches!(h.state(0), State::Ejected(_)));
        assert_eq!(h.ejections(0, Reason::FailureRate), 1);
        assert_eq!(h.ejections(0, Reason::ConsecutiveFailures), 0);
    }

    #[test]
    fn a_low_failure_rate_never_ejects() {
        let s = rate_settings();
        let h = PassiveHealth::new(Some(s), 1);
        for i in 0..100 {
            let v = if i % 3 == 0 {
                Verdict::Failure
            } else {
                Verdict::Success
            };
            assert!(!h.record(0, v, false));
        }
        assert_eq!(h.state(0), State::Healthy);
    }

    #[test]
    fn without_settings_nothing_is_ejected() {
        let h = PassiveHealth::new(None, 1);
        for _ in 0..100 {
            h.record(0, Verdict::Failure, false);
        }
        assert_eq!(h.state(0), State::Healthy);
        assert!(!h.is_failure_status(503));
    }
}
