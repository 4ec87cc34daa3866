//! Client connections: how many may be open at once, and how long a client may take to send a
//! request header.
//!
//! Pingora reads a request header under a timeout per read, so a client that trickles a byte
//! now and then holds its connection for ever (slowloris), and a header that never completes
//! ends without a word. [`ClientConnections`] wraps the HTTP application and reads each HTTP/1
//! request header itself under one deadline for the whole header (`clients.header_timeout`): a
//! client that misses it gets a 408 and the connection closes. The bytes read are handed to
//! Pingora as the start of the request, so nothing is read twice and no extra read is made.
//!
//! A request header Pingora would refuse on its own, with a bare answer of its own, is refused
//! here instead ([`request_head`]), so that it gets faultline's page, request id and log line.
//!
//! The same deadline, from the connection's start, bounds the TLS handshake (done here, not in
//! Pingora's listener: [`tls`]) and the HTTP/2 preface; HTTP/2 connections are served by [`h2`]
//! under the client deadlines. Failed handshakes are counted and logged at a bounded rate
//! ([`handshake`]).
//!
//! It also counts open connections. Past `clients.max_connections`, an HTTP/1 connection's
//! first request is answered 503 `connection_limit_reached` here, with its request id, the usual
//! page and a log line, and the connection closes; an HTTP/2 connection is closed at once, before
//! its handshake.

pub(crate) mod h2;
pub(crate) mod handshake;
pub(crate) mod tls;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::listeners::tls::Acceptor;
use pingora::protocols::http::ServerSession;
use pingora::protocols::{ALPN, SocketDigest, Stream};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use crate::completion::Completion;
use crate::config::ClientLimits;
use crate::error_page::{self, Cause};
use crate::failure::{FailureKind, Source};
use crate::metrics::Handshake;
use crate::request_head;
use crate::request_id;
use crate::state::{Shared, Snapshot};
use crate::upstream::attempt::Attempts;

/// Bytes read under the header deadline before the rest is left to Pingora: its own limit on a
/// header section, so that a client cannot send the first 64 KiB fast and trickle the rest. (A
/// whole header over 64 KiB is refused with 431 by the request checks.)
const MAX_HEAD_READ: usize = 1 << 20;

/// The first read of a request (or of an h2c listener's first bytes), and the capacity of the
/// buffer the header is read into: the size of Pingora's own first header buffer.
const FIRST_READ: usize = 4096;

/// Bytes of a refused request's target that its access-log line keeps.
const LOGGED_TARGET: usize = 1024;

/// Time allowed to write a proxy answer on a connection that is being closed.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// After answering a client that may still be sending, its bytes are read and dropped for this
/// long (or this many bytes) before closing, so that the close does not turn into a reset that
/// destroys the answer before the client reads it.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;

/// Holds one place among the open connections until dropped.
struct Open<'a>(&'a Shared);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        let left = self.0.clients().closed();
        // A drain waits for the last one.
        self.0.lifecycle().connection_closed(left);
    }
}

/// How reading a request header ended.
enum Head {
    /// A whole header (and maybe more) is in the buffer, or as much as Pingora would read.
    Read(BytesMut),
    /// Pingora holds the start of the next request already (it was pipelined).
    Carried,
    /// The connection closed, stayed idle past its time, or the server is shutting down.
    Gone,
    /// The header started but did not complete in time.
    TimedOut,
}

/// The HTTP application `A` (faultline's proxy) behind a connection limit and a header deadline.
pub(crate) struct ClientConnections<A> {
    app: Arc<A>,
    shared: Arc<Shared>,
    /// The plain listeners that also serve HTTP/2 with prior knowledge.
    h2c: Vec<SocketAddr>,
    /// How long a shutdown waits for open connections (`server.grace_period_seconds`).
    grace: Duration,
}

impl<A> ClientConnections<A> {
    /// Wraps `app`; limits, and the TLS listeners (plain TCP to the listener) with their
    /// acceptors, are read from `shared`'s current configuration for each connection.
    pub(crate) fn new(app: A, shared: Arc<Shared>, grace: Duration) -> Self {
        ClientConnections {
            app: Arc::new(app),
            shared,
            h2c: Vec::new(),
            grace,
        }
    }
}

impl<A> ClientConnections<A> {
    /// Connections accepted on the plain listener `address` that open with the HTTP/2 preface
    /// are served as HTTP/2 (prior knowledge); the others as HTTP/1.
    pub(crate) fn serve_h2c(mut self, address: SocketAddr) -> Self {
        self.h2c.push(address);
        self
    }

    /// Whether `stream` came through an h2c listener.
    fn is_h2c(&self, stream: &Stream) -> bool {
        !self.h2c.is_empty() && listener_of(&self.h2c, stream, |l| l).is_some()
    }
}

/// The TLS acceptor of the listener that accepted `stream`, if it is a TLS listener of
/// `snapshot`.
fn acceptor(snapshot: &Snapshot, stream: &Stream) -> Option<Arc<Acceptor>> {
    if snapshot.tls.is_empty() {
        return None;
    }
    listener_of(&snapshot.tls, stream, |l| &l.address).map(|l| l.acceptor.clone())
}

/// The entry of `listeners` (each with its address, given by `address`) that accepted
/// `stream`: the one bound to its local address, else a wildcard one on its port.
fn listener_of<'a, T>(
    listeners: &'a [T],
    stream: &Stream,
    address: impl Fn(&T) -> &SocketAddr,
) -> Option<&'a T> {
    let digest = stream.get_socket_digest()?;
    let local = digest.local_addr()?.as_inet()?;
    let fits = |l: &SocketAddr| l.port() == local.port() && l.ip() == local.ip();
    let wildcard = |l: &SocketAddr| l.port() == local.port() && l.ip().is_unspecified();
    listeners
        .iter()
        .find(|l| fits(address(l)))
        .or_else(|| listeners.iter().find(|l| wildcard(address(l))))
}

/// The client's address, for a log line: kept as the socket digest (an `Arc`), formatted only
/// if a line is written.
struct Peer(Option<Arc<SocketDigest>>);

impl Peer {
    fn of(stream: &Stream) -> Self {
        Peer(stream.get_socket_digest())
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_ref().and_then(|d| d.peer_addr()) {
            Some(addr) => write!(f, "{addr}"),
            None => f.write_str("an unknown address"),
        }
    }
}

#[async_trait]
impl<A> ServerApp for ClientConnections<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let counters = self.shared.clients();
        let open = counters.opened();
        let _open = Open(&self.shared);
        let snapshot = self.shared.current();
        let limits = snapshot.clients;
        // The acceptor of the configuration current now: a reload from here on changes
        // neither this handshake nor the session it makes.
        let tls = acceptor(&snapshot, &stream);
        drop(snapshot);
        // From the connection's start, as nginx's client_header_timeout: the TLS handshake, the
        // HTTP/2 preface or the first HTTP/1 request header must be complete by then.
        let deadline = Instant::now() + limits.header_timeout;
        let mut stream = stream;
        if let Some(acceptor) = tls {
            let peer = Peer::of(&stream);
            let failed = |e: &_| handshake::failed(counters, Handshake::Tls, &peer, e);
            // Boxed, as the HTTP/2 service below: the task of every connection is as large as
            // its largest state, and an idle HTTP/1 connection would pay for the others'.
            stream = match Box::pin(tls::accept(stream, &acceptor, deadline, failed)).await {
                tls::Accepted::Ready(tls) => tls,
                tls::Accepted::Gone | tls::Accepted::Failed => return None,
            };
        }
        let over = limits.max_connections.is_some_and(|max| open > max);
        if over {
            counters.refused_over_limit();
        }
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            if over {
                return None;
            }
            let peer = Peer::of(&stream);
            let failed = |e: &_| handshake::failed(counters, Handshake::H2, &peer, e);
            let opening = h2::Opening::Tls {
                carry_server_name: self.shared.extensions().any(),
            };
            Box::pin(h2::serve(
                &self.app, stream, opening, limits, deadline, shutdown, failed,
            ))
            .await;
            return None;
        }
        let mut first = None;
        if self.is_h2c(&stream) {
            // A client that left or stayed silent: nothing to serve. Boxed: its state is the
            // largest of this future's, which every connection would carry for its life
            // (-Zprint-type-sizes: 616 bytes to 304 for every connection, TLS or not).
            let start = Box::pin(read_preface(&mut stream, deadline)).await?;
            if start.starts_with(h2::PREFACE) {
                if over {
                    return None;
                }
                let peer = Peer::of(&stream);
                let failed = |e: &_| handshake::failed(counters, Handshake::H2, &peer, e);
                let opening = h2::Opening::Cleartext(start.freeze());
                Box::pin(h2::serve(
                    &self.app, stream, opening, limits, deadline, shutdown, failed,
                ))
                .await;
                return None;
            }
            first = Some(start);
        }
        // Boxed too: an HTTP/2 connection would otherwise carry the HTTP/1 loop's state (its
        // session, its header read) for its whole life: 0.8 KB (dhat: 1,456 to 615 bytes).
        Box::pin(self.serve_http1(stream, first, limits, deadline, over, shutdown)).await;
        None
    }

    /// Pingora calls this once every accept loop of the service has stopped (`Service::
    /// start_service`): no connection comes any more, and the drain waits for those open.
    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.app).await;
        let lifecycle = self.shared.lifecycle();
        lifecycle.drain(self.shared.clients(), self.grace).await;
    }
}

impl<A> ClientConnections<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// The HTTP/1 keep-alive loop of Pingora's own `ServerApp`, with each request header read
    /// here first, under its deadline.
    async fn serve_http1(
        &self,
        mut stream: Stream,
        mut read_already: Option<BytesMut>,
        limits: ClientLimits,
        first_deadline: Instant,
        over: bool,
        shutdown: &ShutdownWatch,
    ) {
        let mut settings: Option<HttpPersistentSettings> = None;
        let mut first = true;
        // One receiver and one idle timer for the connection: waiting for the next request
        // costs neither a clone nor a timer of its own.
        let mut watch = shutdown.clone();
        let mut idle = IdleTimer::default();
        loop {
            // Requests a client pipelined behind the previous one, as far as Pingora read them,
            // travel in `settings`; Pingora parses them itself, and reading here first would
            // wait for bytes the client already sent.
            let carried = settings.as_ref().is_some_and(carries_pipelined_bytes);
            let head = if carried {
                Head::Carried
            } else if first {
                let wait = first_deadline.saturating_duration_since(Instant::now());
                let start = read_already.take();
                // A new connection's first request is read and answered even when the
                // server is shutting down: the client connected before the listener closed.
                let wait = Wait::For(wait);
                read_head(&mut stream, start, wait, Some(first_deadline), limits).await
            } else {
                let wait = Wait::Idle(limits.keepalive_timeout, &mut idle, &mut watch);
                read_head(&mut stream, None, wait, None, limits).await
            };
            let prefix = match head {
                Head::Read(prefix) => Some(prefix),
                Head::Carried => None,
                Head::Gone => return,
                Head::TimedOut => {
                    self.shared.clients().header_timed_out();
                    Box::pin(self.answer(stream, FailureKind::HttpRequestTimeout, None)).await;
                    return;
                }
            };
            // A connection beyond the limit gets its first request answered, then closes.
            let refused = if over {
                Some(FailureKind::ClientConnectionLimit)
            } else {
                prefix.as_deref().and_then(request_head::check)
            };
            if let (Some(kind), Some(prefix)) = (refused, &prefix) {
                // What follows a refused header is never read: the connection closes.
                Box::pin(self.answer(stream, kind, Some(prefix))).await;
                return;
            }
            let mut session = ServerSession::new_http1(stream);
            match settings.take() {
                Some(previous) => previous.apply_to_session(&mut session),
                None => {
                    let keepalive =
                        (!*shutdown.borrow()).then(|| limits.keepalive_timeout.as_secs().max(1));
                    session.set_keepalive(keepalive);
                    session.set_keepalive_reuses_remaining(
                        self.app
                            .server_options()
                            .and_then(|o| o.keepalive_request_limit),
                    );
                    // Without it, Pingora refuses to reuse a connection on which it read bytes
                    // past the request (pingora-core `protocols/http/v1/server.rs`, `reuse`):
                    // the answer says keep-alive, the connection closes, and every request
                    // pipelined behind the first is lost. With it, they are served in order.
                    // The settings carry it to the connection's later sessions.
                    session.set_pipelining_enabled(true);
                }
            }
            if let Some(prefix) = prefix {
                session.set_pipelined_prefix(prefix);
            }
            session.set_read_timeout(Some(limits.body_timeout));
            session.set_write_timeout(Some(limits.send_timeout));
            let Some(reused) = self.app.process_new_http(session, shutdown).await else {
                return;
            };
            (stream, settings) = reused.consume();
            first = false;
        }
    }

    /// Answers `kind` on a connection whose request never reached Pingora, then closes it.
    /// `head` is the raw request header, when it arrived whole: its request id, `Accept`,
    /// method and target are honoured and logged as the gateway would.
    ///
    /// Its callers box it: its state (the page, the linger buffer) is several kilobytes, and
    /// inline it would make the task of every connection, idle ones included, that large.
    async fn answer(&self, mut stream: Stream, kind: FailureKind, head: Option<&[u8]>) {
        let started = Instant::now();
        let snapshot = self.shared.current();
        let line = head.and_then(request_head::request_line);
        let field = |name| head.and_then(|raw| request_head::fields(raw, name).next());
        let request_id = request_id::for_request(field(request_id::HEADER));
        let rendered = snapshot.pages.render(
            Cause::Failure(kind),
            error_page::Request {
                request_id: &request_id,
                accept: field("accept"),
                head: line.is_some_and(|l| l.method == b"HEAD"),
                next_hop: None,
                retry_after: None,
            },
        );
        if let Ok(page) = rendered {
            let mut out = Vec::with_capacity(512 + page.body.len());
            out.extend_from_slice(
                format!("HTTP/1.1 {} {}\r\n", kind.status(), kind.reason()).as_bytes(),
            );
            for (name, value) in &page.header.headers {
                out.extend_from_slice(name.as_str().as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"Connection: close\r\n\r\n");
            out.extend_from_slice(&page.body);
            let write = async {
                stream.write_all(&out).await?;
                stream.flush().await?;
                stream.shutdown().await
            };
            if let Ok(Ok(())) = tokio::time::timeout(ANSWER_TIMEOUT, write).await {
                linger(&mut stream).await;
            }
        }
        let method = line.map(|l| String::from_utf8_lossy(l.method));
        // A target refused for its length is logged by its start.
        let path =
            line.map(|l| String::from_utf8_lossy(&l.target[..l.target.len().min(LOGGED_TARGET)]));
        Completion {
            metrics: Some(&snapshot.routes.get(None)),
            request_id: &request_id,
            method: method.as_deref().unwrap_or(""),
            host: None,
            path: path.as_deref().unwrap_or(""),
            status: kind.status(),
            source: Source::Proxy,
            failure: Some(kind),
            route: None,
            pool: None,
            attempts: &Attempts::default(),
            grpc_status: None,
            duration: started.elapsed(),
            tunnel: None,
        }
        .record();
    }
}

/// Reads the start of a request until its header is complete. The first bytes may take `wait`
/// (see [`wait_for_first_bytes`]); the whole header must be in by `deadline`, or, without one,
/// within the header timeout from its first byte. (The clock is read only when a header takes
/// more than one read.) `start`: what was read already (an h2c listener's look at the first
/// bytes).
async fn read_head(
    stream: &mut Stream,
    start: Option<BytesMut>,
    wait: Wait<'_>,
    deadline: Option<Instant>,
    limits: ClientLimits,
) -> Head {
    let mut buf = match start {
        Some(buf) if !buf.is_empty() => buf,
        _ => match wait_for_first_bytes(stream, wait).await {
            Some(buf) => buf,
            None => return Head::Gone,
        },
    };
    let mut scanned = 0;
    if head_complete(&buf, &mut scanned) {
        return Head::Read(buf);
    }
    let deadline = deadline.unwrap_or_else(|| Instant::now() + limits.header_timeout);
    loop {
        if head_complete(&buf, &mut scanned) || buf.len() >= MAX_HEAD_READ {
            return Head::Read(buf);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match pingora::prelude::timeout(left, stream.read_buf(&mut buf)).await {
            Err(_) => return Head::TimedOut,
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Head::Gone,
        }
    }
}

/// Reads the first bytes of a connection on an h2c listener until they either are the HTTP/2
/// preface or cannot be: the bytes read (to be replayed to whichever protocol serves the
/// connection), or `None` when the client left or missed `deadline`.
async fn read_preface(stream: &mut Stream, deadline: Instant) -> Option<BytesMut> {
    let wait = deadline.saturating_duration_since(Instant::now());
    // A new connection: served even if the server started shutting down since it was accepted.
    let mut buf = wait_for_first_bytes(stream, Wait::For(wait)).await?;
    let n = h2::PREFACE.len();
    while buf.len() < n && h2::PREFACE.starts_with(&buf) {
        let left = deadline.saturating_duration_since(Instant::now());
        match pingora::prelude::timeout(left, stream.read_buf(&mut buf)).await {
            Ok(Ok(read)) if read > 0 => {}
            // A late or broken preface is HTTP/2's to judge: hand over what came.
            Err(_) => return Some(buf),
            Ok(_) => return None,
        }
    }
    Some(buf)
}

/// How long a wait for the first bytes of a request may take.
enum Wait<'a> {
    /// This long, on a timer of its own: a new connection's first request (read and answered
    /// even when the server is shutting down: the client connected while the listener still
    /// accepted, may already be sending, and would otherwise see its connection closed without
    /// an answer), or an h2c listener's first bytes.
    For(Duration),
    /// This long, on the connection's idle timer, between two requests of a kept-alive
    /// connection; a shutdown ends the wait early, as Pingora's own does: the client has had its
    /// answers and may reconnect.
    Idle(Duration, &'a mut IdleTimer, &'a mut ShutdownWatch),
}

/// Waits for the first bytes of a request, as long as `wait` allows: the bytes, or `None` when
/// none came. The buffer is allocated once they are there ([`read_first`]).
async fn wait_for_first_bytes(stream: &mut Stream, wait: Wait<'_>) -> Option<BytesMut> {
    let (wait, timer, shutdown) = match wait {
        // Pingora's timeout, as Pingora's reads use: tokio's timers unless the configuration
        // sets `fast_timeout_to_tokio_threshold_seconds` (then Pingora's wheel, on its own
        // thread, for waits shorter than that). Like all of Pingora's timeouts, it is set up
        // only if the bytes are not there at once.
        Wait::For(wait) => {
            return pingora::prelude::timeout(wait, read_first(stream))
                .await
                .ok()
                .flatten();
        }
        Wait::Idle(wait, timer, shutdown) => (wait, timer, shutdown),
    };
    if *shutdown.borrow() {
        return None;
    }
    let until = Instant::now() + wait;
    loop {
        tokio::select! {
            biased;
            read = read_first(stream) => return read,
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return None;
                }
            }
            () = timer.until(until) => return None,
        }
    }
}

/// The timer of a kept-alive connection's waits for its next request: armed at the first wait
/// and moved on only when it fires before the wait's end. Most waits end in a request long
/// before the timer's time, so a connection that keeps sending requests sets one timer every
/// keep-alive timeout instead of one per request, and allocates it once (Pingora's timeout
/// boxes a new one for each wait). tokio's timer, whatever
/// `fast_timeout_to_tokio_threshold_seconds` says: the wait is seconds long.
///
/// Between waits the timer stays set at an earlier wait's end, at most one keep-alive timeout
/// ahead; when it fires then, it wakes the connection's task once for nothing (the task finds
/// nothing to do).
#[derive(Default)]
struct IdleTimer(Option<Pin<Box<tokio::time::Sleep>>>);

impl IdleTimer {
    /// Completes at `until`.
    async fn until(&mut self, until: Instant) {
        let until = tokio::time::Instant::from_std(until);
        let sleep = self
            .0
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
        if sleep.deadline() > until {
            sleep.as_mut().reset(until);
        }
        loop {
            sleep.as_mut().await;
            if sleep.deadline() >= until {
                return;
            }
            // It fired at an earlier wait's end: on to this one's.
            sleep.as_mut().reset(until);
        }
    }
}

/// Reads the first bytes the client sends, up to [`FIRST_READ`]: the bytes, or `None` at the
/// end of the stream or on an error.
///
/// Each poll reads into a buffer on the stack and copies what came into a new buffer, so that
/// a connection waiting for its next request (most of an edge's connections, most of the time)
/// holds no read buffer at all; the copy is of the few bytes of a request header.
fn read_first(stream: &mut Stream) -> impl Future<Output = Option<BytesMut>> + '_ {
    std::future::poll_fn(move |cx| {
        let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); FIRST_READ];
        let mut buf = ReadBuf::uninit(&mut chunk);
        match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                let mut bytes = BytesMut::with_capacity(FIRST_READ);
                bytes.extend_from_slice(buf.filled());
                Poll::Ready(Some(bytes))
            }
            Poll::Ready(_) => Poll::Ready(None),
        }
    })
}

/// Whether `buf` holds a whole request header: an empty line after the request line. Leading
/// empty lines are skipped (RFC 9112 §2.2); a bare LF counts as a line end, so that framing the
/// request checks refuse is refused rather than waited on. `scanned` carries the position
/// already searched between calls.
fn head_complete(buf: &[u8], scanned: &mut usize) -> bool {
    let start = buf
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(buf.len());
    let from = (*scanned).max(start);
    for i in memchr::memchr_iter(b'\n', &buf[from..]) {
        let rest = &buf[from + i + 1..];
        if rest.first() == Some(&b'\n') || rest.starts_with(b"\r\n") {
            return true;
        }
    }
    // The last two bytes may start an empty line that the next read completes.
    *scanned = buf.len().saturating_sub(2).max(start);
    false
}

/// Whether Pingora carries bytes of a pipelined next request into the next session.
///
/// It keeps them in `HttpPersistentSettings`, whose fields are private and which has no
/// accessor, and parses them as the start of the next request; its `Debug` output is the one
/// place the field shows. The probe stops formatting at the field (no allocation, no bytes
/// formatted). Should the field ever be missing, it answers `true`: the next request is then
/// left to Pingora, which loses the header deadline for it but never a request already sent.
/// The `settings_with_pipelined_bytes_are_recognised` test pins the format.
fn carries_pipelined_bytes(settings: &HttpPersistentSettings) -> bool {
    use std::fmt::Write;

    const FIELD: &str = "pipelined_prefix";
    #[derive(Default)]
    struct Probe {
        at_field: bool,
        carried: Option<bool>,
    }
    impl Write for Probe {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            if !self.at_field {
                self.at_field = s == FIELD;
                return Ok(());
            }
            if s == ": " {
                return Ok(());
            }
            self.carried = Some(s != "None");
            // Found: the rest (the bytes themselves) is not formatted.
            Err(std::fmt::Error)
        }
    }
    let mut probe = Probe::default();
    // Stopped on purpose once found; nothing else can fail.
    let _ = write!(probe, "{settings:?}");
    probe.carried.unwrap_or(true)
}

/// Reads and drops what the client still sends, for a bounded time and size.
async fn linger(stream: &mut Stream) {
    let mut sink = [0u8; 8192];
    let mut total = 0;
    let until = tokio::time::Instant::now() + LINGER;
    while total < LINGER_BYTES {
        match tokio::time::timeout_at(until, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => total += n,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{carries_pipelined_bytes, head_complete};
    use bytes::BytesMut;
    use pingora::apps::HttpPersistentSettings;
    use pingora::protocols::http::ServerSession;

    #[test]
    fn settings_with_pipelined_bytes_are_recognised() {
        let (stream, _peer) = tokio::io::duplex(64);
        let session = ServerSession::new_http1(Box::new(stream));
        let mut settings = HttpPersistentSettings::for_session(&session);
        settings.set_user_context(Box::new(7u8));
        assert!(!carries_pipelined_bytes(&settings));
        settings.set_pipelined_prefix(BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]));
        assert!(carries_pipelined_bytes(&settings));
    }

    #[test]
    fn finds_the_end_of_a_header() {
        let complete: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nbody",
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"GET / HTTP/1.1\r\nHost: a\n\r\n",
        ];
        for c in complete {
            assert!(head_complete(c, &mut 0), "{}", String::from_utf8_lossy(c));
        }
        let partial: &[&[u8]] = &[
            b"",
            b"\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r",
            b"GET / HTT",
        ];
        for p in partial {
            assert!(!head_complete(p, &mut 0), "{}", String::from_utf8_lossy(p));
        }
    }

    #[test]
    fn a_header_split_across_reads_is_found() {
        let whole = b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: 0123456789\r\n\r\n";
        for cut in 1..whole.len() {
            let mut scanned = 0;
            assert!(!head_complete(&whole[..cut], &mut scanned), "cut {cut}");
            assert!(head_complete(whole, &mut scanned), "cut {cut}");
        }
    }
}
