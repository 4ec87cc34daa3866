//! The YAML file model: exactly what a user writes, parsed strictly.
//!
//! Every struct denies unknown keys so a typo is an error that names its path. Values that need
//! more than a type check (addresses, cross references) stay strings here and are checked in
//! `validate`, which collects every problem instead of stopping at the first.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    /// Pingora's own `ServerConf`, checked key by key in validation.
    #[serde(default)]
    pub server: Option<serde_norway::Value>,
    /// Where the proxy accepts client connections.
    pub listeners: Vec<ListenerFile>,
    /// The admin listener (metrics, status).
    #[serde(default)]
    pub admin: Option<AdminFile>,
    /// How proxy-generated responses look.
    #[serde(default)]
    pub error_pages: ErrorPagesFile,
    /// Named pools of backends.
    pub upstreams: BTreeMap<String, UpstreamFile>,
    /// Routes, matched by host and longest path prefix.
    #[serde(default)]
    pub routes: Vec<RouteFile>,
    /// Peers whose `X-Forwarded-For` is extended; every other client's is replaced.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Limits on client connections.
    #[serde(default)]
    pub clients: ClientsFile,
    /// Built-in demo origins, for trying faultline out without any server of your own.
    #[serde(default)]
    pub demo: Option<DemoFile>,
    /// How `dns:` and `srv:` backends are resolved and refreshed.
    #[serde(default)]
    pub discovery: DiscoveryFile,
    /// Reload when this file changes (also `--watch`).
    #[serde(default)]
    pub watch: bool,
}

/// DNS service discovery.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct DiscoveryFile {
    /// Name servers (`IP:port`) asked; the system's configuration when empty.
    pub resolvers: Vec<String>,
    /// Shortest time between two lookups of a name, whatever its TTL.
    #[serde(deserialize_with = "duration")]
    pub min_refresh: Duration,
    /// Longest time between two lookups of a name, whatever its TTL.
    #[serde(deserialize_with = "duration")]
    pub max_refresh: Duration,
    /// Time one lookup may take before it counts as failed.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Default for DiscoveryFile {
    fn default() -> Self {
        DiscoveryFile {
            resolvers: Vec::new(),
            min_refresh: Duration::from_secs(1),
            max_refresh: Duration::from_secs(60),
            timeout: Duration::from_secs(2),
        }
    }
}

/// One client-facing listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListenerFile {
    /// `IP:port`.
    pub address: String,
    /// Terminate TLS here (HTTP/2 and HTTP/1.1 negotiated by ALPN).
    #[serde(default)]
    pub tls: Option<ListenerTlsFile>,
    /// On a plain listener, also serve HTTP/2 with prior knowledge (h2c) beside HTTP/1.1.
    #[serde(default)]
    pub h2c: bool,
}

/// A TLS listener's certificates and policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListenerTlsFile {
    /// PEM certificate chain, leaf first: shorthand for one entry of `certificates`.
    #[serde(default)]
    pub cert: Option<String>,
    /// PEM private key of `cert`.
    #[serde(default)]
    pub key: Option<String>,
    /// Certificates chosen by SNI against their DNS names; the first is the default.
    #[serde(default)]
    pub certificates: Option<Vec<CertificateFile>>,
    /// Offer HTTP/2 by ALPN; default true.
    #[serde(default = "yes")]
    pub http2: bool,
    /// Lowest TLS version taken: "1.2" (default) or "1.3".
    #[serde(default)]
    pub min_version: Option<VersionText>,
    /// Cipher suites offered, by rustls' names; default: every suite of the crypto provider.
    #[serde(default)]
    pub cipher_suites: Option<Vec<String>>,
    /// What a client whose SNI names no certificate (or that sends none) gets.
    #[serde(default)]
    pub unknown_sni: UnknownSniFile,
    /// PEM CA certificates that sign the client certificates taken (mTLS).
    #[serde(default)]
    pub client_ca: Option<String>,
    /// Whether a client certificate is required or optional; with `client_ca`, default required.
    #[serde(default)]
    pub client_auth: Option<ClientAuthFile>,
    /// Let clients resume a session (a short handshake); default true. false: every handshake
    /// is a full one, no session is kept and no ticket sent.
    #[serde(default = "yes")]
    pub session_resumption: bool,
}

/// A certificate chain and its key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CertificateFile {
    /// PEM certificate chain, leaf first.
    pub cert: String,
    /// PEM private key.
    pub key: String,
}

/// A TLS version as written: `"1.2"`, or the number `1.2` when unquoted.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum VersionText {
    /// Quoted.
    Text(String),
    /// Unquoted, read by YAML as a number.
    Number(f64),
}

/// `unknown_sni:` of a TLS listener.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum UnknownSniFile {
    /// The first certificate.
    #[default]
    Default,
    /// The handshake is refused.
    Refuse,
}

/// `client_auth:` of a TLS listener.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum ClientAuthFile {
    /// A client without a certificate signed by `client_ca` is refused.
    Required,
    /// A client may send no certificate; one it sends must be signed by `client_ca`.
    Optional,
}

/// An upstream's `tls:`: `true`/`false`, or settings (which mean TLS is on).
#[derive(Debug, Default)]
pub(super) enum UpstreamTlsFile {
    /// Plain TCP.
    #[default]
    Off,
    /// TLS.
    On,
    /// TLS with these settings.
    With(UpstreamTlsSettingsFile),
}

impl UpstreamTlsFile {
    pub(super) fn enabled(&self) -> bool {
        !matches!(self, UpstreamTlsFile::Off)
    }
}

/// Settings of TLS towards an upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpstreamTlsSettingsFile {
    /// The certificate presented to backends that require one (mTLS).
    #[serde(default)]
    pub client_cert: Option<CertificateFile>,
}

impl<'de> Deserialize<'de> for UpstreamTlsFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UpstreamTlsFile;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("true, false or a map such as { client_cert: { cert, key } }")
            }

            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(if v {
                    UpstreamTlsFile::On
                } else {
                    UpstreamTlsFile::Off
                })
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                UpstreamTlsSettingsFile::deserialize(serde::de::value::MapAccessDeserializer::new(
                    map,
                ))
                .map(UpstreamTlsFile::With)
            }
        }
        d.deserialize_any(Visitor)
    }
}

fn yes() -> bool {
    true
}

/// The admin listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AdminFile {
    /// `IP:port`.
    pub address: String,
}

/// Error page settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct ErrorPagesFile {
    /// A link shown on HTML error pages and in problem+json `type`.
    pub support_url: Option<String>,
    /// Whether responses carry a `Proxy-Status` header.
    pub proxy_status: bool,
    /// Whether backend addresses may appear in client-visible text (`next-hop`).
    pub reveal_backends: bool,
    /// Per-status HTML templates, read from files: `{ "502": "conf/pages/502.html" }`.
    pub templates: BTreeMap<String, String>,
}

impl Default for ErrorPagesFile {
    fn default() -> Self {
        ErrorPagesFile {
            support_url: None,
            proxy_status: true,
            reveal_backends: false,
            templates: BTreeMap::new(),
        }
    }
}

/// Limits on client connections, for every listener together.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientsFile {
    /// Open client connections at most; beyond it, a new connection's first request gets a 503
    /// and the connection is closed. Unlimited when absent.
    pub max_connections: Option<usize>,
    /// Time a client has to send a whole request header, from its first byte (from the
    /// connection's start for the first request); then 408 and the connection closes. It also
    /// bounds, from the connection's start, the TLS handshake and the HTTP/2 preface, and each
    /// HTTP/2 header block from its first frame.
    #[serde(deserialize_with = "duration")]
    pub header_timeout: Duration,
    /// How long a kept-alive client connection may sit idle between requests (HTTP/2: with no
    /// stream open; then GOAWAY and close).
    #[serde(deserialize_with = "duration")]
    pub keepalive_timeout: Duration,
    /// How long a client may pause while sending a request body; then 408. A pause that
    /// outlasts the upstream's `response_header` timeout is a 408 then (the backend waited on
    /// the client, and is not blamed).
    #[serde(deserialize_with = "duration")]
    pub body_timeout: Duration,
    /// How long a write of the response to an HTTP/1 client may make no progress (a client that
    /// stops reading); then the connection closes and the request is logged as a client abort.
    #[serde(deserialize_with = "duration")]
    pub send_timeout: Duration,
}

impl Default for ClientsFile {
    fn default() -> Self {
        ClientsFile {
            max_connections: None,
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
        }
    }
}

/// A pool of backends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpstreamFile {
    /// The backends; at least one.
    pub backends: Vec<BackendFile>,
    /// How a backend is picked.
    #[serde(default)]
    pub selection: Selection,
    /// Timeouts applied to every connection to this pool.
    #[serde(default)]
    pub timeouts: TimeoutsFile,
    /// Health checking.
    #[serde(default)]
    pub health: Option<HealthFile>,
    /// Requests in flight to this upstream at most; beyond it, 503 at once.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// Connect to the backends over TLS: `true`, or `{ client_cert: { cert, key } }` for
    /// backends that require a client certificate.
    #[serde(default)]
    pub tls: UpstreamTlsFile,
    /// The TLS server name (SNI, and the name the certificate must carry); required with `tls`.
    #[serde(default)]
    pub sni: Option<String>,
    /// Verify the backends' certificates (against `server.ca_file`, or the system roots);
    /// default true.
    #[serde(default = "yes")]
    pub verify_cert: bool,
    /// Send each header name to the backends as the client spelled it; by default names go
    /// lowercase (a dozen common ones, `Host` and `Content-Length` among them, capitalised),
    /// which is cheaper.
    #[serde(default)]
    pub preserve_header_case: bool,
    /// The HTTP version spoken to the backends.
    #[serde(default)]
    pub protocol: Protocol,
    /// HTTP/2 connection settings, with `protocol: h2` or `h2c`.
    #[serde(default)]
    pub h2: Option<H2File>,
}

/// The HTTP version an upstream's backends speak.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1 (over TLS with `tls: true`).
    #[default]
    Http1,
    /// HTTP/2 over TLS, chosen by ALPN (`tls: true` required).
    H2,
    /// HTTP/2 over cleartext TCP with prior knowledge (no `tls`).
    H2c,
}

/// HTTP/2 connections to an upstream's backends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct H2File {
    /// Streams at most on one connection before another is opened; default 100.
    #[serde(default = "hundred")]
    pub max_streams: usize,
}

fn hundred() -> usize {
    100
}

/// One backend.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BackendFile {
    /// `IP:port`.
    #[serde(default)]
    pub address: Option<String>,
    /// `NAME:port`: every A and AAAA record of the name, at that port.
    #[serde(default)]
    pub dns: Option<String>,
    /// An SRV name: its targets with their ports and weights.
    #[serde(default)]
    pub srv: Option<String>,
    /// Relative share of traffic (of each address, for `dns:`); default 1. An SRV record
    /// carries its own.
    #[serde(default)]
    pub weight: Option<usize>,
}

/// Backend selection algorithm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Weighted round robin.
    #[default]
    RoundRobin,
    /// Weighted random.
    Random,
    /// Ketama consistent hashing on the request's host and path.
    ConsistentHash,
}

/// Upstream timeouts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct TimeoutsFile {
    /// TCP connect.
    #[serde(deserialize_with = "duration")]
    pub connect: Duration,
    /// Waiting for the response header, and every later read on the connection.
    #[serde(deserialize_with = "duration")]
    pub response_header: Duration,
    /// Each write of the request to the upstream.
    #[serde(deserialize_with = "duration")]
    pub write_idle: Duration,
    /// How long an idle upstream connection stays in the keep-alive pool.
    #[serde(deserialize_with = "duration")]
    pub keepalive_idle: Duration,
    /// How long a tunnel (after a `101 Switching Protocols`) may carry no byte either way.
    #[serde(deserialize_with = "duration")]
    pub tunnel_idle: Duration,
}

impl Default for TimeoutsFile {
    fn default() -> Self {
        TimeoutsFile {
            connect: Duration::from_secs(1),
            response_header: Duration::from_secs(15),
            write_idle: Duration::from_secs(30),
            keepalive_idle: Duration::from_secs(60),
            // Envoy's stream idle default: above the 60 s of nginx, an AWS load balancer or most
            // heartbeats (Socket.IO 25 s, Phoenix 30 s), so a socket that lives behind those
            // lives here; short enough that a peer gone without a FIN is let go within minutes,
            // and that an upgrade whose backend never answers (the wait for the `101` shares
            // this timeout in Pingora) is answered 504 within minutes, not an hour.
            tunnel_idle: Duration::from_secs(300),
        }
    }
}

/// Health checking of one pool.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HealthFile {
    /// Active checks.
    #[serde(default)]
    pub active: Option<ActiveHealthFile>,
    /// Passive checks (outlier detection).
    #[serde(default)]
    pub passive: Option<PassiveHealthFile>,
}

/// Active health checks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ActiveHealthFile {
    /// HTTP path to request; a TCP connect check when absent.
    #[serde(default)]
    pub path: Option<String>,
    /// Time between checks.
    #[serde(deserialize_with = "duration", default = "five_seconds")]
    pub interval: Duration,
    /// Time allowed for one check.
    #[serde(deserialize_with = "duration", default = "one_second")]
    pub timeout: Duration,
    /// Status an HTTP check expects.
    #[serde(default = "two_hundred")]
    pub expected_status: u16,
    /// Successes in a row that mark a down backend up.
    #[serde(default = "one")]
    pub healthy_after: usize,
    /// Failures in a row that mark an up backend down.
    #[serde(default = "one")]
    pub unhealthy_after: usize,
}

fn two_hundred() -> u16 {
    200
}

/// Passive health (outlier detection).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PassiveHealthFile {
    /// Gateway failures in a row that eject a backend.
    #[serde(default = "five")]
    pub consecutive_failures: u32,
    /// First ejection time; multiplied by the number of ejections so far.
    #[serde(deserialize_with = "duration", default = "thirty_seconds")]
    pub base_ejection: Duration,
    /// Longest ejection.
    #[serde(deserialize_with = "duration", default = "five_minutes")]
    pub max_ejection: Duration,
    /// Never eject more than this share of the pool.
    #[serde(default = "fifty")]
    pub max_ejected_percent: u8,
    /// Origin statuses that count as failures.
    #[serde(default)]
    pub failure_statuses: Vec<u16>,
    /// Eject on a failure rate over a window, too.
    #[serde(default)]
    pub failure_rate: Option<FailureRateFile>,
}

/// Failure-rate ejection.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FailureRateFile {
    /// Failure share (percent) that ejects.
    pub percent: u8,
    /// The window the share is taken over.
    #[serde(deserialize_with = "duration", default = "thirty_seconds")]
    pub window: Duration,
    /// Fewer attempts than this in the window never eject.
    #[serde(default = "twenty")]
    pub min_requests: u64,
}

fn twenty() -> u64 {
    20
}

fn five() -> u32 {
    5
}
fn fifty() -> u8 {
    50
}
fn one_second() -> Duration {
    Duration::from_secs(1)
}
fn five_seconds() -> Duration {
    Duration::from_secs(5)
}
fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}
fn five_minutes() -> Duration {
    Duration::from_secs(300)
}

/// One route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteFile {
    /// A name for metrics and logs; `route<N>` when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// What the route matches.
    #[serde(default, rename = "match")]
    pub matcher: MatchFile,
    /// The upstream it sends to.
    pub upstream: String,
    /// Bound on the whole request, all attempts together.
    #[serde(default, deserialize_with = "optional_duration")]
    pub deadline: Option<Duration>,
    /// Retry policy.
    #[serde(default)]
    pub retry: RetryFile,
    /// Origin statuses replaced by the proxy's own error page.
    #[serde(default)]
    pub intercept_origin_errors: Vec<u16>,
    /// For `consistent_hash` pools: hash on this request header instead of the path.
    #[serde(default)]
    pub hash_header: Option<String>,
    /// Largest request body the route takes (`10MiB`, `512KiB`, `1000`); 413 beyond it.
    #[serde(default, deserialize_with = "optional_byte_size")]
    pub max_request_body: Option<u64>,
}

/// Route matching.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MatchFile {
    /// Exact host, or `*.suffix`.
    #[serde(default)]
    pub host: Option<String>,
    /// Path prefix; the longest matching prefix wins.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Request methods the route takes; any when empty.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Request headers that must be present with exactly these values (`"*"`: any value).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Retry policy of a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RetryFile {
    /// Total tries, the first included.
    pub attempts: u32,
    /// Origin statuses that trigger a retry (idempotent requests only).
    pub on_status: Vec<u16>,
    /// Treat a request carrying `Idempotency-Key` as idempotent.
    pub idempotency_key: bool,
    /// Retries per upstream at most this share of its recent requests.
    pub budget_percent: u8,
}

impl Default for RetryFile {
    fn default() -> Self {
        RetryFile {
            attempts: 3,
            on_status: Vec::new(),
            idempotency_key: false,
            budget_percent: 20,
        }
    }
}

/// Demo origins served by faultline itself.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DemoFile {
    /// Origins to start before the proxy.
    pub origins: Vec<DemoOriginFile>,
}

/// One demo origin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DemoOriginFile {
    /// `IP:port` to listen on (loopback).
    pub address: String,
    /// How it behaves.
    pub behavior: DemoBehavior,
}

/// What a demo origin does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DemoBehavior {
    /// Answers 200 with a short text naming itself.
    Healthy,
    /// Accepts and reads the request, then never answers.
    Stall,
    /// Answers 503 with its own body.
    Unavailable,
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

fn optional_byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(Some(n)),
        Size::Text(text) => parse_byte_size(&text)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// Parses a byte size: `1000`, `64KiB`, `10MiB`, `1GiB`, or the decimal `KB`/`MB`/`GB`.
pub(super) fn parse_byte_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "invalid size \"{text}\": unknown unit \"{other}\" (B, KB, KiB, MB, MiB, GB, GiB)"
            ));
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("invalid size \"{text}\": expected a number of bytes such as 10MiB"))
}

/// The longest duration a setting takes: no timeout or interval needs more, and a clock reading
/// plus a duration of hundreds of billions of years (which the parser takes) overflows.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Parses `250ms`, `5s`, `1m30s`; a bare number is refused because its unit would be a guess.
pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid duration \"{text}\": a unit is required (\"{trimmed}s\", \"{trimmed}ms\")"
        ));
    }
    let duration = humantime::parse_duration(trimmed)
        .map_err(|e| format!("invalid duration \"{text}\": {e}"))?;
    if duration > MAX_DURATION {
        return Err(format!(
            "invalid duration \"{text}\": longer than the most a setting takes (365 days)"
        ));
    }
    Ok(duration)
}

fn one() -> usize {
    1
}
