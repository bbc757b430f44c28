//! HTTP routes only: /metrics, /api/v1/alerts, /-/healthy, /-/ready, POST /-/reload, behind
//! the web config (TLS, basic auth, rate limit). Holds handles, not logic.

pub mod web;

pub use web::WebGuard;

use crate::export::Exporter;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// Longest a response may take to be read (`--web.write-timeout`): a reader that stalls
    /// past it is cut off and its /metrics permit freed, so stalled clients cannot lock
    /// Prometheus out.
    pub write_timeout: Duration,
}

/// /metrics responses sent concurrently; more readers queue.
pub const METRICS_IN_FLIGHT: usize = 16;

/// Largest request body we accept (we read none; a larger declared one is refused).
const MAX_REQUEST_BODY: u64 = 64 << 10;
/// A refused body up to this size is read and dropped before the answer, as Go's server does
/// (256 KiB): closing a socket with unread data resets it, and the client may lose the 413.
const DRAIN_REFUSED_BODY: u64 = 256 << 10;
/// A client must finish its TLS handshake or its request headers within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until shutdown; open connections get a moment to finish.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ServerState>,
    guard: Arc<WebGuard>,
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
        let (state, guard) = (state.clone(), guard.clone());
        tokio::spawn(async move {
            let applied = guard.current().await;
            match applied.acceptor() {
                None => connection(TokioIo::new(stream), state, guard).await,
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => return tracing::debug!("TLS handshake timed out"),
                    };
                    if !applied.client_allowed(tls.get_ref().1.peer_certificates()) {
                        return tracing::warn!("Client certificate carries none of client_allowed_sans; connection closed");
                    }
                    connection(TokioIo::new(tls), state, guard).await
                }
            }
        });
    }
}

/// When the response being sent on a connection started (ms after `base`, +1), or 0.
struct Sending {
    base: std::time::Instant,
    since: AtomicU64,
}

impl Sending {
    fn start(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.since.store(ms + 1, Ordering::Relaxed);
    }

    fn stop(&self) {
        self.since.store(0, Ordering::Relaxed);
    }

    /// How long the current response has been sending, if one is.
    fn for_how_long(&self) -> Option<Duration> {
        let since = self.since.load(Ordering::Relaxed).checked_sub(1)?;
        let now = self.base.elapsed().as_millis() as u64;
        Some(Duration::from_millis(now.saturating_sub(since)))
    }
}

async fn connection<S>(io: TokioIo<S>, state: Arc<ServerState>, guard: Arc<WebGuard>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let sending = Arc::new(Sending {
        base: std::time::Instant::now(),
        since: AtomicU64::new(0),
    });
    let write_timeout = state.write_timeout;
    let service = {
        let sending = sending.clone();
        hyper::service::service_fn(move |req| {
            let (state, guard, sending) = (state.clone(), guard.clone(), sending.clone());
            async move {
                let mut r = handle(&state, &guard, req).await;
                sending.start();
                r.body_mut().sending = Some(sending);
                Ok::<_, Infallible>(r)
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .serve_connection(io, service);
    // A reader that stops reading leaves hyper waiting to write: the watchdog drops the whole
    // connection (and with it the body and its permit) once a response outlasts the timeout.
    let watchdog = async {
        let tick = (write_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            tokio::time::sleep(tick).await;
            if sending.for_how_long().is_some_and(|d| d > write_timeout) {
                return;
            }
        }
    };
    tokio::select! {
        r = conn => if let Err(e) = r {
            tracing::debug!(error = %e, "Connection ended with an error");
        },
        () = watchdog => tracing::warn!(timeout = ?write_timeout, "A client did not read its response in time; connection closed (--web.write-timeout)"),
    }
}

/// The web config's checks, then the route, then its headers.
async fn handle(
    state: &ServerState,
    guard: &Arc<WebGuard>,
    req: Request<Incoming>,
) -> Response<Chunks> {
    let applied = guard.current().await;
    let admitted = guard
        .admit(&applied, req.headers().get(hyper::header::AUTHORIZATION))
        .await;
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let mut response = match admitted {
        Err(web::Denied::RateLimited) => text(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests\n"),
        Err(web::Denied::Unauthorized) => {
            let mut r = text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Basic"),
            );
            r
        }
        Ok(()) if declared.is_some_and(|n| n > MAX_REQUEST_BODY) => {
            if declared.is_some_and(|n| n <= DRAIN_REFUSED_BODY) {
                use http_body_util::BodyExt;
                let body =
                    http_body_util::Limited::new(req.into_body(), DRAIN_REFUSED_BODY as usize);
                let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, body.collect()).await;
            }
            text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {MAX_REQUEST_BODY} bytes\n"),
            )
        }
        Ok(()) => route(state, req).await,
    };
    for (name, value) in applied.headers() {
        if let (Ok(n), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(n, v);
        }
    }
    response
}

/// A response body: ready-made chunks, then (for /metrics) a rendering walked chunk by chunk
/// as the connection takes them, holding its /metrics permit until it has been sent.
pub struct Chunks {
    ready: std::collections::VecDeque<Bytes>,
    rendering: Option<crate::export::Rendering>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The connection's clock of the response being sent, stopped when this body ends.
    sending: Option<Arc<Sending>>,
}

impl Drop for Chunks {
    fn drop(&mut self) {
        if let Some(s) = &self.sending {
            s.stop();
        }
    }
}

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        let mut next = self.ready.pop_front();
        if next.is_none() {
            next = self.rendering.as_mut().and_then(|r| r.next_chunk());
        }
        if self.is_end_stream() {
            self.rendering = None;
            self.permit = None;
            if let Some(s) = self.sending.take() {
                s.stop();
            }
        }
        std::task::Poll::Ready(next.map(|b| Ok(hyper::body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_empty() && self.rendering.as_ref().is_none_or(|r| r.is_done())
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let ready = self.ready.iter().map(|b| b.len() as u64).sum();
        match self.rendering {
            None => hyper::body::SizeHint::with_exact(ready),
            Some(_) => {
                let mut hint = hyper::body::SizeHint::new();
                hint.set_lower(ready);
                hint
            }
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Chunks> {
    chunks(status, vec![body.into()])
}

fn chunks(status: StatusCode, parts: Vec<Bytes>) -> Response<Chunks> {
    let body = Chunks {
        ready: parts.into(),
        rendering: None,
        permit: None,
        sending: None,
    };
    let mut r = Response::new(body);
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
            // Each response in flight pins the row snapshot it was given; bounding them bounds
            // memory when many slow readers overlap scrapes. The rest wait their turn.
            let Ok(permit) = state.metrics_permits.clone().acquire_owned().await else {
                return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
            };
            let mut r = chunks(StatusCode::OK, Vec::new());
            r.body_mut().rendering = Some(state.exporter.render());
            r.body_mut().permit = Some(permit);
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
