//! The failure vocabulary: one closed enum, [`FailureKind`], named after the RFC 9209
//! `Proxy-Status` error types, and the one place that maps a Pingora error to it.
//!
//! Everything downstream of classification reads the kind and nothing else: the status code the
//! client gets, the `Proxy-Status` error type, whether a retry is safe, whether the failure counts
//! against a backend's health, the metric label and the access-log field.

use std::fmt;

use pingora::{Error, ErrorSource, ErrorType};

/// Where in a request's life a failure happened. The same Pingora error means different things
/// in different phases (a read timeout before the response header is a 504; after it, the
/// status already went out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Choosing a backend.
    Select,
    /// Establishing the connection (TCP, TLS).
    Connect,
    /// The connection exists; the request is being sent or the response header awaited.
    Exchange,
    /// The response header arrived; the body is streaming.
    Body,
}

impl Phase {
    /// How far the request got when an attempt failed in this phase. A failure on a reused
    /// keep-alive connection may come before the backend read anything, but the bytes may have
    /// left: everything in the exchange counts as sent, the safe side.
    pub const fn progress(self) -> Progress {
        match self {
            Phase::Select | Phase::Connect => Progress::NotSent,
            Phase::Exchange => Progress::Sent,
            Phase::Body => Progress::ResponseStarted,
        }
    }
}

/// How far a request got towards a backend, which decides whether a retry is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Nothing reached the backend: safe to retry for any method.
    NotSent,
    /// The backend may have seen the request: retry only idempotent requests.
    Sent,
    /// Response bytes arrived: never retry.
    ResponseStarted,
}

impl Progress {
    /// The access-log spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Progress::NotSent => "not_sent",
            Progress::Sent => "sent",
            Progress::ResponseStarted => "response_started",
        }
    }
}

/// Whether a failed attempt may be repeated on another backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetrySafety {
    /// Nothing was sent: any method.
    AnyMethod,
    /// The request may have been processed: idempotent requests only.
    IdempotentOnly,
    /// Never.
    Never,
}

macro_rules! failure_kinds {
    ($( $(#[$doc:meta])* $variant:ident => $name:literal, $status:literal, $retry:ident, $health:literal; )*) => {
        /// Every way a proxied request can fail, named after RFC 9209's proxy error types.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum FailureKind {
            $( $(#[$doc])* $variant, )*
        }

        impl FailureKind {
            /// Every kind, for exhaustive tables and metric pre-registration.
            pub const ALL: &'static [FailureKind] = &[$(FailureKind::$variant,)*];

            /// The position of this kind in [`Self::ALL`], for arrays indexed by kind.
            pub const fn index(self) -> usize {
                self as usize
            }

            /// The RFC 9209 error type (`connection_refused`), also the metric and log label.
            pub const fn as_str(self) -> &'static str {
                match self { $(FailureKind::$variant => $name,)* }
            }

            /// The status code the client gets when the response has not started yet.
            pub const fn status(self) -> u16 {
                match self { $(FailureKind::$variant => $status,)* }
            }

            /// Whether repeating the request elsewhere is safe.
            pub const fn retry_safety(self) -> RetrySafety {
                match self { $(FailureKind::$variant => RetrySafety::$retry,)* }
            }

            /// Whether this failure counts against the backend's passive health.
            pub const fn counts_against_backend(self) -> bool {
                match self { $(FailureKind::$variant => $health,)* }
            }
        }
    };
}

/// Who produced the final response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The origin's own response.
    Origin,
    /// A response the proxy generated.
    Proxy,
    /// No response: the client went away.
    Client,
}

impl Source {
    /// The log and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Origin => "origin",
            Source::Proxy => "proxy",
            Source::Client => "client",
        }
    }
}

failure_kinds! {
    /// The backend refused or reset the connection attempt.
    ConnectionRefused => "connection_refused", 502, AnyMethod, true;
    /// The backend did not accept the connection in time.
    ConnectionTimeout => "connection_timeout", 504, AnyMethod, true;
    /// The TLS handshake with the backend failed.
    TlsProtocolError => "tls_protocol_error", 502, AnyMethod, true;
    /// The backend's certificate was not acceptable.
    TlsCertificateError => "tls_certificate_error", 502, AnyMethod, true;
    /// The backend closed or reset the connection before any response byte.
    ConnectionTerminated => "connection_terminated", 502, IdempotentOnly, true;
    /// The backend closed the connection in the middle of the response.
    HttpResponseIncomplete => "http_response_incomplete", 502, IdempotentOnly, true;
    /// The backend's response was not valid HTTP.
    HttpProtocolError => "http_protocol_error", 502, IdempotentOnly, true;
    /// The backend's response header section was too large.
    HttpResponseHeaderSectionSize => "http_response_header_section_size", 502, Never, true;
    /// The backend's chunked encoding was broken.
    HttpResponseTransferCoding => "http_response_transfer_coding", 502, Never, true;
    /// No response header arrived in time (or the request deadline ran out).
    HttpResponseTimeout => "http_response_timeout", 504, IdempotentOnly, true;
    /// Writing the request to the backend stalled.
    ConnectionWriteTimeout => "connection_write_timeout", 504, IdempotentOnly, true;
    /// The response body stalled after the header was forwarded.
    ConnectionReadTimeout => "connection_read_timeout", 504, Never, true;
    /// The upstream's limit of requests in flight is reached.
    ConnectionLimitReached => "connection_limit_reached", 503, Never, false;
    /// The proxy holds as many client connections as it takes (`clients.max_connections`).
    ClientConnectionLimit => "client_connection_limit", 503, Never, false;
    /// No backend could be selected: all are down or ejected.
    DestinationUnavailable => "destination_unavailable", 503, Never, false;
    /// No route matches the request.
    DestinationNotFound => "destination_not_found", 404, Never, false;
    /// The client's request could not be forwarded as it is.
    HttpRequestError => "http_request_error", 400, Never, false;
    /// The client's request header section was too large.
    HttpRequestHeaderSectionSize => "http_request_header_section_size", 431, Never, false;
    /// The client's request target is longer than the proxy parses (RFC 9112 §3: 414).
    HttpRequestTargetSize => "http_request_target_size", 414, Never, false;
    /// The client's method is one the proxy does not serve: CONNECT (it is no forward proxy).
    MethodNotAllowed => "method_not_allowed", 405, Never, false;
    /// The client's request body is larger than the route takes.
    HttpRequestBodySize => "http_request_body_size", 413, Never, false;
    /// The client did not send its request (header, or body) in time.
    HttpRequestTimeout => "http_request_timeout", 408, Never, false;
    /// An extension refused the request for want of valid credentials (`extension::Refusal`).
    Unauthorized => "unauthorized", 401, Never, false;
    /// An extension refused the request: the client may not make it.
    Forbidden => "forbidden", 403, Never, false;
    /// An extension refused the request: the client sends more than it may.
    TooManyRequests => "too_many_requests", 429, Never, false;
    /// An extension (custom router or filter) returned an error or panicked.
    ExtensionFailed => "extension_failed", 500, Never, false;
    /// An extension did not finish within its time limit.
    ExtensionTimeout => "extension_timeout", 500, Never, false;
    /// A bug inside the proxy.
    ProxyInternalError => "proxy_internal_error", 500, Never, false;
    /// The proxy's configuration does not allow serving the request.
    ProxyConfigurationError => "proxy_configuration_error", 500, Never, false;
    /// The client went away. Not an upstream failure; logged with status 499, never sent.
    ClientAborted => "client_aborted", 499, Never, false;
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FailureKind {
    /// The kind, knowing whether the client had sent its whole request body when the attempt
    /// failed. A backend answers once it has the body; Pingora's wait for the response header
    /// restarts with every body chunk forwarded, so it runs out while a body is unfinished only
    /// when the client stopped sending. That stall is the client's (408), never the backend's.
    pub(crate) fn given_request_body(self, body_done: bool) -> FailureKind {
        match self {
            FailureKind::HttpResponseTimeout if !body_done => FailureKind::HttpRequestTimeout,
            kind => kind,
        }
    }

    /// The gRPC status code a gRPC call failed with this kind gets (DESIGN §9; linkerd2-proxy's
    /// table): a backend that failed or none to take the call is `UNAVAILABLE` (14), a timeout
    /// `DEADLINE_EXCEEDED` (4), a limit on the request's size or on connections
    /// `RESOURCE_EXHAUSTED` (8), no route or an unserved method `UNIMPLEMENTED` (12), an
    /// extension's refusal `UNAUTHENTICATED` (16), `PERMISSION_DENIED` (7) or
    /// `RESOURCE_EXHAUSTED` (8), a malformed request or a proxy error `INTERNAL` (13), a client
    /// that went away `CANCELLED` (1).
    pub const fn grpc_status(self) -> u8 {
        match self {
            FailureKind::ClientConnectionLimit
            | FailureKind::HttpRequestBodySize
            | FailureKind::HttpRequestHeaderSectionSize
            | FailureKind::HttpRequestTargetSize => 8,
            FailureKind::DestinationNotFound | FailureKind::MethodNotAllowed => 12,
            FailureKind::HttpRequestTimeout => 4,
            FailureKind::Unauthorized => 16,
            FailureKind::Forbidden => 7,
            FailureKind::TooManyRequests => 8,
            FailureKind::ClientAborted => 1,
            kind => match kind.status() {
                502 | 503 => 14,
                504 => 4,
                _ => 13,
            },
        }
    }

    /// The reason phrase of [`Self::status`].
    pub fn reason(self) -> &'static str {
        reason_phrase(self.status())
    }

    /// Whether the failure came from the backend side (and so belongs to a backend's record).
    pub const fn is_upstream(self) -> bool {
        !matches!(
            self,
            FailureKind::DestinationUnavailable
                | FailureKind::ConnectionLimitReached
                | FailureKind::ClientConnectionLimit
                | FailureKind::DestinationNotFound
                | FailureKind::HttpRequestError
                | FailureKind::HttpRequestHeaderSectionSize
                | FailureKind::HttpRequestTargetSize
                | FailureKind::MethodNotAllowed
                | FailureKind::HttpRequestBodySize
                | FailureKind::HttpRequestTimeout
                | FailureKind::Unauthorized
                | FailureKind::Forbidden
                | FailureKind::TooManyRequests
                | FailureKind::ExtensionFailed
                | FailureKind::ExtensionTimeout
                | FailureKind::ProxyInternalError
                | FailureKind::ProxyConfigurationError
                | FailureKind::ClientAborted
        )
    }

    /// The error type in `Proxy-Status`. RFC 9209 registers no type for a request body or
    /// target over a limit, a method the proxy does not serve, a client too slow to send its
    /// request, a proxy full of client connections, a request an extension refused or an
    /// extension that failed, so those use the registered types that cover them;
    /// [`Self::as_str`] keeps them apart in metrics and logs.
    pub const fn proxy_status_type(self) -> &'static str {
        match self {
            FailureKind::ClientConnectionLimit => "connection_limit_reached",
            FailureKind::HttpRequestBodySize
            | FailureKind::HttpRequestTargetSize
            | FailureKind::MethodNotAllowed
            | FailureKind::Unauthorized
            | FailureKind::Forbidden
            | FailureKind::TooManyRequests => "http_request_denied",
            FailureKind::HttpRequestTimeout => "http_request_error",
            FailureKind::ExtensionFailed | FailureKind::ExtensionTimeout => "proxy_internal_error",
            other => other.as_str(),
        }
    }

    /// A short sentence for clients; never contains an address.
    pub const fn detail(self) -> &'static str {
        match self {
            FailureKind::ConnectionRefused => "the upstream server refused the connection",
            FailureKind::ConnectionTimeout => {
                "the upstream server did not accept the connection in time"
            }
            FailureKind::TlsProtocolError => "the TLS handshake with the upstream server failed",
            FailureKind::TlsCertificateError => "the upstream server's certificate was rejected",
            FailureKind::ConnectionTerminated => {
                "the upstream server closed the connection without responding"
            }
            FailureKind::HttpResponseIncomplete => {
                "the upstream server sent an incomplete response"
            }
            FailureKind::HttpProtocolError => "the upstream server sent an invalid response",
            FailureKind::HttpResponseHeaderSectionSize => {
                "the upstream server's response header was too large"
            }
            FailureKind::HttpResponseTransferCoding => {
                "the upstream server's response encoding was invalid"
            }
            FailureKind::HttpResponseTimeout => "the upstream server did not respond in time",
            FailureKind::ConnectionWriteTimeout => {
                "the request could not be sent to the upstream server in time"
            }
            FailureKind::ConnectionReadTimeout => {
                "the upstream server stopped sending the response"
            }
            FailureKind::DestinationUnavailable => "no upstream server is available right now",
            FailureKind::ConnectionLimitReached => {
                "the upstream servers are at their request limit"
            }
            FailureKind::ClientConnectionLimit => "the proxy holds as many connections as it takes",
            FailureKind::DestinationNotFound => "no route serves this address",
            FailureKind::HttpRequestError => "the request could not be forwarded",
            FailureKind::HttpRequestHeaderSectionSize => "the request header section is too large",
            FailureKind::HttpRequestTargetSize => {
                "the request target is longer than the proxy takes"
            }
            FailureKind::MethodNotAllowed => "the proxy does not serve this method",
            FailureKind::HttpRequestBodySize => {
                "the request body is larger than this address takes"
            }
            FailureKind::HttpRequestTimeout => "the request was not received in time",
            FailureKind::Unauthorized => "the request lacks valid credentials",
            FailureKind::Forbidden => "the request is not allowed",
            FailureKind::TooManyRequests => "too many requests were sent; slow down",
            FailureKind::ExtensionFailed => "the proxy failed to decide where the request goes",
            FailureKind::ExtensionTimeout => {
                "the proxy could not decide in time where the request goes"
            }
            FailureKind::ProxyInternalError => "the proxy failed to handle the request",
            FailureKind::ProxyConfigurationError => {
                "the proxy is not configured to serve this request"
            }
            FailureKind::ClientAborted => "the client closed the request",
        }
    }
}

/// Maps a Pingora error, in the phase it happened, to its kind. This is the only function in
/// faultline that looks at Pingora error types.
pub fn classify(error: &Error, phase: Phase) -> FailureKind {
    use ErrorType::*;
    match error.esource() {
        ErrorSource::Downstream => {
            return match error.etype() {
                // An HTTP/2 client that reset its stream (CANCEL) or dropped its connection went
                // away; it did not send a bad request.
                H2Error if client_closed_h2(error) => FailureKind::ClientAborted,
                InvalidHTTPHeader | H1Error | H2Error | InvalidH2 => FailureKind::HttpRequestError,
                // A request body whose chunked framing is broken.
                Custom(name) if *name == "InvalidChunk" => FailureKind::HttpRequestError,
                // A client too slow to send its body.
                ReadTimedout => FailureKind::HttpRequestTimeout,
                _ => FailureKind::ClientAborted,
            };
        }
        ErrorSource::Internal => return FailureKind::ProxyInternalError,
        ErrorSource::Upstream | ErrorSource::Unset => {}
    }
    let etype = error.etype();
    match phase {
        Phase::Select => FailureKind::DestinationUnavailable,
        Phase::Connect => match etype {
            ConnectTimedout => FailureKind::ConnectionTimeout,
            InvalidCert | TLSWantX509Lookup => FailureKind::TlsCertificateError,
            TLSHandshakeFailure if certificate_rejected(error) => FailureKind::TlsCertificateError,
            TLSHandshakeFailure | TLSHandshakeTimedout | HandshakeError => {
                FailureKind::TlsProtocolError
            }
            BindError | SocketError => FailureKind::ProxyInternalError,
            // refused, reset, no route, proxy CONNECT failure, and any other connect error
            _ => FailureKind::ConnectionRefused,
        },
        Phase::Exchange => match etype {
            ReadTimedout => FailureKind::HttpResponseTimeout,
            WriteTimedout => FailureKind::ConnectionWriteTimeout,
            ConnectTimedout => FailureKind::ConnectionTimeout,
            ConnectRefused | ConnectNoRoute | ConnectError => FailureKind::ConnectionRefused,
            InvalidCert => FailureKind::TlsCertificateError,
            TLSHandshakeFailure | TLSHandshakeTimedout | HandshakeError => {
                FailureKind::TlsProtocolError
            }
            InvalidHTTPHeader if header_too_large(error) => {
                FailureKind::HttpResponseHeaderSectionSize
            }
            InvalidHTTPHeader | H1Error | H2Error | InvalidH2 | H2Downgrade => {
                FailureKind::HttpProtocolError
            }
            ConnectionClosed | ReadError | WriteError => {
                if header_bytes_read(error) {
                    FailureKind::HttpResponseIncomplete
                } else {
                    FailureKind::ConnectionTerminated
                }
            }
            Custom(name) if *name == "InvalidChunk" => FailureKind::HttpResponseTransferCoding,
            _ => FailureKind::HttpProtocolError,
        },
        Phase::Body => match etype {
            ReadTimedout => FailureKind::ConnectionReadTimeout,
            WriteTimedout => FailureKind::ConnectionWriteTimeout,
            Custom(name) if *name == "InvalidChunk" => FailureKind::HttpResponseTransferCoding,
            InvalidHTTPHeader | H1Error | H2Error | InvalidH2 => FailureKind::HttpProtocolError,
            _ => FailureKind::HttpResponseIncomplete,
        },
    }
}

/// Pingora 0.9 reports "closed before any byte" and "closed mid-header" with one error type; the
/// count of header bytes already read is only in the context text
/// (`while reading response headers, bytes already read: N`).
fn header_bytes_read(error: &Error) -> bool {
    let Some(context) = error.context.as_ref() else {
        return false;
    };
    let context = context.as_str();
    match context.split_once("bytes already read: ") {
        Some((_, rest)) => {
            let digits: &str = rest
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap_or("");
            digits.parse::<u64>().is_ok_and(|n| n > 0)
        }
        None => false,
    }
}

/// Pingora 0.9 reports an HTTP/2 client that reset its stream, or whose connection failed, while
/// the proxy waited on the upstream as an `H2Error` whose context alone tells it from a malformed
/// request (`Client closed H2, reason: CANCEL`, `downstream error while idling`:
/// pingora-core `protocols/http/v2/server.rs`, `Idle` and `read_body_or_idle`).
fn client_closed_h2(error: &Error) -> bool {
    error.context.as_ref().is_some_and(|c| {
        let c = c.as_str();
        c.starts_with("Client closed H2") || c.starts_with("downstream error while idling")
    })
}

/// Pingora 0.9 (rustls) reports a certificate that failed verification as a handshake failure;
/// only rustls' message (`invalid peer certificate: …`) tells it apart from a protocol error.
fn certificate_rejected(error: &Error) -> bool {
    error
        .context
        .as_ref()
        .is_some_and(|c| c.as_str().contains("invalid peer certificate"))
}

/// Pingora 0.9 signals an oversized header section as `InvalidHTTPHeader`, either with its own
/// size message or with httparse's `TooManyHeaders` as the cause.
fn header_too_large(error: &Error) -> bool {
    let context_says = error
        .context
        .as_ref()
        .is_some_and(|c| c.as_str().contains("header larger than"));
    let cause_says = error
        .cause
        .as_ref()
        .is_some_and(|c| c.to_string().contains("too many headers"));
    context_says || cause_says
}

/// The standard reason phrase for the statuses faultline generates.
pub(crate) fn reason_phrase(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or(match status {
            499 => "Client Closed Request",
            _ => "Error",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(etype: ErrorType, context: Option<&'static str>) -> Box<Error> {
        let mut e = match context {
            Some(c) => Error::explain(etype, c),
            None => Error::new(etype),
        };
        e.as_up();
        e
    }

    /// Every Pingora error type that can reach the upstream hooks, in every phase it can reach
    /// them in, with the kind and status the client must get.
    #[test]
    fn classify_table() {
        use ErrorType::*;
        let bytes0 = Some("while reading response headers, bytes already read: 0");
        let bytes12 = Some("while reading response headers, bytes already read: 12");
        let table: &[(ErrorType, Option<&'static str>, Phase, FailureKind, u16)] = &[
            (
                ConnectRefused,
                None,
                Phase::Connect,
                FailureKind::ConnectionRefused,
                502,
            ),
            (
                ConnectNoRoute,
                None,
                Phase::Connect,
                FailureKind::ConnectionRefused,
                502,
            ),
            (
                ConnectError,
                None,
                Phase::Connect,
                FailureKind::ConnectionRefused,
                502,
            ),
            (
                ConnectProxyFailure,
                None,
                Phase::Connect,
                FailureKind::ConnectionRefused,
                502,
            ),
            (
                ConnectTimedout,
                None,
                Phase::Connect,
                FailureKind::ConnectionTimeout,
                504,
            ),
            (
                TLSHandshakeFailure,
                None,
                Phase::Connect,
                FailureKind::TlsProtocolError,
                502,
            ),
            (
                TLSHandshakeFailure,
                Some("TLS connect() failed: invalid peer certificate: UnknownIssuer, SNI: a"),
                Phase::Connect,
                FailureKind::TlsCertificateError,
                502,
            ),
            (
                TLSHandshakeTimedout,
                None,
                Phase::Connect,
                FailureKind::TlsProtocolError,
                502,
            ),
            (
                HandshakeError,
                None,
                Phase::Connect,
                FailureKind::TlsProtocolError,
                502,
            ),
            (
                InvalidCert,
                None,
                Phase::Connect,
                FailureKind::TlsCertificateError,
                502,
            ),
            (
                TLSWantX509Lookup,
                None,
                Phase::Connect,
                FailureKind::TlsCertificateError,
                502,
            ),
            (
                BindError,
                None,
                Phase::Connect,
                FailureKind::ProxyInternalError,
                500,
            ),
            (
                SocketError,
                None,
                Phase::Connect,
                FailureKind::ProxyInternalError,
                500,
            ),
            (
                ConnectionClosed,
                bytes0,
                Phase::Exchange,
                FailureKind::ConnectionTerminated,
                502,
            ),
            (
                ReadError,
                bytes0,
                Phase::Exchange,
                FailureKind::ConnectionTerminated,
                502,
            ),
            (
                ConnectionClosed,
                bytes12,
                Phase::Exchange,
                FailureKind::HttpResponseIncomplete,
                502,
            ),
            (
                ReadError,
                bytes12,
                Phase::Exchange,
                FailureKind::HttpResponseIncomplete,
                502,
            ),
            (
                WriteError,
                None,
                Phase::Exchange,
                FailureKind::ConnectionTerminated,
                502,
            ),
            (
                ConnectionClosed,
                None,
                Phase::Exchange,
                FailureKind::ConnectionTerminated,
                502,
            ),
            (
                InvalidHTTPHeader,
                Some("buf: HTTP/1.1 abc"),
                Phase::Exchange,
                FailureKind::HttpProtocolError,
                502,
            ),
            (
                InvalidHTTPHeader,
                Some("Response header larger than 1048575"),
                Phase::Exchange,
                FailureKind::HttpResponseHeaderSectionSize,
                502,
            ),
            (
                H1Error,
                None,
                Phase::Exchange,
                FailureKind::HttpProtocolError,
                502,
            ),
            (
                H2Error,
                None,
                Phase::Exchange,
                FailureKind::HttpProtocolError,
                502,
            ),
            (
                InvalidH2,
                None,
                Phase::Exchange,
                FailureKind::HttpProtocolError,
                502,
            ),
            (
                H2Downgrade,
                None,
                Phase::Exchange,
                FailureKind::HttpProtocolError,
                502,
            ),
            (
                ReadTimedout,
                None,
                Phase::Exchange,
                FailureKind::HttpResponseTimeout,
                504,
            ),
            (
                WriteTimedout,
                None,
                Phase::Exchange,
                FailureKind::ConnectionWriteTimeout,
                504,
            ),
            (
                ErrorType::new("InvalidChunk"),
                None,
                Phase::Exchange,
                FailureKind::HttpResponseTransferCoding,
                502,
            ),
            (
                UnknownError,
                None,
                Phase::Exchange,
                FailureKind::HttpProtocolError,
                502,
            ),
            (
                ConnectionClosed,
                None,
                Phase::Body,
                FailureKind::HttpResponseIncomplete,
                502,
            ),
            (
                ReadError,
                None,
                Phase::Body,
                FailureKind::HttpResponseIncomplete,
                502,
            ),
            (
                ReadTimedout,
                None,
                Phase::Body,
                FailureKind::ConnectionReadTimeout,
                504,
            ),
            (
                WriteTimedout,
                None,
                Phase::Body,
                FailureKind::ConnectionWriteTimeout,
                504,
            ),
            (
                ErrorType::new("InvalidChunk"),
                None,
                Phase::Body,
                FailureKind::HttpResponseTransferCoding,
                502,
            ),
            (
                InvalidHTTPHeader,
                None,
                Phase::Body,
                FailureKind::HttpProtocolError,
                502,
            ),
            (
                InternalError,
                None,
                Phase::Select,
                FailureKind::DestinationUnavailable,
                503,
            ),
        ];
        for (etype, context, phase, kind, status) in table {
            let e = up(etype.clone(), *context);
            let got = classify(&e, *phase);
            assert_eq!(got, *kind, "{etype:?} {context:?} in {phase:?}");
            assert_eq!(got.status(), *status, "{etype:?} in {phase:?}");
        }
    }

    #[test]
    fn too_many_headers_cause_is_a_size_failure() {
        let mut e = Error::because(
            ErrorType::InvalidHTTPHeader,
            "buf: ...",
            httparse::Error::TooManyHeaders,
        );
        e.as_up();
        assert_eq!(
            classify(&e, Phase::Exchange),
            FailureKind::HttpResponseHeaderSectionSize
        );
    }

    #[test]
    fn a_response_timeout_while_the_client_owes_body_is_the_clients() {
        assert_eq!(
            FailureKind::HttpResponseTimeout.given_request_body(false),
            FailureKind::HttpRequestTimeout
        );
        assert_eq!(
            FailureKind::HttpResponseTimeout.given_request_body(true),
            FailureKind::HttpResponseTimeout
        );
        for kind in FailureKind::ALL {
            if *kind != FailureKind::HttpResponseTimeout {
                assert_eq!(kind.given_request_body(false), *kind, "{kind}");
            }
        }
        assert!(!FailureKind::HttpRequestTimeout.counts_against_backend());
    }

    #[test]
    fn downstream_errors_are_never_upstream_failures() {
        use ErrorType::*;
        for etype in [
            ReadError,
            WriteError,
            ConnectionClosed,
            ReadTimedout,
            WriteTimedout,
        ] {
            let mut e = Error::new(etype.clone());
            e.as_down();
            for phase in [Phase::Connect, Phase::Exchange, Phase::Body] {
                let kind = classify(&e, phase);
                let want = if etype == ReadTimedout {
                    // A client too slow to send its body.
                    FailureKind::HttpRequestTimeout
                } else {
                    FailureKind::ClientAborted
                };
                assert_eq!(kind, want, "{etype:?}");
                assert!(!kind.counts_against_backend());
                assert!(!kind.is_upstream());
            }
        }
        let mut bad = Error::new(InvalidHTTPHeader);
        bad.as_down();
        assert_eq!(
            classify(&bad, Phase::Exchange),
            FailureKind::HttpRequestError
        );
    }

    #[test]
    fn internal_errors_are_500() {
        let mut e = Error::new(ErrorType::InternalError);
        e.esource = ErrorSource::Internal;
        assert_eq!(classify(&e, Phase::Exchange).status(), 500);
    }

    #[test]
    fn an_http2_client_that_went_away_is_an_abort_not_a_bad_request() {
        let down = |context: &'static str| {
            let mut e = Error::explain(ErrorType::H2Error, context);
            e.as_down();
            e
        };
        for gone in [
            "Client closed H2, reason: CANCEL",
            "Client closed H2, reason: NO_ERROR",
            "downstream error while idling",
        ] {
            for phase in [Phase::Exchange, Phase::Body] {
                assert_eq!(
                    classify(&down(gone), phase),
                    FailureKind::ClientAborted,
                    "{gone}"
                );
            }
        }
        // A stream the client broke is still its bad request.
        assert_eq!(
            classify(&down("while reading h2 request"), Phase::Exchange),
            FailureKind::HttpRequestError
        );
        let mut bare = Error::new(ErrorType::H2Error);
        bare.as_down();
        assert_eq!(
            classify(&bare, Phase::Exchange),
            FailureKind::HttpRequestError
        );
    }

    #[test]
    fn grpc_codes_follow_the_http_status_of_each_kind() {
        use FailureKind::*;
        for kind in FailureKind::ALL {
            let want = match kind {
                ClientConnectionLimit
                | HttpRequestBodySize
                | HttpRequestHeaderSectionSize
                | HttpRequestTargetSize
                | TooManyRequests => 8,
                DestinationNotFound | MethodNotAllowed => 12,
                ClientAborted => 1,
                Unauthorized => 16,
                Forbidden => 7,
                _ if kind.status() == 504 || *kind == HttpRequestTimeout => 4,
                _ if matches!(kind.status(), 502 | 503) => 14,
                _ => 13,
            };
            assert_eq!(kind.grpc_status(), want, "{kind}");
        }
        assert_eq!(ConnectionRefused.grpc_status(), 14);
        assert_eq!(DestinationUnavailable.grpc_status(), 14);
        assert_eq!(ConnectionLimitReached.grpc_status(), 14);
        assert_eq!(HttpResponseTimeout.grpc_status(), 4);
        assert_eq!(ConnectionTimeout.grpc_status(), 4);
        assert_eq!(HttpRequestError.grpc_status(), 13);
        assert_eq!(ProxyConfigurationError.grpc_status(), 13);
    }

    #[test]
    fn names_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for (i, k) in FailureKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
            assert!(seen.insert(k.as_str()), "{k} twice");
            assert!(
                k.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            );
            assert!(
                !k.detail().contains(':'),
                "detail of {k} looks like an address"
            );
        }
    }

    #[test]
    fn retry_and_progress_semantics() {
        assert_eq!(
            FailureKind::ConnectionRefused.retry_safety(),
            RetrySafety::AnyMethod
        );
        assert_eq!(
            FailureKind::ConnectionTimeout.retry_safety(),
            RetrySafety::AnyMethod
        );
        assert_eq!(
            FailureKind::ConnectionTerminated.retry_safety(),
            RetrySafety::IdempotentOnly
        );
        assert_eq!(
            FailureKind::HttpResponseTimeout.retry_safety(),
            RetrySafety::IdempotentOnly
        );
        assert_eq!(
            FailureKind::HttpResponseHeaderSectionSize.retry_safety(),
            RetrySafety::Never
        );
        assert_eq!(
            FailureKind::DestinationUnavailable.retry_safety(),
            RetrySafety::Never
        );
        assert_eq!(Phase::Connect.progress(), Progress::NotSent);
        assert_eq!(Phase::Exchange.progress(), Progress::Sent);
        assert_eq!(Phase::Body.progress(), Progress::ResponseStarted);
    }
}
