//! A small HTTP/1.1 client over a real socket that reports exactly what came back, including
//! whether the body ended cleanly or the stream was cut.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

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
}

/// A client connection.
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> Client {
        Client::from_stream(TcpStream::connect(addr).expect("connect to proxy"))
    }

    /// Wraps an already connected stream.
    pub fn from_stream(stream: TcpStream) -> Client {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write request");
    }

    /// Reads one response to a request of `method`.
    pub fn read_response(&mut self, method: &str) -> Response {
        let head_end = loop {
            if let Some(pos) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            if !self.fill() {
                panic!(
                    "connection closed before a response header; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        self.buf.drain(..head_end);
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
            self.read_chunked()
        } else if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while self.buf.len() < len && self.fill() {}
            let n = len.min(self.buf.len());
            let body: Vec<u8> = self.buf.drain(..n).collect();
            let complete = body.len() == len;
            (body, complete)
        } else {
            while self.fill() {}
            let body: Vec<u8> = std::mem::take(&mut self.buf);
            (body, true)
        };
        Response {
            status,
            headers,
            body,
            complete,
        }
    }

    fn read_chunked(&mut self) -> (Vec<u8>, bool) {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break pos;
                }
                if !self.fill() {
                    return (body, false);
                }
            };
            let size_text = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
            let need = line_end + 2 + size + 2;
            while self.buf.len() < need {
                if !self.fill() {
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

    /// Reads more bytes; false on EOF or error.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Everything the server sends until it closes or stays quiet for `quiet`.
    fn bytes_until_quiet(&mut self, quiet: Duration) -> Vec<u8> {
        self.stream.set_read_timeout(Some(quiet)).expect("timeout");
        while self.buf.len() < 1 << 20 && self.fill() {}
        self.stream
            .set_read_timeout(Some(Duration::from_secs(20)))
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
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        closed
    }

    /// The underlying stream (for aborting).
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }
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
