//! HTTP routes only: /metrics, /api/v1/alerts, /-/healthy, /-/ready, POST /-/reload. Holds handles, not logic.

use crate::export::Exporter;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

/// A reload request; the answer is Ok or the reason the rules were refused.
pub type ReloadRequest = oneshot::Sender<Result<usize, String>>;

/// What the routes need.
pub struct ServerState {
    pub exporter: Arc<Exporter>,
    pub ready: Arc<AtomicBool>,
    /// Present only with --web.enable-lifecycle.
    pub reload: Option<mpsc::Sender<ReloadRequest>>,
    /// /metrics responses in flight at once.
    pub metrics_permits: Arc<tokio::sync::Semaphore>,
}

/// /metrics responses sent concurrently; more readers queue.
pub const METRICS_IN_FLIGHT: usize = 16;

/// Serves until shutdown; open connections get a moment to finish.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ServerState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "Accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "Connection ended with an error");
            }
        });
    }
}

/// A response body of ready-made chunks (so a shared, cached buffer is sent without a copy),
/// holding its /metrics permit until it has been sent.
pub struct Chunks(
    std::collections::VecDeque<Bytes>,
    Option<tokio::sync::OwnedSemaphorePermit>,
);

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        let next = self.0.pop_front();
        if self.0.is_empty() {
            self.1 = None;
        }
        std::task::Poll::Ready(next.map(|b| Ok(hyper::body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.0.iter().map(|b| b.len() as u64).sum())
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Chunks> {
    chunks(status, vec![body.into()])
}

fn chunks(status: StatusCode, parts: Vec<Bytes>) -> Response<Chunks> {
    let mut r = Response::new(Chunks(parts.into(), None));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn route(state: &ServerState, req: Request<Incoming>) -> Response<Chunks> {
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    match (req.uri().path(), get) {
        ("/metrics", true) => {
            // Each response in flight pins the rendering it was given; bounding them bounds
            // memory when many slow readers overlap scrapes. The rest wait their turn.
            let Ok(permit) = state.metrics_permits.clone().acquire_owned().await else {
                return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
            };
            let mut r = chunks(StatusCode::OK, state.exporter.render().to_vec());
            r.body_mut().1 = Some(permit);
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        ("/api/v1/alerts", true) => {
            let mut r = text(StatusCode::OK, state.exporter.alerts_json());
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        }
        ("/-/healthy", true) => text(StatusCode::OK, "anomaly-sidecar is Healthy.\n"),
        ("/-/ready", true) => {
            if state.ready.load(Ordering::Relaxed) {
                text(StatusCode::OK, "anomaly-sidecar is Ready.\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "anomaly-sidecar is not ready.\n")
            }
        }
        ("/-/reload", _) => reload(state, req.method()).await,
        ("/", true) => text(
            StatusCode::OK,
            "anomaly-sidecar\n\n/metrics      anomaly gauges and self-monitoring\n/-/healthy    liveness\n/-/ready      readiness\n/-/reload     POST to reload rules (with --web.enable-lifecycle)\n/api/v1/alerts  pending and firing alerts with their explanation\n",
        ),
        (_, _) => text(StatusCode::NOT_FOUND, "404 page not found\n"),
    }
}

async fn reload(state: &ServerState, method: &Method) -> Response<Chunks> {
    let Some(tx) = &state.reload else {
        return text(StatusCode::FORBIDDEN, "Lifecycle API is not enabled.\n");
    };
    if *method != Method::POST && *method != Method::PUT {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "Only POST or PUT requests allowed.\n",
        );
    }
    let (reply, answer) = oneshot::channel();
    if tx.send(reply).await.is_err() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    match answer.await {
        Ok(Ok(n)) => text(StatusCode::OK, format!("ok: {n} rules\n")),
        Ok(Err(e)) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to reload rules: {e}\n"),
        ),
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
    }
}
