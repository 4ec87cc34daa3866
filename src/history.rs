//! The recent history of every backend's attempts, for the admin status page: how many ended
//! with a response and how many with each failure kind, in the last [`SLOTS`] intervals of
//! [`SLOT`] (five minutes).
//!
//! Nothing on the request path writes here. Requests count into their backend's cumulative
//! counters (`metrics::BackendMetrics`) as always; once per [`SLOT`] a background tick reads
//! those counters and keeps the difference from its previous reading in a fixed ring of the
//! backend. A reading for the page adds what was counted since the last tick, so the newest
//! interval is never behind. The tick and the page share one mutex; requests never take it.
//!
//! The memory is bounded: one ring of [`SLOTS`] fixed-size slots per backend of the current
//! configuration (a backend is known by its upstream and address, as its state is across
//! generations), and a backend that left the pool is forgotten at the next tick. The labels are
//! the closed set of [`FailureKind`]s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use crate::failure::FailureKind;
use crate::metrics::BackendMetrics;
use crate::upstream::Pool;
use crate::upstream::window::now_ms;

/// The span of one slot, and the interval of the tick.
pub(crate) const SLOT: Duration = Duration::from_secs(5);

/// Slots kept per backend: five minutes.
pub(crate) const SLOTS: usize = 60;

const SLOT_MS: u64 = SLOT.as_millis() as u64;

/// Outcomes of an attempt: a response (index 0), then each failure kind at `1 + index`.
pub(crate) const OUTCOMES: usize = 1 + FailureKind::ALL.len();

/// A backend's cumulative counters, as read at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    outcomes: [u64; OUTCOMES],
    /// Response headers with a 5xx status (the origin's own errors).
    server_errors: u64,
}

impl Counts {
    const ZERO: Counts = Counts {
        outcomes: [0; OUTCOMES],
        server_errors: 0,
    };

    fn read(m: &BackendMetrics) -> Counts {
        let mut outcomes = [0; OUTCOMES];
        outcomes[0] = m.attempts(None);
        for kind in FailureKind::ALL {
            outcomes[1 + kind.index()] = m.attempts(Some(*kind));
        }
        Counts {
            outcomes,
            server_errors: m.responses_in(500..600),
        }
    }

    /// What was counted between `earlier` and these. Counters only grow: a smaller one means
    /// they are not the same counters (the backend left and came back), which all started at
    /// zero.
    fn since(&self, earlier: &Counts) -> Counts {
        let fresh = self
            .outcomes
            .iter()
            .zip(&earlier.outcomes)
            .any(|(now, then)| now < then)
            || self.server_errors < earlier.server_errors;
        if fresh {
            return *self;
        }
        Counts {
            outcomes: std::array::from_fn(|i| self.outcomes[i] - earlier.outcomes[i]),
            server_errors: self.server_errors - earlier.server_errors,
        }
    }
}

/// What one slot counted.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// The interval it holds (`now_ms() / SLOT`); a slot whose tick is not in the last
    /// [`SLOTS`] is empty.
    tick: u64,
    outcomes: [u32; OUTCOMES],
    server_errors: u32,
}

impl Slot {
    const EMPTY: Slot = Slot {
        tick: u64::MAX,
        outcomes: [0; OUTCOMES],
        server_errors: 0,
    };

    fn add(&mut self, c: &Counts) {
        let narrow = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        for (slot, v) in self.outcomes.iter_mut().zip(&c.outcomes) {
            *slot = slot.saturating_add(narrow(*v));
        }
        self.server_errors = self.server_errors.saturating_add(narrow(c.server_errors));
    }
}

/// The ring of one backend.
#[derive(Debug)]
struct Series {
    /// The counters at the last tick.
    last: Counts,
    slots: Box<[Slot; SLOTS]>,
    /// When the series started (`now_ms()`), for the span a reading covers.
    since_ms: u64,
    /// The tick round that last saw the backend in a pool.
    round: u64,
}

impl Series {
    fn new(now: u64) -> Series {
        Series {
            last: Counts::ZERO,
            slots: Box::new([Slot::EMPTY; SLOTS]),
            since_ms: now,
            round: 0,
        }
    }

    fn slot_mut(&mut self, tick: u64) -> &mut Slot {
        let slot = &mut self.slots[(tick % SLOTS as u64) as usize];
        if slot.tick != tick {
            *slot = Slot {
                tick,
                ..Slot::EMPTY
            };
        }
        slot
    }
}

/// One interval as the page draws it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Bar {
    /// Attempts that ended with a response.
    pub(crate) responses: u64,
    /// Attempts that failed on the upstream's side ([`FailureKind::is_upstream`]).
    pub(crate) failures: u64,
    /// Responses with a 5xx status.
    pub(crate) server_errors: u64,
}

/// A backend's recent history.
#[derive(Debug, Clone)]
pub(crate) struct Recent {
    /// The last [`SLOTS`] intervals, oldest first; the last one is the interval under way.
    pub(crate) bars: [Bar; SLOTS],
    /// Attempts over the whole span by outcome: a response at 0, each kind at `1 + index`.
    pub(crate) outcomes: [u64; OUTCOMES],
    /// Responses with a 5xx status over the span.
    pub(crate) server_errors: u64,
    /// How long the span is: [`SLOTS`] × [`SLOT`], or less when the history started later.
    pub(crate) span: Duration,
}

impl Recent {
    /// Attempts that ended with `kind` over the span (`None`: with a response).
    pub(crate) fn attempts(&self, kind: Option<FailureKind>) -> u64 {
        self.outcomes[kind.map_or(0, |k| 1 + k.index())]
    }

    /// Attempts that failed on the upstream's side over the span.
    pub(crate) fn failures(&self) -> u64 {
        FailureKind::ALL
            .iter()
            .filter(|k| k.is_upstream())
            .map(|k| self.attempts(Some(*k)))
            .sum()
    }
}

/// The history of every backend, by upstream name and address.
#[derive(Debug, Default)]
pub(crate) struct History {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    upstreams: HashMap<String, HashMap<SocketAddr, Series>>,
    round: u64,
}

impl History {
    /// The tick: reads the counters of every backend of `pools` into its ring, and forgets the
    /// backends they no longer have.
    pub(crate) fn sample<'a>(&self, pools: impl Iterator<Item = &'a Pool>) {
        self.sample_at(pools, now_ms());
    }

    fn sample_at<'a>(&self, pools: impl Iterator<Item = &'a Pool>, now: u64) {
        let tick = now / SLOT_MS;
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.round += 1;
        let round = inner.round;
        for pool in pools {
            if !inner.upstreams.contains_key(pool.name()) {
                inner
                    .upstreams
                    .insert(pool.name().to_string(), HashMap::new());
            }
            let Some(series) = inner.upstreams.get_mut(pool.name()) else {
                continue;
            };
            for b in pool.backends() {
                let s = series
                    .entry(b.address())
                    .or_insert_with(|| Series::new(now));
                let counts = Counts::read(b.metrics());
                let delta = counts.since(&s.last);
                s.slot_mut(tick).add(&delta);
                s.last = counts;
                s.round = round;
            }
        }
        for series in inner.upstreams.values_mut() {
            series.retain(|_, s| s.round == round);
        }
        inner.upstreams.retain(|_, series| !series.is_empty());
    }

    /// The recent history of each backend of `pool`, in the pool's order.
    pub(crate) fn read(&self, pool: &Pool) -> Vec<Recent> {
        self.read_at(pool, now_ms())
    }

    fn read_at(&self, pool: &Pool, now: u64) -> Vec<Recent> {
        let tick = now / SLOT_MS;
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let series = inner.upstreams.get(pool.name());
        pool.backends()
            .iter()
            .map(|b| {
                let counts = Counts::read(b.metrics());
                match series.and_then(|s| s.get(&b.address())) {
                    Some(s) => recent(s, &counts.since(&s.last), tick, now),
                    // Not sampled yet: everything it counted is recent.
                    None => recent(&Series::new(now), &counts, tick, now),
                }
            })
            .collect()
    }
}

/// The history of `s`, with `live` (counted since the last tick) in the interval under way.
fn recent(s: &Series, live: &Counts, tick: u64, now: u64) -> Recent {
    let mut r = Recent {
        bars: [Bar::default(); SLOTS],
        outcomes: [0; OUTCOMES],
        server_errors: 0,
        span: Duration::from_millis(now.saturating_sub(s.since_ms)).min(SLOT * SLOTS as u32),
    };
    // The bar at `i` is the interval `SLOTS - 1 - i` before the one under way; early in the
    // process's life the oldest ones are before its start, and stay empty.
    for (i, bar) in r.bars.iter_mut().enumerate() {
        let Some(t) = (tick + 1 + i as u64).checked_sub(SLOTS as u64) else {
            continue;
        };
        let slot = &s.slots[(t % SLOTS as u64) as usize];
        let mut counts = Counts::ZERO;
        if slot.tick == t {
            counts.outcomes = slot.outcomes.map(u64::from);
            counts.server_errors = u64::from(slot.server_errors);
        }
        if t == tick {
            for (c, l) in counts.outcomes.iter_mut().zip(&live.outcomes) {
                *c += l;
            }
            counts.server_errors += live.server_errors;
        }
        *bar = Bar {
            responses: counts.outcomes[0],
            failures: FailureKind::ALL
                .iter()
                .filter(|k| k.is_upstream())
                .map(|k| counts.outcomes[1 + k.index()])
                .sum(),
            server_errors: counts.server_errors,
        };
        for (total, c) in r.outcomes.iter_mut().zip(&counts.outcomes) {
            *total += c;
        }
        r.server_errors += counts.server_errors;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::tests::pool;

    fn two() -> Pool {
        pool(
            "[{ address: \"127.0.0.1:9001\" }, { address: \"127.0.0.1:9002\" }]",
            "",
        )
    }

    #[test]
    fn each_interval_keeps_what_was_counted_in_it() {
        let p = two();
        let h = History::default();
        let m = p.backends()[0].metrics();
        let t0 = 1_000 * SLOT_MS;
        h.sample_at([&p].into_iter(), t0);
        m.answered();
        m.answered();
        m.failure(FailureKind::ConnectionRefused);
        h.sample_at([&p].into_iter(), t0 + SLOT_MS);
        m.failure(FailureKind::ConnectionRefused);
        m.response(503);
        // Not sampled yet: the reading adds it to the interval under way.
        let r = &h.read_at(&p, t0 + 2 * SLOT_MS + 1)[0];
        let bars = &r.bars[SLOTS - 3..];
        assert_eq!(bars[0], Bar::default());
        assert_eq!(
            bars[1],
            Bar {
                responses: 2,
                failures: 1,
                server_errors: 0
            }
        );
        assert_eq!(
            bars[2],
            Bar {
                responses: 0,
                failures: 1,
                server_errors: 1
            }
        );
        assert_eq!(r.attempts(Some(FailureKind::ConnectionRefused)), 2);
        assert_eq!(r.attempts(None), 2);
        assert_eq!(r.failures(), 2);
        assert_eq!(r.span, Duration::from_millis(2 * SLOT_MS + 1));
        assert_eq!(h.read_at(&p, t0 + 2 * SLOT_MS)[1].attempts(None), 0);
    }

    #[test]
    fn the_newest_interval_is_the_last_bar_from_the_start() {
        let p = two();
        let h = History::default();
        h.sample_at([&p].into_iter(), 0);
        p.backends()[0].metrics().answered();
        h.sample_at([&p].into_iter(), SLOT_MS);
        let r = &h.read_at(&p, SLOT_MS + 1)[0];
        assert_eq!(r.bars[SLOTS - 1].responses, 1, "{:?}", r.bars);
        assert_eq!(r.attempts(None), 1);
    }

    #[test]
    fn old_intervals_fall_out_and_departed_backends_are_forgotten() {
        let p = two();
        let h = History::default();
        let t0 = 1_000 * SLOT_MS;
        p.backends()[1].metrics().answered();
        h.sample_at([&p].into_iter(), t0);
        let later = t0 + SLOTS as u64 * SLOT_MS;
        h.sample_at([&p].into_iter(), later);
        let r = &h.read_at(&p, later)[1];
        assert_eq!(r.attempts(None), 0, "counted more than the span ago");
        assert_eq!(r.span, SLOT * SLOTS as u32);
        // A tick without the pool forgets its backends.
        h.sample_at(std::iter::empty(), later + SLOT_MS);
        let inner = h.inner.lock().expect("lock");
        assert!(inner.upstreams.is_empty());
    }

    #[test]
    fn counters_that_start_again_count_from_zero() {
        let now = Counts {
            outcomes: [1; OUTCOMES],
            server_errors: 0,
        };
        let before = Counts {
            outcomes: [2; OUTCOMES],
            server_errors: 0,
        };
        assert_eq!(now.since(&before), now);
        assert_eq!(before.since(&now).outcomes, [1; OUTCOMES]);
    }
}
