//! The retry budget of one upstream: retries may be at most a share of its recent requests, with
//! a small floor so a quiet upstream can still retry. When a whole fleet fails, this is what keeps
//! faultline from multiplying the load on it.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use super::window::Window;

/// The history the budget looks at.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);

/// Retries always allowed per window, whatever the request count: ten a second, as Finagle's
/// retry budget allows by default, so a cold start or a quiet upstream can still fail over.
pub(crate) const MIN_RETRIES_PER_WINDOW: u64 = 100;

/// Requests and retries of one upstream over the last [`WINDOW`].
#[derive(Debug)]
pub struct RetryBudget {
    /// (requests, retries)
    window: Window,
    /// The `budget_percent` of the last retry asked for (the routes of one upstream may differ):
    /// for the status page's reading of how much of the budget is used.
    last_percent: AtomicU8,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            window: Window::new(WINDOW),
            last_percent: AtomicU8::new(0),
        }
    }
}

/// How much of a budget is in use over the last [`WINDOW`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Usage {
    /// Client requests.
    pub(crate) requests: u64,
    /// Retries taken.
    pub(crate) retries: u64,
    /// Retries allowed at the `budget_percent` of the last retry asked for (the floor when
    /// none was).
    pub(crate) allowed: u64,
    /// That `budget_percent`, when a retry was asked for.
    pub(crate) percent: Option<u8>,
}

impl RetryBudget {
    /// Counts one client request.
    pub fn record_request(&self) {
        self.window.add(1, 0);
    }

    /// Takes one retry from the budget, if `percent` of recent requests (or the floor) allows it.
    pub fn try_withdraw(&self, percent: u8) -> bool {
        self.last_percent
            .store(percent.saturating_add(1), Ordering::Relaxed);
        let (requests, retries) = self.window.totals();
        let allowed = allowed(requests, percent);
        if retries >= allowed {
            return false;
        }
        self.window.add(0, 1);
        true
    }

    /// Requests, retries and the retries allowed over the last [`WINDOW`].
    pub(crate) fn usage(&self) -> Usage {
        let (requests, retries) = self.window.totals();
        let percent = self.last_percent.load(Ordering::Relaxed).checked_sub(1);
        Usage {
            requests,
            retries,
            allowed: allowed(requests, percent.unwrap_or(0)),
            percent,
        }
    }
}

/// Retries allowed for `requests` at `percent`, never fewer than the floor.
fn allowed(requests: u64, percent: u8) -> u64 {
    (requests * u64::from(percent) / 100).max(MIN_RETRIES_PER_WINDOW)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_then_share_of_requests() {
        let b = RetryBudget::default();
        // With no traffic, the floor still allows a few retries.
        let floor = (0..500).filter(|_| b.try_withdraw(20)).count();
        assert_eq!(floor as u64, MIN_RETRIES_PER_WINDOW);
        // 1000 requests at 20% allow 200 retries in all; the floor's 100 are spent.
        for _ in 0..1000 {
            b.record_request();
        }
        let more = (0..500).filter(|_| b.try_withdraw(20)).count();
        assert_eq!(more, 100);
        assert_eq!(
            b.usage(),
            Usage {
                requests: 1000,
                retries: 200,
                allowed: 200,
                percent: Some(20)
            }
        );
    }

    #[test]
    fn zero_percent_keeps_only_the_floor() {
        let b = RetryBudget::default();
        for _ in 0..1000 {
            b.record_request();
        }
        let n = (0..500).filter(|_| b.try_withdraw(0)).count();
        assert_eq!(n as u64, MIN_RETRIES_PER_WINDOW);
    }
}
