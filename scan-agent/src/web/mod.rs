//! The HTTP server: `/metrics` (or `--web.telemetry-path`), `/healthz`, `/` and the JSON
//! API, rendered from the last poll's [`view::View`].
//!
//! Hardened for a router in the path of the traffic it watches: every listener accepts
//! in its own task and every connection is served in its own task, so a panic in a
//! handler (answered 500) or a stuck client cannot stop the listener; request heads are
//! small ([`Limits`]) and must arrive within a timeout; a connection idle (or writing
//! to a client that does not read) for longer than the idle timeout is closed; and at
//! most [`Limits::max_connections`] are open: past that, the connection idle the
//! longest makes room for the new one, so idle or slow clients cannot lock a scraper out.
//! TLS, client certificates, basic auth and extra headers come from `--web.config.file`
//! ([`tls`]), re-read on change.
pub mod auth;
pub mod tls;
pub mod view;

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use futures_util::FutureExt as _;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tower_service::Service as _;

pub use tls::{WebConfig, WebConfigError, WebConfigSource};
pub use view::{ApiData, ApiParts, Published, View};

/// Bounds on what one client can make the server hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A request head (request line and headers) must arrive within this.
    pub header_read_timeout: Duration,
    /// A handler must answer within this (they render from memory: microseconds, a few
    /// milliseconds for the first `/metrics` scrape after a poll).
    pub request_timeout: Duration,
    /// A connection with no request in progress for this long is closed.
    pub idle_timeout: Duration,
    /// Open connections at most, over all listeners.
    pub max_connections: usize,
    /// Largest request head, bytes (hyper's minimum is 8 KiB).
    pub max_head_bytes: usize,
    /// Most request headers.
    pub max_headers: usize,
}

/// Counters the server updates (atomics, shared with the metrics registry).
#[derive(Clone)]
pub struct ServerCounters {
    pub evicted: prometheus::IntCounter,
    pub refused: prometheus::IntCounter,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_connections: 512,
            max_head_bytes: 16 * 1024,
            max_headers: 32,
        }
    }
}

/// The routes, serving from `published`.
pub fn router(published: Published, telemetry_path: &str) -> Router {
    Router::new()
        .route("/", get(index))
        .route(telemetry_path, get(metrics))
        .route("/healthz", get(healthz))
        .route("/api/v1/ports", get(api_ports))
        .route("/api/v1/ports/{port}", get(api_port))
        .with_state(published)
}

async fn metrics(State(published): State<Published>) -> Response {
    let view = published.load();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        view.metrics.text(),
    )
        .into_response()
}

async fn healthz(State(published): State<Published>) -> (StatusCode, String) {
    match published.load().health() {
        None => (StatusCode::OK, "ok\n".to_string()),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {reason}\n"),
        ),
    }
}

async fn index(State(published): State<Published>) -> Html<String> {
    Html(published.load().index_html())
}

fn json<T: serde::Serialize>(value: &T) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding JSON: {e}\n"),
        )
            .into_response(),
    }
}

async fn api_ports(State(published): State<Published>) -> Response {
    json(&published.load().api.ports())
}

async fn api_port(State(published): State<Published>, Path(port): Path<String>) -> Response {
    match crate::api::parse_port(&port) {
        Ok(port) => json(&published.load().api.port(port)),
        Err(message) => (StatusCode::NOT_FOUND, format!("{message}\n")).into_response(),
    }
}

/// Serves `app` on every listener until one of the accept loops ends (never, short
/// of a panic); an error names the listener.
pub async fn serve(
    listeners: Vec<(SocketAddr, tokio::net::TcpListener)>,
    app: Router,
    limits: Limits,
    counters: ServerCounters,
    web: Arc<WebConfigSource>,
) -> anyhow::Result<()> {
    let connections = Arc::new(Connections::new(limits.max_connections, counters));
    let mut loops = tokio::task::JoinSet::new();
    for (address, listener) in listeners {
        let (app, connections, web) = (app.clone(), connections.clone(), web.clone());
        loops.spawn(async move {
            accept_loop(listener, app, connections, limits, web).await;
            address
        });
    }
    match loops.join_next().await {
        Some(Ok(address)) => anyhow::bail!("the listener on {address} stopped"),
        Some(Err(e)) => anyhow::bail!("an HTTP listener failed: {e}"),
        None => anyhow::bail!("no HTTP listener"),
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    connections: Arc<Connections>,
    limits: Limits,
    web: Arc<WebConfigSource>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors or memory: wait for connections to close
                // rather than spin or give up.
                log::warn!("accepting an HTTP connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = connections.admit(limits.request_timeout) else {
            // Every connection is busy with a request: refuse this one (closed).
            connections.counters.refused.inc();
            continue;
        };
        let app = app.clone();
        // Re-read first if the file or a certificate changed: the next connection
        // gets the new version.
        let config = web.current();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let Some(tls) = config.tls.clone() else {
                serve_connection(TokioIo::new(stream), app, slot, limits, config).await;
                return;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    serve_connection(TokioIo::new(stream), app, slot, limits, config).await;
                }
                // Plain HTTP to the TLS port, a refused or missing client certificate,
                // a scanner: refused; a debug line, as on a router these are common.
                Ok(Err(e)) => log::debug!("TLS handshake refused: {e}"),
                Err(_) => log::debug!("TLS handshake not done in time"),
            }
        });
    }
}

/// Serves HTTP/1 on one connection (plain or TLS) until the client closes it, it
/// breaks a limit, or it is evicted to make room.
pub async fn serve_connection<I>(
    io: TokioIo<I>,
    app: Router,
    slot: SlotGuard,
    limits: Limits,
    config: Arc<WebConfig>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let slot_for_requests = slot.slot.clone();
    let service = hyper::service::service_fn(move |request| {
        let mut app = app.clone();
        let slot = slot_for_requests.clone();
        let config = config.clone();
        async move {
            slot.set_busy(true);
            let answer = AssertUnwindSafe(tokio::time::timeout(limits.request_timeout, async {
                if !config.users.is_empty() && !config.users.allows(request.headers()).await {
                    return Ok(unauthorized());
                }
                app.call(request).await
            }))
            .catch_unwind()
            .await;
            slot.set_busy(false);
            let mut response = match answer {
                Ok(Ok(Ok(response))) => response,
                Ok(Ok(Err(never))) => match never {},
                Ok(Err(_elapsed)) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "request took too long\n").into_response()
                }
                Err(_panic) => {
                    log::error!("an HTTP handler panicked (a bug); answered 500");
                    (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
                }
            };
            for (name, value) in &config.headers {
                response.headers_mut().insert(name.clone(), value.clone());
            }
            Ok::<_, Infallible>(response)
        }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // Issue 14: a client that shuts down its write side after the request still
        // gets its answer.
        .half_close(true)
        .keep_alive(true)
        .max_buf_size(limits.max_head_bytes)
        .max_headers(limits.max_headers)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let mut check = tokio::time::interval(limits.idle_timeout / 4);
    loop {
        tokio::select! {
            result = &mut connection => {
                if let Err(e) = result {
                    log::debug!("HTTP connection ended: {e}");
                }
                return;
            }
            _ = slot.slot.evict.notified() => return,
            _ = check.tick() => {
                if slot.slot.idle_for() > limits.idle_timeout {
                    return;
                }
            }
        }
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic")],
        "Unauthorized\n",
    )
        .into_response()
}

/// The open connections, for the cap: each has a slot saying whether a request is in
/// progress and since when it is idle.
pub struct Connections {
    max: usize,
    counters: ServerCounters,
    next_id: AtomicU64,
    // Only HTTP tasks take this lock, briefly, on connect and disconnect.
    open: Mutex<HashMap<u64, Arc<Slot>>>,
}

pub struct Slot {
    busy: AtomicBool,
    /// Milliseconds since `epoch` of the last change of `busy`.
    changed_ms: AtomicU64,
    epoch: Instant,
    evict: tokio::sync::Notify,
}

impl Slot {
    fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Relaxed);
        self.changed_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn since_change(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.changed_ms.load(Ordering::Relaxed)))
    }

    /// How long no request has been in progress (zero while one is).
    fn idle_for(&self) -> Duration {
        if self.busy.load(Ordering::Relaxed) {
            Duration::ZERO
        } else {
            self.since_change()
        }
    }
}

/// A connection's place among the open ones; given back when dropped.
pub struct SlotGuard {
    id: u64,
    slot: Arc<Slot>,
    connections: Arc<Connections>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.connections.lock().remove(&self.id);
    }
}

impl Connections {
    pub fn new(max: usize, counters: ServerCounters) -> Self {
        Self {
            max: max.max(1),
            counters,
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Slot>>> {
        // No code panics while holding it; if one did, the map is still consistent.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a new connection. At the cap, the connection idle the longest (or one
    /// stuck in a request for longer than `request_timeout`) is told to close and gives
    /// its place; `None` when every connection is busy with a request.
    pub fn admit(self: &Arc<Self>, request_timeout: Duration) -> Option<SlotGuard> {
        let mut open = self.lock();
        if open.len() >= self.max {
            let victim = open
                .iter()
                .filter(|(_, s)| {
                    !s.busy.load(Ordering::Relaxed) || s.since_change() > request_timeout
                })
                .max_by_key(|(_, s)| {
                    // Idle ones first, then the longest unchanged.
                    (!s.busy.load(Ordering::Relaxed), s.since_change())
                })
                .map(|(&id, _)| id)?;
            if let Some(slot) = open.remove(&victim) {
                slot.evict.notify_one();
                self.counters.evicted.inc();
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let epoch = Instant::now();
        let slot = Arc::new(Slot {
            busy: AtomicBool::new(false),
            changed_ms: AtomicU64::new(0),
            epoch,
            evict: tokio::sync::Notify::new(),
        });
        open.insert(id, slot.clone());
        Some(SlotGuard {
            id,
            slot,
            connections: self.clone(),
        })
    }

    pub fn open(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_longest_idle_connection_makes_room() {
        let counters = ServerCounters {
            evicted: prometheus::IntCounter::new("e", "e").unwrap(),
            refused: prometheus::IntCounter::new("r", "r").unwrap(),
        };
        let connections = Arc::new(Connections::new(2, counters.clone()));
        let timeout = Duration::from_secs(10);
        let first = connections.admit(timeout).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let second = connections.admit(timeout).unwrap();
        second.slot.set_busy(true);
        // Full: the idle first one goes, the busy second one stays.
        let third = connections.admit(timeout).unwrap();
        assert_eq!(connections.open(), 2);
        assert!(!connections.lock().contains_key(&first.id));
        assert!(connections.lock().contains_key(&second.id));
        // Both busy: the new connection is refused.
        third.slot.set_busy(true);
        assert!(connections.admit(timeout).is_none());
        // A request stuck past the timeout can be evicted.
        std::thread::sleep(Duration::from_millis(5));
        let fourth = connections.admit(Duration::ZERO);
        assert!(fourth.is_some());
        drop(first);
        assert_eq!(connections.open(), 2);
        drop(fourth);
        assert_eq!(connections.open(), 1);
        assert_eq!(counters.evicted.get(), 2);
    }
}
