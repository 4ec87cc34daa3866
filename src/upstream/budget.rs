//! The retry budget of one upstream: retries may be at most a share of its recent requests, with
//! a small floor so a quiet upstream can still retry. When a whole fleet fails, this is what keeps
//! faultline from multiplying the load on it.
//!
//! Counts live in one-second slots over a ten-second window, in atomics: recording a request or
//! a retry takes no lock.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Seconds of history the budget looks at.
pub const WINDOW_SECS: u64 = 10;

/// Retries always allowed per window, whatever the request count.
pub const MIN_RETRIES_PER_WINDOW: u64 = 10;

#[derive(Debug, Default)]
struct Slot {
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// Requests and retries of one upstream over the last [`WINDOW_SECS`] seconds.
#[derive(Debug, Default)]
pub struct RetryBudget {
    slots: [Slot; WINDOW_SECS as usize],
}

fn now_secs() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    // +1 so that a fresh slot (second 0) never passes for the current one.
    START.get_or_init(Instant::now).elapsed().as_secs() + 1
}

impl RetryBudget {
    /// The slot of second `now`, cleared if it still holds an older second.
    fn slot(&self, now: u64) -> &Slot {
        let slot = &self.slots[(now % WINDOW_SECS) as usize];
        let seen = slot.second.load(Ordering::Acquire);
        if seen != now
            && slot
                .second
                .compare_exchange(seen, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.requests.store(0, Ordering::Release);
            slot.retries.store(0, Ordering::Release);
        }
        slot
    }

    fn totals(&self, now: u64) -> (u64, u64) {
        self.slots
            .iter()
            .filter(|s| {
                let second = s.second.load(Ordering::Acquire);
                second + WINDOW_SECS > now && second <= now
            })
            .fold((0, 0), |(req, ret), s| {
                (
                    req + s.requests.load(Ordering::Relaxed),
                    ret + s.retries.load(Ordering::Relaxed),
                )
            })
    }

    /// Counts one client request.
    pub fn record_request(&self) {
        self.slot(now_secs())
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget, if `percent` of recent requests (or the floor) allows it.
    pub fn try_withdraw(&self, percent: u8) -> bool {
        let now = now_secs();
        let (requests, retries) = self.totals(now);
        let allowed = (requests * u64::from(percent) / 100).max(MIN_RETRIES_PER_WINDOW);
        if retries >= allowed {
            return false;
        }
        self.slot(now).retries.fetch_add(1, Ordering::Relaxed);
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
        let floor = (0..100).filter(|_| b.try_withdraw(20)).count();
        assert_eq!(floor as u64, MIN_RETRIES_PER_WINDOW);
        // 200 requests at 20% allow 40 retries in all; 10 are spent.
        for _ in 0..200 {
            b.record_request();
        }
        let more = (0..100).filter(|_| b.try_withdraw(20)).count();
        assert_eq!(more, 30);
    }

    #[test]
    fn zero_percent_keeps_only_the_floor() {
        let b = RetryBudget::default();
        for _ in 0..1000 {
            b.record_request();
        }
        let n = (0..100).filter(|_| b.try_withdraw(0)).count();
        assert_eq!(n as u64, MIN_RETRIES_PER_WINDOW);
    }
}
