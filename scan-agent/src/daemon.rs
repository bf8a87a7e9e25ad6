//! `scan-agent run`: attach, poll the counters into the detector, publish each poll's
//! view for the HTTP server (`web`), save state; on SIGINT/SIGTERM save state, detach
//! (unless kept) and exit 0.
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use scan_common::{ClassCounts, PORTS};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    api::Recent,
    breadth::Breadth,
    config::AgentConfig,
    detector::Detector,
    metrics::{Metrics, Snapshot},
    prefixes::{Prefixes, SAMPLES_PER_SECOND},
    sensor::{AttachRequest, LinkKind, Sensor},
    state,
    web::{self, ApiData, Published, View},
};

struct Shared {
    config: AgentConfig,
    clock: DetectorClock,
    sensor: Sensor,
    detector: Detector,
    /// Distinct sources and targets per port, from the kernel sketches.
    breadth: Breadth,
    /// Top source prefixes of the flagged ports, from the kernel's samples.
    prefixes: Prefixes,
    /// Reused buffer for the samples drained at each poll.
    samples: Vec<scan_common::SourceSample>,
    metrics: Metrics,
    ports: Vec<u64>,
    /// Rate history and episode starts for the JSON API.
    recent: Recent,
    /// The last packet-class counters read (kept when a read fails).
    /// Class counters per attached interface.
    classes: Vec<(String, ClassCounts)>,
    last_error: Option<String>,
}

/// Only the poll task (polls and saves) takes this lock; HTTP renders from the
/// published [`View`].
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
    // The web config too: TLS or auth that cannot work stops the start.
    let web_config = Arc::new(web::WebConfigSource::new(config.web_config_file.clone())?);
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
    sensor.set_debug(config.debug_program);
    sensor.set_per_interface_ports(config.per_interface_ports);
    let request = AttachRequest {
        hook: config.attach,
        xdp_mode: config.xdp_mode,
        multiprog: config.xdp_multiprog,
    };
    for interface in &config.interfaces {
        let a = sensor.attach(interface, request, config.keep_attached)?;
        log::info!(
            "attached to {} ({} link: parsed from the {} header) at {} in {} mode{}{}",
            a.interface,
            match a.kind {
                LinkKind::Ethernet => "Ethernet",
                LinkKind::RawIp => "L3",
            },
            match a.kind {
                LinkKind::Ethernet => "Ethernet",
                LinkKind::RawIp => "IP",
            },
            a.hook_name(),
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
    if let Some(n) = sensor.verified_instructions() {
        log::info!("program loaded: the verifier processed {n} instructions");
    }
    for logger in sensor.loggers() {
        forward_program_logs(logger);
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
        prefixes: Prefixes::default(),
        samples: Vec::new(),
        clock: DetectorClock::new(),
        config,
        sensor,
        detector,
        classes: Vec::new(),
        last_error: None,
    }));
    let published = Published::new(poll(&shared));
    let counters = {
        let s = lock(&shared);
        web::ServerCounters {
            evicted: s.metrics.http_evicted.clone(),
            refused: s.metrics.http_refused.clone(),
        }
    };

    let app = web::router(published.clone(), &telemetry_path);
    let mut listeners = Vec::new();
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
        listeners.push((address, listener));
    }
    let mut server = tokio::spawn(web::serve(
        listeners,
        app,
        web::Limits::default(),
        counters,
        web_config,
    ));

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut poll_tick = tokio::time::interval(interval);
    let mut save_tick = tokio::time::interval(save_interval);
    poll_tick.tick().await;
    save_tick.tick().await;
    loop {
        tokio::select! {
            _ = poll_tick.tick() => published.publish(poll(&shared)),
            _ = save_tick.tick() => save(&shared),
            _ = sigint.recv() => { log::info!("SIGINT: stopping"); break; }
            _ = sigterm.recv() => { log::info!("SIGTERM: stopping"); break; }
            result = &mut server => bail!("HTTP server stopped: {result:?}"),
        }
    }
    server.abort();
    save(&shared);
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

fn lock(shared: &SharedState) -> std::sync::MutexGuard<'_, Shared> {
    // A panic while holding the lock is a bug; the data is still usable.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads every port counter (mmap, no syscall), steps the detector, renders the
/// metrics and returns the view HTTP serves until the next poll.
fn poll(shared: &SharedState) -> View {
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
    // Sources sampled since the last poll (for the ports flagged then), and the budget
    // (the rate cap) of the ports flagged now.
    let flagged: Vec<u16> = s.detector.flagged_ports().iter().map(|p| p.port).collect();
    s.samples.clear();
    s.sensor.drain_samples(&mut s.samples);
    s.prefixes.record(&s.samples, &flagged);
    let budget = SAMPLES_PER_SECOND * s.config.detector.interval.as_secs_f64();
    s.sensor
        .set_sample_budgets(&flagged, budget.clamp(1.0, f64::from(u32::MAX)) as u32);
    let exported = Metrics::exported_ports(&s.detector, &s.config.watch_ports, s.config.top_ports);
    s.recent.record(&s.detector, &exported, now.as_secs_f64());
    match s.sensor.read_interface_classes() {
        Ok(classes) => {
            s.classes = classes;
            s.last_error = None;
        }
        Err(e) => {
            s.metrics.poll_errors.inc();
            log::error!("reading packet classes: {e}");
            s.last_error = Some(e.to_string());
        }
    }
    timer.observe_duration();
    s.metrics.last_poll.set(unix_now().as_secs_f64());
    log_flagged(&s.detector);
    let render_timer = s.metrics.render_duration.start_timer();
    let text = s.metrics.render(&Snapshot {
        ports: &s.ports,
        classes: &s.classes,
        detector: &s.detector,
        breadth: &s.breadth,
        attachments: s.sensor.attachments(),
        watch_ports: &s.config.watch_ports,
        top_ports: s.config.top_ports,
        export_hold: s.config.export_hold,
        now,
    });
    // Observed after the render: it shows in the next poll's exposition.
    render_timer.observe_duration();
    let attachments = s.sensor.attachments();
    let gone: Vec<&str> = attachments
        .iter()
        .filter(|a| !a.interface_exists())
        .map(|a| a.interface.as_str())
        .collect();
    let problem = if attachments.is_empty() {
        Some("not attached to any interface".to_string())
    } else if !gone.is_empty() {
        Some(format!(
            "interface gone, program no longer attached: {}",
            gone.join(", ")
        ))
    } else {
        s.last_error
            .as_ref()
            .map(|error| format!("last map read failed: {error}"))
    };
    View {
        taken: Instant::now(),
        interval: s.config.detector.interval,
        metrics: text.into(),
        problem,
        attachments: View::describe_attachments(attachments),
        telemetry_path: s.config.telemetry_path.clone(),
        api: ApiData {
            detector: s.detector.clone(),
            breadth: s.breadth.view(),
            prefixes: s.prefixes.view(),
            recent: s.recent.clone(),
            ports: s.ports.clone(),
            exported,
            time: now.as_secs_f64(),
        },
    }
}

fn log_flagged(detector: &Detector) {
    if !log::log_enabled!(log::Level::Debug) {
        return;
    }
    for flagged in detector.flagged_ports() {
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
