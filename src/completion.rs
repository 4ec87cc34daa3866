//! The end of a request, as one event. The request's counters and its access-log line are both
//! written from it, by the gateway for a request Pingora served and by `connections` for one
//! refused before Pingora parsed it: they cannot disagree, and nothing else reports a request's
//! end.

use std::time::Duration;

use serde_json::{Value, json};

use crate::access_log;
use crate::failure::{FailureKind, Source};
use crate::metrics::RouteMetrics;
use crate::tunnel;
use crate::upstream::Pool;
use crate::upstream::attempt::Attempts;

/// A request that ended: everything its counters and its access-log line say.
#[derive(Debug)]
pub(crate) struct Completion<'a> {
    /// The route's counters (the unmatched row when no route was found).
    pub metrics: Option<&'a RouteMetrics>,
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
    /// The tunnel the request became, if it did: logged as it closes.
    pub tunnel: Option<tunnel::Summary>,
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Completion<'_> {
    /// The JSON object.
    fn to_json(&self) -> Value {
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
        let mut line = json!({
            "request_id": self.request_id,
            "method": self.method,
            "host": self.host,
            "path": self.path,
            "status": self.status,
            "source": self.source.as_str(),
            "failure": self.failure.map(FailureKind::as_str),
            "route": self.route,
            "upstream": self.pool.map(Pool::name),
            "grpc_status": self.grpc_status,
            "attempts": attempts,
            "duration_ms": millis(self.duration),
        });
        if let (Some(t), Some(fields)) = (self.tunnel, line.as_object_mut()) {
            fields.insert("tunnel".into(), t.to_json());
        }
        line
    }

    /// Counts the request and writes its access-log line.
    pub(crate) fn record(&self) {
        if let Some(m) = self.metrics {
            m.request(self.status, self.source, self.failure);
        }
        access_log::write(|| self.to_json());
    }
}
