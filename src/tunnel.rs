//! Tunnels: what a request becomes once its backend answered its upgrade (WebSocket or another
//! protocol) with `101 Switching Protocols`. Pingora then pipes the bytes both ways as they come,
//! unbuffered, until either side closes; faultline decides how long a quiet tunnel lives, counts
//! the open ones (`faultline_tunnels_open{upstream}`) and logs each when it closes.
//!
//! The `101` is the attempt's response: the backend answered (passive health, the attempt
//! counted as `response`, its outstanding attempt given back). The tunnel that follows is not an
//! attempt: it is never retried, and its end, even by a timeout, is no failure of the backend.
//!
//! How long a tunnel may be idle is `timeouts.tunnel_idle`, each way:
//!
//! - Upstream: Pingora gives the upstream HTTP/1 session one read timeout, the peer's, copied
//!   when the request is sent (pingora-proxy `proxy_h1.rs`, `proxy_1to1`) and applied to every
//!   later read on it: the response header and each read of the tunnel (pingora-core
//!   `protocols/http/v1/client.rs`, `read_response`, `read_body_ref`). No hook is handed that
//!   session, so it cannot change when the `101` arrives. For an upgrade request the peer's read
//!   timeout is therefore `tunnel_idle` ([`upgrade_peer`]), cut to the route deadline's time
//!   left as every upstream wait is: the wait for the `101` shares it, as it shares nginx's
//!   `proxy_read_timeout`.
//! - Client: its read timeout (`clients.body_timeout` until then) becomes `tunnel_idle` when
//!   the `101` passes ([`Tunnel::open`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pingora::protocols::ALPN;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use serde_json::{Value, json};

use crate::failure::FailureKind;
use crate::metrics::UpstreamMetrics;

/// Sets `peer` up for an upgrade request: HTTP/1.1 whatever the upstream speaks (an upgrade
/// does not exist in HTTP/2), and `idle` as its read timeout, cut to the deadline's `time_left`.
pub(crate) fn upgrade_peer(peer: &mut HttpPeer, idle: Duration, time_left: Option<Duration>) {
    peer.options.alpn = ALPN::H1;
    peer.options.read_timeout = Some(time_left.map_or(idle, |left| idle.min(left)));
}

/// A WebSocket close frame from the server: code 1001, going away (RFC 6455 §5.5.1, §7.4.1).
const GOING_AWAY: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// Tells the client of a WebSocket tunnel that ended idle that it was closed on purpose: a
/// close frame `1001` (going away), so that its library reports a close, not a broken
/// connection. The backend's side closes without a frame: Pingora hands no hook its session.
/// A tunnel is idle only when no byte moved either way, so no frame of the backend's is cut in
/// two by this one, unless the backend stalled mid-frame for `tunnel_idle`.
pub(crate) async fn close_idle(session: &mut Session) {
    let websocket = session
        .req_header()
        .headers
        .get(http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if !websocket {
        return;
    }
    let frame = bytes::Bytes::from_static(&GOING_AWAY);
    if let Err(e) = session.write_response_body(Some(frame), true).await {
        log::debug!("closing an idle tunnel: {e}");
    }
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// A side closed it.
    Closed,
    /// No byte went either way for `tunnel_idle`. Each side's read timer restarts whenever
    /// Pingora moves bytes either way, so whichever side's timer fires first says only that the
    /// tunnel was quiet: both read timeouts are this one end.
    Idle,
    /// Another error ended it (a reset, a write that stalled).
    Failed(FailureKind),
}

impl End {
    /// The end an error of `kind` means for a tunnel.
    fn of(kind: FailureKind) -> End {
        match kind {
            FailureKind::ConnectionReadTimeout | FailureKind::HttpRequestTimeout => End::Idle,
            kind => End::Failed(kind),
        }
    }

    /// Its access-log value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Idle => "idle_timeout",
            End::Failed(kind) => kind.as_str(),
        }
    }
}

/// An open tunnel: counted in its upstream's gauge until dropped.
#[derive(Debug)]
pub(crate) struct Tunnel {
    opened: Instant,
    gauge: Arc<UpstreamMetrics>,
    end: End,
}

impl Tunnel {
    /// The `101` of the request on `session` passes: a tunnel opens, counted in `gauge`, and
    /// the client's side may be idle for `idle`.
    pub(crate) fn open(
        session: &mut Session,
        gauge: &Arc<UpstreamMetrics>,
        idle: Duration,
    ) -> Self {
        session.set_read_timeout(Some(idle));
        gauge.tunnels_open.fetch_add(1, Ordering::Relaxed);
        Tunnel {
            opened: Instant::now(),
            gauge: gauge.clone(),
            end: End::Closed,
        }
    }

    /// The tunnel ended with an error of this kind (an idle timeout, a reset) rather than a
    /// close.
    pub(crate) fn ended_by(&mut self, kind: FailureKind) {
        self.end = End::of(kind);
    }

    /// How it ended, so far.
    pub(crate) fn end(&self) -> End {
        self.end
    }

    /// What the access log says of the tunnel as it closes, with the bytes the client sent
    /// into it and those it got out of it (the client connection's bytes after the header).
    pub(crate) fn summary(&self, from_client: usize, to_client: usize) -> Summary {
        Summary {
            duration: self.opened.elapsed(),
            from_client,
            to_client,
            end: self.end,
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.gauge.tunnels_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A closed tunnel, as logged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Summary {
    /// From the `101` to the close.
    pub duration: Duration,
    /// Bytes the client sent through the tunnel.
    pub from_client: usize,
    /// Bytes the client got through the tunnel.
    pub to_client: usize,
    /// How it ended.
    pub end: End,
}

impl Summary {
    /// The `tunnel` object of the access-log line.
    pub(crate) fn to_json(self) -> Value {
        json!({
            "duration_ms": (self.duration.as_secs_f64() * 1e6).round() / 1e3,
            "bytes_from_client": self.from_client,
            "bytes_to_client": self.to_client,
            "end": self.end.as_str(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upgrade_peer_speaks_http1_and_waits_the_tunnel_idle_within_the_deadline() {
        let mut peer = HttpPeer::new("127.0.0.1:80", false, String::new());
        peer.options.alpn = ALPN::H2;
        peer.options.read_timeout = Some(Duration::from_secs(15));
        upgrade_peer(&mut peer, Duration::from_secs(300), None);
        assert_eq!(peer.options.alpn, ALPN::H1);
        assert_eq!(peer.options.read_timeout, Some(Duration::from_secs(300)));
        upgrade_peer(
            &mut peer,
            Duration::from_secs(300),
            Some(Duration::from_secs(7)),
        );
        assert_eq!(peer.options.read_timeout, Some(Duration::from_secs(7)));
    }

    #[test]
    fn a_read_timeout_on_either_side_is_the_idle_end_and_other_kinds_are_themselves() {
        assert_eq!(End::of(FailureKind::ConnectionReadTimeout), End::Idle);
        assert_eq!(End::of(FailureKind::HttpRequestTimeout), End::Idle);
        let reset = End::of(FailureKind::ConnectionTerminated);
        assert_eq!(reset.as_str(), "connection_terminated");
        assert_eq!(End::Closed.as_str(), "closed");
    }

    #[test]
    fn a_summary_names_duration_bytes_and_what_ended_it() {
        let s = Summary {
            duration: Duration::from_micros(1_500_250),
            from_client: 16,
            to_client: 8,
            end: End::of(FailureKind::ConnectionReadTimeout),
        };
        assert_eq!(
            s.to_json(),
            json!({
                "duration_ms": 1500.25,
                "bytes_from_client": 16,
                "bytes_to_client": 8,
                "end": "idle_timeout",
            })
        );
    }
}
