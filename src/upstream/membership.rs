//! Membership of a pool beyond its static backends: the addresses each `dns:` or `srv:` entry
//! resolved to last, and the record of each entry's refreshes.
//!
//! A pool generation holds the last good answer of every entry; a new generation (a reload, or
//! a changed answer) starts from it, so a backend leaves only when a successful answer no
//! longer lists it. The refresh record is shared by every generation of the upstream, like its
//! counters.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// One address an entry resolved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Resolved {
    /// The backend's address.
    pub(crate) address: SocketAddr,
    /// Its share of traffic.
    pub(crate) weight: usize,
    /// Its SRV priority group, ranked from 0 (the lowest priority value); 0 for `dns:`. A
    /// higher tier is used only while no backend of a lower one is selectable.
    pub(crate) tier: u16,
}

/// How one lookup ended: a bounded set, the `result` label of
/// `faultline_discovery_refreshes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefreshResult {
    /// An answer with at least one address.
    Success,
    /// An answer with no address (no record, or the name does not exist): the set stays.
    Empty,
    /// An error (SERVFAIL, refused, unreachable server): the set stays.
    Failure,
    /// No answer in time: the set stays.
    Timeout,
}

impl RefreshResult {
    /// Every result, in exposition order.
    pub(crate) const ALL: [RefreshResult; 4] = [
        RefreshResult::Success,
        RefreshResult::Empty,
        RefreshResult::Failure,
        RefreshResult::Timeout,
    ];

    /// Its label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RefreshResult::Success => "success",
            RefreshResult::Empty => "empty",
            RefreshResult::Failure => "failure",
            RefreshResult::Timeout => "timeout",
        }
    }
}

/// The last refresh of one entry.
#[derive(Debug, Clone)]
pub(crate) struct LastRefresh {
    /// When it ended.
    pub(crate) at: SystemTime,
    /// How.
    pub(crate) result: RefreshResult,
    /// What went wrong, when it failed.
    pub(crate) error: Option<String>,
}

/// Refreshes of an upstream's entries: counted by result, and the last one of each entry.
#[derive(Debug, Default)]
pub(crate) struct Refreshes {
    counts: [AtomicU64; 4],
    last: Mutex<BTreeMap<String, LastRefresh>>,
}

impl Refreshes {
    /// Records a refresh of the entry labelled `source`.
    pub(crate) fn record(&self, source: &str, result: RefreshResult, error: Option<String>) {
        if let Some(c) = RefreshResult::ALL
            .iter()
            .position(|r| *r == result)
            .and_then(|i| self.counts.get(i))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let entry = LastRefresh {
            at: SystemTime::now(),
            result,
            error,
        };
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(source.to_string(), entry);
    }

    /// Refreshes that ended with `result`.
    pub(crate) fn count(&self, result: RefreshResult) -> u64 {
        RefreshResult::ALL
            .iter()
            .position(|r| *r == result)
            .and_then(|i| self.counts.get(i))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The last refresh of the entry labelled `source`, if it had one.
    pub(crate) fn last(&self, source: &str) -> Option<LastRefresh> {
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(source)
            .cloned()
    }
}
