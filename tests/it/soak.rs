//! A bounded soak on loopback: the real binary under steady keep-alive load while four origins
//! switch at random between healthy, refusing, stalling, garbage, slow and 503. Every response
//! is judged by the modes of the origin it names (the body of a 200 or 503, `next-hop` of a
//! proxy error) during the request's lifetime: a failure kind is allowed only if one of those
//! modes can cause it. No worker may die, resident memory must stay flat, and the `/metrics`
//! counters must equal what the clients counted: responses by status and source, attempts by
//! backend and outcome, retries by reason.
//!
//! `FAULTLINE_SOAK_SECS` sets the duration (default 30; the documented run uses 180),
//! `FAULTLINE_SOAK_SEED` the seed of the mode schedule, and `FAULTLINE_SOAK_METRICS=1` prints the
//! non-zero counters at the end. Run with `--nocapture` for the summary.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpSocket};

use faultline::FailureKind;
use faultline::internals::demo::origin::{Behavior, Origin as KitOrigin};

use crate::client::{self, Client, Failed, Response};
use crate::harness::Binary;

/// Origins behind the upstream.
const ORIGINS: usize = 4;
/// Concurrent client connections.
const CLIENTS: usize = 8;
/// Every request must be answered completely within this.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// A second bound on the run besides its duration.
const MAX_REQUESTS: u64 = 5_000_000;
/// Load before the first resident-memory reading.
const WARM_UP: Duration = Duration::from_secs(3);
/// Violations kept in full for the report (all are counted).
const KEEP_VIOLATIONS: usize = 20;

/// A tiny deterministic PRNG (xorshift64), so a seed reproduces the mode schedule.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        // splitmix64 of the seed, so that nearby seeds give unrelated streams (and never 0).
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        XorShift((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `lo..=hi` (modulo bias is irrelevant here).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// What an origin does right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    /// 200 with a body naming the origin, keep-alive.
    Healthy,
    /// The listener is closed (its port held by a bound, non-listening socket, so connects are
    /// refused and nobody else can take the port); a request on a connection accepted earlier is
    /// answered with a reset, as a crashed process would.
    Refusing,
    /// Reads the request and never answers.
    Stalling,
    /// Answers bytes that are not HTTP, then closes.
    Garbage,
    /// 200 after 50 to 150 ms (one delay per slow period), well inside the proxy's 300 ms
    /// response-header timeout.
    Slow,
    /// 503 with a body naming the origin.
    Unavailable,
}

const MODES: [Mode; 6] = [
    Mode::Healthy,
    Mode::Refusing,
    Mode::Stalling,
    Mode::Garbage,
    Mode::Slow,
    Mode::Unavailable,
];

impl Mode {
    /// What origin `index` does with each request in this mode (the listener's part of
    /// `Refusing` is `run_origin`'s). Answers echo the request's `X-Request-Id`, so the client
    /// can tell that the response it got is the one to its own request. A slow period's delay
    /// is drawn from `delay_rng`.
    fn behavior(self, index: usize, delay_rng: &mut XorShift) -> Behavior {
        let text = |status, body| Behavior::Text {
            status,
            body,
            echo_request_id: true,
        };
        match self {
            Mode::Healthy => text(200, ok_body(index)),
            Mode::Slow => Behavior::Delayed(
                Duration::from_millis(delay_rng.range(50, 150)),
                Box::new(text(200, ok_body(index))),
            ),
            Mode::Unavailable => text(503, unavailable_body(index)),
            // A crashed process: a request on a connection accepted earlier is reset.
            Mode::Refusing => Behavior::Reset,
            Mode::Stalling => Behavior::Hang,
            Mode::Garbage => Behavior::WriteThenClose(b"THIS IS NOT HTTP\r\n\r\n".to_vec()),
        }
    }

    /// The failure kinds an attempt on an origin in this mode can end with, as `classify`
    /// names them. No mode causes `connection_timeout`: on loopback a connect to a listening
    /// socket (backlog 1024, a few dozen connections here) completes in the kernel, and one to
    /// the held, non-listening port is reset at once.
    fn causes(self) -> &'static [FailureKind] {
        match self {
            // A complete response within the response-header timeout, passed through.
            Mode::Healthy | Mode::Slow | Mode::Unavailable => &[],
            // A connect is reset: refused. A request on a connection accepted earlier (pooled by
            // the proxy, or left in the backlog of the listener being closed) is reset before
            // any response byte, whether the proxy's read or its write sees it: terminated.
            Mode::Refusing => &[
                FailureKind::ConnectionRefused,
                FailureKind::ConnectionTerminated,
            ],
            // The request is read and never answered.
            Mode::Stalling => &[FailureKind::HttpResponseTimeout],
            // The parser rejects "THIS IS NOT HTTP" at its first byte (a status line starts
            // with "HTTP/"), and TCP delivers the bytes before the close (a FIN, not a reset:
            // the request was read in full), so no close before a byte or inside a head can be
            // seen.
            Mode::Garbage => &[FailureKind::HttpProtocolError],
        }
    }
}

/// A set of modes.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Modes(u8);

impl Modes {
    fn add(&mut self, m: Mode) {
        self.0 |= 1 << m as u8;
    }

    fn has(self, m: Mode) -> bool {
        self.0 & (1 << m as u8) != 0
    }

    fn iter(self) -> impl Iterator<Item = Mode> {
        MODES.into_iter().filter(move |m| self.has(*m))
    }

    /// Whether one of the modes can end an attempt with `kind`.
    fn can_cause(self, kind: FailureKind) -> bool {
        self.iter().any(|m| m.causes().contains(&kind))
    }
}

impl std::fmt::Debug for Modes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// One mode switch. The entry is written before the origin changes anything and `done` after
/// its listener is closed or re-bound, so the new mode can act from `begun` on and the old one
/// until `done`: a request's window needs no slack to see every mode that acted on it.
#[derive(Debug, Clone, Copy)]
struct Switch {
    begun: Duration,
    done: Option<Duration>,
    origin: usize,
    mode: Mode,
}

/// State shared between the origins, the clients and the test.
struct Shared {
    started: Instant,
    stop: AtomicBool,
    journal: Mutex<Vec<Switch>>,
    /// Problems of the test's own machinery (a port that could not be re-bound).
    origin_errors: Mutex<Vec<String>>,
}

impl Shared {
    /// The modes each origin was in at some moment of `from..=to`. Every origin starts healthy.
    fn modes_during(&self, from: Duration, to: Duration) -> [Modes; ORIGINS] {
        let mut modes = [Modes::default(); ORIGINS];
        let Ok(journal) = self.journal.lock() else {
            return modes;
        };
        // Backwards: each switch's mode acted until the `done` of the origin's next switch
        // (for ever if there is none, or it is still under way).
        let mut until: [Option<Duration>; ORIGINS] = [None; ORIGINS];
        let mut finished = [false; ORIGINS];
        for s in journal.iter().rev() {
            if finished[s.origin] {
                continue;
            }
            if s.begun <= to && until[s.origin].is_none_or(|u| u >= from) {
                modes[s.origin].add(s.mode);
            }
            until[s.origin] = Some(s.done.unwrap_or(Duration::MAX));
            // Every earlier mode of this origin ended by this `done`.
            finished[s.origin] = s.done.is_some_and(|d| d < from);
            if finished.iter().all(|f| *f) {
                return modes;
            }
        }
        for o in 0..ORIGINS {
            if !finished[o] && until[o].is_none_or(|u| u >= from) {
                modes[o].add(Mode::Healthy);
            }
        }
        modes
    }

    /// The switches begun in `from..=to`, as text.
    fn switches_between(&self, from: Duration, to: Duration) -> String {
        let journal = self.journal.lock().map(|j| j.clone()).unwrap_or_default();
        journal
            .iter()
            .filter(|s| s.begun >= from && s.begun <= to)
            .map(|s| {
                let done = s.done.map_or(f64::NAN, |d| d.as_secs_f64());
                format!(
                    "{:.3}s–{done:.3}s origin{}→{:?}",
                    s.begun.as_secs_f64(),
                    s.origin,
                    s.mode
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// A bound socket that does not listen: connects to its port are refused.
fn hold(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// Runs origin `index`: serves in its current mode and switches to a random one every 200 to
/// 500 ms, closing and re-binding its listener around `Refusing`.
async fn run_origin(index: usize, listener: TcpListener, seed: u64, shared: Arc<Shared>) {
    // The schedule has a stream of its own, so that the mode sequence of each origin depends on
    // the seed alone, not on how many connections happened to arrive.
    let mut rng = XorShift::new(seed ^ (index as u64).wrapping_mul(0xA24B_AED4_963E_E407));
    let mut delay_rng = XorShift::new(rng.next());
    let origin = KitOrigin::new(Mode::Healthy.behavior(index, &mut delay_rng));
    let Ok(addr) = listener.local_addr() else {
        return;
    };
    let mut listener = Some(listener);
    let mut placeholder: Option<TcpSocket> = None;
    while !shared.stop.load(Ordering::SeqCst) {
        let until = tokio::time::Instant::now() + Duration::from_millis(rng.range(200, 500));
        loop {
            let Some(l) = &listener else {
                tokio::time::sleep_until(until).await;
                break;
            };
            tokio::select! {
                () = tokio::time::sleep_until(until) => break,
                accepted = l.accept() => {
                    if let Ok((stream, _)) = accepted {
                        tokio::spawn(origin.clone().connection(stream));
                    }
                }
            }
        }
        let next = MODES[(rng.next() % MODES.len() as u64) as usize];
        // Journaled before it can act (see `Switch`).
        let entry = shared.journal.lock().ok().map(|mut journal| {
            journal.push(Switch {
                begun: shared.started.elapsed(),
                done: None,
                origin: index,
                mode: next,
            });
            journal.len() - 1
        });
        origin.set(next.behavior(index, &mut delay_rng));
        if next == Mode::Refusing && listener.is_some() {
            drop(listener.take());
            match hold(addr) {
                Ok(s) => placeholder = Some(s),
                Err(e) => push_error(&shared, format!("origin{index}: holding {addr}: {e}")),
            }
        } else if next != Mode::Refusing && listener.is_none() {
            drop(placeholder.take());
            let mut bound = listen(addr);
            for _ in 0..20 {
                if bound.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                bound = listen(addr);
            }
            match bound {
                Ok(l) => listener = Some(l),
                Err(e) => push_error(&shared, format!("origin{index}: re-binding {addr}: {e}")),
            }
        }
        if let (Some(i), Ok(mut journal)) = (entry, shared.journal.lock()) {
            journal[i].done = Some(shared.started.elapsed());
        }
    }
}

fn push_error(shared: &Shared, e: String) {
    if let Ok(mut errors) = shared.origin_errors.lock() {
        errors.push(e);
    }
}

fn ok_body(index: usize) -> String {
    format!("origin {index}")
}

fn unavailable_body(index: usize) -> String {
    format!("origin {index} unavailable")
}

/// Resident memory in KiB, from `/proc/<pid>/status`.
fn rss_kib(running: &Binary) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", running.child.id()))
        .expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in\n{status}"))
}

/// The counters the soak compares with what the clients saw, from one `/metrics` scrape
/// (zeros left out).
#[derive(Debug, Default, PartialEq)]
struct Counters {
    /// `faultline_requests_total` by (status, source), summed over routes.
    requests: BTreeMap<(u16, String), u64>,
    /// `faultline_requests_total` by route.
    routes: BTreeMap<String, u64>,
    /// `faultline_upstream_attempts_total` by (backend, outcome).
    attempts: BTreeMap<(String, String), u64>,
    /// `faultline_retries_total` by reason, summed over routes.
    retries: BTreeMap<String, u64>,
}

fn bump<K: Ord>(map: &mut BTreeMap<K, u64>, key: K, n: u64) {
    *map.entry(key).or_insert(0) += n;
}

fn counters(running: &Binary) -> Counters {
    let text = client::get(running.admin, "/metrics", &[]).text();
    let mut c = Counters::default();
    for line in text.lines() {
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        if !matches!(
            name,
            "faultline_requests_total"
                | "faultline_upstream_attempts_total"
                | "faultline_retries_total"
        ) {
            continue;
        }
        let (labels, value) = rest.split_once("} ").expect("series value");
        let value: u64 = value.trim().parse().expect("counter value");
        if value == 0 {
            continue;
        }
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_else(|| panic!("no {name} in {line}"))
        };
        match name {
            "faultline_requests_total" => {
                let status: u16 = label("status").parse().expect("status label");
                bump(&mut c.requests, (status, label("source")), value);
                bump(&mut c.routes, label("route"), value);
            }
            "faultline_upstream_attempts_total" => {
                bump(&mut c.attempts, (label("backend"), label("outcome")), value);
            }
            _ => bump(&mut c.retries, label("reason"), value),
        }
    }
    c
}

/// The soak's framing rule: every response, an origin's or the proxy's, has a Content-Length
/// and arrives whole.
fn complete(reply: Response) -> Result<Response, Failed> {
    let Some(length) = reply
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    else {
        return Err(Failed::Other(format!(
            "no Content-Length in a {} response: {:?}",
            reply.status, reply.headers
        )));
    };
    if !reply.complete {
        return Err(Failed::Other(format!(
            "{} response cut at {} of {length} body bytes",
            reply.status,
            reply.body.len()
        )));
    }
    Ok(reply)
}

/// Who produced a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Origin,
    Proxy,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Origin => "origin",
            Source::Proxy => "proxy",
        }
    }
}

/// How long after an origin last misbehaved it may still be unselectable: the failed attempt
/// itself (connect 200 ms, response header 300 ms), then the longest passive ejection (2 s; the
/// jitter is capped by `max_ejection`), then the half-open probe, which keeps other requests
/// out while it runs (an attempt again, at most 150 ms on a slow origin). A refused active
/// check keeps it out until the next check (1 s interval, 200 ms timeout), which is shorter.
/// Rounded up generously for a loaded machine.
const UNSELECTABLE_FOR: Duration = Duration::from_secs(4);

/// When a request was in flight, from just before its connection or request was written to
/// just after its response was read.
struct Window<'a> {
    shared: &'a Shared,
    sent: Duration,
    received: Duration,
}

/// Who answered, and how, for one judged response.
struct Verdict {
    source: Source,
    /// The proxy's failure kind, on an error it generated.
    kind: Option<&'static str>,
    /// The origin that answered, or whose attempt failed last (`next-hop`).
    backend: Option<usize>,
}

/// Checks one response against the contract and the modes its origin was in while it was in
/// flight.
fn judge(
    reply: &Response,
    rid: &str,
    origins: &[SocketAddr],
    window: &Window<'_>,
) -> Result<Verdict, String> {
    // The proxy's own pages carry the id; an origin's response passes through untouched, and
    // the origins here echo the id they received.
    if reply.header("x-request-id") != Some(rid) {
        return Err("X-Request-Id is not the one sent".into());
    }
    let proxy_status = reply.header("proxy-status");
    let body = String::from_utf8_lossy(&reply.body);
    let named_origin = |f: fn(usize) -> String| (0..ORIGINS).find(|i| body == f(*i));
    // Whether `origin` was, at some moment of the request, in a mode that can answer `what`.
    let in_mode = |origin: usize, can: &dyn Fn(Modes) -> bool, what: &str| {
        let modes = window.shared.modes_during(window.sent, window.received)[origin];
        if can(modes) {
            Ok(())
        } else {
            Err(format!(
                "{what} from origin{origin}, which was only {modes:?} meanwhile"
            ))
        }
    };
    match reply.status {
        200 => {
            if proxy_status.is_some() {
                return Err("Proxy-Status on a 200".into());
            }
            let origin = named_origin(ok_body).ok_or("a 200 whose body names no origin")?;
            in_mode(
                origin,
                &|m| m.has(Mode::Healthy) || m.has(Mode::Slow),
                "a 200",
            )?;
            Ok(Verdict {
                source: Source::Origin,
                kind: None,
                backend: Some(origin),
            })
        }
        503 if proxy_status.is_some_and(|p| p.starts_with("faultline; received-status=")) => {
            let origin = named_origin(unavailable_body)
                .ok_or("an origin 503 whose body is not an origin's")?;
            let expected = format!(
                "faultline; received-status=503; next-hop=\"{}\"",
                origins[origin]
            );
            if proxy_status != Some(expected.as_str()) {
                return Err(format!("Proxy-Status is not {expected:?}"));
            }
            in_mode(origin, &|m| m.has(Mode::Unavailable), "a 503")?;
            Ok(Verdict {
                source: Source::Origin,
                kind: None,
                backend: Some(origin),
            })
        }
        status @ 502..=504 => {
            let Some(name) = proxy_status
                .and_then(|p| p.strip_prefix("faultline; error="))
                .and_then(|p| p.split(';').next())
            else {
                return Err(format!("a {status} without a faultline error"));
            };
            let kind = *FailureKind::ALL
                .iter()
                .find(|k| k.as_str() == name)
                .ok_or_else(|| format!("unknown failure kind {name}"))?;
            if kind.status() != status {
                return Err(format!("{name} is not a cause of a {status}"));
            }
            let mut expected = format!("faultline; error={name}; details=\"{}\"", kind.detail());
            let backend = if kind == FailureKind::DestinationUnavailable {
                // No backend was selectable: there is no next hop to name. Passive ejection
                // and the active check (which only a refusing origin fails) are the only ways
                // out of selection, and both need the origin to have misbehaved at most
                // UNSELECTABLE_FOR before. Ejection and check times are not observable from
                // here, so this is a necessary condition only, and a weak one under a schedule
                // this busy: it fails when some origin answered well for that whole time.
                let since = window.sent.saturating_sub(UNSELECTABLE_FOR);
                let modes = window.shared.modes_during(since, window.received);
                if let Some(o) =
                    (0..ORIGINS).find(|o| modes[*o].iter().all(|m| m.causes().is_empty()))
                {
                    return Err(format!(
                        "no backend selectable, but origin{o} was only {:?} since {:.3}s",
                        modes[o],
                        since.as_secs_f64()
                    ));
                }
                None
            } else {
                let hop = proxy_status
                    .and_then(|p| p.split_once("; next-hop=\""))
                    .map(|(_, h)| h.trim_end_matches('"'))
                    .ok_or_else(|| format!("a {name} without a next-hop"))?;
                let origin = origins
                    .iter()
                    .position(|o| o.to_string() == hop)
                    .ok_or_else(|| format!("next-hop {hop} is no origin"))?;
                in_mode(origin, &|m| m.can_cause(kind), name)?;
                expected.push_str(&format!("; next-hop=\"{}\"", origins[origin]));
                Some(origin)
            };
            if proxy_status != Some(expected.as_str()) {
                return Err(format!("Proxy-Status is not {expected:?}"));
            }
            let page = format!(
                "{status} {}: {}.\nrequest id: {rid}\n",
                kind.reason(),
                kind.detail()
            );
            if body != page {
                return Err(format!("the error page is not {page:?}"));
            }
            if reply.header("cache-control") != Some("no-store") {
                return Err("an error page without Cache-Control: no-store".into());
            }
            let retry_after = reply
                .header("retry-after")
                .and_then(|v| v.parse::<u64>().ok());
            if status == 503 && retry_after.is_none_or(|s| s < 1) {
                return Err("a 503 without a Retry-After of at least 1 second".into());
            }
            Ok(Verdict {
                source: Source::Proxy,
                kind: Some(kind.as_str()),
                backend,
            })
        }
        other => Err(format!("status {other} is not in the contract")),
    }
}

/// What one client thread counted.
#[derive(Default)]
struct Tally {
    responses: u64,
    by_status: BTreeMap<(u16, Source), u64>,
    /// Judged responses by origin (`None`: no backend, for `destination_unavailable`) and
    /// outcome: `response` for an origin's, the failure kind for a proxy error.
    by_outcome: BTreeMap<(Option<usize>, &'static str), u64>,
    /// Connections the proxy closed with `Connection: close`.
    closed_with_header: u64,
    /// Reused connections found closed before the next response (resent on a new one).
    closed_silently: u64,
    violations: u64,
    kept: Vec<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.responses += other.responses;
        for (k, v) in other.by_status {
            bump(&mut self.by_status, k, v);
        }
        for (k, v) in other.by_outcome {
            bump(&mut self.by_outcome, k, v);
        }
        self.closed_with_header += other.closed_with_header;
        self.closed_silently += other.closed_silently;
        self.violations += other.violations;
        let room = KEEP_VIOLATIONS.saturating_sub(self.kept.len());
        self.kept.extend(other.kept.into_iter().take(room));
    }

    fn violation(&mut self, window: &Window<'_>, what: String) {
        self.violations += 1;
        if self.kept.len() < KEEP_VIOLATIONS {
            let (sent, received) = (window.sent, window.received);
            let from = sent.saturating_sub(Duration::from_secs(1));
            self.kept.push(format!(
                "sent at {:.3}s, answered at {:.3}s: {what}\n    origins meanwhile: {:?}\n    switches from a second before: {}",
                sent.as_secs_f64(),
                received.as_secs_f64(),
                window.shared.modes_during(sent, received),
                window.shared.switches_between(from, received)
            ));
        }
    }

    fn count(&self, status: u16, source: Source) -> u64 {
        self.by_status.get(&(status, source)).copied().unwrap_or(0)
    }
}

/// One client: keep-alive GETs until `end`, each judged.
fn client_loop(
    t: usize,
    addr: SocketAddr,
    origins: &[SocketAddr],
    end: Instant,
    sent: &AtomicU64,
    shared: &Shared,
) -> Tally {
    let mut tally = Tally::default();
    let mut conn: Option<Client> = None;
    let mut n = 0u64;
    while Instant::now() < end && sent.fetch_add(1, Ordering::SeqCst) < MAX_REQUESTS {
        let rid = format!("soak-{t}-{n}");
        n += 1;
        let sent_at = shared.started.elapsed();
        let reply = loop {
            let fresh = conn.is_none();
            let c = match conn.take() {
                Some(c) => c,
                None => match Client::try_connect(addr, CLIENT_TIMEOUT) {
                    Ok(c) => c,
                    Err(e) => break Err(e),
                },
            };
            let mut c = c;
            let request = client::request("GET", "/soak", "app.test", &[("x-request-id", &rid)]);
            match c
                .exchange(&request, "GET", CLIENT_TIMEOUT)
                .and_then(complete)
            {
                Ok(reply) => {
                    conn = Some(c);
                    break Ok(reply);
                }
                // Allowed: the proxy closed a kept-alive connection after a complete response.
                Err(Failed::ClosedBeforeResponse(_)) if !fresh => tally.closed_silently += 1,
                Err(Failed::ClosedBeforeResponse(e)) => {
                    break Err(format!("a new connection closed before any response: {e}"));
                }
                Err(Failed::Other(e)) => break Err(e),
            }
        };
        let window = Window {
            shared,
            sent: sent_at,
            received: shared.started.elapsed(),
        };
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                conn = None;
                tally.violation(&window, format!("GET /soak {rid}: {e}"));
                continue;
            }
        };
        match judge(&reply, &rid, origins, &window) {
            Ok(v) => {
                tally.responses += 1;
                bump(&mut tally.by_status, (reply.status, v.source), 1);
                let outcome = v.kind.unwrap_or("response");
                bump(&mut tally.by_outcome, (v.backend, outcome), 1);
            }
            Err(why) => {
                // Still a response the proxy counted.
                let source = match reply.header("proxy-status") {
                    Some(p) if p.contains("error=") => Source::Proxy,
                    _ => Source::Origin,
                };
                tally.responses += 1;
                bump(&mut tally.by_status, (reply.status, source), 1);
                tally.violation(
                    &window,
                    format!("GET /soak {rid}: {why}: {}", reply.describe()),
                );
            }
        }
        if reply
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            tally.closed_with_header += 1;
            conn = None;
        }
    }
    tally
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[test]
fn backends_switching_faults_under_steady_load() {
    let secs = env_u64("FAULTLINE_SOAK_SECS").unwrap_or(30).max(5);
    let seed = env_u64("FAULTLINE_SOAK_SEED").unwrap_or(0x5EED_FA17);
    let shared = Arc::new(Shared {
        started: Instant::now(),
        stop: AtomicBool::new(false),
        journal: Mutex::new(Vec::new()),
        origin_errors: Mutex::new(Vec::new()),
    });

    // The origins run on a runtime of their own, shut down at the end.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("origin runtime");
    let mut origins = Vec::new();
    for i in 0..ORIGINS {
        let listener = rt
            .block_on(async { listen("127.0.0.1:0".parse().expect("addr")) })
            .expect("origin listens");
        origins.push(listener.local_addr().expect("addr"));
        rt.spawn(run_origin(i, listener, seed, shared.clone()));
    }

    // `next-hop` names the backend of a proxy error or a passed-through 503.
    let mut body =
        String::from("error_pages: { reveal_backends: true }\nupstreams:\n  app:\n    backends:\n");
    for o in &origins {
        body.push_str(&format!("      - {{ address: \"{o}\" }}\n"));
    }
    // The active check is a TCP connect: it fails only for a refusing origin, and its success
    // ends a passive ejection early, so origins that accept but misbehave (stalling, garbage)
    // come back quickly and keep the failure paths busy. `max_ejected_percent: 100` lets
    // every backend be out at once, so "no backend" (503) is part of the run too.
    body.push_str(concat!(
        "    timeouts: { connect: 200ms, response_header: 300ms }\n",
        "    health:\n",
        "      active: { interval: 1s, timeout: 200ms }\n",
        "      passive: { consecutive_failures: 5, base_ejection: 1s, max_ejection: 2s, max_ejected_percent: 100 }\n",
        "routes:\n",
        "  - { name: main, upstream: app, retry: { attempts: 2 } }\n",
    ));
    let mut running = Binary::start("soak", "server: { threads: 2 }", &body);

    let started = Instant::now();
    let end = started + Duration::from_secs(secs);
    let sent = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let (addr, sent, shared) = (running.addr, sent.clone(), shared.clone());
            let origins = origins.clone();
            std::thread::spawn(move || client_loop(t, addr, &origins, end, &sent, &shared))
        })
        .collect();
    std::thread::sleep(WARM_UP);
    let rss_start = rss_kib(&running);
    let mut tally = Tally::default();
    for c in clients {
        tally.merge(c.join().expect("client thread"));
    }
    let elapsed = started.elapsed();
    let rss_end = rss_kib(&running);

    // The metrics of the last requests land just after their responses: wait until the total
    // reaches the client's count or stops moving.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut metrics = counters(&running);
    let mut last_change = Instant::now();
    loop {
        let total: u64 = metrics.requests.values().sum();
        if total == tally.responses
            || Instant::now() > deadline
            || last_change.elapsed() > Duration::from_secs(2)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        let next = counters(&running);
        if next != metrics {
            last_change = Instant::now();
        }
        metrics = next;
    }

    // Outcomes as the clients saw them, in the metrics' terms: by (backend, outcome) for every
    // response that names a backend; "no backend" apart, as it is never an attempt.
    let mut seen: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut no_backend = 0;
    for ((backend, outcome), n) in &tally.by_outcome {
        match backend {
            Some(i) => bump(
                &mut seen,
                (origins[*i].to_string(), outcome.to_string()),
                *n,
            ),
            None => no_backend += n,
        }
    }
    // Per outcome: (last outcomes seen by the clients, retries, attempts).
    let mut by_outcome: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
    for ((_, outcome), n) in &seen {
        by_outcome.entry(outcome).or_default().0 += n;
    }
    for (reason, n) in &metrics.retries {
        by_outcome.entry(reason).or_default().1 += n;
    }
    for ((_, outcome), n) in &metrics.attempts {
        by_outcome.entry(outcome).or_default().2 += n;
    }

    // Summary.
    let switches = shared.journal.lock().map(|j| j.clone()).unwrap_or_default();
    let rps = tally.responses as f64 / elapsed.as_secs_f64();
    let statuses: Vec<String> = tally
        .by_status
        .iter()
        .map(|((s, src), n)| format!("{s} {}: {n}", src.as_str()))
        .collect();
    let outcomes: Vec<String> = by_outcome
        .iter()
        .map(|(o, (last, retried, attempts))| format!("{o} {last} + {retried} = {attempts}"))
        .collect();
    eprintln!(
        "soak: {:.1}s, {} requests ({}), {rps:.0} rps, RSS start {:.1} MiB end {:.1} MiB, seed {seed:#x}, {} mode switches",
        elapsed.as_secs_f64(),
        tally.responses,
        statuses.join(", "),
        mib(rss_start),
        mib(rss_end),
        switches.len(),
    );
    eprintln!(
        "soak: attempt outcomes (seen by clients + retried = attempts): {}; no backend selectable {no_backend}",
        outcomes.join(", "),
    );
    eprintln!(
        "soak: connections closed with Connection: close {}, closed after a response without it {}",
        tally.closed_with_header, tally.closed_silently
    );

    let log = running.log();
    eprintln!("soak: faultline log {} KiB", log.len() / 1024);
    if std::env::var_os("FAULTLINE_SOAK_METRICS").is_some() {
        let text = client::get(running.admin, "/metrics", &[]).text();
        for l in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.contains("_seconds") && !l.ends_with(" 0"))
        {
            eprintln!("  {l}");
        }
    }

    // The machinery did what it claims.
    let origin_errors = shared
        .origin_errors
        .lock()
        .map(|e| e.clone())
        .unwrap_or_default();
    assert!(origin_errors.is_empty(), "origins: {origin_errors:?}");
    for m in MODES {
        assert!(
            switches.iter().any(|s| s.mode == m),
            "mode {m:?} never happened"
        );
    }

    // Every response allowed, no client-side error.
    assert!(
        tally.violations == 0,
        "{} responses or exchanges outside the contract; the first {}:\n{}",
        tally.violations,
        tally.kept.len(),
        tally.kept.join("\n")
    );
    assert!(tally.count(200, Source::Origin) > 0, "not one 200");

    // No worker died.
    let exited = running.child.try_wait().expect("wait");
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    assert!(
        exited.is_none(),
        "faultline exited: {exited:?}; the end of its log:\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    assert!(
        !log.contains("panicked"),
        "a panic in the log:\n{}",
        log.lines()
            .filter(|l| l.contains("panicked"))
            .take(10)
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Memory stays flat. After the warm-up the process has its working set (worker and
    // connection buffers, pooled upstream connections, per-thread allocator arenas); what is
    // left is allocator noise, which 1.5× + 8 MiB absorbs, while a leak of a few hundred bytes
    // per request over this many requests would not fit.
    assert!(
        rss_end <= rss_start * 3 / 2 + 8 * 1024,
        "resident memory grew from {:.1} MiB to {:.1} MiB",
        mib(rss_start),
        mib(rss_end)
    );

    // /metrics counted what the clients counted.
    let total: u64 = metrics.requests.values().sum();
    assert_eq!(
        total, tally.responses,
        "faultline_requests_total sums to {total}, the clients got {} responses: {:?}",
        tally.responses, metrics.requests
    );
    assert_eq!(
        metrics.routes.keys().collect::<Vec<_>>(),
        vec!["main"],
        "requests outside the route: {:?}",
        metrics.routes
    );
    let expected: BTreeMap<(u16, String), u64> = tally
        .by_status
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|((status, source), n)| ((*status, source.as_str().to_string()), *n))
        .collect();
    assert_eq!(
        metrics.requests, expected,
        "per status and source: metrics vs client"
    );

    // Attempts and retries against what the clients saw. Every attempt ends once, counted
    // under its backend and outcome: a response header, or a failure kind. Each response header
    // reaches a client here: status retries and interception are off, and a body failing after
    // its header would be a cut response, a violation above. A failed attempt is either
    // retried, counted under its kind as the reason before the next attempt (or before no
    // backend is left for it: the client then gets destination_unavailable), or it is the
    // request's last, whose kind and backend the client reads in Proxy-Status. "No backend" is
    // decided in selection, never an attempt. So, exactly, per outcome:
    //   the clients' last outcomes (backend named) + retries{reason = outcome} = attempts,
    // with no retry reason `status`, and per backend, attempts >= what the clients saw of it,
    // with equality for `response`. Retried attempts reach no client: their kinds must still
    // be ones some mode can cause.
    let mut wrong = Vec::new();
    for (outcome, (last, retried, attempts)) in &by_outcome {
        if last + retried != *attempts {
            wrong.push(format!(
                "{outcome}: {last} seen by clients + {retried} retried != {attempts} attempts"
            ));
        }
        let possible = *outcome == "response"
            || MODES
                .iter()
                .any(|m| m.causes().iter().any(|k| k.as_str() == *outcome));
        if !possible && (*retried > 0 || *attempts > 0) {
            wrong.push(format!(
                "{outcome}: no mode causes it, yet {attempts} attempts, {retried} retries"
            ));
        }
    }
    for (key @ (backend, outcome), n) in &seen {
        let attempts = metrics.attempts.get(key).copied().unwrap_or(0);
        if attempts < *n || (outcome == "response" && attempts != *n) {
            wrong.push(format!(
                "{backend} {outcome}: {n} seen by clients, {attempts} attempts"
            ));
        }
    }
    for ((backend, outcome), n) in &metrics.attempts {
        if outcome == "response" && !seen.contains_key(&(backend.clone(), outcome.clone())) {
            wrong.push(format!(
                "{backend} response: none seen by clients, {n} attempts"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "attempt and retry counters vs the clients:\n{}\nattempts: {:?}\nretries: {:?}",
        wrong.join("\n"),
        metrics.attempts,
        metrics.retries
    );

    // Every attempt ended: no backend is left with attempts outstanding (a leak there would
    // make selection pass it over for ever).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status: serde_json::Value =
            serde_json::from_slice(&client::get(running.admin, "/status", &[]).body)
                .expect("status JSON");
        let pending: Vec<u64> = status["upstreams"][0]["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .map(|b| b["pending"].as_u64().expect("pending"))
            .collect();
        if pending.iter().all(|p| *p == 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "attempts still outstanding after the load: {pending:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    shared.stop.store(true, Ordering::SeqCst);
    rt.shutdown_timeout(Duration::from_secs(1));
}
