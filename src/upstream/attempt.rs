//! The attempt history of one request: which backend was tried, how it ended, how far the
//! request got and how long each step took. The proxy hooks that Pingora calls after an attempt
//! (`fail_to_proxy`, `logging`) do not receive the peer, so this is where that knowledge lives.

use std::time::{Duration, Instant};

use crate::failure::{FailureKind, Progress};

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Still under way.
    Pending,
    /// The backend sent a response header with this status.
    Response(u16),
    /// The attempt failed.
    Failed(FailureKind),
}

impl Outcome {
    /// The log and metric label: `response` or the failure kind.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::Pending => "pending",
            Outcome::Response(_) => "response",
            Outcome::Failed(kind) => kind.as_str(),
        }
    }
}

/// One try against one backend.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    /// Index of the backend in its pool.
    pub backend: usize,
    /// How it ended.
    pub outcome: Outcome,
    /// How far the request got.
    pub progress: Progress,
    /// Whether a pooled keep-alive connection was used.
    pub reused: bool,
    /// Whether this attempt was the half-open probe of an ejected backend.
    pub probe: bool,
    started: Instant,
    /// Time to connect (zero for a reused connection).
    pub connect: Option<Duration>,
    /// Time from the start of the attempt to the response header.
    pub header: Option<Duration>,
}

/// All attempts of a request, in order.
#[derive(Debug, Default)]
pub(crate) struct Attempts {
    list: Vec<Attempt>,
}

impl Attempts {
    /// Starts an attempt on `backend`.
    pub(crate) fn start(&mut self, backend: usize, probe: bool) {
        self.list.push(Attempt {
            backend,
            probe,
            outcome: Outcome::Pending,
            progress: Progress::NotSent,
            reused: false,
            started: Instant::now(),
            connect: None,
            header: None,
        });
    }

    /// The connection of the current attempt is ready.
    pub(crate) fn connected(&mut self, reused: bool) {
        if let Some(a) = self.list.last_mut() {
            a.reused = reused;
            a.connect = Some(a.started.elapsed());
        }
    }

    /// The current attempt got a response header.
    pub(crate) fn responded(&mut self, status: u16) {
        if let Some(a) = self.list.last_mut() {
            a.outcome = Outcome::Response(status);
            a.progress = Progress::ResponseStarted;
            a.header = Some(a.started.elapsed());
        }
    }

    /// The current attempt failed.
    pub(crate) fn failed(&mut self, kind: FailureKind, progress: Progress) {
        if let Some(a) = self.list.last_mut() {
            a.outcome = Outcome::Failed(kind);
            a.progress = progress;
        }
    }

    /// Whether `backend` was tried already.
    pub(crate) fn tried(&self, backend: usize) -> bool {
        self.list.iter().any(|a| a.backend == backend)
    }

    /// Number of attempts started.
    pub(crate) fn count(&self) -> usize {
        self.list.len()
    }

    /// The current (last) attempt.
    pub(crate) fn last(&self) -> Option<&Attempt> {
        self.list.last()
    }

    /// Every attempt, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Attempt> {
        self.list.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_each_step_on_the_current_attempt() {
        let mut a = Attempts::default();
        a.start(1, false);
        a.failed(FailureKind::ConnectionRefused, Progress::NotSent);
        a.start(0, false);
        a.connected(true);
        a.responded(503);
        assert_eq!(a.count(), 2);
        assert!(a.tried(1) && a.tried(0) && !a.tried(2));
        let last = a.last().unwrap();
        assert_eq!(last.outcome, Outcome::Response(503));
        assert_eq!(last.progress, Progress::ResponseStarted);
        assert!(last.reused && last.connect.is_some() && last.header.is_some());
        let labels: Vec<_> = a.iter().map(|x| x.outcome.label()).collect();
        assert_eq!(labels, ["connection_refused", "response"]);
    }
}
