//! The extension surface: custom routing and request and response filters, on top of the
//! failure contract.
//!
//! A [`Router`] chooses where a request goes; it sees the request through a
//! [`RequestContext`] (header, client and listener addresses, TLS server name and ALPN, request
//! id) and may ask the configuration's own routes first ([`RequestContext::configured`]), so it
//! can wrap them or fall back to them; a reload changes those routes underneath it. It returns a
//! [`Routing`]: the route (upstream and policy) and optionally a hash key or a preferred backend
//! (sticky sessions), which the gateway checks against the running configuration.
//!
//! A [`Filter`] sees every routed request before a backend is chosen and may change its header
//! or refuse it with a [`Refusal`] (401, 403, 429, 404, 400); it sees every response header
//! before it goes to the client, and may change it.
//!
//! Whatever an extension does goes through the same path as every other answer of the proxy:
//! a refusal, an error ([`ExtensionError`]), an extension that runs past its time limit or one
//! that panics is answered with the proxy's page, `Proxy-Status`, request id, counters and
//! access-log line, each with its own [`FailureKind`]. Without a custom
//! router, the configuration's routes are looked up directly, with no boxed future or time
//! limit on the way.
//!
//! ```
//! use std::sync::Arc;
//! use faultline::extension::{ExtensionError, RequestContext, Router, Routing};
//! use faultline::Route;
//!
//! /// Requests for `beta.example.com` go to the `beta` upstream; everything else goes where
//! /// the configuration says.
//! struct Beta(Arc<Route>);
//!
//! #[async_trait::async_trait]
//! impl Router for Beta {
//!     async fn route(
//!         &self,
//!         request: &RequestContext<'_>,
//!     ) -> Result<Option<Routing>, ExtensionError> {
//!         if request.host().as_deref() == Some("beta.example.com") {
//!             return Ok(Some(Routing::to(self.0.clone())));
//!         }
//!         Ok(request.configured())
//!     }
//! }
//! # let _ = Beta(Arc::new(Route::to_upstream("beta", "beta")));
//! ```

mod context;
mod run;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;

pub(crate) use context::{Connection, ServerName};
pub use context::{RequestContext, ResponseContext};
pub(crate) use run::{DEFAULT_TIMEOUT, Extensions};

use crate::config::Route;
use crate::failure::FailureKind;

/// Chooses the route of a request.
///
/// A closure `Fn(&RequestContext) -> Option<R>` is a router, where `R` is a [`Routing`] or an
/// `Arc<Route>`. An async router implements the trait with `#[async_trait]` (see the module's
/// example). A sticky session, with the configuration's routes as the fallback:
///
/// ```
/// use faultline::extension::{RequestContext, Routing};
/// # fn builder(b: faultline::GatewayBuilder<'_>) -> faultline::GatewayBuilder<'_> {
/// b.router(|request: &RequestContext<'_>| {
///     let routing = request.configured()?;
///     Some(match request.cookie("backend") {
///         // The backend by its configured address, while it can take requests.
///         Some(backend) => routing.prefer_backend(backend),
///         None => routing,
///     })
/// })
/// # }
/// ```
#[async_trait]
pub trait Router: Send + Sync + 'static {
    /// Where `request` goes; `Ok(None)` is answered 404 (`destination_not_found`), an error
    /// 500 (`extension_failed`).
    async fn route(&self, request: &RequestContext<'_>) -> Result<Option<Routing>, ExtensionError>;
}

#[async_trait]
impl<F, R> Router for F
where
    F: Fn(&RequestContext<'_>) -> Option<R> + Send + Sync + 'static,
    R: Into<Routing>,
{
    async fn route(&self, request: &RequestContext<'_>) -> Result<Option<Routing>, ExtensionError> {
        Ok(self(request).map(Into::into))
    }
}

/// Acts on routed requests and on responses.
///
/// Both methods do nothing unless overridden. Filters run in the order they were added, each
/// call under the gateway's time limit for extensions.
///
/// ```
/// use async_trait::async_trait;
/// use faultline::extension::{Filter, FilterError, Refusal, RequestContext, ResponseContext};
/// use pingora::http::ResponseHeader;
///
/// /// Only clients on the office network may use the route `admin`; every response says
/// /// which request it answers.
/// struct Office;
///
/// #[async_trait]
/// impl Filter for Office {
///     async fn request(&self, request: &mut RequestContext<'_>) -> Result<(), FilterError> {
///         let admin = request.route().is_some_and(|r| r.name == "admin");
///         let inside = request.client_addr().is_some_and(|a| a.ip().is_loopback());
///         if admin && !inside {
///             return Err(Refusal::forbidden().into());
///         }
///         Ok(())
///     }
///
///     fn response(&self, response: &mut ResponseHeader, request: &ResponseContext<'_>) {
///         let _ = response.insert_header("x-answered", request.request_id().to_string());
///     }
/// }
/// ```
#[async_trait]
pub trait Filter: Send + Sync + 'static {
    /// Runs once per routed request, before a backend is chosen: may change the request's
    /// header ([`RequestContext::header_mut`]), or stop the request with a [`Refusal`] or an
    /// [`ExtensionError`].
    async fn request(&self, request: &mut RequestContext<'_>) -> Result<(), FilterError> {
        let _ = request;
        Ok(())
    }

    /// Runs on every response header before it is written to the client: the origin's, and
    /// the proxy's own pages. It cannot stop the response; a panic in it is logged and the
    /// response goes on.
    fn response(&self, response: &mut ResponseHeader, request: &ResponseContext<'_>) {
        let _ = (response, request);
    }
}

/// Where a request goes: a route, and optionally how to choose its backend.
#[derive(Debug, Clone)]
pub struct Routing {
    pub(crate) route: Arc<Route>,
    pub(crate) hash_key: Option<Bytes>,
    pub(crate) backend: Option<String>,
}

impl Routing {
    /// To `route`, its backend chosen by its upstream's selection.
    pub fn to(route: Arc<Route>) -> Routing {
        Routing {
            route,
            hash_key: None,
            backend: None,
        }
    }

    /// Hash on `key` instead of the route's `hash_header` or the path. Used by an upstream
    /// with `selection: consistent_hash`; other selections ignore it.
    #[must_use]
    pub fn hash_key(mut self, key: impl Into<Bytes>) -> Routing {
        self.hash_key = Some(key.into());
        self
    }

    /// The first attempt goes to the backend named `backend` (its configured address) when the
    /// route's upstream has it and it can take requests (not ejected, down or draining);
    /// otherwise, and for retries, the upstream's selection chooses. A sticky session
    /// survives the removal of its backend this way.
    #[must_use]
    pub fn prefer_backend(mut self, backend: impl Into<String>) -> Routing {
        self.backend = Some(backend.into());
        self
    }

    /// The route.
    pub fn route(&self) -> &Arc<Route> {
        &self.route
    }
}

impl From<Arc<Route>> for Routing {
    fn from(route: Arc<Route>) -> Routing {
        Routing::to(route)
    }
}

impl From<Route> for Routing {
    fn from(route: Route) -> Routing {
        Routing::to(Arc::new(route))
    }
}

/// A request an extension refuses, answered with the proxy's page for its status.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub(crate) kind: FailureKind,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
}

impl Refusal {
    fn of(kind: FailureKind) -> Refusal {
        Refusal {
            kind,
            headers: Vec::new(),
        }
    }

    /// 401: the request lacks valid credentials. `challenge` is the `WWW-Authenticate` value
    /// the answer must carry (RFC 9110 §11.6.1), such as `Bearer realm="api"`.
    pub fn unauthorized(challenge: HeaderValue) -> Refusal {
        Refusal::of(FailureKind::Unauthorized).header(http::header::WWW_AUTHENTICATE, challenge)
    }

    /// 403: the client may not make this request.
    pub fn forbidden() -> Refusal {
        Refusal::of(FailureKind::Forbidden)
    }

    /// 429: the client sends more than it may; `retry_after`, when given, is sent as
    /// `Retry-After` in whole seconds (rounded up).
    pub fn too_many_requests(retry_after: Option<Duration>) -> Refusal {
        let refusal = Refusal::of(FailureKind::TooManyRequests);
        match retry_after {
            Some(d) => {
                let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
                refusal.header(http::header::RETRY_AFTER, HeaderValue::from(secs))
            }
            None => refusal,
        }
    }

    /// 404: nothing is served here for this request (`destination_not_found`).
    pub fn not_found() -> Refusal {
        Refusal::of(FailureKind::DestinationNotFound)
    }

    /// 400: the request cannot be served as it is (`http_request_error`).
    pub fn bad_request() -> Refusal {
        Refusal::of(FailureKind::HttpRequestError)
    }

    /// Adds a header to the answer. Headers that frame the message (`Content-Length`,
    /// `Transfer-Encoding`, `Connection`, `Content-Type`) are the proxy's and are not taken.
    #[must_use]
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Refusal {
        if !run::frames_the_message(&name) {
            self.headers.push((name, value));
        }
        self
    }

    /// The status the client gets.
    pub fn status(&self) -> u16 {
        self.kind.status()
    }
}

/// An extension failed: answered 500 (`extension_failed`). The reason goes to the log, never
/// to the client.
#[derive(Debug, Clone)]
pub struct ExtensionError {
    reason: String,
}

impl ExtensionError {
    /// An error, for the log.
    pub fn new(reason: impl fmt::Display) -> ExtensionError {
        ExtensionError {
            reason: reason.to_string(),
        }
    }
}

impl fmt::Display for ExtensionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for ExtensionError {}

/// Why a filter stopped a request.
#[derive(Debug, Clone)]
pub enum FilterError {
    /// The request is refused, with its own status.
    Refused(Refusal),
    /// The filter failed (500, `extension_failed`).
    Failed(ExtensionError),
}

impl From<Refusal> for FilterError {
    fn from(refusal: Refusal) -> FilterError {
        FilterError::Refused(refusal)
    }
}

impl From<ExtensionError> for FilterError {
    fn from(error: ExtensionError) -> FilterError {
        FilterError::Failed(error)
    }
}
