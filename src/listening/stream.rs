//! [`ClientStream`]: a client connection's stream with the small write buffer Pingora's
//! listener would have put under it.
//!
//! Pingora's HTTP/1 server writes a response header and then its body, and flushes: without a
//! buffer that is two `send`s and two TCP segments for a small response. Pingora's L4 stream
//! has such a buffer (`L4BufferSettings::write`), but only Pingora's own listener may size it,
//! so faultline's listener ([`super`]) puts a `BufWriter` of the same size around the stream
//! (under TLS, when the listener has it, as in Pingora). As Pingora's stream, it sends what is
//! buffered when dropped, if the socket takes it at once: an aborted response's first bytes go
//! out before the connection closes. Everything else is the wrapped stream's.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::DEFAULT_L4_WRITE_BUFFER_SIZE;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, IO, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter, ReadBuf};

/// A client's TCP stream `S` behind a write buffer.
#[derive(Debug)]
pub(crate) struct ClientStream<S: IO> {
    inner: BufWriter<S>,
}

impl<S: IO> ClientStream<S> {
    pub(crate) fn new(stream: S) -> Self {
        ClientStream {
            inner: BufWriter::with_capacity(DEFAULT_L4_WRITE_BUFFER_SIZE, stream),
        }
    }

    fn stream(&self) -> &S {
        self.inner.get_ref()
    }
}

impl<S: IO> Drop for ClientStream<S> {
    fn drop(&mut self) {
        if !self.inner.buffer().is_empty() {
            // Drop cannot wait: what the socket does not take now is lost with the connection.
            let mut cx = Context::from_waker(Waker::noop());
            let _ = Pin::new(&mut self.inner).poll_flush(&mut cx);
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
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl<S: IO> Shutdown for ClientStream<S> {
    async fn shutdown(&mut self) {
        // Flushes what is buffered, then shuts the stream down (a TLS stream sends its
        // close_notify), as Pingora's streams do.
        if let Err(e) = AsyncWriteExt::shutdown(&mut self.inner).await {
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
        self.inner.get_mut().set_proxy_digest(digest);
    }
}

impl<S: IO> GetSocketDigest for ClientStream<S> {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.stream().get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.get_mut().set_socket_digest(digest);
    }
}

#[async_trait]
impl<S: IO> Peek for ClientStream<S> {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.get_mut().try_peek(buf).await
    }
}
