//! A sliding window of two counters, in ten slots of atomics: recording takes no lock. Used by
//! the retry budget (requests and retries) and by failure-rate ejection (attempts and failures).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Slots per window.
pub(crate) const SLOTS: u64 = 10;

#[derive(Debug, Default)]
struct Slot {
    tick: AtomicU64,
    a: AtomicU64,
    b: AtomicU64,
}

/// Two counts over the last `window`, in slots of a tenth of it.
#[derive(Debug)]
pub(crate) struct Window {
    slot_ms: u64,
    slots: [Slot; SLOTS as usize],
}

/// Milliseconds since the first call: the monotonic clock of the per-backend state.
pub(crate) fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Window {
    /// A window of `span` (at least ten milliseconds).
    pub(crate) fn new(span: Duration) -> Self {
        let ms = u64::try_from(span.as_millis()).unwrap_or(u64::MAX);
        Window {
            slot_ms: (ms / SLOTS).max(1),
            slots: Default::default(),
        }
    }

    /// The current tick; +1 so that no live slot has tick 0.
    fn tick(&self) -> u64 {
        now_ms() / self.slot_ms + 1
    }

    fn slot(&self, tick: u64) -> &Slot {
        let slot = &self.slots[(tick % SLOTS) as usize];
        let seen = slot.tick.load(Ordering::Acquire);
        if seen != tick
            && slot
                .tick
                .compare_exchange(seen, tick, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.a.store(0, Ordering::Release);
            slot.b.store(0, Ordering::Release);
        }
        slot
    }

    /// Adds to the current slot.
    pub(crate) fn add(&self, a: u64, b: u64) {
        let slot = self.slot(self.tick());
        if a > 0 {
            slot.a.fetch_add(a, Ordering::Relaxed);
        }
        if b > 0 {
            slot.b.fetch_add(b, Ordering::Relaxed);
        }
    }

    /// Both counts over the window.
    pub(crate) fn totals(&self) -> (u64, u64) {
        let now = self.tick();
        self.slots
            .iter()
            .filter(|s| {
                let t = s.tick.load(Ordering::Acquire);
                // Tick 0 marks a slot never used, or cleared.
                t != 0 && t <= now && t + SLOTS > now
            })
            .fold((0, 0), |(a, b), s| {
                (
                    a + s.a.load(Ordering::Relaxed),
                    b + s.b.load(Ordering::Relaxed),
                )
            })
    }

    /// Forgets everything counted so far.
    pub(crate) fn clear(&self) {
        for s in &self.slots {
            s.tick.store(0, Ordering::Release);
            s.a.store(0, Ordering::Release);
            s.b.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_the_window_and_clears() {
        let w = Window::new(Duration::from_secs(60));
        w.add(3, 1);
        w.add(2, 0);
        assert_eq!(w.totals(), (5, 1));
        w.clear();
        assert_eq!(w.totals(), (0, 0));
    }

    #[test]
    fn old_slots_fall_out() {
        let w = Window::new(Duration::from_millis(50));
        w.add(4, 4);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(w.totals(), (0, 0));
    }
}
