//! HTTP routes only: /metrics, /api/v1/alerts, /-/healthy, /-/ready, POST /-/reload. Holds handles, not logic.

use crate::export::Exporter;
use http_body_util::Full;
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
}

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

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn route(state: &ServerState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    match (req.uri().path(), get) {
        ("/metrics", true) => {
            let body = state.exporter.render();
            let mut r = text(StatusCode::OK, body);
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

async fn reload(state: &ServerState, method: &Method) -> Response<Full<Bytes>> {
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
