//! Configuration: the YAML file (parsed strictly into its own shape, then validated) turned into the runtime model ([`Config`]).
//!
//! Loading never panics. A syntax or type error stops parsing and names its field path; every
//! semantic problem after that (unknown upstream, bad address, duplicate listener …) is collected,
//! so `faultline -t` reports them all at once.

mod file;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pingora::server::configuration::ServerConf;
use pingora::tls::ServerConfig;
use pingora::utils::tls::CertKey;

pub use crate::certificates::{Certificate, CertificateError, UnknownSni};
pub use file::{DemoBehavior, Protocol, Selection};

/// The validated configuration faultline runs from.
#[derive(Debug)]
pub struct Config {
    /// Pingora's server settings (`server:`).
    pub server: ServerConf,
    /// Client-facing listeners.
    pub listeners: Vec<Listener>,
    /// The admin listener address, if any.
    pub admin: Option<SocketAddr>,
    /// How proxy-generated responses look.
    pub error_pages: ErrorPages,
    /// Upstream pools; a route refers to one by index.
    pub upstreams: Vec<UpstreamConfig>,
    /// Routes in file order.
    pub routes: Vec<RouteConfig>,
    /// Peers trusted to send `X-Forwarded-For`.
    pub trusted_proxies: Vec<IpNet>,
    /// Limits on client connections.
    pub clients: ClientLimits,
    /// Built-in demo origins to start before the proxy.
    pub demo: Vec<DemoOrigin>,
    /// How `dns:` and `srv:` backends are resolved and refreshed.
    pub discovery: Discovery,
    /// Whether the file is reloaded when it changes (`watch: true`).
    pub watch: bool,
}

/// DNS service discovery settings (`discovery:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// Name servers asked; the system's configuration when empty.
    pub resolvers: Vec<SocketAddr>,
    /// Shortest time between two lookups of one name.
    pub min_refresh: Duration,
    /// Longest time between two lookups of one name.
    pub max_refresh: Duration,
    /// Time one lookup may take.
    pub timeout: Duration,
}

/// Where the addresses of discovered backends come from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackendSource {
    /// Every A and AAAA record of `host`, at `port`.
    Dns {
        /// The name looked up.
        host: String,
        /// The port of every address.
        port: u16,
    },
    /// The targets of the SRV records of `name`, with their ports and weights.
    Srv {
        /// The name looked up.
        name: String,
    },
}

impl fmt::Display for BackendSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendSource::Dns { host, port } => write!(f, "dns:{host}:{port}"),
            BackendSource::Srv { name } => write!(f, "srv:{name}"),
        }
    }
}

/// A `dns:` or `srv:` entry of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredBackends {
    /// What is looked up.
    pub source: BackendSource,
    /// The weight of each address (`dns:`); SRV records carry their own.
    pub weight: usize,
}

/// An IP network: an address and a prefix length (`10.0.0.0/8`, `::1/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    /// The network address.
    pub addr: std::net::IpAddr,
    /// The prefix length in bits.
    pub prefix: u8,
}

impl IpNet {
    /// Parses `ADDR/PREFIX`, or a bare address (a single host).
    pub fn parse(text: &str) -> Option<IpNet> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse().ok()?, p.parse().ok()?),
            None => {
                let addr: std::net::IpAddr = text.parse().ok()?;
                (addr, if addr.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if matches!(addr, std::net::IpAddr::V4(_)) {
            32
        } else {
            128
        };
        (prefix <= max).then_some(IpNet { addr, prefix })
    }

    /// Whether `ip` is inside the network.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr::{V4, V6};
        let ip = match ip {
            V6(v6) => v6.to_ipv4_mapped().map_or(V6(v6), V4),
            other => other,
        };
        match (self.addr, ip) {
            (V4(net), V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (V6(net), V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A client-facing listener.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Its address.
    pub address: SocketAddr,
    /// Its certificates and TLS policy, loaded and checked, when it terminates TLS.
    pub tls: Option<Arc<ListenerTls>>,
    /// Whether HTTP/2 is offered by ALPN (TLS listeners).
    pub http2: bool,
    /// Whether HTTP/2 with prior knowledge is served beside HTTP/1.1 (plain listeners).
    pub h2c: bool,
}

/// A TLS listener: its certificates, loaded and checked, and its policy. A reload reads the
/// files again and builds a new one; handshakes started before keep the one they began with.
#[derive(Debug)]
pub struct ListenerTls {
    /// Chosen by the client's SNI against their DNS names; the first is the default.
    pub certificates: Vec<Certificate>,
    /// What a client whose SNI names no certificate, or that sends none, gets.
    pub unknown_sni: UnknownSni,
    /// The lowest TLS version taken.
    pub min_version: TlsVersion,
    /// The cipher suites offered, by rustls' names, in order of preference.
    pub cipher_suites: Vec<String>,
    /// Client certificates (mTLS), when asked for.
    pub client_auth: Option<ClientAuth>,
    /// Whether clients may resume a session: rustls' in-memory session cache (256 sessions a
    /// listener) and the two TLS 1.3 tickets naming its entries sent after a full handshake.
    pub session_resumption: bool,
    /// The rustls configuration of the listener's handshakes, built from the above.
    pub(crate) server_config: Arc<ServerConfig>,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

impl TlsVersion {
    /// As written in the file: `1.2`, `1.3`.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "1.2",
            TlsVersion::Tls13 => "1.3",
        }
    }
}

/// Client certificates asked for by a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// The CA certificates a client certificate must be signed by.
    pub ca_file: PathBuf,
    /// Whether a client without a certificate is refused (else only one with a bad one is).
    pub required: bool,
}

/// Limits on client connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// Open client connections at most, when limited.
    pub max_connections: Option<usize>,
    /// Time to receive a whole request header.
    pub header_timeout: Duration,
    /// Idle time allowed between requests on a kept-alive connection.
    pub keepalive_timeout: Duration,
    /// Longest pause in the middle of a request body.
    pub body_timeout: Duration,
    /// Longest time a response write to a client may make no progress.
    pub send_timeout: Duration,
}

impl From<&file::ClientsFile> for ClientLimits {
    fn from(c: &file::ClientsFile) -> Self {
        ClientLimits {
            max_connections: c.max_connections,
            header_timeout: c.header_timeout,
            keepalive_timeout: c.keepalive_timeout,
            body_timeout: c.body_timeout,
            send_timeout: c.send_timeout,
        }
    }
}

impl Default for ClientLimits {
    /// The defaults of the file's `clients:` section.
    fn default() -> Self {
        ClientLimits::from(&file::ClientsFile::default())
    }
}

/// Settings of proxy-generated responses.
#[derive(Debug, Clone, Default)]
pub struct ErrorPages {
    /// Link shown to visitors on error pages.
    pub support_url: Option<String>,
    /// Whether to send `Proxy-Status`.
    pub proxy_status: bool,
    /// Whether backend addresses may reach clients (`next-hop`).
    pub reveal_backends: bool,
    /// HTML templates by status code, already read from their files.
    pub templates: BTreeMap<u16, String>,
}

/// One upstream pool.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The name routes use.
    pub name: String,
    /// Its static backends (`address:`).
    pub backends: Vec<BackendConfig>,
    /// Its `dns:` and `srv:` entries, resolved at run time.
    pub discovered: Vec<DiscoveredBackends>,
    /// Selection algorithm.
    pub selection: Selection,
    /// Connection timeouts.
    pub timeouts: Timeouts,
    /// Passive health settings, when configured.
    pub passive_health: Option<PassiveHealth>,
    /// Active health settings, when configured.
    pub active_health: Option<ActiveHealth>,
    /// TLS towards the backends, when configured.
    pub tls: Option<UpstreamTls>,
    /// Requests in flight at most, when limited.
    pub max_in_flight: Option<u32>,
    /// How header names are spelled towards the backends.
    pub header_case: HeaderCase,
    /// The HTTP version spoken to the backends.
    pub protocol: Protocol,
    /// Streams at most on one HTTP/2 connection to a backend (`protocol: h2` or `h2c`).
    pub h2_max_streams: usize,
}

/// TLS towards an upstream's backends.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// Server name sent and verified.
    pub sni: String,
    /// Whether certificates are verified.
    pub verify_cert: bool,
    /// The certificate presented to backends that ask for one (mTLS), loaded and checked.
    pub client_cert: Option<Arc<CertKey>>,
}

/// One backend of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Its address.
    pub address: SocketAddr,
    /// Relative share of traffic.
    pub weight: usize,
}

/// Upstream timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Waiting for the response header (and each later read).
    pub response_header: Duration,
    /// Each write towards the upstream.
    pub write_idle: Duration,
    /// Idle time of a pooled keep-alive connection.
    pub keepalive_idle: Duration,
    /// Idle time of a tunnel (WebSocket or another upgrade), each way, after the `101`; for an
    /// upgrade request it also bounds the wait for the `101` (see `tunnel`).
    pub tunnel_idle: Duration,
}

/// Passive health (outlier detection) settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassiveHealth {
    /// Gateway failures in a row that eject a backend.
    pub consecutive_failures: u32,
    /// First ejection time.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
    /// Cap on the ejected share of the pool.
    pub max_ejected_percent: u8,
    /// Origin statuses that count as failures.
    pub failure_statuses: Vec<u16>,
    /// Failure-rate ejection, when configured.
    pub failure_rate: Option<FailureRate>,
}

/// Failure-rate ejection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureRate {
    /// Failure share (percent) that ejects.
    pub percent: u8,
    /// The window the share is taken over.
    pub window: Duration,
    /// Fewer attempts than this in the window never eject.
    pub min_requests: u64,
}

/// Active health check settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveHealth {
    /// HTTP path, or a TCP check when absent.
    pub path: Option<String>,
    /// Time between checks.
    pub interval: Duration,
    /// Time allowed for one check.
    pub timeout: Duration,
    /// Status an HTTP check expects.
    pub expected_status: u16,
    /// Successes in a row that mark a down backend up.
    pub healthy_after: usize,
    /// Failures in a row that mark an up backend down.
    pub unhealthy_after: usize,
}

/// How a route matches the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// Exactly this host (lowercase, no port).
    Exact(String),
    /// Any host ending in this suffix, which starts with a dot (`*.example.com` → `.example.com`).
    Suffix(String),
}

/// One validated route: what it matches, and the route it leads to.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Host match; any host when `None`.
    pub host: Option<HostMatch>,
    /// Path prefix, always starting with `/`.
    pub path_prefix: String,
    /// Methods the route takes; any when empty.
    pub methods: Vec<http::Method>,
    /// Headers that must be present: with exactly this value, or any value for `None`.
    pub headers: Vec<(http::HeaderName, Option<http::HeaderValue>)>,
    /// Where a matching request goes, and with which policy.
    pub route: Arc<Route>,
}

/// A route: where a request goes and with which policy. What a [`Router`](crate::Router)
/// returns; how a request is matched to it is the router's business.
#[derive(Debug, Clone)]
pub struct Route {
    /// Name for metrics and logs.
    pub name: String,
    /// The name of the upstream it sends to.
    pub upstream: String,
    /// Bound on the whole request.
    pub deadline: Option<Duration>,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Origin statuses replaced by the proxy's page.
    pub intercept_origin_errors: Vec<u16>,
    /// For `consistent_hash` pools: the request header hashed instead of the path.
    pub hash_header: Option<http::HeaderName>,
    /// Largest request body taken, in bytes, when limited.
    pub max_request_body: Option<u64>,
}

impl Route {
    /// A route named `name` to upstream `upstream`, with the default policy: three attempts,
    /// no status retries, no deadline. A starting point for custom routers.
    pub fn to_upstream(name: &str, upstream: &str) -> Route {
        Route {
            name: name.to_string(),
            upstream: upstream.to_string(),
            deadline: None,
            retry: RetryPolicy {
                attempts: 3,
                on_status: Vec::new(),
                idempotency_key: false,
                budget_percent: 20,
            },
            intercept_origin_errors: Vec::new(),
            hash_header: None,
            max_request_body: None,
        }
    }
}

/// Retry policy of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total tries, the first included (at least 1).
    pub attempts: u32,
    /// Origin statuses that trigger a retry.
    pub on_status: Vec<u16>,
    /// Whether `Idempotency-Key` makes a request retryable after it was sent.
    pub idempotency_key: bool,
    /// Share of recent requests that may be retries.
    pub budget_percent: u8,
}

/// A demo origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoOrigin {
    /// Loopback address to listen on.
    pub address: SocketAddr,
    /// What it does.
    pub behavior: DemoBehavior,
}

/// One problem in a configuration, at a field path such as `routes[1].upstream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Where: a dotted path with `[i]` indices; empty for the file as a whole.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file was read but is invalid; every problem found is listed.
    Invalid(Vec<FieldError>),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            ConfigError::Invalid(errors) => {
                for (i, e) in errors.iter().enumerate() {
                    if i > 0 {
                        f.write_str("\n")?;
                    }
                    write!(f, "{e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            ConfigError::Invalid(_) => None,
        }
    }
}

impl ConfigError {
    /// The field errors, empty for a read error.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid(errors) => errors,
        }
    }
}

impl Config {
    /// Reads and validates a file. Relative template paths resolve against the file's folder.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::from_yaml_in(&text, base)
    }

    /// Parses and validates YAML text; relative template paths resolve against the current folder.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        Self::from_yaml_in(text, Path::new("."))
    }

    fn from_yaml_in(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let deserializer = serde_norway::Deserializer::from_str(text);
        let file: file::FileConfig = serde_path_to_error::deserialize(deserializer)
            .map_err(|e| ConfigError::Invalid(vec![validate::serde_error(e)]))?;
        validate::validate(file, base).map_err(ConfigError::Invalid)
    }
}

/// How header names are spelled on the way to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderCase {
    /// Lowercase, as HAProxy and Envoy send them (names are case-insensitive, RFC 9110 §5.1),
    /// except a dozen common names Pingora writes in their usual capitals (`Host`,
    /// `Content-Length`, `Content-Type`, `Connection`, ...). The proxy's own headers go straight
    /// into the header map: one reservation, no name parsed.
    #[default]
    Canonical,
    /// Each name as the client spelled it, for origins that wrongly depend on it. Pingora keeps
    /// the spelling in a second map, and each added header is parsed and inserted into both.
    Preserve,
}
