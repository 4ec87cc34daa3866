//! Whether a failed attempt may be repeated on another backend (DESIGN §3).
//!
//! The failure kind says how far the request may have got; the method, the `Idempotency-Key`
//! opt-in, the replay buffer and the attempt budget of the route say whether repeating it is safe
//! and allowed.

use http::Method;

use crate::failure::{FailureKind, Progress, RetrySafety};

/// What the decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The failure of the attempt.
    pub kind: FailureKind,
    /// How far the request got.
    pub progress: Progress,
    /// The request method.
    pub method: &'a Method,
    /// The request carries `Idempotency-Key` and the route honours it.
    pub idempotency_key: bool,
    /// The request body no longer fits the replay buffer.
    pub body_truncated: bool,
    /// Attempts made so far, this one included.
    pub attempts_made: u32,
    /// The route's total attempt allowance.
    pub attempts_allowed: u32,
}

/// Whether the request is idempotent by method (RFC 9110 §9.2.2) or by `Idempotency-Key`.
pub fn idempotent(method: &Method, idempotency_key: bool) -> bool {
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

/// Decides one retry.
pub fn should_retry(f: Facts<'_>) -> bool {
    if f.attempts_made >= f.attempts_allowed {
        return false;
    }
    match (f.progress, f.kind.retry_safety()) {
        (Progress::ResponseStarted, _) | (_, RetrySafety::Never) => false,
        (Progress::NotSent, _) | (_, RetrySafety::AnyMethod) => true,
        (Progress::Sent, RetrySafety::IdempotentOnly) => {
            idempotent(f.method, f.idempotency_key) && !f.body_truncated
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(kind: FailureKind, progress: Progress, method: &Method) -> Facts<'_> {
        Facts {
            kind,
            progress,
            method,
            idempotency_key: false,
            body_truncated: false,
            attempts_made: 1,
            attempts_allowed: 3,
        }
    }

    #[test]
    fn not_sent_retries_any_method() {
        for m in [Method::GET, Method::POST, Method::PATCH] {
            assert!(should_retry(facts(
                FailureKind::ConnectionRefused,
                Progress::NotSent,
                &m
            )));
            assert!(should_retry(facts(
                FailureKind::ConnectionTimeout,
                Progress::NotSent,
                &m
            )));
        }
    }

    #[test]
    fn sent_retries_only_idempotent() {
        let kind = FailureKind::HttpResponseTimeout;
        assert!(should_retry(facts(kind, Progress::Sent, &Method::GET)));
        assert!(should_retry(facts(kind, Progress::Sent, &Method::PUT)));
        assert!(!should_retry(facts(kind, Progress::Sent, &Method::POST)));
        let keyed = Facts {
            idempotency_key: true,
            ..facts(kind, Progress::Sent, &Method::POST)
        };
        assert!(should_retry(keyed));
        let truncated = Facts {
            body_truncated: true,
            ..facts(kind, Progress::Sent, &Method::PUT)
        };
        assert!(!should_retry(truncated));
    }

    #[test]
    fn never_after_response_or_budget() {
        assert!(!should_retry(facts(
            FailureKind::HttpResponseIncomplete,
            Progress::ResponseStarted,
            &Method::GET
        )));
        assert!(!should_retry(facts(
            FailureKind::HttpResponseHeaderSectionSize,
            Progress::Sent,
            &Method::GET
        )));
        let spent = Facts {
            attempts_made: 3,
            ..facts(
                FailureKind::ConnectionRefused,
                Progress::NotSent,
                &Method::GET,
            )
        };
        assert!(!should_retry(spent));
    }
}
