//! How the gateway runs extensions: each call under a time limit, a panic caught, and every
//! way an extension can stop a request turned into a failure kind, so that its answer takes the
//! path of every other proxy answer.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;

use super::{Filter, FilterError, RequestContext, ResponseContext, Router, Routing};
use crate::failure::FailureKind;

/// How long one call of an extension may take unless the builder says otherwise.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// A request an extension stopped: the kind of the answer, and the headers it adds.
#[derive(Debug)]
pub(crate) struct Stopped {
    pub(crate) kind: FailureKind,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
}

impl From<FailureKind> for Stopped {
    fn from(kind: FailureKind) -> Stopped {
        Stopped {
            kind,
            headers: Vec::new(),
        }
    }
}

/// The extensions a gateway was built with.
pub(crate) struct Extensions {
    router: Option<Arc<dyn Router>>,
    filters: Box<[Arc<dyn Filter>]>,
    timeout: Duration,
}

impl std::fmt::Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extensions")
            .field("router", &self.router.is_some())
            .field("filters", &self.filters.len())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Default for Extensions {
    /// None: the configuration's routes, no filters.
    fn default() -> Extensions {
        Extensions::new(None, Vec::new(), DEFAULT_TIMEOUT)
    }
}

impl Extensions {
    /// A custom router (if any) and filters, each call bounded by `timeout`.
    pub(crate) fn new(
        router: Option<Arc<dyn Router>>,
        filters: Vec<Arc<dyn Filter>>,
        timeout: Duration,
    ) -> Extensions {
        Extensions {
            router,
            filters: filters.into(),
            timeout,
        }
    }

    /// The custom router.
    pub(crate) fn router(&self) -> Option<&Arc<dyn Router>> {
        self.router.as_ref()
    }

    /// Whether a request needs its context built: a custom router or a filter is installed.
    pub(crate) fn any(&self) -> bool {
        self.router.is_some() || !self.filters.is_empty()
    }

    /// Whether response filters run.
    pub(crate) fn filters_responses(&self) -> bool {
        !self.filters.is_empty()
    }

    /// Routes `request` with `router`.
    pub(crate) async fn route(
        &self,
        router: &dyn Router,
        request: &RequestContext<'_>,
    ) -> Result<Option<Routing>, FailureKind> {
        let id = request.request_id;
        guarded(self.timeout, router.route(request), "router", id)
            .await?
            .map_err(|e| {
                log::warn!("request {id}: the router failed: {e}");
                FailureKind::ExtensionFailed
            })
    }

    /// Runs every filter on a routed request, in order, until one stops it.
    pub(crate) async fn filter_request(
        &self,
        request: &mut RequestContext<'_>,
    ) -> Result<(), Stopped> {
        for filter in self.filters.iter() {
            let id = request.request_id;
            let outcome = guarded(self.timeout, filter.request(request), "filter", id).await?;
            match outcome {
                Ok(()) => {}
                Err(FilterError::Refused(refusal)) => {
                    return Err(Stopped {
                        kind: refusal.kind,
                        headers: refusal.headers,
                    });
                }
                Err(FilterError::Failed(e)) => {
                    log::warn!("request {id}: a filter failed: {e}");
                    return Err(FailureKind::ExtensionFailed.into());
                }
            }
        }
        Ok(())
    }

    /// Runs every filter on a response header. A filter that panics is logged and skipped.
    pub(crate) fn filter_response(&self, response: &mut ResponseHeader, cx: &ResponseContext<'_>) {
        for filter in self.filters.iter() {
            let run = std::panic::catch_unwind(AssertUnwindSafe(|| filter.response(response, cx)));
            if run.is_err() {
                log::error!(
                    "request {}: a filter panicked on the response header",
                    cx.request_id
                );
            }
        }
    }
}

/// `call` run to its end within `limit`, a panic in it caught.
async fn guarded<T>(
    limit: Duration,
    call: impl Future<Output = T>,
    what: &str,
    request_id: &str,
) -> Result<T, FailureKind> {
    match pingora::prelude::timeout(limit, AssertUnwindSafe(call).catch_unwind()).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(_)) => {
            log::error!("request {request_id}: the {what} panicked");
            Err(FailureKind::ExtensionFailed)
        }
        Err(_) => {
            log::warn!("request {request_id}: the {what} did not finish within {limit:?}");
            Err(FailureKind::ExtensionTimeout)
        }
    }
}

/// Headers that frame the message, which the proxy writes itself.
pub(crate) fn frames_the_message(name: &HeaderName) -> bool {
    use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
    [CONTENT_LENGTH, TRANSFER_ENCODING, CONNECTION, CONTENT_TYPE].contains(name)
}
