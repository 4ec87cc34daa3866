//! File model → runtime model, collecting every problem with its field path.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pingora::server::configuration::ServerConf;

use super::file::{self, FileConfig};
use super::{
    ActiveHealth, BackendConfig, BackendSource, ClientLimits, Config, DemoOrigin,
    DiscoveredBackends, Discovery, ErrorPages, FailureRate, FieldError, HeaderCase, HostMatch,
    IpNet, Listener, PassiveHealth, RetryPolicy, Route, RouteConfig, Timeouts, UpstreamConfig,
    UpstreamTls,
};

mod tls;

/// Collects errors while walking the file.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn address(&mut self, path: &str, text: &str) -> Option<SocketAddr> {
        match text.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.push(
                    path,
                    format!("invalid address \"{text}\": expected IP:port, such as 127.0.0.1:8080"),
                );
                None
            }
        }
    }

    fn statuses(&mut self, path: &str, statuses: &[u16]) {
        for (i, s) in statuses.iter().enumerate() {
            if !(400..=599).contains(s) {
                self.push(
                    format!("{path}[{i}]"),
                    format!("{s} is not an error status (400 to 599)"),
                );
            }
        }
    }

    fn percent(&mut self, path: &str, value: u8) {
        if value > 100 {
            self.push(path, format!("{value} is more than 100 percent"));
        }
    }
}

/// Turns a serde error into a field error: `path: problem (line L, column C)`. An unknown key is
/// reported at its own path (`routes[2].retry.atempts: unknown field, expected …`), which is
/// where the user has to look.
pub(super) fn serde_error(e: serde_path_to_error::Error<serde_norway::Error>) -> FieldError {
    let mut path = e.path().to_string();
    if path == "." {
        path.clear();
    }
    let location = e.inner().location();
    let mut message = e.inner().to_string();
    // serde_norway prefixes its own (coarser) path; ours is exact.
    if let Some((prefix, rest)) = message.split_once(": ")
        && !prefix.contains(' ')
        && path.starts_with(prefix)
    {
        message = rest.to_string();
    }
    if let Some(loc) = &location {
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        if let Some(stripped) = message.strip_suffix(&suffix) {
            message = stripped.to_string();
        }
    }
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((key, expected)) = rest.split_once('`')
    {
        if !path.ends_with(key) {
            path = if path.is_empty() {
                key.to_string()
            } else {
                format!("{path}.{key}")
            };
        }
        message = format!("unknown field{expected}");
    }
    if let Some(loc) = location {
        message = format!("{message} (line {}, column {})", loc.line(), loc.column());
    }
    FieldError { path, message }
}

pub(super) fn validate(file: FileConfig, base: &Path) -> Result<Config, Vec<FieldError>> {
    let mut errors = Errors::default();

    let server = server_conf(file.server, &mut errors);
    if let Some(ca) = &server.ca_file {
        tls::check_ca_file("server.ca_file", ca, &mut errors);
    }

    if file.listeners.is_empty() {
        errors.push("listeners", "at least one listener is required");
    }
    let mut listeners = Vec::with_capacity(file.listeners.len());
    let mut seen = HashSet::new();
    for (i, l) in file.listeners.iter().enumerate() {
        let path = format!("listeners[{i}].address");
        let tls = l
            .tls
            .as_ref()
            .and_then(|t| tls::listener(&format!("listeners[{i}].tls"), t, base, &mut errors));
        if l.h2c && l.tls.is_some() {
            errors.push(
                format!("listeners[{i}].h2c"),
                "only for a plain listener: a TLS listener offers HTTP/2 by ALPN (tls.http2)",
            );
        }
        if let Some(address) = errors.address(&path, &l.address) {
            if !seen.insert(address) {
                errors.push(
                    path,
                    format!("{address} is already used by another listener"),
                );
            }
            listeners.push(Listener {
                address,
                tls,
                http2: l.tls.as_ref().is_some_and(|t| t.http2),
                h2c: l.h2c && l.tls.is_none(),
            });
        }
    }
    let admin = file.admin.as_ref().and_then(|a| {
        let addr = errors.address("admin.address", &a.address)?;
        if seen.contains(&addr) {
            errors.push(
                "admin.address",
                format!("{addr} is already used by a listener"),
            );
        }
        Some(addr)
    });

    let error_pages = error_pages(file.error_pages, base, &mut errors);

    if file.upstreams.is_empty() {
        errors.push("upstreams", "at least one upstream is required");
    }
    let mut upstreams = Vec::with_capacity(file.upstreams.len());
    for (name, u) in file.upstreams {
        upstreams.push(upstream(name, u, base, &mut errors));
    }

    let routes: Vec<RouteConfig> = file
        .routes
        .into_iter()
        .enumerate()
        .map(|(i, r)| route(i, r, &upstreams, server.max_retries, &mut errors))
        .collect();

    let trusted_proxies = file
        .trusted_proxies
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let net = IpNet::parse(t);
            if net.is_none() {
                errors.push(
                    format!("trusted_proxies[{i}]"),
                    format!("\"{t}\" is not an IP address or a network such as 10.0.0.0/8"),
                );
            }
            net
        })
        .collect();
    let clients = clients(&file.clients, &mut errors);
    let discovery = discovery(&file.discovery, &mut errors);
    let demo = file
        .demo
        .map(|d| demo_origins(d, &seen, &mut errors))
        .unwrap_or_default();

    if !errors.0.is_empty() {
        return Err(errors.0);
    }
    Ok(Config {
        server,
        listeners,
        admin,
        error_pages,
        upstreams,
        routes,
        trusted_proxies,
        clients,
        demo,
        discovery,
        watch: file.watch,
    })
}

fn discovery(d: &file::DiscoveryFile, errors: &mut Errors) -> Discovery {
    let resolvers = d
        .resolvers
        .iter()
        .enumerate()
        .filter_map(|(i, r)| errors.address(&format!("discovery.resolvers[{i}]"), r))
        .collect();
    for (field, value) in [
        ("min_refresh", d.min_refresh),
        ("max_refresh", d.max_refresh),
        ("timeout", d.timeout),
    ] {
        if value.is_zero() {
            errors.push(format!("discovery.{field}"), "must be more than zero");
        }
    }
    if d.max_refresh < d.min_refresh {
        errors.push(
            "discovery.max_refresh",
            "must be at least discovery.min_refresh",
        );
    }
    Discovery {
        resolvers,
        min_refresh: d.min_refresh,
        max_refresh: d.max_refresh,
        timeout: d.timeout,
    }
}

/// Whether `host` is a DNS name faultline can look up: dot-separated labels of letters,
/// digits, '-' and '_' (SRV names start with `_service._proto`).
fn dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn clients(c: &file::ClientsFile, errors: &mut Errors) -> ClientLimits {
    if c.max_connections == Some(0) {
        errors.push("clients.max_connections", "must be at least 1");
    }
    if c.header_timeout.is_zero() {
        errors.push("clients.header_timeout", "must be more than zero");
    }
    if c.keepalive_timeout.is_zero() {
        errors.push(
            "clients.keepalive_timeout",
            "must be more than zero (a kept-alive connection needs some idle time)",
        );
    }
    if c.body_timeout.is_zero() {
        errors.push("clients.body_timeout", "must be more than zero");
    }
    if c.send_timeout.is_zero() {
        errors.push("clients.send_timeout", "must be more than zero");
    }
    ClientLimits::from(c)
}

/// Pingora's `ServerConf` accepts unknown keys silently; faultline does not, so every key given
/// must be one that `ServerConf` knows.
///
/// `grace_period_seconds` bounds the drain on `SIGTERM`; faultline's default fits Kubernetes'
/// 30 s before SIGKILL, where Pingora's is 300 s.
///
/// `fast_timeout_to_tokio_threshold_seconds` defaults to 0: every timeout of a second or more
/// (connect, response header, keep-alive, pool idle) is a tokio timer, not one of Pingora's
/// "fast" timers. Measured under callgrind (BENCHMARKS.md, "The per-core gap to nginx"), the fast
/// timers cost faultline 2.2k to 6.9k instructions per request more (96.3k on a quiet machine,
/// 101.1k on a loaded one, against 94.1k either way) and keep a thread waking every millisecond.
/// A file that names the key keeps its value (`null`: Pingora's timers for every duration).
fn server_conf(value: Option<serde_norway::Value>, errors: &mut Errors) -> ServerConf {
    let threshold_given = matches!(&value, Some(serde_norway::Value::Mapping(m))
        if m.contains_key("fast_timeout_to_tokio_threshold_seconds"));
    let mut conf = pingora_server_conf(value, errors);
    conf.grace_period_seconds = conf
        .grace_period_seconds
        .or(Some(crate::lifecycle::DEFAULT_DRAIN_SECONDS));
    if !threshold_given {
        conf.fast_timeout_to_tokio_threshold_seconds = Some(0);
    }
    conf
}

fn pingora_server_conf(value: Option<serde_norway::Value>, errors: &mut Errors) -> ServerConf {
    let Some(value) = value else {
        return ServerConf::default();
    };
    let known: HashSet<String> = match serde_norway::to_value(ServerConf::default()) {
        Ok(serde_norway::Value::Mapping(m)) => m
            .keys()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect(),
        _ => HashSet::new(),
    };
    match &value {
        serde_norway::Value::Mapping(m) => {
            for key in m.keys() {
                match key.as_str() {
                    Some(k) if known.contains(k) => {}
                    Some(k) => errors.push(format!("server.{k}"), "unknown field"),
                    None => errors.push("server", "keys must be strings"),
                }
            }
        }
        serde_norway::Value::Null => return ServerConf::default(),
        _ => {
            errors.push("server", "expected a mapping");
            return ServerConf::default();
        }
    }
    match serde_path_to_error::deserialize::<_, ServerConf>(value) {
        Ok(conf) => conf,
        Err(e) => {
            let path = e.path().to_string();
            errors.push(format!("server.{path}"), e.inner().to_string());
            ServerConf::default()
        }
    }
}

fn error_pages(f: file::ErrorPagesFile, base: &Path, errors: &mut Errors) -> ErrorPages {
    if let Some(url) = &f.support_url
        && !(url.starts_with("https://") || url.starts_with("http://") || url.starts_with('/'))
    {
        errors.push(
            "error_pages.support_url",
            format!("\"{url}\" is not an http(s) URL or an absolute path"),
        );
    }
    let mut templates = BTreeMap::new();
    for (key, file_name) in &f.templates {
        let path = format!("error_pages.templates.{key}");
        let status = match key.parse::<u16>() {
            Ok(s) if (400..=599).contains(&s) => s,
            _ => {
                errors.push(
                    &path,
                    format!("\"{key}\" is not an error status (400 to 599)"),
                );
                continue;
            }
        };
        let full = base.join(file_name);
        match std::fs::read_to_string(&full) {
            Ok(text) => {
                templates.insert(status, text);
            }
            Err(e) => errors.push(&path, format!("cannot read {}: {e}", full.display())),
        }
    }
    ErrorPages {
        support_url: f.support_url,
        proxy_status: f.proxy_status,
        reveal_backends: f.reveal_backends,
        templates,
    }
}

fn upstream(
    name: String,
    u: file::UpstreamFile,
    base: &Path,
    errors: &mut Errors,
) -> UpstreamConfig {
    let at = format!("upstreams.{name}");
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        errors.push(
            &at,
            "an upstream name uses letters, digits, '-', '_' and '.' only",
        );
    }
    if u.backends.is_empty() {
        errors.push(format!("{at}.backends"), "at least one backend is required");
    }
    let mut backends = Vec::with_capacity(u.backends.len());
    let mut discovered = Vec::new();
    let mut seen = HashSet::new();
    let mut seen_sources = HashSet::new();
    for (i, b) in u.backends.iter().enumerate() {
        let entry = format!("{at}.backends[{i}]");
        if b.weight == Some(0) {
            errors.push(format!("{entry}.weight"), "weight must be at least 1");
        }
        let weight = b.weight.unwrap_or(1).max(1);
        match (&b.address, &b.dns, &b.srv) {
            (Some(text), None, None) => {
                let path = format!("{entry}.address");
                if let Some(address) = errors.address(&path, text) {
                    if !seen.insert(address) {
                        errors.push(&path, format!("{address} is listed twice in this upstream"));
                    }
                    backends.push(BackendConfig { address, weight });
                }
            }
            (None, Some(text), None) => {
                let path = format!("{entry}.dns");
                let parsed = text
                    .rsplit_once(':')
                    .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
                    .filter(|(host, port)| dns_name(host) && *port != 0);
                match parsed {
                    Some((host, port)) => {
                        let source = BackendSource::Dns {
                            host: host.to_ascii_lowercase(),
                            port,
                        };
                        if !seen_sources.insert(source.clone()) {
                            errors.push(
                                &path,
                                format!("\"{text}\" is listed twice in this upstream"),
                            );
                        }
                        discovered.push(DiscoveredBackends { source, weight });
                    }
                    None => errors.push(
                        path,
                        format!(
                            "invalid name \"{text}\": expected NAME:port, such as api.internal:8080"
                        ),
                    ),
                }
            }
            (None, None, Some(name)) => {
                let path = format!("{entry}.srv");
                if !dns_name(name) {
                    errors.push(
                        &path,
                        format!("invalid name \"{name}\": expected an SRV name such as _http._tcp.api.service.consul"),
                    );
                } else {
                    let source = BackendSource::Srv {
                        name: name.to_ascii_lowercase(),
                    };
                    if !seen_sources.insert(source.clone()) {
                        errors.push(
                            &path,
                            format!("\"{name}\" is listed twice in this upstream"),
                        );
                    }
                    if b.weight.is_some() {
                        errors.push(
                            format!("{entry}.weight"),
                            "an SRV record carries its own weight",
                        );
                    }
                    discovered.push(DiscoveredBackends { source, weight });
                }
            }
            _ => errors.push(entry, "a backend is exactly one of address, dns or srv"),
        }
    }
    let t = u.timeouts;
    for (field, value) in [
        ("connect", t.connect),
        ("response_header", t.response_header),
        ("write_idle", t.write_idle),
        ("tunnel_idle", t.tunnel_idle),
    ] {
        if value.is_zero() {
            errors.push(format!("{at}.timeouts.{field}"), "must be more than zero");
        }
    }
    let timeouts = Timeouts {
        connect: t.connect,
        response_header: t.response_header,
        write_idle: t.write_idle,
        keepalive_idle: t.keepalive_idle,
        tunnel_idle: t.tunnel_idle,
    };
    if u.max_in_flight == Some(0) {
        errors.push(format!("{at}.max_in_flight"), "must be at least 1");
    }
    let client_cert = match &u.tls {
        file::UpstreamTlsFile::With(settings) => settings
            .client_cert
            .as_ref()
            .and_then(|c| tls::client_cert(&format!("{at}.tls.client_cert"), c, base, errors)),
        _ => None,
    };
    let tls = match (u.tls.enabled(), u.sni) {
        (true, Some(sni)) if pingora::tls::ServerName::try_from(sni.clone()).is_ok() => {
            Some(UpstreamTls {
                sni,
                verify_cert: u.verify_cert,
                client_cert,
            })
        }
        (true, Some(sni)) => {
            errors.push(
                format!("{at}.sni"),
                format!("\"{sni}\" is not a server name"),
            );
            None
        }
        (true, None) => {
            errors.push(format!("{at}.sni"), "required when tls is true");
            None
        }
        (false, Some(_)) => {
            errors.push(format!("{at}.sni"), "only used with tls: true");
            None
        }
        (false, None) => None,
    };
    let h2_max_streams = protocol(&at, u.protocol, u.tls.enabled(), u.h2.as_ref(), errors);
    let (active_health, passive_health) = match u.health {
        None => (None, None),
        Some(h) => (
            h.active.map(|a| active(&at, a, errors)),
            h.passive.map(|p| passive(&at, p, errors)),
        ),
    };
    UpstreamConfig {
        name,
        backends,
        discovered,
        selection: u.selection,
        timeouts,
        passive_health,
        active_health,
        tls,
        max_in_flight: u.max_in_flight,
        header_case: if u.preserve_header_case {
            HeaderCase::Preserve
        } else {
            HeaderCase::Canonical
        },
        protocol: u.protocol,
        h2_max_streams,
    }
}

/// Checks an upstream's `protocol` against its `tls` and `h2` settings; the streams allowed on
/// one HTTP/2 connection.
fn protocol(
    at: &str,
    protocol: file::Protocol,
    tls: bool,
    h2: Option<&file::H2File>,
    errors: &mut Errors,
) -> usize {
    use file::Protocol;
    match (protocol, tls) {
        (Protocol::H2, false) => errors.push(
            format!("{at}.protocol"),
            "h2 is HTTP/2 over TLS (tls: true); use h2c for cleartext HTTP/2",
        ),
        (Protocol::H2c, true) => errors.push(
            format!("{at}.protocol"),
            "h2c is cleartext HTTP/2; use h2 with tls: true",
        ),
        _ => {}
    }
    let Some(h2) = h2 else {
        return 100;
    };
    if protocol == Protocol::Http1 {
        errors.push(format!("{at}.h2"), "only used with protocol: h2 or h2c");
    }
    if h2.max_streams == 0 {
        errors.push(format!("{at}.h2.max_streams"), "must be at least 1");
    }
    h2.max_streams.max(1)
}

fn active(at: &str, a: file::ActiveHealthFile, errors: &mut Errors) -> ActiveHealth {
    if let Some(p) = &a.path
        && !p.starts_with('/')
    {
        errors.push(
            format!("{at}.health.active.path"),
            format!("\"{p}\" must start with '/'"),
        );
    }
    if a.interval.is_zero() {
        errors.push(
            format!("{at}.health.active.interval"),
            "must be more than zero",
        );
    }
    if a.timeout.is_zero() {
        errors.push(
            format!("{at}.health.active.timeout"),
            "must be more than zero",
        );
    }
    if !(100..=599).contains(&a.expected_status) {
        errors.push(
            format!("{at}.health.active.expected_status"),
            format!("{} is not an HTTP status", a.expected_status),
        );
    }
    for (field, value) in [
        ("healthy_after", a.healthy_after),
        ("unhealthy_after", a.unhealthy_after),
    ] {
        if value == 0 {
            errors.push(format!("{at}.health.active.{field}"), "must be at least 1");
        }
    }
    ActiveHealth {
        path: a.path,
        interval: a.interval,
        timeout: a.timeout,
        expected_status: a.expected_status,
        healthy_after: a.healthy_after.max(1),
        unhealthy_after: a.unhealthy_after.max(1),
    }
}

fn passive(at: &str, p: file::PassiveHealthFile, errors: &mut Errors) -> PassiveHealth {
    let path = format!("{at}.health.passive");
    if p.consecutive_failures == 0 {
        errors.push(format!("{path}.consecutive_failures"), "must be at least 1");
    }
    if p.base_ejection > p.max_ejection {
        errors.push(
            format!("{path}.base_ejection"),
            "must not be longer than max_ejection",
        );
    }
    errors.percent(
        &format!("{path}.max_ejected_percent"),
        p.max_ejected_percent,
    );
    errors.statuses(&format!("{path}.failure_statuses"), &p.failure_statuses);
    let failure_rate = p.failure_rate.map(|r| {
        let at = format!("{path}.failure_rate");
        if r.percent == 0 {
            errors.push(format!("{at}.percent"), "must be more than 0");
        }
        errors.percent(&format!("{at}.percent"), r.percent);
        if r.window < Duration::from_secs(1) {
            errors.push(format!("{at}.window"), "must be at least 1s");
        }
        if r.min_requests == 0 {
            errors.push(format!("{at}.min_requests"), "must be at least 1");
        }
        FailureRate {
            percent: r.percent,
            window: r.window,
            min_requests: r.min_requests,
        }
    });
    PassiveHealth {
        consecutive_failures: p.consecutive_failures,
        base_ejection: p.base_ejection,
        max_ejection: p.max_ejection,
        max_ejected_percent: p.max_ejected_percent,
        failure_statuses: p.failure_statuses,
        failure_rate,
    }
}

fn route(
    i: usize,
    r: file::RouteFile,
    upstreams: &[UpstreamConfig],
    max_attempts: usize,
    errors: &mut Errors,
) -> RouteConfig {
    let at = format!("routes[{i}]");
    if !upstreams.iter().any(|u| u.name == r.upstream) {
        errors.push(
            format!("{at}.upstream"),
            format!("no upstream named \"{}\"", r.upstream),
        );
    }
    let host = r.matcher.host.as_deref().and_then(|h| {
        host_match(h)
            .map_err(|m| {
                errors.push(format!("{at}.match.host"), m);
            })
            .ok()
    });
    let path_prefix = r.matcher.path_prefix.unwrap_or_else(|| "/".to_string());
    if !path_prefix.starts_with('/') {
        errors.push(
            format!("{at}.match.path_prefix"),
            format!("\"{path_prefix}\" must start with '/'"),
        );
    }
    if r.retry.attempts == 0 {
        errors.push(format!("{at}.retry.attempts"), "must be at least 1");
    } else if r.retry.attempts as usize > max_attempts {
        // Pingora stops after `max_retries` tries: more would be counted and charged to the
        // retry budget without ever being made.
        errors.push(
            format!("{at}.retry.attempts"),
            format!("at most {max_attempts}, the attempts Pingora makes (server.max_retries)"),
        );
    }
    errors.percent(
        &format!("{at}.retry.budget_percent"),
        r.retry.budget_percent,
    );
    errors.statuses(&format!("{at}.retry.on_status"), &r.retry.on_status);
    errors.statuses(
        &format!("{at}.intercept_origin_errors"),
        &r.intercept_origin_errors,
    );
    if let Some(d) = r.deadline
        && d.is_zero()
    {
        errors.push(format!("{at}.deadline"), "must be more than zero");
    }
    if r.max_request_body == Some(0) {
        errors.push(
            format!("{at}.max_request_body"),
            "must be more than zero (a route that takes no body: limit its methods instead)",
        );
    }
    let mut methods = Vec::with_capacity(r.matcher.methods.len());
    for (j, m) in r.matcher.methods.iter().enumerate() {
        match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
            Ok(method) => methods.push(method),
            Err(_) => errors.push(
                format!("{at}.match.methods[{j}]"),
                format!("\"{m}\" is not an HTTP method"),
            ),
        }
    }
    let mut headers = Vec::with_capacity(r.matcher.headers.len());
    for (name, value) in &r.matcher.headers {
        let path = format!("{at}.match.headers.{name}");
        let Ok(header) = http::HeaderName::from_bytes(name.as_bytes()) else {
            errors.push(path, format!("\"{name}\" is not a header name"));
            continue;
        };
        if value == "*" {
            headers.push((header, None));
        } else {
            match http::HeaderValue::from_str(value) {
                Ok(v) => headers.push((header, Some(v))),
                Err(_) => errors.push(path, format!("\"{value}\" is not a header value")),
            }
        }
    }
    let hash_header = r.hash_header.as_deref().and_then(|h| {
        http::HeaderName::from_bytes(h.as_bytes())
            .map_err(|_| {
                errors.push(
                    format!("{at}.hash_header"),
                    format!("\"{h}\" is not a header name"),
                )
            })
            .ok()
    });
    RouteConfig {
        host,
        path_prefix,
        methods,
        headers,
        route: Arc::new(Route {
            name: r.name.unwrap_or_else(|| format!("route{i}")),
            upstream: r.upstream,
            deadline: r.deadline,
            retry: RetryPolicy {
                attempts: r.retry.attempts,
                on_status: r.retry.on_status,
                idempotency_key: r.retry.idempotency_key,
                budget_percent: r.retry.budget_percent,
            },
            intercept_origin_errors: r.intercept_origin_errors,
            hash_header,
            max_request_body: r.max_request_body,
        }),
    }
}

/// `api.example.com` → exact; `*.example.com` → suffix `.example.com`. Hosts compare lowercase.
fn host_match(host: &str) -> Result<HostMatch, String> {
    let lower = host.to_ascii_lowercase();
    let (name, wildcard) = match lower.strip_prefix("*.") {
        Some(rest) => (rest, true),
        None => (lower.as_str(), false),
    };
    let valid = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid {
        return Err(format!(
            "\"{host}\" is not a host name or a \"*.suffix\" wildcard"
        ));
    }
    Ok(if wildcard {
        HostMatch::Suffix(format!(".{name}"))
    } else {
        HostMatch::Exact(name.to_string())
    })
}

fn demo_origins(
    d: file::DemoFile,
    listeners: &HashSet<SocketAddr>,
    errors: &mut Errors,
) -> Vec<DemoOrigin> {
    let mut out = Vec::with_capacity(d.origins.len());
    for (i, o) in d.origins.iter().enumerate() {
        let path = format!("demo.origins[{i}].address");
        let Some(address) = errors.address(&path, &o.address) else {
            continue;
        };
        if !address.ip().is_loopback() {
            errors.push(&path, "demo origins listen on loopback addresses only");
        }
        if listeners.contains(&address) {
            errors.push(&path, format!("{address} is already used by a listener"));
        }
        out.push(DemoOrigin {
            address,
            behavior: o.behavior,
        });
    }
    out
}
