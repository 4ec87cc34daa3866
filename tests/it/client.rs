//! The tests' one HTTP/1.1 client, over a real socket: it reports exactly what came back,
//! including whether the body ended cleanly or the stream was cut, what followed a HEAD
//! response's header, and (for keep-alive load) whether a reused connection was found closed
//! before any response byte. Tests that send malformed bytes on purpose use raw sockets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A response as the client saw it.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers in order, names lowercase.
    pub headers: Vec<(String, String)>,
    /// Body bytes received.
    pub body: Vec<u8>,
    /// Whether the body ended as its framing promised (Content-Length reached, last chunk seen,
    /// or a close-delimited body closed).
    pub complete: bool,
}

impl Response {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    /// Status, headers and body on one line, for a failure message.
    pub fn describe(&self) -> String {
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {v}"))
            .collect();
        format!("{} [{}] {:?}", self.status, headers.join("; "), self.text())
    }
}

/// Why an exchange produced no response.
#[derive(Debug)]
pub enum Failed {
    /// The connection was closed (EOF or reset) before a single byte of the response: on a
    /// reused connection, the server closed it after the previous, complete response.
    ClosedBeforeResponse(String),
    /// Anything else: a head cut or unparseable, a read error or the deadline.
    Other(String),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::ClosedBeforeResponse(e) => write!(f, "closed before any response byte: {e}"),
            Failed::Other(e) => f.write_str(e),
        }
    }
}

/// How long one read may wait unless a deadline says less.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// A client connection.
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> Client {
        Client::try_connect(addr, READ_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Connects to `addr` within `timeout`, with writes bounded by it too.
    pub fn try_connect(addr: SocketAddr, timeout: Duration) -> Result<Client, String> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        stream
            .set_nodelay(true)
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(|e| format!("socket options: {e}"))?;
        Ok(Client::from_stream(stream))
    }

    /// Wraps an already connected stream.
    pub fn from_stream(stream: TcpStream) -> Client {
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("timeout");
        Client {
            stream,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write request");
    }

    /// Reads one response to a request of `method`; each read may wait 20 s.
    pub fn read_response(&mut self, method: &str) -> Response {
        self.try_read_response(method, None)
            .unwrap_or_else(|e| panic!("no response: {e}"))
    }

    /// One request on a kept-alive connection, its response read completely before
    /// `within` has passed. A connection found closed before any response byte (on the write
    /// or the read) is [`Failed::ClosedBeforeResponse`], which the caller may take as the
    /// server closing a reused connection; bytes left over from an earlier response fail.
    pub fn exchange(
        &mut self,
        request: &[u8],
        method: &str,
        within: Duration,
    ) -> Result<Response, Failed> {
        let deadline = Instant::now() + within;
        if !self.buf.is_empty() {
            return Err(Failed::Other(format!(
                "bytes after the previous response: {:?}",
                String::from_utf8_lossy(&self.buf)
            )));
        }
        if let Err(e) = self.stream.write_all(request) {
            return Err(if closed(&e) {
                Failed::ClosedBeforeResponse(format!("write: {e}"))
            } else {
                Failed::Other(format!("writing the request: {e}"))
            });
        }
        self.try_read_response(method, Some(deadline))
    }

    /// Reads one response to a request of `method`, before `deadline` if there is one.
    fn try_read_response(
        &mut self,
        method: &str,
        deadline: Option<Instant>,
    ) -> Result<Response, Failed> {
        let (status, headers, head_len) = loop {
            let mut slots = [httparse::EMPTY_HEADER; 256];
            let mut parsed = httparse::Response::new(&mut slots);
            match parsed.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let headers: Vec<(String, String)> = parsed
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).trim().to_string(),
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
        self.buf.drain(..head_len);
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let no_body = status == 204 || status == 304 || status < 200;
        let (body, complete) = if method == "HEAD" {
            // A HEAD response has no body whatever its framing says: whatever the server sends
            // after the header is reported as body, so that a test can assert there is none.
            let extra = self.bytes_until_quiet(Duration::from_millis(300));
            let complete = extra.is_empty();
            (extra, complete)
        } else if no_body {
            (Vec::new(), true)
        } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            self.read_chunked(deadline)
        } else if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while self.buf.len() < len && self.fill(deadline).is_ok_and(|n| n > 0) {}
            let n = len.min(self.buf.len());
            let body: Vec<u8> = self.buf.drain(..n).collect();
            let complete = body.len() == len;
            (body, complete)
        } else {
            // Delimited by the close: complete only if the close came.
            let complete = loop {
                match self.fill(deadline) {
                    Ok(0) => break true,
                    Ok(_) => {}
                    Err(_) => break false,
                }
            };
            (std::mem::take(&mut self.buf), complete)
        };
        Ok(Response {
            status,
            headers,
            body,
            complete,
        })
    }

    fn read_chunked(&mut self, deadline: Option<Instant>) -> (Vec<u8>, bool) {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break pos;
                }
                if !self.fill(deadline).is_ok_and(|n| n > 0) {
                    return (body, false);
                }
            };
            let size_text = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
            let need = line_end + 2 + size + 2;
            while self.buf.len() < need {
                if !self.fill(deadline).is_ok_and(|n| n > 0) {
                    let start = (line_end + 2).min(self.buf.len());
                    body.extend_from_slice(&self.buf[start..]);
                    self.buf.clear();
                    return (body, false);
                }
            }
            let chunk: Vec<u8> = self.buf.drain(..need).collect();
            if size == 0 {
                return (body, true);
            }
            body.extend_from_slice(&chunk[line_end + 2..line_end + 2 + size]);
        }
    }

    /// Reads more bytes, waiting [`READ_TIMEOUT`] at most and never past `deadline`; `Ok(0)`
    /// on EOF.
    fn fill(&mut self, deadline: Option<Instant>) -> std::io::Result<usize> {
        let wait = match deadline {
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .min(READ_TIMEOUT),
            None => READ_TIMEOUT,
        };
        if wait.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(wait))?;
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Everything the server sends until it closes or stays quiet for `quiet`.
    fn bytes_until_quiet(&mut self, quiet: Duration) -> Vec<u8> {
        let mut chunk = [0u8; 16384];
        self.stream.set_read_timeout(Some(quiet)).expect("timeout");
        while self.buf.len() < 1 << 20 {
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
        self.stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("timeout");
        std::mem::take(&mut self.buf)
    }

    /// Whether the server closed the connection (EOF) rather than keeping it open.
    pub fn is_closed(&mut self) -> bool {
        self.stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let mut b = [0u8; 1];
        let closed = match self.stream.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        self.stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("timeout");
        closed
    }

    /// The underlying stream (for aborting).
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }
}

/// Whether an I/O error means the peer closed or reset the connection.
fn closed(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
    )
}

/// Builds a request.
pub fn request(method: &str, path: &str, host: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\n");
    for (n, v) in extra {
        r.push_str(&format!("{n}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// One request on a new connection.
pub fn get(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> Response {
    send_one(addr, "GET", path, extra)
}

/// One request of any method without a body on a new connection.
pub fn send_one(addr: SocketAddr, method: &str, path: &str, extra: &[(&str, &str)]) -> Response {
    let mut c = Client::connect(addr);
    c.send(&request(method, path, "app.test", extra));
    c.read_response(method)
}

/// The client itself: bytes after a HEAD response header are reported as a body, so that "HEAD
/// gets no body" can fail.
#[test]
fn bytes_after_a_head_response_are_reported() {
    use crate::origin::{Behavior, Origin};
    let origin = Origin::start(Behavior::Raw(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello".to_vec(),
    ));
    let resp = send_one(origin.addr, "HEAD", "/", &[]);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"hello");
    assert!(!resp.complete);
}
