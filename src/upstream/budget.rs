//! The retry budget of one upstream: retries may be at most a share of its recent requests, with
//! a small floor so a quiet upstream can still retry. When a whole fleet fails, this is what keeps
//! faultline from multiplying the load on it.

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
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            window: Window::new(WINDOW),
        }
    }
}

impl RetryBudget {
    /// Counts one client request.
    pub fn record_request(&self) {
        self.window.add(1, 0);
    }

    /// Takes one retry from the budget, if `percent` of recent requests (or the floor) allows it.
    pub fn try_withdraw(&self, percent: u8) -> bool {
        let (requests, retries) = self.window.totals();
        let allowed = (requests * u64::from(percent) / 100).max(MIN_RETRIES_PER_WINDOW);
        if retries >= allowed {
            return false;
        }
        self.window.add(0, 1);
        true
    }
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
