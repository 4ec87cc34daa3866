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

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;

use super::window::{self, Window};
use crate::config::PassiveHealth as Settings;

/// Why a backend was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// `consecutive_failures` in a row.
    ConsecutiveFailures,
    /// The failure rate over the window.
    FailureRate,
    /// The half-open probe failed.
    ProbeFailed,
}

impl Reason {
    /// Every reason, in index order.
    pub(crate) const ALL: [Reason; 3] = [
        Reason::ConsecutiveFailures,
        Reason::FailureRate,
        Reason::ProbeFailed,
    ];

    /// The metric label.
    pub(crate) fn as_str(self) -> &'static str {
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
pub(crate) enum State {
    /// Takes traffic.
    Healthy,
    /// Takes no traffic for this long yet.
    Ejected(Duration),
    /// The ejection ended; the next request is a probe (or a probe is under way).
    HalfOpen,
}

impl State {
    /// The `/status` spelling.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Ejected(_) => "ejected",
            State::HalfOpen => "half_open",
        }
    }
}

/// The passive-health state of one backend: a circuit breaker. Shared through an `Arc`, so a
/// reload that keeps the backend keeps its state (an ejected backend stays ejected).
#[derive(Debug, Default)]
pub(crate) struct Breaker {
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

impl Breaker {
    /// Where the backend stands.
    pub(crate) fn state(&self) -> State {
        match self.ejected_until.load(Ordering::Acquire) {
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

    /// Whether the backend is ejected or half-open (it counts against the ejection cap).
    pub(crate) fn is_out(&self) -> bool {
        self.ejected_until.load(Ordering::Acquire) != 0
    }

    /// Failures in a row.
    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.consecutive.load(Ordering::Relaxed)
    }

    /// Ejections since the backend started.
    pub(crate) fn ejections_total(&self) -> u64 {
        Reason::ALL.iter().map(|r| self.ejections(*r)).sum()
    }

    /// Ejections for `reason`.
    pub(crate) fn ejections(&self, reason: Reason) -> u64 {
        self.ejections_by[reason as usize].load(Ordering::Relaxed)
    }

    /// Whether the backend may take this request. Returns `Some(true)` when the request is the
    /// half-open probe (the caller must report its outcome), `Some(false)` for an ordinary
    /// admission, `None` when the backend is ejected or its probe is already under way.
    pub(crate) fn admit(&self) -> Option<bool> {
        match self.state() {
            State::Healthy => Some(false),
            State::Ejected(_) => None,
            State::HalfOpen => self
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
                .then_some(true),
        }
    }

    /// Gives back a probe whose attempt never reported an outcome.
    pub(crate) fn release_probe(&self) {
        self.probing.store(false, Ordering::Release);
    }

    /// An active health check succeeded: any ejection ends now.
    pub(crate) fn active_success(&self) {
        if self.is_out() {
            self.consecutive.store(0, Ordering::Relaxed);
            self.close();
        }
    }

    fn close(&self) {
        self.ejected_until.store(0, Ordering::Release);
        self.recovered_at.store(now_ms(), Ordering::Relaxed);
    }
}

/// What an attempt meant for its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The backend worked.
    Success,
    /// The backend failed (a gateway failure, or a status in `failure_statuses`).
    Failure,
    /// Says nothing about the backend (the client went away, the proxy failed).
    Neutral,
}

/// How many of a pool's backends are out (ejected or half-open), of how many: the ejection cap
/// is judged on it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Census {
    /// Backends out.
    pub(crate) out: usize,
    /// Backends in the pool.
    pub(crate) size: usize,
}

/// The passive-health policy of one pool: when its backends' breakers open and for how long.
#[derive(Debug)]
pub(crate) struct PassiveHealth {
    settings: Option<Settings>,
}

impl PassiveHealth {
    /// The policy; without settings every backend stays healthy.
    pub(crate) fn new(settings: Option<Settings>) -> Self {
        PassiveHealth { settings }
    }

    /// Whether it is configured: without it no backend is ever ejected.
    pub(crate) fn enabled(&self) -> bool {
        self.settings.is_some()
    }

    /// A fresh breaker for a backend that joins the pool.
    pub(crate) fn breaker(&self) -> Breaker {
        Breaker {
            window: self
                .settings
                .as_ref()
                .and_then(|s| s.failure_rate.as_ref())
                .map(|r| Window::new(r.window)),
            ..Breaker::default()
        }
    }

    /// Whether origin `status` counts as a failure of its backend.
    pub(crate) fn is_failure_status(&self, status: u16) -> bool {
        self.settings
            .as_ref()
            .is_some_and(|s| s.failure_statuses.contains(&status))
    }

    /// Records the outcome of an attempt on the backend of breaker `b`; `probe` when it was the
    /// half-open probe. `census` counts the pool, asked only when the backend would be ejected.
    /// Returns true when this outcome ejected the backend.
    pub(crate) fn record(
        &self,
        b: &Breaker,
        verdict: Verdict,
        probe: bool,
        census: impl FnOnce() -> Census,
    ) -> bool {
        let Some(s) = &self.settings else {
            return false;
        };
        let ejected = match verdict {
            Verdict::Success => {
                if let Some(w) = &b.window {
                    w.add(1, 0);
                }
                b.consecutive.store(0, Ordering::Relaxed);
                if probe {
                    b.close();
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
                    Self::eject(s, b, Reason::ProbeFailed, census())
                } else if b.is_out() {
                    false
                } else if n >= s.consecutive_failures {
                    Self::eject(s, b, Reason::ConsecutiveFailures, census())
                } else if Self::rate_breached(s, b) {
                    Self::eject(s, b, Reason::FailureRate, census())
                } else {
                    false
                }
            }
            Verdict::Neutral => false,
        };
        if probe {
            b.release_probe();
        }
        ejected
    }

    fn rate_breached(s: &Settings, b: &Breaker) -> bool {
        let (Some(rate), Some(w)) = (&s.failure_rate, &b.window) else {
            return false;
        };
        let (attempts, failures) = w.totals();
        attempts >= rate.min_requests && failures * 100 >= u64::from(rate.percent) * attempts
    }

    fn eject(s: &Settings, b: &Breaker, reason: Reason, census: Census) -> bool {
        let already_out = reason == Reason::ProbeFailed;
        // The cap counts this backend as out already when it is half-open.
        let others = census.out.saturating_sub(usize::from(already_out));
        if (others + 1) * 100 > usize::from(s.max_ejected_percent) * census.size {
            if already_out {
                // Cannot stay out: back in, as a normal backend.
                b.close();
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

    /// A pool's policy and breakers, addressed by position.
    struct Pool {
        health: PassiveHealth,
        breakers: Vec<Breaker>,
    }

    impl Pool {
        fn new(settings: Option<Settings>, n: usize) -> Pool {
            let health = PassiveHealth::new(settings);
            let breakers = (0..n).map(|_| health.breaker()).collect();
            Pool { health, breakers }
        }
        fn record(&self, i: usize, verdict: Verdict, probe: bool) -> bool {
            let census = || Census {
                out: self.breakers.iter().filter(|b| b.is_out()).count(),
                size: self.breakers.len(),
            };
            self.health
                .record(&self.breakers[i], verdict, probe, census)
        }
        fn state(&self, i: usize) -> State {
            self.breakers[i].state()
        }
        fn admit(&self, i: usize) -> Option<bool> {
            self.breakers[i].admit()
        }
    }

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
        let h = Pool::new(Some(settings(50)), 2);
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
        assert_eq!(h.breakers[0].ejections_total(), 1);
    }

    #[test]
    fn never_more_than_the_cap() {
        let h = Pool::new(Some(settings(50)), 2);
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
        let none = Pool::new(Some(settings(0)), 4);
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
        let h = Pool::new(Some(s), 1);
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
        let h = Pool::new(Some(settings(100)), 1);
        for _ in 0..3 {
            h.record(0, Verdict::Failure, false);
        }
        let State::Ejected(first) = h.state(0) else {
            panic!("not ejected")
        };
        // Pretend the ejection is over.
        h.breakers[0].ejected_until.store(1, Ordering::Release);
        assert_eq!(h.admit(0), Some(true));
        assert!(h.record(0, Verdict::Failure, true));
        let State::Ejected(second) = h.state(0) else {
            panic!("not ejected again")
        };
        assert!(
            second > first + Duration::from_secs(20),
            "{first:?} then {second:?}"
        );
        assert_eq!(h.breakers[0].ejections_total(), 2);
    }

    #[test]
    fn neutral_outcomes_change_nothing_and_release_the_probe() {
        let h = Pool::new(Some(settings(100)), 1);
        for _ in 0..10 {
            h.record(0, Verdict::Neutral, false);
        }
        assert_eq!(h.state(0), State::Healthy);
        assert_eq!(h.breakers[0].consecutive_failures(), 0);
    }

    #[test]
    fn active_success_ends_an_ejection() {
        let h = Pool::new(Some(settings(100)), 1);
        for _ in 0..3 {
            h.record(0, Verdict::Failure, false);
        }
        assert!(matches!(h.state(0), State::Ejected(_)));
        h.breakers[0].active_success();
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
        let h = Pool::new(Some(s), 1);
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
        assert_eq!(h.breakers[0].ejections(Reason::FailureRate), 1);
        assert_eq!(h.breakers[0].ejections(Reason::ConsecutiveFailures), 0);
    }

    #[test]
    fn a_low_failure_rate_never_ejects() {
        let s = rate_settings();
        let h = Pool::new(Some(s), 1);
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
        let h = Pool::new(None, 1);
        for _ in 0..100 {
            h.record(0, Verdict::Failure, false);
        }
        assert_eq!(h.state(0), State::Healthy);
        assert!(!h.health.is_failure_status(503));
    }
}
