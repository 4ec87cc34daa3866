//! A bounded soak on loopback: the real binary under steady keep-alive load while four origins
//! switch at random between healthy, refusing, stalling, garbage, slow and 503. Every response
//! must be one the failure contract allows, no worker may die, resident memory must stay flat,
//! and the `/metrics` totals must equal what the clients counted.
//!
//! `FAULTLINE_SOAK_SECS` sets the duration (default 30; the documented run uses 180),
//! `FAULTLINE_SOAK_SEED` the seed of the mode schedule, and `FAULTLINE_SOAK_METRICS=1` prints the
//! non-zero counters at the end. Run with `--nocapture` for the summary.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

use crate::client;
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
#[repr(u8)]
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
    /// 200 after 100 to 250 ms.
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
    fn from_u8(v: u8) -> Mode {
        MODES[usize::from(v).min(MODES.len() - 1)]
    }
}

/// One mode switch, for the report.
#[derive(Debug, Clone, Copy)]
struct Switch {
    at: Duration,
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
    /// The mode of every origin at `at`, from the journal.
    fn modes_at(&self, at: Duration) -> [Mode; ORIGINS] {
        let mut modes = [Mode::Healthy; ORIGINS];
        if let Ok(journal) = self.journal.lock() {
            for s in journal.iter().take_while(|s| s.at <= at) {
                modes[s.origin] = s.mode;
            }
        }
        modes
    }

    /// The switches in `from..=to`, as text.
    fn switches_between(&self, from: Duration, to: Duration) -> String {
        let journal = self.journal.lock().map(|j| j.clone()).unwrap_or_default();
        journal
            .iter()
            .filter(|s| s.at >= from && s.at <= to)
            .map(|s| format!("{:.3}s origin{}→{:?}", s.at.as_secs_f64(), s.origin, s.mode))
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
    let mut conn_rng = XorShift::new(rng.next());
    let mode = Arc::new(AtomicU8::new(Mode::Healthy as u8));
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
                        tokio::spawn(serve(index, stream, mode.clone(), conn_rng.next()));
                    }
                }
            }
        }
        let next = MODES[(rng.next() % MODES.len() as u64) as usize];
        mode.store(next as u8, Ordering::SeqCst);
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
        if let Ok(mut journal) = shared.journal.lock() {
            journal.push(Switch {
                at: shared.started.elapsed(),
                origin: index,
                mode: next,
            });
        }
    }
}

fn push_error(shared: &Shared, e: String) {
    if let Ok(mut errors) = shared.origin_errors.lock() {
        errors.push(e);
    }
}

/// One accepted connection: each request is answered as the origin's mode says at that moment.
/// Answers echo the request's `X-Request-Id`, so the client can tell that the response it got
/// is the one to its own request.
async fn serve(index: usize, mut stream: tokio::net::TcpStream, mode: Arc<AtomicU8>, seed: u64) {
    let mut rng = XorShift::new(seed);
    let mut buf = Vec::new();
    loop {
        // Requests are GETs without a body: the head is the request.
        let head_end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        buf.drain(..head_end);
        let rid = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("x-request-id")
                    .then(|| value.trim().to_string())
            })
            .unwrap_or_default();
        let answer = |status: &str, body: String| {
            format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\nx-request-id: {rid}\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        let written = match Mode::from_u8(mode.load(Ordering::SeqCst)) {
            Mode::Healthy => {
                stream
                    .write_all(answer("200 OK", ok_body(index)).as_bytes())
                    .await
            }
            Mode::Slow => {
                tokio::time::sleep(Duration::from_millis(rng.range(100, 250))).await;
                stream
                    .write_all(answer("200 OK", ok_body(index)).as_bytes())
                    .await
            }
            Mode::Unavailable => {
                let resp = answer("503 Service Unavailable", unavailable_body(index));
                stream.write_all(resp.as_bytes()).await
            }
            Mode::Garbage => {
                let _ = stream.write_all(b"THIS IS NOT HTTP\r\n\r\n").await;
                let _ = stream.flush().await;
                return;
            }
            Mode::Stalling => {
                let mut sink = [0u8; 1024];
                while let Ok(n) = stream.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
                return;
            }
            Mode::Refusing => {
                let _ = stream.set_zero_linger();
                return;
            }
        };
        if written.is_err() {
            return;
        }
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

/// `faultline_requests_total` by (status, source), summed over routes, and by route.
fn request_totals(running: &Binary) -> (BTreeMap<(u16, String), u64>, BTreeMap<String, u64>) {
    let text = client::get(running.admin, "/metrics", &[]).text();
    let mut by_status = BTreeMap::new();
    let mut by_route = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("faultline_requests_total{") else {
            continue;
        };
        let (labels, value) = rest.split_once("} ").expect("series value");
        let value: u64 = value.trim().parse().expect("counter value");
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_else(|| panic!("no {name} in {line}"))
        };
        let status: u16 = label("status").parse().expect("status label");
        *by_status.entry((status, label("source"))).or_insert(0) += value;
        *by_route.entry(label("route")).or_insert(0) += value;
    }
    (by_status, by_route)
}

/// A response as the soak client saw it.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn describe(&self) -> String {
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {v}"))
            .collect();
        format!(
            "{} [{}] {:?}",
            self.status,
            headers.join("; "),
            String::from_utf8_lossy(&self.body)
        )
    }
}

/// Why an exchange produced no response.
enum Failed {
    /// The connection was closed (EOF or reset) before a single byte of the response: on a
    /// reused connection, the proxy closed it after the previous, complete response.
    ClosedBeforeResponse(String),
    /// Anything else.
    Other(String),
}

/// A keep-alive client connection to the proxy.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn connect(addr: SocketAddr) -> Result<Conn, String> {
        let stream = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT)
            .map_err(|e| format!("connecting to the proxy: {e}"))?;
        stream
            .set_nodelay(true)
            .and_then(|()| stream.set_write_timeout(Some(CLIENT_TIMEOUT)))
            .map_err(|e| format!("socket options: {e}"))?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Reads more bytes before `deadline`.
    fn fill(&mut self, deadline: Instant) -> std::io::Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// One GET with `rid`, read completely within [`CLIENT_TIMEOUT`].
    fn exchange(&mut self, rid: &str) -> Result<Reply, Failed> {
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        if !self.buf.is_empty() {
            return Err(Failed::Other(format!(
                "bytes after the previous response: {:?}",
                String::from_utf8_lossy(&self.buf)
            )));
        }
        let request =
            format!("GET /soak HTTP/1.1\r\nhost: app.test\r\nx-request-id: {rid}\r\n\r\n");
        let closed = |e: &std::io::Error| {
            matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
            )
        };
        if let Err(e) = self.stream.write_all(request.as_bytes()) {
            return Err(if closed(&e) {
                Failed::ClosedBeforeResponse(format!("write: {e}"))
            } else {
                Failed::Other(format!("writing the request: {e}"))
            });
        }
        let (status, headers, head_len) = loop {
            let mut slots = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut slots);
            match parsed.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let headers: Vec<(String, String)> = parsed
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).to_string(),
                            )
                        })
                        .collect();
                    break (parsed.code.unwrap_or(0), headers, n);
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => {
                    return Err(Failed::Other(format!(
                        "unparseable response head ({e}): {:?}",
                        String::from_utf8_lossy(&self.buf)
                    )));
                }
            }
            match self.fill(deadline) {
                Ok(0) if self.buf.is_empty() => {
                    return Err(Failed::ClosedBeforeResponse("EOF".into()));
                }
                Err(e) if self.buf.is_empty() && closed(&e) => {
                    return Err(Failed::ClosedBeforeResponse(format!("read: {e}")));
                }
                Ok(0) => {
                    return Err(Failed::Other(format!(
                        "closed in the middle of the response head: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    )));
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(Failed::Other(format!(
                        "reading the response head: {e}; got {:?}",
                        String::from_utf8_lossy(&self.buf)
                    )));
                }
            }
        };
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let Some(length) = find("content-length").and_then(|v| v.parse::<usize>().ok()) else {
            return Err(Failed::Other(format!(
                "no Content-Length in a {status} response: {headers:?}"
            )));
        };
        while self.buf.len() < head_len + length {
            match self.fill(deadline) {
                Ok(0) => {
                    return Err(Failed::Other(format!(
                        "{status} response cut at {} of {length} body bytes",
                        self.buf.len() - head_len
                    )));
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(Failed::Other(format!(
                        "reading the {status} response body: {e}"
                    )));
                }
            }
        }
        let body = self.buf[head_len..head_len + length].to_vec();
        self.buf.drain(..head_len + length);
        Ok(Reply {
            status,
            headers,
            body,
        })
    }
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

/// The failure kinds the injected faults can cause, by status. 502: a refused connect, a reset
/// on a connection accepted before the origin started refusing, a non-HTTP answer (or its close
/// winning the read, a truncated head). 504: a stalled origin, or a connect not accepted in
/// time. 503: no backend selectable (all ejected or failing their active check).
const ALLOWED: [(u16, &[&str]); 3] = [
    (
        502,
        &[
            "connection_refused",
            "connection_terminated",
            "http_protocol_error",
            "http_response_incomplete",
        ],
    ),
    (503, &["destination_unavailable"]),
    (504, &["http_response_timeout", "connection_timeout"]),
];

/// Checks one response against the contract; returns who produced it and the failure kind.
fn judge(reply: &Reply, rid: &str) -> Result<(Source, Option<&'static str>), String> {
    // The proxy's own pages carry the id; an origin's response passes through untouched, and
    // the origins here echo the id they received.
    if reply.header("x-request-id") != Some(rid) {
        return Err("X-Request-Id is not the one sent".into());
    }
    let proxy_status = reply.header("proxy-status");
    let body = String::from_utf8_lossy(&reply.body);
    let names_origin = |f: fn(usize) -> String| (0..ORIGINS).any(|i| body == f(i));
    match reply.status {
        200 => {
            if proxy_status.is_some() {
                return Err("Proxy-Status on a 200".into());
            }
            if !names_origin(ok_body) {
                return Err("a 200 whose body names no origin".into());
            }
            Ok((Source::Origin, None))
        }
        503 if proxy_status == Some("faultline; received-status=503") => {
            if !names_origin(unavailable_body) {
                return Err("an origin 503 whose body is not an origin's".into());
            }
            Ok((Source::Origin, None))
        }
        status @ 502..=504 => {
            let Some(name) = proxy_status
                .and_then(|p| p.strip_prefix("faultline; error="))
                .and_then(|p| p.split(';').next())
            else {
                return Err(format!("a {status} without a faultline error"));
            };
            let allowed = ALLOWED
                .iter()
                .find(|(s, _)| *s == status)
                .is_some_and(|(_, names)| names.contains(&name));
            if !allowed {
                return Err(format!("{name} is not an allowed cause of a {status} here"));
            }
            let kind = faultline::FailureKind::ALL
                .iter()
                .find(|k| k.as_str() == name)
                .ok_or_else(|| format!("unknown failure kind {name}"))?;
            let expected = format!("faultline; error={name}; details=\"{}\"", kind.detail());
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
            Ok((Source::Proxy, Some(kind.as_str())))
        }
        other => Err(format!("status {other} is not in the contract")),
    }
}

/// What one client thread counted.
#[derive(Default)]
struct Tally {
    responses: u64,
    by_status: BTreeMap<(u16, Source), u64>,
    by_kind: BTreeMap<&'static str, u64>,
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
            *self.by_status.entry(k).or_insert(0) += v;
        }
        for (k, v) in other.by_kind {
            *self.by_kind.entry(k).or_insert(0) += v;
        }
        self.closed_with_header += other.closed_with_header;
        self.closed_silently += other.closed_silently;
        self.violations += other.violations;
        let room = KEEP_VIOLATIONS.saturating_sub(self.kept.len());
        self.kept.extend(other.kept.into_iter().take(room));
    }

    fn violation(&mut self, shared: &Shared, at: Duration, what: String) {
        self.violations += 1;
        if self.kept.len() < KEEP_VIOLATIONS {
            let from = at.saturating_sub(Duration::from_secs(1));
            self.kept.push(format!(
                "at {:.3}s: {what}\n    origins then: {:?}\n    switches in the second before: {}",
                at.as_secs_f64(),
                shared.modes_at(at),
                shared.switches_between(from, at)
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
    end: Instant,
    sent: &AtomicU64,
    shared: &Shared,
) -> Tally {
    let mut tally = Tally::default();
    let mut conn: Option<Conn> = None;
    let mut n = 0u64;
    while Instant::now() < end && sent.fetch_add(1, Ordering::SeqCst) < MAX_REQUESTS {
        let rid = format!("soak-{t}-{n}");
        n += 1;
        let sent_at = shared.started.elapsed();
        let reply = loop {
            let fresh = conn.is_none();
            let c = match conn.take() {
                Some(c) => c,
                None => match Conn::connect(addr) {
                    Ok(c) => c,
                    Err(e) => break Err(e),
                },
            };
            let mut c = c;
            match c.exchange(&rid) {
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
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                conn = None;
                tally.violation(shared, sent_at, format!("GET /soak {rid}: {e}"));
                continue;
            }
        };
        match judge(&reply, &rid) {
            Ok((source, kind)) => {
                tally.responses += 1;
                *tally.by_status.entry((reply.status, source)).or_insert(0) += 1;
                if let Some(kind) = kind {
                    *tally.by_kind.entry(kind).or_insert(0) += 1;
                }
            }
            Err(why) => {
                // Still a response the proxy counted.
                let source = match reply.header("proxy-status") {
                    Some(p) if p.contains("error=") => Source::Proxy,
                    _ => Source::Origin,
                };
                tally.responses += 1;
                *tally.by_status.entry((reply.status, source)).or_insert(0) += 1;
                tally.violation(
                    shared,
                    sent_at,
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

    let mut body = String::from("upstreams:\n  app:\n    backends:\n");
    for o in &origins {
        body.push_str(&format!("      - {{ address: \"{o}\" }}\n"));
    }
    // The active check is a TCP connect: it fails only for a refusing origin, and its success
    // ends a passive ejection early, so origins that accept but misbehave (stalling, garbage,
    // 503) come back quickly and keep the failure paths busy. `max_ejected_percent: 100` lets
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
            std::thread::spawn(move || client_loop(t, addr, end, &sent, &shared))
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
    let (mut metrics, mut routes) = request_totals(&running);
    let mut last_change = Instant::now();
    loop {
        let total: u64 = metrics.values().sum();
        if total == tally.responses
            || Instant::now() > deadline
            || last_change.elapsed() > Duration::from_secs(2)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        let next = request_totals(&running);
        if next.0 != metrics {
            last_change = Instant::now();
        }
        (metrics, routes) = next;
    }

    // Summary.
    let switches = shared.journal.lock().map(|j| j.clone()).unwrap_or_default();
    let rps = tally.responses as f64 / elapsed.as_secs_f64();
    let statuses: Vec<String> = tally
        .by_status
        .iter()
        .map(|((s, src), n)| format!("{s} {}: {n}", src.as_str()))
        .collect();
    let kinds: Vec<String> = tally
        .by_kind
        .iter()
        .map(|(k, n)| format!("{k}: {n}"))
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
        "soak: proxy errors by kind: {}; connections closed with Connection: close {}, closed after a response without it {}",
        kinds.join(", "),
        tally.closed_with_header,
        tally.closed_silently
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
    let total: u64 = metrics.values().sum();
    assert_eq!(
        total, tally.responses,
        "faultline_requests_total sums to {total}, the clients got {} responses: {metrics:?}",
        tally.responses
    );
    assert_eq!(
        routes.keys().collect::<Vec<_>>(),
        vec!["main"],
        "requests outside the route: {routes:?}"
    );
    let mut expected: BTreeMap<(u16, String), u64> = BTreeMap::new();
    for ((status, source), n) in &tally.by_status {
        if *n > 0 {
            expected.insert((*status, source.as_str().to_string()), *n);
        }
    }
    let counted: BTreeMap<(u16, String), u64> =
        metrics.into_iter().filter(|(_, n)| *n > 0).collect();
    assert_eq!(
        counted, expected,
        "per status and source: metrics vs client"
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
