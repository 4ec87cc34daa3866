//! The access log: one JSON object per request on the `log` target `access`, with every attempt.

use std::time::Duration;

use serde_json::{Value, json};

use crate::failure::{FailureKind, Source};
use crate::upstream::Pool;
use crate::upstream::attempt::Attempts;

/// The `log` target of access-log lines.
pub const TARGET: &str = "access";

/// Whether access-log lines are written at all (so that a disabled log costs nothing).
pub(crate) fn enabled() -> bool {
    log::log_enabled!(target: TARGET, log::Level::Info)
}

/// Everything one line says.
#[derive(Debug)]
pub(crate) struct Entry<'a> {
    /// Request id.
    pub request_id: &'a str,
    /// Method.
    pub method: &'a str,
    /// Host, without port.
    pub host: Option<&'a str>,
    /// Path.
    pub path: &'a str,
    /// Final status (499 when the client went away).
    pub status: u16,
    /// Who produced it.
    pub source: Source,
    /// The failure, if any.
    pub failure: Option<FailureKind>,
    /// The route's name.
    pub route: Option<&'a str>,
    /// The pool, to name upstream and backends.
    pub pool: Option<&'a Pool>,
    /// The attempts.
    pub attempts: &'a Attempts,
    /// A gRPC call's status code (the proxy's answer or the origin's), when known.
    pub grpc_status: Option<u8>,
    /// Time from the request header to the log line.
    pub duration: Duration,
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Entry<'_> {
    /// The JSON object.
    pub(crate) fn to_json(&self) -> Value {
        let attempts: Vec<Value> = self
            .attempts
            .iter()
            .map(|a| {
                let backend = self
                    .pool
                    .and_then(|p| p.backends().get(a.backend))
                    .map(|b| b.name());
                let status = match a.outcome {
                    crate::upstream::attempt::Outcome::Response(s) => Some(s),
                    _ => None,
                };
                json!({
                    "backend": backend,
                    "outcome": a.outcome.label(),
                    "status": status,
                    "progress": a.progress.as_str(),
                    "reused": a.reused,
                    "probe": a.probe,
                    "connect_ms": a.connect.map(millis),
                    "header_ms": a.header.map(millis),
                })
            })
            .collect();
        json!({
            "request_id": self.request_id,
            "method": self.method,
            "host": self.host,
            "path": self.path,
            "status": self.status,
            "source": self.source.as_str(),
            "failure": self.failure.map(FailureKind::as_str),
            "route": self.route,
            "upstream": self.pool.map(Pool::name),
            "attempts": attempts,
            "grpc_status": self.grpc_status,
            "duration_ms": millis(self.duration),
        })
    }

    /// Writes the line, when the `access` target is enabled.
    pub(crate) fn emit(&self) {
        if enabled() {
            log::info!(target: TARGET, "{}", self.to_json());
        }
    }
}
