//! Prometheus metrics, kept in plain atomics indexed by enums and status codes.
//!
//! Every label comes from the configuration (route, upstream, backend) or from a closed set
//! (failure kind, status code, source), so the series are bounded. Handles are resolved once:
//! a request holds an `Arc` to its route's counters and indexes arrays, with no string building
//! and no lock on the request path. [`render`] writes the text exposition format.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::failure::{FailureKind, Source};

/// Status codes are stored by value; anything outside 0..=999 cannot come from `http`.
const STATUSES: usize = 1000;

/// Attempt outcomes: `response`, then every failure kind.
const OUTCOMES: usize = 1 + FailureKind::ALL.len();

/// Retry reasons: `status`, then every failure kind.
const REASONS: usize = 1 + FailureKind::ALL.len();

/// Upper bounds of the latency histograms, in seconds.
pub(crate) const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

fn counters<const N: usize>() -> Box<[AtomicU64; N]> {
    Box::new(std::array::from_fn(|_| AtomicU64::new(0)))
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn status_index(status: u16) -> usize {
    usize::from(status).min(STATUSES - 1)
}

/// A latency histogram with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            inc(&self.buckets[i]);
        }
        inc(&self.count);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, count) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Counters of one backend.
#[derive(Debug)]
pub struct BackendMetrics {
    attempts: Box<[AtomicU64; OUTCOMES]>,
    responses: Box<[AtomicU64; STATUSES]>,
    /// Time to connect.
    pub connect: Histogram,
    /// Time from the start of an attempt to the response header.
    pub header: Histogram,
}

impl Default for BackendMetrics {
    fn default() -> Self {
        BackendMetrics {
            attempts: counters(),
            responses: counters(),
            connect: Histogram::default(),
            header: Histogram::default(),
        }
    }
}

impl BackendMetrics {
    /// An attempt got a response header with `status`.
    pub fn response(&self, status: u16) {
        inc(&self.responses[status_index(status)]);
    }

    /// An attempt ended with its response complete. Counted when the attempt ends, not at the
    /// header: one whose body then fails ends with that failure, and each attempt has one
    /// outcome.
    pub fn answered(&self) {
        inc(&self.attempts[0]);
    }

    /// An attempt failed with `kind`.
    pub fn failure(&self, kind: FailureKind) {
        inc(&self.attempts[1 + kind.index()]);
    }

    /// Attempts that ended with `kind` (`None`: with a response).
    pub fn attempts(&self, kind: Option<FailureKind>) -> u64 {
        let i = kind.map_or(0, |k| 1 + k.index());
        self.attempts[i].load(Ordering::Relaxed)
    }

    /// Response headers with a status in `range` (say `500..600`).
    pub(crate) fn responses_in(&self, range: std::ops::Range<u16>) -> u64 {
        let (start, end) = (status_index(range.start), status_index(range.end));
        self.responses[start..end]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// The protocol of a client handshake: TLS, or HTTP/2's connection preface and settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// The TLS handshake of a connection to a TLS listener.
    Tls,
    /// The HTTP/2 preface and first SETTINGS, after ALPN chose `h2`.
    H2,
}

impl Handshake {
    /// Every protocol, in the order of the exposition.
    pub const ALL: [Handshake; 2] = [Handshake::Tls, Handshake::H2];

    /// The `protocol` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Handshake::Tls => "tls",
            Handshake::H2 => "h2",
        }
    }
}

/// Counters of client connections.
#[derive(Debug, Default)]
pub struct ClientCounters {
    open: AtomicUsize,
    over_limit: AtomicU64,
    header_timeouts: AtomicU64,
    handshake_failures: [AtomicU64; Handshake::ALL.len()],
}

impl ClientCounters {
    /// A connection opened; returns how many are open now.
    pub fn opened(&self) -> usize {
        self.open.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A connection closed; returns how many are still open.
    pub fn closed(&self) -> usize {
        self.open.fetch_sub(1, Ordering::Relaxed).saturating_sub(1)
    }

    /// A connection came beyond `max_connections`.
    pub fn refused_over_limit(&self) {
        inc(&self.over_limit);
    }

    /// A request header did not arrive in time.
    pub fn header_timed_out(&self) {
        inc(&self.header_timeouts);
    }

    /// A client handshake failed or did not complete within `clients.header_timeout`.
    pub fn handshake_failed(&self, protocol: Handshake) {
        inc(&self.handshake_failures[protocol as usize]);
    }

    /// Client handshakes of `protocol` that failed or timed out.
    pub fn handshake_failures(&self, protocol: Handshake) -> u64 {
        self.handshake_failures[protocol as usize].load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections refused because `max_connections` were open.
    pub fn over_limit(&self) -> u64 {
        self.over_limit.load(Ordering::Relaxed)
    }

    /// Requests whose header did not arrive in time.
    pub fn header_timeouts(&self) -> u64 {
        self.header_timeouts.load(Ordering::Relaxed)
    }
}

/// Counters of one upstream.
#[derive(Debug, Default)]
pub struct UpstreamMetrics {
    /// Retries refused because the budget was spent.
    pub budget_exhausted: AtomicU64,
    /// Tunnels open now (a gauge, kept by `tunnel::Tunnel`).
    pub tunnels_open: AtomicU64,
}

/// Counters of one route.
#[derive(Debug)]
pub struct RouteMetrics {
    name: String,
    requests: [Box<[AtomicU64; STATUSES]>; 3],
    retries: Box<[AtomicU64; REASONS]>,
    /// Requests that ended in a failure, by kind.
    failures: Box<[AtomicU64; FailureKind::ALL.len()]>,
    client_aborts: AtomicU64,
    /// gRPC calls the proxy answered itself, by gRPC status code (0 to 16).
    grpc_answers: Box<[AtomicU64; GRPC_CODES]>,
}

/// gRPC status codes: 0 (`OK`) to 16 (`UNAUTHENTICATED`).
const GRPC_CODES: usize = 17;

impl RouteMetrics {
    fn new(name: &str) -> Self {
        RouteMetrics {
            name: name.to_string(),
            requests: [counters(), counters(), counters()],
            retries: counters(),
            failures: counters(),
            client_aborts: AtomicU64::new(0),
            grpc_answers: counters(),
        }
    }

    /// A request finished with `status`, produced by `source`, and ended in `failure` if it
    /// did (the proxy's answer, a response cut after its header, a client gone).
    pub fn request(&self, status: u16, source: Source, failure: Option<FailureKind>) {
        inc(&self.requests[source as usize][status_index(status)]);
        if let Some(kind) = failure {
            inc(&self.failures[kind.index()]);
        }
        if source == Source::Client {
            inc(&self.client_aborts);
        }
    }

    /// The proxy answered a gRPC call itself with status `code`.
    pub fn grpc_answer(&self, code: u8) {
        if let Some(c) = self.grpc_answers.get(usize::from(code)) {
            inc(c);
        }
    }

    /// A retry happened for `kind` (`None`: an origin status in `on_status`).
    pub fn retry(&self, kind: Option<FailureKind>) {
        inc(&self.retries[kind.map_or(0, |k| 1 + k.index())]);
    }

    /// The route's name (`none` for requests no route took).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Requests that `source` finished, by status class: index 0 for 1xx to 4 for 5xx (a
    /// status outside 100..=599 counts with its nearest class).
    pub(crate) fn requests_by_class(&self, source: Source) -> [u64; 5] {
        let mut classes = [0; 5];
        for (status, c) in self.requests[source as usize].iter().enumerate() {
            let v = c.load(Ordering::Relaxed);
            if v > 0 {
                classes[(status / 100).clamp(1, 5) - 1] += v;
            }
        }
        classes
    }

    /// Retries so far, whatever their reason.
    pub(crate) fn retries_total(&self) -> u64 {
        self.retries.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// A counter family by route and one more label, `label`: its help, its type, and a line for
/// each count above zero that `counts` hands to its callback.
fn by_route<'a>(
    out: &mut String,
    routes: impl Iterator<Item = &'a Arc<RouteMetrics>>,
    name: &str,
    help: &str,
    label: &str,
    counts: impl Fn(&RouteMetrics, &mut dyn FnMut(&dyn std::fmt::Display, &AtomicU64)),
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for r in routes {
        counts(r, &mut |value, c| {
            let v = c.load(Ordering::Relaxed);
            if v > 0 {
                let _ = writeln!(
                    out,
                    "{name}{{route=\"{}\",{label}=\"{value}\"}} {v}",
                    Label(&r.name)
                );
            }
        });
    }
}

/// A label value as the exposition format writes it: `\\`, `"` and line feeds escaped. Route
/// and upstream names come from the configuration and may hold any of them.
pub(crate) struct Label<'a>(pub(crate) &'a str);

impl std::fmt::Display for Label<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['\\', '"', '\n']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'\\' => "\\\\",
                b'"' => "\\\"",
                _ => "\\n",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// Route counters by name; requests no configured route matched count under `none`.
#[derive(Debug, Clone)]
pub struct RouteTable {
    by_name: HashMap<String, Arc<RouteMetrics>, ahash::RandomState>,
    order: Vec<Arc<RouteMetrics>>,
    unmatched: Arc<RouteMetrics>,
}

impl RouteTable {
    /// Counters for these route names; routes `previous` (the table before a reload) also had
    /// keep their counts.
    pub fn new<'a>(
        names: impl IntoIterator<Item = &'a str>,
        previous: Option<&RouteTable>,
    ) -> Self {
        let mut by_name = HashMap::default();
        let mut order = Vec::new();
        for name in names {
            if !by_name.contains_key(name) {
                let m = previous
                    .and_then(|p| p.by_name.get(name).cloned())
                    .unwrap_or_else(|| Arc::new(RouteMetrics::new(name)));
                by_name.insert(name.to_string(), m.clone());
                order.push(m);
            }
        }
        RouteTable {
            by_name,
            order,
            unmatched: previous.map_or_else(
                || Arc::new(RouteMetrics::new("none")),
                |p| p.unmatched.clone(),
            ),
        }
    }

    /// Every route's counters in configuration order, then those of requests no route took.
    pub(crate) fn all(&self) -> impl Iterator<Item = &RouteMetrics> {
        self.order
            .iter()
            .chain(std::iter::once(&self.unmatched))
            .map(|r| &**r)
    }

    /// The counters of route `name`; a name outside the configuration (a custom router's) counts
    /// under `none`, keeping the label set bounded.
    pub fn get(&self, name: Option<&str>) -> Arc<RouteMetrics> {
        name.and_then(|n| self.by_name.get(n))
            .unwrap_or(&self.unmatched)
            .clone()
    }
}

const SOURCES: [Source; 3] = [Source::Origin, Source::Proxy, Source::Client];

/// One backend as the exposition sees it.
pub(crate) struct BackendView<'a> {
    /// Backend name.
    pub name: &'a str,
    /// Its counters.
    pub metrics: &'a BackendMetrics,
    /// Whether it takes traffic now.
    pub up: bool,
    /// Passive-health ejections so far, by reason.
    pub ejections: [(&'static str, u64); 3],
}

/// One upstream as the exposition sees it.
pub(crate) struct UpstreamView<'a> {
    /// Upstream name.
    pub name: &'a str,
    /// Its counters.
    pub metrics: &'a UpstreamMetrics,
    /// Its backends.
    pub backends: Vec<BackendView<'a>>,
}

/// Writes every series in the Prometheus text format.
pub(crate) fn render(routes: &RouteTable, upstreams: &[UpstreamView<'_>]) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let all_routes = || {
        routes
            .order
            .iter()
            .chain(std::iter::once(&routes.unmatched))
    };

    out.push_str("# HELP faultline_requests_total Requests by final status and who produced it.\n");
    out.push_str("# TYPE faultline_requests_total counter\n");
    for r in all_routes() {
        for (source, counts) in SOURCES.iter().zip(&r.requests) {
            for (status, c) in counts.iter().enumerate() {
                let v = c.load(Ordering::Relaxed);
                if v > 0 {
                    let _ = writeln!(
                        out,
                        "faultline_requests_total{{route=\"{}\",status=\"{status}\",source=\"{}\"}} {v}",
                        Label(&r.name),
                        source.as_str()
                    );
                }
            }
        }
    }

    by_route(
        &mut out,
        all_routes(),
        "faultline_retries_total",
        "Retries by reason (a failure kind, or status).",
        "reason",
        |r, line| {
            for (i, c) in r.retries.iter().enumerate() {
                match i.checked_sub(1) {
                    None => line(&"status", c),
                    Some(k) => line(&FailureKind::ALL[k], c),
                }
            }
        },
    );
    by_route(
        &mut out,
        all_routes(),
        "faultline_request_failures_total",
        "Requests that ended in a failure, by kind.",
        "kind",
        |r, line| {
            for (kind, c) in FailureKind::ALL.iter().zip(r.failures.iter()) {
                line(kind, c);
            }
        },
    );
    by_route(
        &mut out,
        all_routes(),
        "faultline_grpc_proxy_answers_total",
        "gRPC calls the proxy answered itself, by grpc-status.",
        "grpc_status",
        |r, line| {
            for (code, c) in r.grpc_answers.iter().enumerate() {
                line(&code, c);
            }
        },
    );

    out.push_str("# HELP faultline_client_aborts_total Requests the client abandoned.\n");
    out.push_str("# TYPE faultline_client_aborts_total counter\n");
    for r in all_routes() {
        let _ = writeln!(
            out,
            "faultline_client_aborts_total{{route=\"{}\"}} {}",
            Label(&r.name),
            r.client_aborts.load(Ordering::Relaxed)
        );
    }

    out.push_str(
        "# HELP faultline_retry_budget_exhausted_total Retries refused by the retry budget.\n",
    );
    out.push_str("# TYPE faultline_retry_budget_exhausted_total counter\n");
    for u in upstreams {
        let _ = writeln!(
            out,
            "faultline_retry_budget_exhausted_total{{upstream=\"{}\"}} {}",
            Label(u.name),
            u.metrics.budget_exhausted.load(Ordering::Relaxed)
        );
    }

    out.push_str(
        "# HELP faultline_tunnels_open Tunnels (WebSocket or another upgrade) open now.\n",
    );
    out.push_str("# TYPE faultline_tunnels_open gauge\n");
    for u in upstreams {
        let _ = writeln!(
            out,
            "faultline_tunnels_open{{upstream=\"{}\"}} {}",
            Label(u.name),
            u.metrics.tunnels_open.load(Ordering::Relaxed)
        );
    }

    out.push_str("# HELP faultline_upstream_attempts_total Attempts by backend and outcome (response or a failure kind).\n");
    out.push_str("# TYPE faultline_upstream_attempts_total counter\n");
    for u in upstreams {
        for BackendView {
            name: backend,
            metrics: m,
            ..
        } in &u.backends
        {
            for (i, c) in m.attempts.iter().enumerate() {
                let v = c.load(Ordering::Relaxed);
                // `response` always, so a healthy backend shows up with a zero.
                if v > 0 || i == 0 {
                    let outcome = if i == 0 {
                        "response"
                    } else {
                        FailureKind::ALL[i - 1].as_str()
                    };
                    let _ = writeln!(
                        out,
                        "faultline_upstream_attempts_total{{upstream=\"{}\",backend=\"{}\",outcome=\"{outcome}\"}} {v}",
                        Label(u.name),
                        Label(backend)
                    );
                }
            }
        }
    }

    out.push_str(
        "# HELP faultline_upstream_responses_total Response headers received, by status.\n",
    );
    out.push_str("# TYPE faultline_upstream_responses_total counter\n");
    for u in upstreams {
        for BackendView {
            name: backend,
            metrics: m,
            ..
        } in &u.backends
        {
            for (status, c) in m.responses.iter().enumerate() {
                let v = c.load(Ordering::Relaxed);
                if v > 0 {
                    let _ = writeln!(
                        out,
                        "faultline_upstream_responses_total{{upstream=\"{}\",backend=\"{}\",status=\"{status}\"}} {v}",
                        Label(u.name),
                        Label(backend)
                    );
                }
            }
        }
    }

    out.push_str("# HELP faultline_backend_up Whether a backend takes traffic (not ejected, passing its active check).\n");
    out.push_str("# TYPE faultline_backend_up gauge\n");
    for u in upstreams {
        for b in &u.backends {
            let _ = writeln!(
                out,
                "faultline_backend_up{{upstream=\"{}\",backend=\"{}\"}} {}",
                Label(u.name),
                Label(b.name),
                u8::from(b.up)
            );
        }
    }

    out.push_str("# HELP faultline_backend_ejections_total Passive-health ejections.\n");
    out.push_str("# TYPE faultline_backend_ejections_total counter\n");
    for u in upstreams {
        for b in &u.backends {
            for (reason, n) in b.ejections {
                let _ = writeln!(
                    out,
                    "faultline_backend_ejections_total{{upstream=\"{}\",backend=\"{}\",reason=\"{reason}\"}} {n}",
                    Label(u.name),
                    Label(b.name)
                );
            }
        }
    }

    for (name, help, pick) in [
        (
            "faultline_upstream_connect_seconds",
            "Time to connect to a backend.",
            (|m: &BackendMetrics| &m.connect) as fn(&BackendMetrics) -> &Histogram,
        ),
        (
            "faultline_upstream_header_seconds",
            "Time from the start of an attempt to the response header.",
            |m: &BackendMetrics| &m.header,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for u in upstreams {
            for BackendView {
                name: backend,
                metrics: m,
                ..
            } in &u.backends
            {
                let labels = format!(
                    "upstream=\"{}\",backend=\"{}\"",
                    Label(u.name),
                    Label(backend)
                );
                pick(m).render(&mut out, name, &labels);
            }
        }
    }
    out
}

/// Writes the reload series: reloads by result, and whether the last one succeeded.
pub(crate) fn render_reloads(out: &mut String, ok: u64, failed: u64, last_ok: bool) {
    out.push_str("# HELP faultline_config_reloads_total Configuration reloads by result.\n");
    out.push_str("# TYPE faultline_config_reloads_total counter\n");
    let _ = writeln!(
        out,
        "faultline_config_reloads_total{{result=\"success\"}} {ok}\nfaultline_config_reloads_total{{result=\"failure\"}} {failed}"
    );
    out.push_str("# HELP faultline_config_last_reload_successful Whether the last reload succeeded: 0 from a failed reload (the previous configuration still runs) until one succeeds; 1 before any.\n");
    out.push_str("# TYPE faultline_config_last_reload_successful gauge\n");
    let _ = writeln!(
        out,
        "faultline_config_last_reload_successful {}",
        u8::from(last_ok)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(Label("plain").to_string(), "plain");
        assert_eq!(Label("a\"b\\c\nd").to_string(), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn renders_what_was_counted() {
        let routes = RouteTable::new(["api"], None);
        let api = routes.get(Some("api"));
        api.request(502, Source::Proxy, Some(FailureKind::ConnectionRefused));
        api.request(200, Source::Origin, None);
        api.request(200, Source::Origin, None);
        api.retry(Some(FailureKind::ConnectionRefused));
        routes.get(Some("custom")).request(
            404,
            Source::Proxy,
            Some(FailureKind::DestinationNotFound),
        );
        let backend = BackendMetrics::default();
        backend.failure(FailureKind::ConnectionRefused);
        backend.response(503);
        backend.answered();
        backend.connect.observe(Duration::from_millis(3));
        let upstream = UpstreamMetrics::default();
        let text = render(
            &routes,
            &[UpstreamView {
                name: "app",
                metrics: &upstream,
                backends: vec![BackendView {
                    name: "127.0.0.1:1",
                    metrics: &backend,
                    up: false,
                    ejections: [
                        ("consecutive_failures", 2),
                        ("failure_rate", 0),
                        ("probe_failed", 1),
                    ],
                }],
            }],
        );
        for line in [
            "faultline_requests_total{route=\"api\",status=\"200\",source=\"origin\"} 2",
            "faultline_requests_total{route=\"api\",status=\"502\",source=\"proxy\"} 1",
            "faultline_requests_total{route=\"none\",status=\"404\",source=\"proxy\"} 1",
            "faultline_request_failures_total{route=\"api\",kind=\"connection_refused\"} 1",
            "faultline_request_failures_total{route=\"none\",kind=\"destination_not_found\"} 1",
            "faultline_retries_total{route=\"api\",reason=\"connection_refused\"} 1",
            "faultline_client_aborts_total{route=\"api\"} 0",
            "faultline_retry_budget_exhausted_total{upstream=\"app\"} 0",
            "faultline_upstream_attempts_total{upstream=\"app\",backend=\"127.0.0.1:1\",outcome=\"response\"} 1",
            "faultline_upstream_attempts_total{upstream=\"app\",backend=\"127.0.0.1:1\",outcome=\"connection_refused\"} 1",
            "faultline_upstream_responses_total{upstream=\"app\",backend=\"127.0.0.1:1\",status=\"503\"} 1",
            "faultline_upstream_connect_seconds_bucket{upstream=\"app\",backend=\"127.0.0.1:1\",le=\"0.0025\"} 0",
            "faultline_upstream_connect_seconds_bucket{upstream=\"app\",backend=\"127.0.0.1:1\",le=\"0.005\"} 1",
            "faultline_upstream_connect_seconds_count{upstream=\"app\",backend=\"127.0.0.1:1\"} 1",
            "faultline_backend_up{upstream=\"app\",backend=\"127.0.0.1:1\"} 0",
            "faultline_backend_ejections_total{upstream=\"app\",backend=\"127.0.0.1:1\",reason=\"consecutive_failures\"} 2",
            "faultline_backend_ejections_total{upstream=\"app\",backend=\"127.0.0.1:1\",reason=\"probe_failed\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }

    #[test]
    fn reloads_render_with_the_last_result() {
        let mut text = String::new();
        render_reloads(&mut text, 2, 1, false);
        for line in [
            "faultline_config_reloads_total{result=\"success\"} 2",
            "faultline_config_reloads_total{result=\"failure\"} 1",
            "# TYPE faultline_config_last_reload_successful gauge",
            "faultline_config_last_reload_successful 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }
}
