//! The origin kit: an HTTP/1.1 origin that reads requests and answers each as a [`Behavior`]
//! says, a behaviour being plain data (answer these bytes, reset, hang, wait for a gate …).
//!
//! The demo origins of the `demo:` section, the integration tests' misbehaving origins and the
//! soak's mode-switching origins are all this one server with different behaviours. It is a
//! testing and demo aid, not for production traffic: it trusts its peer, answers without
//! looking at the request beyond its framing, and keeps what it saw in memory.
//!
//! ```no_run
//! use faultline::internals::demo::origin::{Behavior, Origin};
//!
//! # async fn demo() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let origin = Origin::new(Behavior::named("a"));
//! tokio::spawn(origin.clone().serve(listener));
//! // … later, from the next request on:
//! origin.set(Behavior::Reset);
//! # Ok(())
//! # }
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request header section an origin reads; a longer one closes the connection.
const MAX_HEAD: usize = 1024 * 1024;

/// Request heads an origin keeps (the first ones), so that a long run stays bounded.
const KEPT_HEADS: usize = 4096;

/// What an origin does with a request (or, for [`Behavior::NoRead`] and
/// [`Behavior::AnswerFirstBytes`], with a whole connection).
#[derive(Debug, Clone)]
pub enum Behavior {
    /// Answers with these exact response bytes, keeping the connection open.
    Raw(Vec<u8>),
    /// Answers `status` with a `text/plain` body and a `Content-Length`, keeping the connection
    /// open; when `echo_request_id` is set, the request's `X-Request-Id` (if any) comes back.
    Text {
        /// The status code; its reason phrase is the standard one.
        status: u16,
        /// The body.
        body: String,
        /// Whether the response repeats the request's `X-Request-Id`.
        echo_request_id: bool,
    },
    /// Behaves for request number n of the origin (counted across connections) as
    /// `behaviors[n % len]`.
    Cycle(Vec<Behavior>),
    /// Waits this long after reading the request, then behaves as the inner behaviour.
    Delayed(Duration, Box<Behavior>),
    /// Waits after reading the request until the gate opens, then behaves as the inner
    /// behaviour.
    Held(Gate, Box<Behavior>),
    /// Reads the request, then resets the connection (RST) without a byte.
    Reset,
    /// Reads the request, then closes cleanly without a byte.
    Close,
    /// Reads the request, writes these bytes, then closes.
    WriteThenClose(Vec<u8>),
    /// Reads the request, writes these bytes, then closes once the gate opens.
    WriteThenCloseWhen(Vec<u8>, Gate),
    /// Reads the request, writes these bytes, then keeps the connection open without another
    /// byte until the peer goes away.
    WriteThenHang(Vec<u8>),
    /// Reads the request and never answers; the connection stays open until the peer leaves.
    Hang,
    /// Accepts the connection and never reads from it (for 60 s, then closes): a peer's
    /// writes stall once the socket buffers are full. Decided when the connection is accepted.
    NoRead,
    /// Answers the first bytes that arrive, whatever they are (say a TLS ClientHello), with
    /// these bytes, then waits for the peer to close: a server speaking another protocol.
    /// Decided when the connection is accepted.
    AnswerFirstBytes(Vec<u8>),
}

impl Behavior {
    /// `200` with the body `origin <tag>`, keep-alive: an origin that says who it is.
    pub fn named(tag: impl std::fmt::Display) -> Behavior {
        Behavior::Text {
            status: 200,
            body: format!("origin {tag}"),
            echo_request_id: false,
        }
    }

    /// These bytes after `delay`.
    pub fn delayed(delay: Duration, bytes: Vec<u8>) -> Behavior {
        Behavior::Delayed(delay, Box::new(Behavior::Raw(bytes)))
    }

    /// These bytes once `gate` opens.
    pub fn held(gate: Gate, bytes: Vec<u8>) -> Behavior {
        Behavior::Held(gate, Box::new(Behavior::Raw(bytes)))
    }
}

/// A gate a behaviour waits on: whoever holds it decides when the origin goes on.
#[derive(Debug, Clone)]
pub struct Gate(Arc<tokio::sync::watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Gate {
        Gate::new()
    }
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Gate {
        Gate(Arc::new(tokio::sync::watch::channel(false).0))
    }

    /// Opens the gate: every waiting request goes on, and so does every later one.
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    /// Waits until the gate is open.
    pub async fn wait(&self) {
        let _ = self.0.subscribe().wait_for(|open| *open).await;
    }
}

/// What an origin saw.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted.
    pub connections: AtomicUsize,
    /// Requests read completely (head and body).
    pub requests: AtomicUsize,
    /// The first 4096 request heads, as text (a long run stays bounded).
    pub heads: Mutex<Vec<String>>,
}

/// One origin: its current behaviour and what it saw, shared by its accept loop and its
/// connections. Cloning gives another handle to the same origin.
#[derive(Debug, Clone)]
pub struct Origin {
    behavior: Arc<RwLock<Arc<Behavior>>>,
    stats: Arc<Stats>,
}

impl Origin {
    /// An origin behaving as `behavior` until [`Origin::set`] says otherwise.
    pub fn new(behavior: Behavior) -> Origin {
        Origin {
            behavior: Arc::new(RwLock::new(Arc::new(behavior))),
            stats: Arc::default(),
        }
    }

    /// Changes what the origin does from the next request (or connection) on.
    pub fn set(&self, behavior: Behavior) {
        if let Ok(mut b) = self.behavior.write() {
            *b = Arc::new(behavior);
        }
    }

    /// What the origin saw so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The current behaviour (a poisoned lock reads as [`Behavior::Close`]).
    fn current(&self) -> Arc<Behavior> {
        self.behavior
            .read()
            .map(|b| b.clone())
            .unwrap_or_else(|_| Arc::new(Behavior::Close))
    }

    /// Accepts connections on `listener` and serves each on a task of its own, for ever.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(self.clone().connection(stream));
                }
                Err(e) => {
                    // Out of descriptors, say: wait a little rather than spin.
                    log::warn!("origin: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    /// Serves one accepted connection until either side closes it. For an origin whose
    /// listener is managed elsewhere (closed and re-bound, say).
    pub async fn connection(self, mut stream: TcpStream) {
        self.stats.connections.fetch_add(1, Ordering::SeqCst);
        match &*self.current() {
            Behavior::NoRead => {
                // Keep the socket open and unread until the peer goes away.
                tokio::time::sleep(Duration::from_secs(60)).await;
                return;
            }
            Behavior::AnswerFirstBytes(bytes) => {
                let mut sink = [0u8; 4096];
                if matches!(stream.read(&mut sink).await, Ok(n) if n > 0)
                    && stream.write_all(bytes).await.is_ok()
                {
                    // Closing with the peer's later bytes unread would reset instead.
                    drain_until_closed(&mut stream).await;
                }
                return;
            }
            _ => {}
        }
        let mut buf = Vec::with_capacity(4096);
        while let Some(head) = read_request(&mut stream, &mut buf).await {
            let n = self.stats.requests.fetch_add(1, Ordering::SeqCst);
            let request_id = header(&head, "x-request-id").map(str::to_string);
            if let Ok(mut heads) = self.stats.heads.lock()
                && heads.len() < KEPT_HEADS
            {
                heads.push(head);
            }
            let current = self.current();
            let mut now: &Behavior = &current;
            // Unwrap the behaviours that only pick or wait for the one that answers.
            loop {
                now = match now {
                    Behavior::Cycle(list) if !list.is_empty() => &list[n % list.len()],
                    Behavior::Delayed(delay, inner) => {
                        tokio::time::sleep(*delay).await;
                        &**inner
                    }
                    Behavior::Held(gate, inner) => {
                        gate.wait().await;
                        &**inner
                    }
                    _ => break,
                };
            }
            if !answer(&mut stream, now, request_id.as_deref()).await {
                return;
            }
        }
    }
}

/// Answers one request; false when the connection is done with.
async fn answer(stream: &mut TcpStream, behavior: &Behavior, request_id: Option<&str>) -> bool {
    match behavior {
        Behavior::Raw(bytes) => stream.write_all(bytes).await.is_ok(),
        Behavior::Text {
            status,
            body,
            echo_request_id,
        } => {
            let reason = http::StatusCode::from_u16(*status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Unknown");
            let echo = match request_id {
                Some(id) if *echo_request_id => format!("x-request-id: {id}\r\n"),
                _ => String::new(),
            };
            let response = format!(
                "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\n{echo}content-length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(response.as_bytes()).await.is_ok()
        }
        Behavior::Reset => {
            let _ = stream.set_zero_linger();
            false
        }
        Behavior::WriteThenClose(bytes) => {
            let _ = stream.write_all(bytes).await;
            let _ = stream.flush().await;
            false
        }
        Behavior::WriteThenCloseWhen(bytes, gate) => {
            let _ = stream.write_all(bytes).await;
            gate.wait().await;
            false
        }
        Behavior::WriteThenHang(bytes) => {
            let _ = stream.write_all(bytes).await;
            drain_until_closed(stream).await;
            false
        }
        Behavior::Hang => {
            drain_until_closed(stream).await;
            false
        }
        // An empty cycle, and the per-connection behaviours set after the connection began.
        Behavior::Close
        | Behavior::Cycle(_)
        | Behavior::Delayed(..)
        | Behavior::Held(..)
        | Behavior::NoRead
        | Behavior::AnswerFirstBytes(_) => false,
    }
}

/// Reads and drops whatever the peer sends until it closes.
async fn drain_until_closed(stream: &mut TcpStream) {
    let mut sink = [0u8; 1024];
    while let Ok(n) = stream.read(&mut sink).await {
        if n == 0 {
            return;
        }
    }
}

/// Reads more bytes into `buf`; false when the peer closed or the read failed.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// Reads one request, head and body (by `Content-Length`, or chunked with its trailers), from
/// `buf` and then the stream; returns the head and leaves what follows in `buf`. `None` when the
/// peer closed first or the head is too large.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let head_end = loop {
        if let Some(pos) = find(buf, b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > MAX_HEAD || !fill(stream, buf).await {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    let chunked = header(&head, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        read_chunked_body(stream, buf).await?;
    } else {
        let length: usize = header(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < length {
            if !fill(stream, buf).await {
                return None;
            }
        }
        buf.drain(..length);
    }
    Some(head)
}

/// Consumes a chunked body: size lines, data, the last chunk and the trailer section.
async fn read_chunked_body(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    loop {
        let size_line = line(stream, buf).await?;
        let size = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).ok()?;
        if size == 0 {
            // Trailer fields, up to the empty line.
            while !line(stream, buf).await?.is_empty() {}
            return Some(());
        }
        let need = size.checked_add(2)?;
        while buf.len() < need {
            if !fill(stream, buf).await {
                return None;
            }
        }
        buf.drain(..need);
    }
}

/// Takes one CRLF-terminated line off `buf`, reading more as needed.
async fn line(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(pos) = find(buf, b"\r\n") {
            let text = String::from_utf8_lossy(&buf[..pos]).into_owned();
            buf.drain(..pos + 2);
            return Some(text);
        }
        if buf.len() > MAX_HEAD || !fill(stream, buf).await {
            return None;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The first value of header `name` in a request head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}
