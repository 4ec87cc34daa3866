//! The TLS handshake of a client connection, done here rather than in Pingora's listener.
//!
//! Pingora's listener gives every TLS handshake a fixed 60 s and logs each failure as an error
//! (`services/listening.rs`), before the application sees the connection. faultline's
//! listeners ([`crate::listening`]) therefore accept TLS connections as plain TCP, and
//! [`accept`] runs the handshake
//! with the listener's rustls acceptor under the connection's header deadline
//! (`clients.header_timeout`, from the connection's start).

use std::time::Instant;

use pingora::listeners::tls::Acceptor;
use pingora::prelude::timeout;
use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::{Peek, Stream};

use super::handshake::HandshakeError;
use crate::listening::ClientStream;

/// How a TLS handshake ended.
pub(crate) enum Accepted {
    /// The TLS stream, ALPN chosen.
    Ready(Stream),
    /// The client closed, or stayed silent past the deadline, before its first byte.
    Gone,
    /// The handshake started and failed or missed the deadline (reported).
    Failed,
}

/// Runs the server side of a TLS handshake on `stream`, which must be complete by `deadline`.
/// A failure is given to `failed` as soon as the handshake returns it (Pingora's handshake may
/// already have dropped the connection by then).
pub(crate) async fn accept(
    stream: Stream,
    acceptor: &Acceptor,
    deadline: Instant,
    failed: impl FnOnce(&HandshakeError),
) -> Accepted {
    // The listener hands the TCP stream over boxed; the acceptor needs it unboxed.
    let mut tcp = match stream.into_any().downcast::<ClientStream<TcpStream>>() {
        Ok(tcp) => *tcp,
        Err(_) => {
            failed(&HandshakeError::Failed(pingora::Error::explain(
                pingora::ErrorType::InternalError,
                "a TLS listener's connection is not a TCP stream",
            )));
            return Accepted::Failed;
        }
    };
    // The first byte is waited for apart, so that a silent or probing connection is told from
    // a broken handshake. Peeking puts the byte back for rustls.
    let left = deadline.saturating_duration_since(Instant::now());
    match timeout(left, tcp.try_peek(&mut [0u8; 1])).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) | Err(_) => return Accepted::Gone,
    }
    let left = deadline.saturating_duration_since(Instant::now());
    let mut handshake = std::pin::pin!(acceptor.tls_handshake(tcp));
    let error = match timeout(left, handshake.as_mut()).await {
        Ok(Ok(tls)) => return Accepted::Ready(Box::new(tls)),
        Ok(Err(e)) => HandshakeError::Failed(e),
        Err(_) => HandshakeError::TimedOut,
    };
    failed(&error);
    Accepted::Failed
}
