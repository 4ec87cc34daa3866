//! HTTP/2 client connections under the client deadlines.
//!
//! Pingora's HTTP/2 path (`apps/mod.rs`) waits for the client's preface without a deadline,
//! offers only an idle timeout that drops the socket without a GOAWAY, and cannot see a header
//! block that never ends (the `h2` codec buffers it out of sight). [`serve`] runs the connection
//! itself with Pingora's own pieces (`v2::server::handshake`, `HttpSession::from_h2_conn`, the
//! application's `process_new_http` for each stream), under three deadlines:
//!
//! - the preface must arrive by the connection's header deadline (`clients.header_timeout`
//!   from its start);
//! - a connection with no stream open for `clients.keepalive_timeout` gets GOAWAY `NO_ERROR`
//!   and closes;
//! - a header block (HEADERS, then CONTINUATION frames up to END_HEADERS) not complete within
//!   `clients.header_timeout` of its first frame ends the connection with GOAWAY
//!   `PROTOCOL_ERROR`, as nginx ends a client that stops mid-frame.
//!
//! [`Watched`] sits under the codec and follows the frame headers the client sends (nine bytes
//! a frame; payloads are skipped, not parsed) to know when a header block is open.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use h2::Reason;
use pingora::apps::HttpServerApp;
use pingora::prelude::timeout;
use pingora::protocols::http::ServerSession;
use pingora::protocols::http::v2::server::{self, H2Accept, HttpSession};
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    ALPN, Digest, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest,
    Ssl, Stream, TimingDigest, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::handshake::HandshakeError;
use crate::config::ClientLimits;
use crate::extension::ServerName;

/// Time allowed to write the closing GOAWAY to a client that may not be reading.
const GOAWAY_TIMEOUT: Duration = Duration::from_secs(1);

/// Streams refused while being accepted (a forbidden byte in the target …) before the
/// connection is closed: Pingora's own budget (`MAX_MALFORMED_STREAMS_PER_CONN`), which its
/// accept loop keeps across calls but [`HttpSession::from_h2_conn`] does not.
const MAX_REJECTED_STREAMS: usize = 32;

/// The client connection preface (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const PREFACE_LEN: usize = PREFACE.len();
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

type Connection = h2::server::Connection<Stream, Bytes>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What is known of a connection before HTTP/2 starts on it.
pub(crate) enum Opening {
    /// TLS, ALPN `h2`. With `carry_server_name`, each request carries the TLS server name in its
    /// extensions for the gateway's extensions: an HTTP/2 stream has no way back to its
    /// connection's TLS state. Without extensions installed, nothing is added to a request.
    Tls { carry_server_name: bool },
    /// An h2c listener: the bytes it read already to look at the preface, given to the codec
    /// before anything else is read.
    Cleartext(Bytes),
}

/// Serves one HTTP/2 connection whose preface is due by `deadline`. A preface that started and
/// failed or came late is given to `failed` before the connection closes; a client that closed
/// or stayed silent before its first byte is no failure.
pub(crate) async fn serve<A>(
    app: &Arc<A>,
    stream: Stream,
    opening: Opening,
    limits: ClientLimits,
    deadline: Instant,
    shutdown: &ShutdownWatch,
    failed: impl FnOnce(&HandshakeError),
) where
    A: HttpServerApp + Send + Sync + 'static,
{
    let digest = Arc::new(Digest {
        ssl_digest: stream.get_ssl_digest(),
        timing_digest: stream.get_timing_digest(),
        proxy_digest: stream.get_proxy_digest(),
        socket_digest: stream.get_socket_digest(),
    });
    let (replay, server_name) = match opening {
        Opening::Cleartext(replay) => (replay, None),
        Opening::Tls { carry_server_name } => (
            Bytes::new(),
            stream
                .get_ssl()
                .and_then(|t| t.server_name())
                .filter(|_| carry_server_name)
                .map(|name| ServerName(Arc::from(name))),
        ),
    };
    let blocks = Arc::new(HeaderBlocks::default());
    let watched: Stream = Box::new(Watched {
        replay,
        inner: stream,
        frames: FrameScan::default(),
        open: false,
        blocks: blocks.clone(),
    });
    let left = deadline.saturating_duration_since(Instant::now());
    // Pinned here so that the connection it holds outlives the report of a failure; boxed, and
    // dropped once done, so that its state (as large as the codec it builds) is not carried
    // through the connection's life.
    let mut handshake = Box::pin(server::handshake(watched, app.h2_options()));
    let mut conn = match timeout(left, handshake.as_mut()).await {
        Ok(Ok(conn)) => conn,
        _ if !blocks.read_any.load(Ordering::Relaxed) => return,
        Ok(Err(e)) => return failed(&HandshakeError::Failed(e)),
        Err(_) => return failed(&HandshakeError::TimedOut),
    };
    drop(handshake);

    let streams = Arc::new(OpenStreams::new());
    let mut watch = shutdown.clone();
    let mut draining = false;
    // A shutdown seen before the connection's first stream: the GOAWAY waits for that stream,
    // until the header deadline at most. The client connected while the listener still
    // accepted, and a GOAWAY at once would refuse the request it is about to send.
    let mut stop_after_first = false;
    let mut served = false;
    let mut rejected = 0;
    // The loop ends with the reason to close the connection; the close is awaited after it,
    // once the loop's futures and the stream it accepted last are gone, so that the
    // connection's state does not hold them beside the close (-Zprint-type-sizes: 3,520 bytes
    // to 2,536 per connection).
    let reason = {
        // Made once for the connection, not once per stream: each registers a waiter when
        // first polled and keeps it. The shutdown signal fires once; its branch is off from
        // then on.
        let shutdown_signal = async { watch.changed().await };
        let overdue = blocks.overdue(limits.header_timeout);
        let idle = streams.idle_for(limits.keepalive_timeout);
        tokio::pin!(shutdown_signal, overdue, idle);
        loop {
            let next = tokio::select! {
                biased;
                _ = &mut shutdown_signal, if !draining && !stop_after_first => {
                    if served {
                        // GOAWAY, then the streams in flight finish, as Pingora's own loop does.
                        draining = true;
                        conn.graceful_shutdown();
                    } else {
                        stop_after_first = true;
                    }
                    continue;
                }
                // Lazy: the timer is made only when this branch is polled.
                () = async {
                    tokio::time::sleep(deadline.saturating_duration_since(Instant::now())).await
                }, if stop_after_first && !draining => {
                    draining = true;
                    conn.graceful_shutdown();
                    continue;
                }
                () = &mut overdue => {
                    log::debug!("HTTP/2 header block not complete within clients.header_timeout");
                    break Reason::PROTOCOL_ERROR;
                }
                () = &mut idle => break Reason::NO_ERROR,
                next = HttpSession::from_h2_conn(&mut conn, digest.clone()) => next,
            };
            match next {
                // A client that drops the TCP connection without a GOAWAY is common: not logged.
                Err(_) | Ok(None) => return,
                Ok(Some(H2Accept::Rejected)) => {
                    rejected += 1;
                    if rejected >= MAX_REJECTED_STREAMS {
                        break Reason::ENHANCE_YOUR_CALM;
                    }
                }
                Ok(Some(H2Accept::Session(mut session))) => {
                    if let Some(name) = &server_name {
                        session
                            .req_header_mut()
                            .extensions_mut()
                            .insert(name.clone());
                    }
                    let open = streams.opened();
                    let app = app.clone();
                    let shutdown = shutdown.clone();
                    let mut session = ServerSession::new_http2(session);
                    // A client that keeps its window shut holds the stream, and its upstream,
                    // until a body write makes no progress for this long.
                    session.set_write_timeout(Some(limits.send_timeout));
                    tokio::spawn(async move {
                        let _open = open;
                        app.process_new_http(session, &shutdown).await;
                    });
                    served = true;
                    if stop_after_first && !draining {
                        draining = true;
                        conn.graceful_shutdown();
                    }
                }
            }
        }
    };
    close(&mut conn, &digest, reason).await;
}

/// Sends GOAWAY with `reason` and drives the connection until it is written and the socket
/// shut, for [`GOAWAY_TIMEOUT`] at most.
async fn close(conn: &mut Connection, digest: &Arc<Digest>, reason: Reason) {
    conn.abrupt_shutdown(reason);
    let drive = async {
        // Streams that arrive now are dropped (reset); the GOAWAY already refused them.
        while let Ok(Some(_)) = HttpSession::from_h2_conn(conn, digest.clone()).await {}
    };
    let _ = timeout(GOAWAY_TIMEOUT, drive).await;
}

/// The streams being served on a connection, and since when none has been.
struct OpenStreams {
    open: AtomicUsize,
    idle_since: Mutex<Instant>,
    idle: tokio::sync::Notify,
}

/// One stream being served; when the last one is dropped, the connection is idle.
struct StreamOpen(Arc<OpenStreams>);

impl Drop for StreamOpen {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            *lock(&self.0.idle_since) = Instant::now();
            self.0.idle.notify_one();
        }
    }
}

impl OpenStreams {
    fn new() -> Self {
        OpenStreams {
            open: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            idle: tokio::sync::Notify::new(),
        }
    }

    fn opened(self: &Arc<Self>) -> StreamOpen {
        self.open.fetch_add(1, Ordering::AcqRel);
        StreamOpen(self.clone())
    }

    /// Completes once no stream has been open for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            if self.open.load(Ordering::Acquire) > 0 {
                self.idle.notified().await;
                continue;
            }
            let since = *lock(&self.idle_since);
            let left = (since + limit).saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            // Then look again: a stream may have come and gone meanwhile.
            tokio::time::sleep(left).await;
        }
    }
}

/// Whether a header block is open on the connection, and since when.
#[derive(Debug, Default)]
struct HeaderBlocks {
    /// Blocks started so far (to tell an open block from a later one), and since when the
    /// current one is open.
    open: Mutex<(u64, Option<Instant>)>,
    started: tokio::sync::Notify,
    /// Whether the client sent a byte at all.
    read_any: AtomicBool,
}

impl HeaderBlocks {
    fn start(&self, now: Instant) {
        let mut open = lock(&self.open);
        *open = (open.0.wrapping_add(1), Some(now));
        drop(open);
        self.started.notify_one();
    }

    fn end(&self) {
        lock(&self.open).1 = None;
    }

    /// Completes when a header block has been open for `limit`.
    async fn overdue(&self, limit: Duration) {
        loop {
            let open = *lock(&self.open);
            match open {
                (_, None) => self.started.notified().await,
                (_, Some(since)) => {
                    let left = (since + limit).saturating_duration_since(Instant::now());
                    if !left.is_zero() {
                        tokio::time::sleep(left).await;
                    }
                    if *lock(&self.open) == open {
                        return;
                    }
                }
            }
        }
    }
}

/// Where the client's byte stream is: in the preface, a frame header, or a frame's payload.
#[derive(Debug)]
struct FrameScan {
    preface_left: usize,
    head: [u8; FRAME_HEADER_LEN],
    head_len: usize,
    payload_left: usize,
    /// The frame being read ends its header block.
    ends_block: bool,
    in_block: bool,
}

impl Default for FrameScan {
    fn default() -> Self {
        FrameScan {
            preface_left: PREFACE_LEN,
            head: [0; FRAME_HEADER_LEN],
            head_len: 0,
            payload_left: 0,
            ends_block: false,
            in_block: false,
        }
    }
}

impl FrameScan {
    /// Follows `bytes` from the client: whether a header block is open after them, and whether
    /// one started among them.
    fn follow(&mut self, mut bytes: &[u8]) -> (bool, bool) {
        let mut started = false;
        while !bytes.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(bytes.len());
                self.preface_left -= n;
                bytes = &bytes[n..];
            } else if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
                if self.payload_left == 0 {
                    self.frame_end();
                }
            } else {
                let n = (FRAME_HEADER_LEN - self.head_len).min(bytes.len());
                self.head[self.head_len..self.head_len + n].copy_from_slice(&bytes[..n]);
                self.head_len += n;
                bytes = &bytes[n..];
                if self.head_len == FRAME_HEADER_LEN {
                    self.head_len = 0;
                    let [l0, l1, l2, kind, flags, ..] = self.head;
                    if matches!(kind, HEADERS | PUSH_PROMISE) && !self.in_block {
                        self.in_block = true;
                        started = true;
                    }
                    self.ends_block = matches!(kind, HEADERS | PUSH_PROMISE | CONTINUATION)
                        && flags & END_HEADERS != 0;
                    self.payload_left =
                        usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
                    if self.payload_left == 0 {
                        self.frame_end();
                    }
                }
            }
        }
        (self.in_block, started)
    }

    fn frame_end(&mut self) {
        if self.ends_block {
            self.in_block = false;
            self.ends_block = false;
        }
    }
}

/// A client stream whose reads are followed by a [`FrameScan`]; everything else is the inner
/// stream's.
#[derive(Debug)]
struct Watched {
    /// Bytes read before the codec took the connection, read first.
    replay: Bytes,
    inner: Stream,
    frames: FrameScan,
    /// Whether `blocks` holds an open block.
    open: bool,
    blocks: Arc<HeaderBlocks>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = if this.replay.is_empty() {
            Pin::new(&mut this.inner).poll_read(cx, buf)
        } else {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay.split_to(n));
            Poll::Ready(Ok(()))
        };
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            this.blocks.read_any.store(true, Ordering::Relaxed);
            let (open, started) = this.frames.follow(new);
            if open && started {
                this.blocks.start(Instant::now());
            } else if !open && this.open {
                this.blocks.end();
            }
            this.open = open;
        }
        read
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Watched {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await;
    }
}

impl UniqueID for Watched {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Watched {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Watched {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Watched {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for Watched {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for Watched {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::FrameScan;

    /// h2's HPACK encoder keeps the header values it indexes for the connection's life. A proxy
    /// hands it values that are slices of an upstream response's read buffer (Pingora parses a
    /// header into slices of its 4 KiB buffer); the vendored h2 copies a value when its table
    /// takes it, so that an idle connection does not keep that buffer.
    #[test]
    fn the_hpack_table_keeps_no_slice_of_a_response_header_buffer() {
        use bytes::Bytes;
        use http::HeaderValue;

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (client_io, server_io) = tokio::io::duplex(64 * 1024);
            let (seen, seen_rx) = tokio::sync::oneshot::channel::<()>();
            let server = tokio::spawn(async move {
                let mut conn = h2::server::handshake(server_io).await.unwrap();
                let (_request, mut respond) = conn.accept().await.unwrap().unwrap();
                let mut read = b"nginx/1.22.1text/plain".to_vec();
                read.resize(4096, b' ');
                let buffer = Bytes::from(read);
                let mut response = http::Response::new(());
                let headers = response.headers_mut();
                for (name, range) in [("server", 0..12), ("content-type", 12..22)] {
                    let value = HeaderValue::from_maybe_shared(buffer.slice(range)).unwrap();
                    headers.append(name, value);
                }
                respond.send_response(response, true).unwrap();
                // The connection stays open, driven, until the client has the response.
                tokio::select! {
                    _ = conn.accept() => {}
                    _ = seen_rx => {}
                }
                let kept = !buffer.is_unique();
                drop(conn);
                kept
            });
            let (mut send, conn) = h2::client::handshake(client_io).await.unwrap();
            tokio::spawn(conn);
            let request = http::Request::get("http://localhost/").body(()).unwrap();
            let (response, _) = send.send_request(request, true).unwrap();
            let response = response.await.unwrap();
            assert_eq!(response.headers()["server"], "nginx/1.22.1");
            assert_eq!(response.headers()["content-type"], "text/plain");
            seen.send(()).unwrap();
            assert!(
                !server.await.unwrap(),
                "the server's HPACK table still holds a slice of the response's buffer"
            );
        });
    }

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn a_header_block_is_open_from_headers_to_end_headers() {
        let settings = frame(0x4, 0, &[]);
        let headers = frame(0x1, 0x1, &[0x82, 0x84]);
        let continuation = frame(0x9, 0x4, &[0x86]);
        let mut scan = FrameScan::default();
        assert_eq!(scan.follow(PREFACE), (false, false));
        assert_eq!(scan.follow(&settings), (false, false));
        assert_eq!(scan.follow(&headers), (true, true));
        assert_eq!(scan.follow(&frame(0x9, 0, &[0x87])), (true, false));
        // Byte by byte: the block ends only with the last byte of the END_HEADERS frame.
        for (i, b) in continuation.iter().enumerate() {
            let open = i + 1 < continuation.len();
            assert_eq!(scan.follow(&[*b]), (open, false), "byte {i}");
        }
        // A whole header block in one frame, in one read: opened and closed.
        assert_eq!(scan.follow(&frame(0x1, 0x5, &[0x82])), (false, true));
        // Flag 0x4 on a DATA frame is no END_HEADERS.
        assert_eq!(scan.follow(&frame(0x1, 0, &[0x82])), (true, true));
        assert_eq!(scan.follow(&frame(0x0, 0x4, &[1, 2])), (true, false));
    }

    #[test]
    fn a_header_frame_whose_payload_trickles_is_an_open_block() {
        let headers = frame(0x1, 0x5, &[0x82, 0x84, 0x86]);
        let mut scan = FrameScan::default();
        scan.follow(PREFACE);
        assert_eq!(scan.follow(&headers[..10]), (true, true));
        assert_eq!(scan.follow(&headers[10..11]), (true, false));
        assert_eq!(scan.follow(&headers[11..]), (false, false));
    }
}
