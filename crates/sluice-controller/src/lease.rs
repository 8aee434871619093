//! Leadership that ends on time. The Lease library renews in the background and, when a renewal
//! fails, only logs and retries: a leader cut off from the API server would go on reconciling while
//! a standby takes the expired Lease over, and both would write once the partition heals. So the
//! client notes each successful renewal of the Lease, and the leader exits once a renewal deadline
//! (shorter than the Lease's duration) passes without one: it stops before anyone else may start.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use http::{Method, Request, Response};
use tower::{Layer, Service};

/// The last successful write of the leader Lease by this instance.
pub struct Renewals {
    /// `/leases/<name>`, the end of the Lease's path.
    path_end: String,
    last: Mutex<Option<Instant>>,
}

impl Renewals {
    pub fn new(lease_name: &str) -> Arc<Self> {
        Arc::new(Self {
            path_end: format!("/leases/{lease_name}"),
            last: Mutex::new(None),
        })
    }

    fn is_renewal(&self, method: &Method, path: &str) -> bool {
        matches!(*method, Method::PUT | Method::PATCH) && path.ends_with(&self.path_end)
    }

    fn renewed(&self) {
        if let Ok(mut last) = self.last.lock() {
            *last = Some(Instant::now());
        }
    }

    /// How long since the last successful renewal (or since `since`, if none was seen after it).
    fn silent_for(&self, since: Instant) -> Duration {
        let last = self
            .last
            .lock()
            .ok()
            .and_then(|l| *l)
            .filter(|l| *l > since)
            .unwrap_or(since);
        last.elapsed()
    }
}

/// Exits the process once `deadline` passes with no successful renewal of the Lease, counted from
/// `since` (when this instance became the leader, itself a write of the Lease).
pub async fn stop_when_renewals_fail(renewals: Arc<Renewals>, since: Instant, deadline: Duration) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let silent = renewals.silent_for(since);
        if silent > deadline {
            tracing::error!(
                silent_seconds = silent.as_secs_f64(),
                deadline_seconds = deadline.as_secs_f64(),
                "the leader Lease was not renewed within its renewal deadline: exiting before another instance may take it over"
            );
            std::process::exit(1);
        }
    }
}

/// A client layer that notes the successful writes of the Lease.
#[derive(Clone)]
pub struct NoteRenewals(pub Arc<Renewals>);

impl<S> Layer<S> for NoteRenewals {
    type Service = Noted<S>;

    fn layer(&self, inner: S) -> Noted<S> {
        Noted {
            inner,
            renewals: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Noted<S> {
    inner: S,
    renewals: Arc<Renewals>,
}

impl<S, B, R> Service<Request<B>> for Noted<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let renewal = self
            .renewals
            .is_renewal(request.method(), request.uri().path());
        let renewals = self.renewals.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            if renewal && response.status().is_success() {
                renewals.renewed();
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_successful_writes_of_the_lease_count() {
        let renewals = Renewals::new("sluice-controller");
        let path = "/apis/coordination.k8s.io/v1/namespaces/x/leases/sluice-controller";
        assert!(renewals.is_renewal(&Method::PATCH, path));
        assert!(renewals.is_renewal(&Method::PUT, path));
        assert!(!renewals.is_renewal(&Method::GET, path));
        assert!(!renewals.is_renewal(&Method::PATCH, "/apis/x/leases/other"));
        let since = Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        assert!(renewals.silent_for(since) >= Duration::from_millis(20));
        renewals.renewed();
        assert!(renewals.silent_for(since) < Duration::from_millis(20));
    }
}
