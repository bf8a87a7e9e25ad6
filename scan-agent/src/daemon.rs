//! `scan-agent run`: attach, poll the counters into the detector, serve metrics,
//! save state; on SIGINT/SIGTERM save state, detach (unless kept) and exit 0.
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use axum::{
    Router,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{Html, IntoResponse},
    routing::get,
};
use scan_common::PORTS;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    api::{ApiInput, Recent},
    breadth::Breadth,
    config::AgentConfig,
    detector::Detector,
    metrics::{Metrics, Snapshot},
    sensor::Sensor,
    state,
};

struct Shared {
    config: AgentConfig,
    clock: DetectorClock,
    sensor: Sensor,
    detector: Detector,
    /// Distinct sources and targets per port, from the kernel sketches.
    breadth: Breadth,
    metrics: Metrics,
    ports: Vec<u64>,
    /// Rate history and episode starts for the JSON API.
    recent: Recent,
    last_poll: Option<Instant>,
    last_error: Option<String>,
}

type SharedState = Arc<Mutex<Shared>>;

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Detector time: wall-clock at start (so the gap across a restart is measured),
/// then monotonic, so an NTP step or a manual clock change while running cannot
/// make a step look hours long (teaching baselines a near-zero rate) or go back.
struct DetectorClock {
    wall_at_start: Duration,
    started: Instant,
}

impl DetectorClock {
    fn new() -> Self {
        Self {
            wall_at_start: unix_now(),
            started: Instant::now(),
        }
    }

    fn now(&self) -> Duration {
        self.wall_at_start + self.started.elapsed()
    }
}

/// The interface of the default route: IPv4 from /proc/net/route, else IPv6 from
/// /proc/net/ipv6_route (an IPv6-only router).
pub fn default_route_interface() -> Option<String> {
    let ipv4 = std::fs::read_to_string("/proc/net/route")
        .ok()
        .and_then(|table| {
            table.lines().skip(1).find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields.get(1) == Some(&"00000000") && fields.get(7) == Some(&"00000000"))
                    .then(|| fields[0].to_string())
            })
        });
    ipv4.or_else(|| {
        let table = std::fs::read_to_string("/proc/net/ipv6_route").ok()?;
        table.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let default = fields.first().is_some_and(|d| d.chars().all(|c| c == '0'))
                && fields.get(1) == Some(&"00");
            let iface = fields.get(9)?;
            (default && *iface != "lo").then(|| iface.to_string())
        })
    })
}

pub async fn run(mut config: AgentConfig) -> Result<()> {
    if config.interfaces.is_empty() {
        let iface = default_route_interface().context(
            "no --iface given and no default route to take the interface from: pass --iface NAME",
        )?;
        log::info!("no --iface given: using {iface}, the default route's interface");
        config.interfaces.push(iface);
    }
    // The state file first: a path that cannot be saved to, or a file that cannot be
    // restored, stops the agent before it attaches anything.
    state::check_writable(&config.state_file)?;
    let detector = match state::load(&config.state_file)? {
        Some(saved) => {
            log::info!("restored baselines from {}", config.state_file.display());
            Detector::restore(config.detector.clone(), saved)
        }
        None => {
            log::info!(
                "no state file at {}: learning baselines from scratch (warm-up {})",
                config.state_file.display(),
                humantime::format_duration(config.detector.warmup)
            );
            Detector::new(config.detector.clone())
        }
    };
    let mut sensor = Sensor::load(Some(&config.pin_path))?;
    if let Some(n) = sensor.verified_instructions() {
        log::info!("XDP program loaded: the verifier processed {n} instructions");
    }
    match sensor.logger() {
        Ok(logger) => forward_program_logs(logger),
        Err(e) => log::warn!("program logs will not be forwarded: {e}"),
    }
    sensor.set_debug(config.debug_program)?;
    for interface in &config.interfaces {
        let a = sensor.attach(interface, config.xdp_mode, config.keep_attached)?;
        log::info!(
            "attached to {} in {} mode{}{}",
            a.interface,
            a.mode,
            if a.adopted {
                " (adopted the link kept by the previous run)"
            } else {
                ""
            },
            if config.keep_attached {
                "; it stays attached when the agent stops"
            } else {
                ""
            },
        );
    }
    let listen = config.listen.clone();
    let telemetry_path = config.telemetry_path.clone();
    let interval = config.detector.interval;
    let save_interval = config.save_interval;
    let shared = Arc::new(Mutex::new(Shared {
        metrics: Metrics::new().context("registering metrics")?,
        ports: vec![0; PORTS as usize],
        recent: Recent::new(interval),
        breadth: Breadth::new(&config.detector),
        clock: DetectorClock::new(),
        config,
        sensor,
        detector,
        last_poll: None,
        last_error: None,
    }));
    poll(&shared);

    let app = Router::new()
        .route("/", get(index))
        .route(&telemetry_path, get(metrics))
        .route("/healthz", get(healthz))
        .route("/api/v1/ports", get(api_ports))
        .route("/api/v1/ports/{port}", get(api_port))
        .with_state(shared.clone());
    let mut servers = tokio::task::JoinSet::new();
    for address in listen {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {address}: is another agent running? choose another \
                     --web.listen-address"
                )
            })?;
        log::info!("serving http://{address}{telemetry_path}");
        let app = app.clone();
        servers.spawn(serve(listener, app));
    }

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut poll_tick = tokio::time::interval(interval);
    let mut save_tick = tokio::time::interval(save_interval);
    poll_tick.tick().await;
    save_tick.tick().await;
    loop {
        tokio::select! {
            _ = poll_tick.tick() => poll(&shared),
            _ = save_tick.tick() => save(&shared),
            _ = sigint.recv() => { log::info!("SIGINT: stopping"); break; }
            _ = sigterm.recv() => { log::info!("SIGTERM: stopping"); break; }
            result = servers.join_next() => bail!("HTTP server stopped: {result:?}"),
        }
    }
    servers.abort_all();
    save(&shared);
    // HTTP connection tasks may still hold the shared state, so detach through it.
    let mut s = lock(&shared);
    s.sensor.detach()?;
    log::info!(
        "stopped; {}",
        if s.config.keep_attached {
            "the program stays attached through its pinned link"
        } else {
            "detached"
        }
    );
    Ok(())
}

/// Serves `app` on `listener`, one task per connection, so a failing (or panicking)
/// request ends only its own connection. Unlike `axum::serve`, HTTP/1 half-close is on:
/// a client that shuts its write side after sending the request still gets the answer
/// (hyper's `half_close` is off by default, and `axum::serve` cannot turn it on).
async fn serve(listener: tokio::net::TcpListener, app: Router) -> std::io::Result<()> {
    use hyper_util::{
        rt::{TokioIo, TokioTimer},
        service::TowerToHyperService,
    };
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // E.g. out of file descriptors: wait, keep serving.
                log::warn!("HTTP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .half_close(true)
                // With a timer, hyper drops a client that sends no complete request
                // header within 30 s (slowloris).
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                log::debug!("HTTP connection: {e}");
            }
        });
    }
}

fn lock(shared: &SharedState) -> std::sync::MutexGuard<'_, Shared> {
    // A panic while holding the lock is a bug; the data is still usable.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads every port counter (mmap, no syscall) and steps the detector.
fn poll(shared: &SharedState) {
    let mut guard = lock(shared);
    let s = &mut *guard;
    let timer = s.metrics.poll_duration.start_timer();
    s.sensor.read_ports(&mut s.ports);
    let now = s.clock.now();
    s.detector.step(now, &s.ports);
    let mut taken = Vec::new();
    s.sensor.take_sketches(&mut taken);
    for idle in s.breadth.step(now, taken) {
        s.sensor.free_sketch_slot(idle);
    }
    let exported = Metrics::exported_ports(&s.detector, &s.config.watch_ports, s.config.top_ports);
    s.recent.record(&s.detector, &exported, now.as_secs_f64());
    timer.observe_duration();
    s.last_poll = Some(Instant::now());
    s.metrics.last_poll.set(unix_now().as_secs_f64());
    if !log::log_enabled!(log::Level::Debug) {
        return;
    }
    for flagged in s.detector.flagged_ports() {
        log::debug!(
            "port {} flagged: ratio {:.1}, {:.2} SYN/s against a baseline of {:.2}",
            flagged.port,
            flagged.ratio,
            flagged.rate,
            flagged.baseline
        );
    }
}

fn save(shared: &SharedState) {
    // Encoding and fsync happen outside the lock so polls and scrapes do not wait.
    let (path, snapshot) = {
        let s = lock(shared);
        (s.config.state_file.clone(), s.detector.snapshot())
    };
    if let Err(e) = state::save(&path, &snapshot) {
        lock(shared).metrics.state_save_errors.inc();
        log::error!("{e}");
    }
}

async fn metrics(State(shared): State<SharedState>) -> impl IntoResponse {
    let mut guard = lock(&shared);
    let s = &mut *guard;
    // Observed when dropped, after the render: it shows in the next scrape.
    let _timer = s.metrics.scrape_duration.start_timer();
    // Fresh kernel values at every scrape: microseconds by mmap.
    s.sensor.read_ports(&mut s.ports);
    let classes = match s.sensor.read_classes() {
        Ok(classes) => classes,
        Err(e) => {
            s.metrics.poll_errors.inc();
            s.last_error = Some(e.to_string());
            log::error!("reading packet classes: {e}");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading packet classes: {e}\n"),
            )
                .into_response();
        }
    };
    s.last_error = None;
    let body = s.metrics.render(&Snapshot {
        ports: &s.ports,
        classes: &classes,
        detector: &s.detector,
        breadth: &s.breadth,
        attachments: s.sensor.attachments(),
        watch_ports: &s.config.watch_ports,
        top_ports: s.config.top_ports,
        export_hold: s.config.export_hold,
        now: s.clock.now(),
    });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Renders one JSON API response from fresh kernel counters and the detector's view.
fn api_json<T: serde::Serialize>(
    shared: &SharedState,
    render: impl FnOnce(&ApiInput<'_>) -> T,
) -> axum::response::Response {
    let mut guard = lock(shared);
    let s = &mut *guard;
    s.sensor.read_ports(&mut s.ports);
    let exported = Metrics::exported_ports(&s.detector, &s.config.watch_ports, s.config.top_ports);
    let input = ApiInput {
        detector: &s.detector,
        breadth: &s.breadth,
        recent: &s.recent,
        ports: &s.ports,
        exported: &exported,
        time: s.detector.last_step().unwrap_or_default().as_secs_f64(),
    };
    match serde_json::to_string(&render(&input)) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding JSON: {e}\n"),
        )
            .into_response(),
    }
}

async fn api_ports(State(shared): State<SharedState>) -> axum::response::Response {
    api_json(&shared, |input| input.ports())
}

async fn api_port(
    State(shared): State<SharedState>,
    Path(port): Path<String>,
) -> axum::response::Response {
    match crate::api::parse_port(&port) {
        Ok(port) => api_json(&shared, |input| input.port(port)),
        Err(message) => (StatusCode::NOT_FOUND, format!("{message}\n")).into_response(),
    }
}

async fn healthz(State(shared): State<SharedState>) -> impl IntoResponse {
    let s = lock(&shared);
    // Saturating: a config bug must never turn a health check into a panic.
    let stale_after = s.config.detector.interval.saturating_mul(3);
    let gone: Vec<&str> = s
        .sensor
        .attachments()
        .iter()
        .filter(|a| !a.interface_exists())
        .map(|a| a.interface.as_str())
        .collect();
    let problem = if s.sensor.attachments().is_empty() {
        Some("not attached to any interface".to_string())
    } else if !gone.is_empty() {
        Some(format!(
            "interface gone, program no longer attached: {}",
            gone.join(", ")
        ))
    } else if let Some(error) = &s.last_error {
        Some(format!("last map read failed: {error}"))
    } else {
        match s.last_poll {
            None => Some("no poll yet".to_string()),
            Some(t) if t.elapsed() > stale_after => Some(format!(
                "last poll {:.0}s ago (interval {})",
                t.elapsed().as_secs_f64(),
                humantime::format_duration(s.config.detector.interval)
            )),
            Some(_) => None,
        }
    };
    match problem {
        None => (StatusCode::OK, "ok\n".to_string()),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {reason}\n"),
        ),
    }
}

async fn index(State(shared): State<SharedState>) -> Html<String> {
    let s = lock(&shared);
    let path = &s.config.telemetry_path;
    let interfaces: Vec<String> = s
        .sensor
        .attachments()
        .iter()
        .map(|a| format!("{} ({})", html_escape(&a.interface), a.mode))
        .collect();
    let mut rows = String::new();
    for p in s.detector.top_ports(10) {
        let breadth = s.breadth.status(p.port).map_or_else(
            || "<td>-</td><td>-</td>".to_string(),
            |b| {
                format!(
                    "<td>{:.0} (normal {:.0})</td><td>{:.0} (normal {:.0})</td>",
                    b.sources, b.sources_baseline, b.targets, b.targets_baseline
                )
            },
        );
        let surge = p.episode_start.map_or_else(String::new, |start| {
            format!(
                "SURGE since {}",
                crate::replay::rfc3339(Duration::from_secs(start.as_secs()))
            )
        });
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td><td>{:.2}</td>{breadth}<td>{surge}</td></tr>",
            p.port,
            p.rate,
            p.expected,
            p.learning.name(),
            p.ratio,
        ));
    }
    Html(format!(
        "<!doctype html><title>scan-agent</title><h1>scan-agent {}</h1>\
         <p>Attached: {}. Warm-up: {}.</p>\
         <p><a href=\"{path}\">{path}</a> &middot; <a href=\"/healthz\">/healthz</a></p>\
         <table border=1><tr><th>port</th><th>SYN/s</th><th>expected</th><th>expectation from</th><th>ratio</th><th>sources</th><th>targets</th><th></th></tr>{rows}</table>",
        env!("CARGO_PKG_VERSION"),
        if interfaces.is_empty() {
            "none".into()
        } else {
            interfaces.join(", ")
        },
        if s.detector.warming_up() {
            format!(
                "{} left",
                humantime::format_duration(Duration::from_secs(
                    s.detector.warmup_remaining().as_secs()
                ))
            )
        } else {
            "done".into()
        },
    ))
}

/// Text for HTML: interface names may hold any byte but '/' and whitespace.
fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Forwards the program's aya-log records (only sent with --debug-program).
fn forward_program_logs(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring-buffer fd and keeps it open, unreplaced, for
    // as long as the AsyncFd owns the logger (tokio PR #8587 made this explicit).
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let Ok(mut fd) = registered else {
        log::warn!("program logs will not be forwarded: cannot poll the log buffer");
        return;
    };
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}
