//! Whether an attempt may be repeated on another backend, and how long to wait first
//! (DESIGN §3).
//!
//! A failed attempt is retried according to how far the request got: before anything was sent,
//! for every method; after, only idempotent requests (RFC 9110 §9.2.2, or an `Idempotency-Key` on
//! a route that honours it) whose body still fits the replay buffer. A valid origin response is
//! retried only when the route lists its status in `on_status`, for idempotent requests, after a
//! short jittered pause or the origin's `Retry-After` when that is short and fits the deadline.
//! A retry the policy allows then needs room in the upstream's retry budget.

use std::time::Duration;

use http::Method;
use pingora::proxy::Session;
use rand::Rng;

use crate::config::RetryPolicy;
use crate::context::RequestCtx;
use crate::failure::{FailureKind, Progress, RetrySafety};

/// First pause before a status-driven retry; doubled per retry, jittered, capped.
pub(crate) const BACKOFF_BASE: Duration = Duration::from_millis(25);

/// Longest jittered pause between status-driven retries.
pub(crate) const BACKOFF_CAP: Duration = Duration::from_millis(250);

/// Longest origin `Retry-After` faultline waits for; a longer one means "not now": no retry.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3);

/// What made the attempt a candidate for a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// The attempt failed, having got this far.
    Failure(FailureKind, Progress),
    /// The origin answered with this status.
    Status(u16),
}

/// What the decision looks at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Facts<'a> {
    /// Why a retry is considered.
    pub trigger: Trigger,
    /// The route's policy.
    pub policy: &'a RetryPolicy,
    /// The request method.
    pub method: &'a Method,
    /// The request carries `Idempotency-Key`.
    pub has_idempotency_key: bool,
    /// The request body no longer fits the replay buffer.
    pub body_truncated: bool,
    /// Attempts made so far, this one included.
    pub attempts_made: usize,
    /// A backend not tried yet is available.
    pub untried_backend: bool,
}

/// Whether the request is idempotent by method (RFC 9110 §9.2.2), or by `Idempotency-Key` on a
/// route that honours it.
pub(crate) fn idempotent(method: &Method, idempotency_key: bool) -> bool {
    idempotency_key
        || matches!(
            *method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        )
}

/// Whether the policy allows one more attempt. The retry budget is checked after this, so that
/// only retries that would really happen spend it.
pub(crate) fn allowed(f: Facts<'_>) -> bool {
    if f.attempts_made >= f.policy.attempts as usize {
        return false;
    }
    let replayable = || {
        idempotent(f.method, f.policy.idempotency_key && f.has_idempotency_key) && !f.body_truncated
    };
    match f.trigger {
        // Failing over only makes sense towards a backend that has not failed this request yet.
        Trigger::Failure(kind, progress) => {
            f.untried_backend
                && match (progress, kind.retry_safety()) {
                    (Progress::ResponseStarted, _) | (_, RetrySafety::Never) => false,
                    (Progress::NotSent, _) | (_, RetrySafety::AnyMethod) => true,
                    (Progress::Sent, RetrySafety::IdempotentOnly) => replayable(),
                }
        }
        // A status retry may go back to a backend already tried: after a pause, a transient
        // 503 may be gone.
        Trigger::Status(status) => f.policy.on_status.contains(&status) && replayable(),
    }
}

/// Whether the request makes another attempt: the policy must allow it, then, for a request a
/// backend may have processed, the upstream's retry budget must have room. Counts the retry, or
/// the refusal by the budget.
pub(crate) fn may_retry(session: &Session, ctx: &RequestCtx, trigger: Trigger) -> bool {
    let (Some(route), Some(pool)) = (ctx.route.as_deref(), ctx.pool()) else {
        return false;
    };
    // A gRPC call's messages may be acted on as they arrive, whatever its method says: it is
    // repeated only if nothing of it was sent (never on a status: its answer is a 200).
    if ctx.grpc && !matches!(trigger, Trigger::Failure(_, Progress::NotSent)) {
        return false;
    }
    let req = session.req_header();
    let allowed = allowed(Facts {
        trigger,
        policy: &route.retry,
        method: &req.method,
        has_idempotency_key: req.headers.contains_key("idempotency-key"),
        body_truncated: session.as_ref().retry_buffer_truncated(),
        attempts_made: ctx.attempts.count(),
        untried_backend: pool.has_untried(|i| ctx.attempts.tried(i)),
    });
    if !allowed {
        return false;
    }
    // A failover before anything was sent adds no work to the fleet, so only retries of
    // requests a backend may have processed spend the budget (Finagle's requeues vs retries).
    let spends_budget = !matches!(trigger, Trigger::Failure(_, Progress::NotSent));
    if spends_budget && !pool.budget.try_withdraw(route.retry.budget_percent) {
        pool.metrics
            .budget_exhausted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return false;
    }
    if let Some(m) = &ctx.metrics {
        m.retry(match trigger {
            Trigger::Failure(kind, _) => Some(kind),
            Trigger::Status(_) => None,
        });
    }
    true
}

/// The jittered pause before status-driven retry number `retry` (1 for the first retry).
pub(crate) fn backoff(retry: usize) -> Duration {
    let shift = u32::try_from(retry.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(8);
    let ceiling = BACKOFF_BASE.saturating_mul(1 << shift).min(BACKOFF_CAP);
    // Between half and all of the ceiling: spread retries without ever retrying at once.
    let half = ceiling / 2;
    half + rand::thread_rng().gen_range(Duration::ZERO..=half)
}

/// `Retry-After` as delay-seconds (RFC 9110 §10.2.3); an HTTP-date or garbage gives `None`.
pub(crate) fn retry_after(value: &[u8]) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u64>().ok().map(Duration::from_secs)
}

/// The pause before a status-driven retry, or `None` when the retry should not happen: the
/// origin asked for a longer wait than faultline honours, or the wait would not fit in the time
/// left before the route's deadline.
pub(crate) fn status_pause(
    retry: usize,
    origin_retry_after: Option<&[u8]>,
    time_left: Option<Duration>,
) -> Option<Duration> {
    let mut pause = backoff(retry);
    if let Some(asked) = origin_retry_after.and_then(retry_after) {
        if asked > MAX_RETRY_AFTER {
            return None;
        }
        pause = pause.max(asked);
    }
    match time_left {
        Some(left) if pause >= left => None,
        _ => Some(pause),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            on_status: vec![503],
            idempotency_key: true,
            budget_percent: 20,
        }
    }

    fn facts<'a>(trigger: Trigger, method: &'a Method, policy: &'a RetryPolicy) -> Facts<'a> {
        Facts {
            trigger,
            policy,
            method,
            has_idempotency_key: false,
            body_truncated: false,
            attempts_made: 1,
            untried_backend: true,
        }
    }

    #[test]
    fn not_sent_retries_any_method() {
        let p = policy();
        for m in [Method::GET, Method::POST, Method::PATCH] {
            for kind in [
                FailureKind::ConnectionRefused,
                FailureKind::ConnectionTimeout,
            ] {
                let t = Trigger::Failure(kind, Progress::NotSent);
                assert!(allowed(facts(t, &m, &p)));
            }
        }
    }

    #[test]
    fn sent_retries_only_idempotent() {
        let p = policy();
        let t = Trigger::Failure(FailureKind::HttpResponseTimeout, Progress::Sent);
        assert!(allowed(facts(t, &Method::GET, &p)));
        assert!(allowed(facts(t, &Method::PUT, &p)));
        assert!(!allowed(facts(t, &Method::POST, &p)));
        let keyed = Facts {
            has_idempotency_key: true,
            ..facts(t, &Method::POST, &p)
        };
        assert!(allowed(keyed));
        let not_honoured = RetryPolicy {
            idempotency_key: false,
            ..policy()
        };
        let keyed = Facts {
            has_idempotency_key: true,
            ..facts(t, &Method::POST, &not_honoured)
        };
        assert!(!allowed(keyed));
        let truncated = Facts {
            body_truncated: true,
            ..facts(t, &Method::PUT, &p)
        };
        assert!(!allowed(truncated));
    }

    #[test]
    fn never_after_response_started_or_when_spent() {
        let p = policy();
        let started = Trigger::Failure(
            FailureKind::HttpResponseIncomplete,
            Progress::ResponseStarted,
        );
        assert!(!allowed(facts(started, &Method::GET, &p)));
        let too_big = Trigger::Failure(FailureKind::HttpResponseHeaderSectionSize, Progress::Sent);
        assert!(!allowed(facts(too_big, &Method::GET, &p)));
        let refused = Trigger::Failure(FailureKind::ConnectionRefused, Progress::NotSent);
        let spent = Facts {
            attempts_made: 3,
            ..facts(refused, &Method::GET, &p)
        };
        assert!(!allowed(spent));
        let nowhere = Facts {
            untried_backend: false,
            ..facts(refused, &Method::GET, &p)
        };
        assert!(!allowed(nowhere));
    }

    #[test]
    fn status_retries_are_opt_in_and_idempotent_only() {
        let p = policy();
        assert!(allowed(facts(Trigger::Status(503), &Method::GET, &p)));
        assert!(!allowed(facts(Trigger::Status(502), &Method::GET, &p)));
        assert!(!allowed(facts(Trigger::Status(503), &Method::POST, &p)));
        let retried_everywhere = Facts {
            untried_backend: false,
            ..facts(Trigger::Status(503), &Method::GET, &p)
        };
        assert!(allowed(retried_everywhere));
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        for retry in 1..12 {
            let d = backoff(retry);
            assert!(d <= BACKOFF_CAP, "{d:?}");
            assert!(d >= BACKOFF_BASE / 2, "{d:?}");
        }
    }

    #[test]
    fn retry_after_rules() {
        assert_eq!(retry_after(b"2"), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(b" 0 "), Some(Duration::ZERO));
        assert_eq!(retry_after(b"Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(retry_after(b"-1"), None);
        assert_eq!(status_pause(1, Some(b"10"), None), None, "too long a wait");
        assert_eq!(
            status_pause(1, Some(b"2"), None),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            status_pause(1, Some(b"2"), Some(Duration::from_secs(1))),
            None,
            "does not fit the deadline"
        );
        let p = status_pause(1, None, None).unwrap();
        assert!(p <= BACKOFF_BASE);
    }
}
