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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::io::{self, Read, Write};
    use std::sync::Arc;

    use pingora::tls::install_default_crypto_provider;
    use rustls::pki_types::{PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

    /// A wait: the socket has nothing to read ("would block").
    const WAIT: usize = 0;

    /// Bytes handed out in pieces of the given sizes, in turn, as a socket that a peer writes
    /// to slowly: a piece of [`WAIT`] is a read that finds nothing.
    struct Trickle {
        bytes: VecDeque<u8>,
        pieces: Vec<usize>,
        next: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let piece = self.pieces[self.next % self.pieces.len()];
            self.next += 1;
            if self.bytes.is_empty() || piece == WAIT {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = piece.min(buf.len()).min(self.bytes.len());
            for (slot, byte) in buf.iter_mut().zip(self.bytes.drain(..n)) {
                *slot = byte;
            }
            Ok(n)
        }
    }

    /// What `from` has to send, as it goes on the wire.
    fn wire(from: &mut rustls::Connection) -> Vec<u8> {
        let mut wire = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut wire).expect("write_tls");
        }
        wire
    }

    /// Feeds `wire` into `to` through a [`Trickle`] of `pieces`, and returns the plaintext
    /// `to` received.
    fn deliver(to: &mut rustls::Connection, wire: Vec<u8>, pieces: &[usize]) -> Vec<u8> {
        let mut socket = Trickle {
            bytes: wire.into(),
            pieces: pieces.to_vec(),
            next: 0,
        };
        let mut plaintext = Vec::new();
        while !socket.bytes.is_empty() {
            match to.read_tls(&mut socket) {
                Ok(_) => {
                    to.process_new_packets().expect("records");
                    match to.reader().read_to_end(&mut plaintext) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        other => {
                            other.expect("plaintext");
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("read_tls: {e}"),
            }
        }
        plaintext
    }

    /// A server connection lets its read buffer go while it waits with nothing buffered, and
    /// reads into its thread's scratch while nothing is buffered (the vendored rustls,
    /// `vendor/rustls/FAULTLINE.md`). Records that arrive a byte at a time, split across
    /// waits, larger than one read, several in one read, or one per read back to back, must
    /// all come through whole, in the handshake and after it.
    #[test]
    fn a_server_connection_reads_records_split_across_waits_whole() {
        install_default_crypto_provider();
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["edge.test".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let private = PrivateKeyDer::try_from(key.serialize_der()).expect("a PKCS#8 key");
        let server_config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], private)
            .expect("server config");
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).expect("root");
        let client_config = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("edge.test").expect("name");
        let mut client = rustls::Connection::from(
            ClientConnection::new(Arc::new(client_config), name).expect("client"),
        );
        let mut server = rustls::Connection::from(
            ServerConnection::new(Arc::new(server_config)).expect("server"),
        );

        // The handshake: the ClientHello a byte at a time, then in odd pieces.
        let mut rounds = 0;
        while client.is_handshaking() || server.is_handshaking() {
            rounds += 1;
            assert!(rounds < 10, "the handshake did not finish");
            let hello = wire(&mut client);
            deliver(
                &mut server,
                hello,
                &[WAIT, 1, 1, WAIT, 1, 1, 1, 3, WAIT, 700],
            );
            let answer = wire(&mut server);
            deliver(&mut client, answer, &[4096]);
        }

        client.set_buffer_limit(None);
        let message: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for (sent, pieces) in [
            // A record a byte at a time, with a wait before each byte.
            (&message[..1], &[WAIT, 1][..]),
            // A header split from its body.
            (&message[..100], &[WAIT, 2, 3, WAIT, 50, 1]),
            // Records larger than a read, and than the buffer's first size.
            (&message[..40_000], &[WAIT, 5, 4096, 1, WAIT, 10_000]),
            // Several records in one read.
            (&message[..], &[65_536]),
            (&message[..7], &[WAIT, 4096]),
        ] {
            client.writer().write_all(sent).expect("plaintext in");
            let bytes = wire(&mut client);
            let received = deliver(&mut server, bytes, pieces);
            assert_eq!(received.len(), sent.len());
            assert!(received == sent, "the plaintext differs");
        }

        // Records one per read, back to back with no wait: each read finds the buffer there,
        // with nothing in it. A short one after long ones, then long ones after short ones.
        for sizes in [&[300, 300, 10, 300][..], &[10, 300, 300, 1000]] {
            let (mut sent, mut bytes, mut pieces) = (Vec::new(), Vec::new(), Vec::new());
            for (i, &size) in sizes.iter().enumerate() {
                let record = &message[i..i + size];
                client.writer().write_all(record).expect("plaintext in");
                sent.extend_from_slice(record);
                let on_wire = wire(&mut client);
                assert!(on_wire.len() > size, "a record each");
                pieces.push(on_wire.len());
                bytes.extend(on_wire);
            }
            let received = deliver(&mut server, bytes, &pieces);
            assert!(received == sent, "the plaintext differs");
        }
    }
}
