//! [`ClientStream`]: a client connection's stream with the small write buffer Pingora's
//! listener would have put under it.
//!
//! Pingora's HTTP/1 server writes a response header and then its body, and flushes: without a
//! buffer that is two `send`s and two TCP segments for a small response. Pingora's L4 stream
//! has such a buffer (`L4BufferSettings::write`), but only Pingora's own listener may size it,
//! so faultline's listener ([`super`]) puts a buffer of the same size around the stream (under
//! TLS, when the listener has it, as in Pingora). Unlike Pingora's (tokio's `BufWriter`), it is
//! allocated when a write is buffered and let go once flushed: a connection waiting for its
//! next request holds none. As Pingora's stream, it sends what is buffered when dropped, if the
//! socket takes it at once: an aborted response's first bytes go out before the connection
//! closes. Everything else is the wrapped stream's.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::DEFAULT_L4_WRITE_BUFFER_SIZE;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, IO, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// How much is gathered before it is sent.
const CAPACITY: usize = DEFAULT_L4_WRITE_BUFFER_SIZE;

/// A client's TCP stream `S` behind a write buffer.
#[derive(Debug)]
pub(crate) struct ClientStream<S: IO> {
    inner: S,
    /// Written but not yet sent; no allocation while empty.
    buffered: Vec<u8>,
}

impl<S: IO> ClientStream<S> {
    pub(crate) fn new(stream: S) -> Self {
        ClientStream {
            inner: stream,
            buffered: Vec::new(),
        }
    }

    fn stream(&self) -> &S {
        &self.inner
    }

    /// Sends what is buffered; the buffer is let go once all of it went.
    fn poll_send_buffered(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.buffered.is_empty() {
            match ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buffered)) {
                Ok(0) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Ok(n) => drop(self.buffered.drain(..n)),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        if self.buffered.capacity() != 0 {
            self.buffered = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `len` bytes into the buffer, `put` copying them: first sending what is buffered if
    /// they do not fit, and not at all (`None`) if they fill a buffer by themselves.
    fn poll_buffer(
        &mut self,
        cx: &mut Context<'_>,
        len: usize,
        put: impl FnOnce(&mut Vec<u8>),
    ) -> Poll<std::io::Result<Option<usize>>> {
        if self.buffered.len() + len > CAPACITY {
            ready!(self.poll_send_buffered(cx))?;
        }
        if len >= CAPACITY {
            return Poll::Ready(Ok(None));
        }
        if self.buffered.capacity() == 0 {
            self.buffered.reserve_exact(CAPACITY);
        }
        put(&mut self.buffered);
        Poll::Ready(Ok(Some(len)))
    }
}

impl<S: IO> Drop for ClientStream<S> {
    fn drop(&mut self) {
        if !self.buffered.is_empty() {
            // Drop cannot wait: what the socket does not take now is lost with the connection.
            let mut cx = Context::from_waker(Waker::noop());
            let _ = self.poll_send_buffered(&mut cx);
        }
    }
}

impl<S: IO> AsyncRead for ClientStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: IO> AsyncWrite for ClientStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        match ready!(this.poll_buffer(cx, buf.len(), |b| b.extend_from_slice(buf)))? {
            Some(n) => Poll::Ready(Ok(n)),
            None => Pin::new(&mut this.inner).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let len = bufs.iter().map(|b| b.len()).sum();
        let put = |b: &mut Vec<u8>| bufs.iter().for_each(|s| b.extend_from_slice(s));
        match ready!(this.poll_buffer(cx, len, put))? {
            Some(n) => Poll::Ready(Ok(n)),
            None => Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        // Small slices are gathered here; large ones go to the stream's own vectored write,
        // which writes the first slice when the stream has none.
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_send_buffered(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_send_buffered(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl<S: IO> Shutdown for ClientStream<S> {
    async fn shutdown(&mut self) {
        // Flushes what is buffered, then shuts the stream down (a TLS stream sends its
        // close_notify), as Pingora's streams do.
        if let Err(e) = AsyncWriteExt::shutdown(self).await {
            log::debug!("failed to shut a client connection down: {e}");
        }
    }
}

impl<S: IO> UniqueID for ClientStream<S> {
    fn id(&self) -> UniqueIDType {
        self.stream().id()
    }
}

impl<S: IO> Ssl for ClientStream<S> {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.stream().get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.stream().get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.stream().selected_alpn_proto()
    }
}

impl<S: IO> GetTimingDigest for ClientStream<S> {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.stream().get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.stream().get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.stream().get_write_pending_time()
    }
}

impl<S: IO> GetProxyDigest for ClientStream<S> {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.stream().get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl<S: IO> GetSocketDigest for ClientStream<S> {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.stream().get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl<S: IO> Peek for ClientStream<S> {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use std::io::IoSlice;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    use super::{CAPACITY, ClientStream};

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// What the peer has received so far, without waiting for more.
    async fn received(peer: &mut DuplexStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut chunk = [0u8; 8192];
        while let Ok(Ok(n)) =
            tokio::time::timeout(std::time::Duration::from_millis(20), peer.read(&mut chunk)).await
        {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        got
    }

    #[test]
    fn small_writes_wait_for_the_flush_and_the_buffer_goes_with_it() {
        block_on(async {
            let (ours, mut peer) = duplex(64 * 1024);
            let mut stream = ClientStream::new(ours);
            assert_eq!(stream.buffered.capacity(), 0, "nothing held before a write");
            stream.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
            let written = stream
                .write_vectored(&[IoSlice::new(b"he"), IoSlice::new(b"llo")])
                .await
                .unwrap();
            assert_eq!(written, 5, "both slices taken at once");
            assert_eq!(received(&mut peer).await, b"");
            stream.flush().await.unwrap();
            assert_eq!(received(&mut peer).await, b"HTTP/1.1 200 OK\r\n\r\nhello");
            assert_eq!(stream.buffered.capacity(), 0, "nothing held once flushed");
        });
    }

    #[test]
    fn large_writes_go_straight_through_after_what_is_buffered() {
        block_on(async {
            let (ours, mut peer) = duplex(64 * 1024);
            let mut stream = ClientStream::new(ours);
            let large: Vec<u8> = (0..CAPACITY * 3).map(|i| (i % 251) as u8).collect();
            stream.write_all(b"head").await.unwrap();
            stream.write_all(&large).await.unwrap();
            stream.write_all(b"tail").await.unwrap();
            // The large write sent the head before it; only the tail waits for the flush.
            let mut expected = b"head".to_vec();
            expected.extend_from_slice(&large);
            assert_eq!(received(&mut peer).await, expected);
            stream.flush().await.unwrap();
            assert_eq!(received(&mut peer).await, b"tail");
        });
    }

    #[test]
    fn what_is_buffered_is_sent_when_the_stream_is_dropped() {
        block_on(async {
            let (ours, mut peer) = duplex(64 * 1024);
            let mut stream = ClientStream::new(ours);
            stream.write_all(b"partial respo").await.unwrap();
            drop(stream);
            assert_eq!(received(&mut peer).await, b"partial respo");
        });
    }
}
