//! `scan-agent run`, in two processes (issue 12; the design is in [`crate::privsep`]):
//! - [`run`], the attacher: validates, binds the listeners, loads and attaches the
//!   program, starts the worker and hands it the listeners and maps, then only watches
//!   interfaces and re-attaches; when the worker stops, it detaches (unless kept) and
//!   exits with the worker's status.
//! - [`worker`], without capabilities: polls the counters into the detector,
//!   publishes each poll's view for the HTTP server (`web`), saves state; on
//!   SIGINT/SIGTERM (or when the attacher is gone) it saves state and exits.
use std::{
    ffi::OsString,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use scan_common::{ClassCounts, PORTS};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    api::{PortTables, Recent},
    breadth::Breadth,
    config::AgentConfig,
    counters::Counters,
    detector::{Detector, DetectorState, StepOutcome},
    interfaces, limits,
    metrics::{Metrics, Snapshot},
    prefixes::{Prefixes, SAMPLES_PER_SECOND},
    privsep::{self, ToWorker, Update, WireAttachment},
    sensor::{AttachRequest, Attachment, LinkKind, Sensor},
    state,
    web::{self, ApiData, ApiParts, Published, View},
};

/// The worker's state.
struct Shared {
    config: AgentConfig,
    clock: DetectorClock,
    /// The maps, from the attacher.
    counters: Counters,
    /// What the attacher has attached (its last [`Update`]).
    attachments: Vec<Attachment>,
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
    /// The per-port tables published for the JSON API, refilled in place.
    tables: PortTables,
    /// The last packet-class counters read (kept when a read fails).
    /// Class counters per attached interface.
    classes: Vec<(String, ClassCounts)>,
    last_error: Option<String>,
    /// The first poll resumes instead of stepping: the time since the state was saved
    /// was not observed (no kept link was adopted).
    resume_first: bool,
}

/// Only the poll task (polls and saves) takes this lock; HTTP renders from the
/// published [`View`] (the exposition under a lock of its own, which polls never take).
type SharedState = Arc<Mutex<Shared>>;

/// The attacher's state.
struct Attacher {
    config: AgentConfig,
    sensor: Sensor,
    /// Interfaces (by index) whose attach failed, so the failure is logged once.
    attach_failures: Vec<u32>,
    reattaches: u64,
    /// The loads whose maps the worker has.
    sent_loads: Vec<u64>,
    /// The last update sent (its loads all marked known), to send only changes.
    last_sent: Option<Update>,
}

/// How long the attacher waits for the worker to save and exit after a stop signal
/// (the unit's TimeoutStopSec is 30 s).
const WORKER_STOP: Duration = Duration::from_secs(25);

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
    // Handled from the start: a stop signal during the attach is acted on once the
    // worker runs (it then saves and exits, and this process detaches).
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    if config.interfaces.is_empty() {
        let iface = default_route_interface().context(
            "no --iface given and no default route to take the interface from: pass --iface NAME",
        )?;
        log::info!("no --iface given: using {iface}, the default route's interface");
        config.interfaces.push(iface);
    }
    // The state file first: a path that cannot be saved to stops the agent before it
    // attaches anything (issue 14); a file that cannot be restored is moved aside and
    // learning starts afresh (issue 10), by the worker.
    state::check_writable(&config.state_file)?;
    // The web config too: TLS or auth that cannot work stops the start (the worker
    // loads it again, and watches it).
    web::WebConfigSource::new(config.web_config_file.clone())?;

    // Every listener before anything touches the kernel: a taken port leaves the
    // interfaces and bpffs untouched (issue 10).
    let mut listeners = Vec::new();
    for &address in &config.listen {
        let listener = std::net::TcpListener::bind(address).with_context(|| {
            format!(
                "cannot listen on {address}: is another agent running? choose another \
                 --web.listen-address"
            )
        })?;
        listeners.push(listener);
    }

    limits::raise_memlock();
    let mut sensor = Sensor::load(Some(&config.pin_path))?;
    sensor.set_debug(config.debug_program);
    sensor.set_per_interface_ports(config.per_interface_ports);
    let request = AttachRequest {
        hook: config.attach,
        xdp_mode: config.xdp_mode,
        multiprog: config.xdp_multiprog,
    };
    // Attach: the first thing that touches an interface. A configured interface that
    // does not exist yet is attached when it appears (see `reattach`).
    let mut all_adopted = true;
    let present = interfaces::present();
    for pattern in &config.interfaces {
        let matching: Vec<&interfaces::Present> = present
            .iter()
            .filter(|p| interfaces::matches(pattern, &p.name))
            .collect();
        if matching.is_empty() {
            all_adopted = false;
            log::warn!(
                "no interface {} {pattern} yet: the program is attached when one appears",
                if interfaces::is_pattern(pattern) {
                    "matches"
                } else {
                    "named"
                }
            );
        }
        for p in matching {
            if sensor.attachments().iter().any(|a| a.ifindex == p.index) {
                continue;
            }
            let a = sensor.attach(&p.name, request, config.keep_attached)?;
            all_adopted &= a.adopted;
            log_attached(&a, config.keep_attached);
        }
    }
    if let Some(n) = sensor.verified_instructions() {
        log::info!("program loaded: the verifier processed {n} instructions");
    }
    for logger in sensor.loggers() {
        forward_program_logs(logger);
    }

    // The worker: everything else, without capabilities. It gets the listeners (this
    // process keeps no copy: it never accepts a connection) and the maps.
    let interval = config.detector.interval;
    let (channel, worker_end) = privsep::channel()?;
    let mut worker = spawn_worker(worker_end)?;
    let mut attacher = Attacher {
        config,
        sensor,
        attach_failures: Vec::new(),
        reattaches: 0,
        sent_loads: Vec::new(),
        last_sent: None,
    };
    let start = attacher
        .update(listeners.len())
        .context("handing the maps to the worker")?;
    let start_fds = start.1;
    let message = ToWorker::Start {
        attacher: std::process::id(),
        listeners: listeners.len(),
        interfaces: attacher.config.interfaces.clone(),
        all_adopted,
        update: start.0.clone(),
    };
    let mut fds: Vec<BorrowedFd<'_>> = listeners.iter().map(|l| l.as_fd()).collect();
    fds.extend(start_fds.iter().map(|fd| fd.as_fd()));
    let sent = privsep::send(channel.as_fd(), &message, &fds);
    drop(fds);
    drop(start_fds);
    drop(listeners);
    if let Err(e) = sent {
        let _ = worker.start_kill();
        attacher.sensor.detach()?;
        return Err(e).context("starting the worker");
    }
    attacher.sent(start.0);
    attacher.sync_worker(channel.as_fd());

    let links_changed = Arc::new(tokio::sync::Notify::new());
    let notify = links_changed.clone();
    if let Err(e) = interfaces::watch(Arc::new(move || notify.notify_one())) {
        log::warn!("cannot watch link changes ({e}): interfaces are rechecked at every poll only");
    }
    let mut check_tick = tokio::time::interval(interval);
    check_tick.tick().await;
    let status = loop {
        tokio::select! {
            _ = check_tick.tick() => {
                reattach(&mut attacher);
                attacher.sync_worker(channel.as_fd());
            }
            _ = links_changed.notified() => {
                reattach(&mut attacher);
                attacher.sync_worker(channel.as_fd());
            }
            _ = sigint.recv() => break stop_worker(&mut worker, "SIGINT").await,
            _ = sigterm.recv() => break stop_worker(&mut worker, "SIGTERM").await,
            status = worker.wait() => {
                let status = status.context("waiting for the worker")?;
                if !status.success() {
                    log::error!("the worker exited unexpectedly ({status})");
                }
                break status;
            }
        }
    };
    attacher.sensor.detach()?;
    log::info!(
        "stopped; {}",
        if attacher.config.keep_attached {
            "the program stays attached through its pinned link"
        } else {
            "detached"
        }
    );
    if !status.success() {
        bail!("the worker exited with {status}");
    }
    Ok(())
}

/// Starts `/proc/self/exe worker <this run's arguments>` with the channel's other end
/// at fd [`privsep::WORKER_FD`]. `/proc/self/exe` is this very binary, also when a
/// package upgrade replaced the file.
fn spawn_worker(end: OwnedFd) -> Result<tokio::process::Child> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let Some(at) = args.iter().position(|a| a == "run") else {
        bail!("the worker is started from `scan-agent run` only");
    };
    let mut command = tokio::process::Command::new("/proc/self/exe");
    command
        .arg0(&args[0])
        .arg(privsep::WORKER_COMMAND)
        .args(&args[at + 1..])
        .stdin(std::process::Stdio::null())
        // The worker saves and exits on its own; this is for an error path of ours.
        .kill_on_drop(true);
    let raw = end.as_raw_fd();
    // SAFETY: dup2, fcntl and prctl are async-signal-safe and touch no memory of ours.
    unsafe {
        command.pre_exec(move || {
            if raw == privsep::WORKER_FD {
                // Already there: only the close-on-exec flag goes.
                if libc::fcntl(raw, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(raw, privsep::WORKER_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = command.spawn().context("starting the worker process")?;
    log::info!(
        "worker started (pid {}): it drops its capabilities, then serves HTTP",
        child.id().unwrap_or(0)
    );
    Ok(child)
}

/// Passes the stop signal on (a terminal or systemd signals both processes already;
/// `kill <attacher>` only this one) and waits, bounded, for the worker to save and exit.
async fn stop_worker(
    worker: &mut tokio::process::Child,
    signal_name: &str,
) -> std::process::ExitStatus {
    log::info!("{signal_name}: stopping");
    if let Some(pid) = worker.id() {
        // SAFETY: kill on our own child's pid (not reaped yet: we hold the Child).
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    match tokio::time::timeout(WORKER_STOP, worker.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            log::error!("waiting for the worker: {e}");
            std::os::unix::process::ExitStatusExt::from_raw(1 << 8)
        }
        Err(_) => {
            log::error!("the worker did not stop within {WORKER_STOP:?}: killing it");
            let _ = worker.kill().await;
            std::os::unix::process::ExitStatusExt::from_raw(1 << 8)
        }
    }
}

impl Attacher {
    /// The update that brings the worker to the sensor's state: the attachments, the
    /// re-attach count and the maps (new ones with their fds, at most `MAX_FDS` minus
    /// `other_fds`). The shared maps go with the first update only.
    fn update(&self, other_fds: usize) -> std::io::Result<(Update, Vec<OwnedFd>)> {
        let (layout, fds) = self.sensor.export(
            self.last_sent.is_none(),
            &self.sent_loads,
            privsep::MAX_FDS.saturating_sub(other_fds),
        );
        // Owned copies: the borrow of the sensor ends here.
        let fds = fds
            .into_iter()
            .map(|fd| fd.try_clone_to_owned())
            .collect::<std::io::Result<_>>()?;
        let update = Update {
            attachments: self
                .sensor
                .attachments()
                .iter()
                .map(WireAttachment::from)
                .collect(),
            reattaches: self.reattaches,
            layout,
        };
        Ok((update, fds))
    }

    /// Records `update` as sent.
    fn sent(&mut self, mut update: Update) {
        self.sent_loads = update.layout.loads.iter().map(|l| l.id).collect();
        for load in &mut update.layout.loads {
            load.new = false;
        }
        self.last_sent = Some(update);
    }

    /// Sends what changed since the last update (also new loads that did not fit).
    /// A failed send is logged: the worker is gone, which the main loop sees.
    fn sync_worker(&mut self, channel: BorrowedFd<'_>) {
        loop {
            let (update, fds) = match self.update(0) {
                Ok(update) => update,
                Err(e) => {
                    log::error!("cannot hand the new maps to the worker: {e}; retrying");
                    return;
                }
            };
            let complete = update.layout.loads.len() == self.sensor.loads();
            let mut known = update.clone();
            for load in &mut known.layout.loads {
                load.new = false;
            }
            if self.last_sent.as_ref() == Some(&known) {
                return;
            }
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|fd| fd.as_fd()).collect();
            if let Err(e) = privsep::send(channel, &ToWorker::Update(update.clone()), &borrowed) {
                log::error!("cannot update the worker: {e}");
                return;
            }
            self.sent(update);
            if complete {
                return;
            }
        }
    }
}

/// The worker (`scan-agent worker`, started by [`run`]): its capabilities are gone
/// already (`main` drops them first). Receives the start message, then serves.
pub fn worker(config: AgentConfig) -> Result<()> {
    // SIGTERM/SIGINT wait (pending) until `serve` handles them: one that arrives during
    // the start must save and exit 0, not kill the worker (every thread started from
    // here on inherits the mask; `serve` unblocks them on this thread).
    set_stop_signals_blocked(true);
    let channel = privsep::worker_end()?;
    let (message, fds) = privsep::receive(channel.as_fd()).context("waiting for the attacher")?;
    let ToWorker::Start {
        attacher,
        listeners,
        interfaces,
        all_adopted,
        update,
    } = message
    else {
        bail!("the attacher's first message was not the start");
    };
    // The parent-death signal was set after the fork: had the attacher died before,
    // this process was re-parented already.
    if std::os::unix::process::parent_id() != attacher {
        bail!("the attacher (pid {attacher}) is gone");
    }
    if fds.len() < listeners {
        bail!(
            "the attacher sent {} fds, fewer than {listeners} listeners",
            fds.len()
        );
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(serve(
            config,
            channel,
            WorkerStart {
                attacher,
                listeners,
                interfaces,
                all_adopted,
                update,
                fds,
            },
        ))
}

struct WorkerStart {
    attacher: u32,
    listeners: usize,
    interfaces: Vec<String>,
    all_adopted: bool,
    update: Update,
    fds: Vec<OwnedFd>,
}

/// Blocks or unblocks SIGTERM and SIGINT on the calling thread.
fn set_stop_signals_blocked(blocked: bool) {
    // SAFETY: sigset operations on a local set; pthread_sigmask on this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let how = if blocked {
            libc::SIG_BLOCK
        } else {
            libc::SIG_UNBLOCK
        };
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// Runs on the thread that called [`worker`] (`block_on`).
async fn serve(mut config: AgentConfig, channel: OwnedFd, start: WorkerStart) -> Result<()> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    // Handled from here on; one that came during the start is delivered now.
    set_stop_signals_blocked(false);
    config.interfaces = start.interfaces;
    let web_config = Arc::new(web::WebConfigSource::new(config.web_config_file.clone())?);
    let self_metrics = Metrics::new().context("registering metrics")?;
    let saved = restore_state(&config, &self_metrics);
    let telemetry_path = config.telemetry_path.clone();
    let attacher = start.attacher;
    let mut fds = start.fds;
    let map_fds = fds.split_off(start.listeners);
    let mut listeners = Vec::new();
    for (fd, &address) in fds.into_iter().zip(&config.listen) {
        let listener = std::net::TcpListener::from(fd);
        listener.set_nonblocking(true)?;
        listeners.push((address, tokio::net::TcpListener::from_std(listener)?));
    }
    let mut counters = Counters::default();
    counters.import(&start.update.layout, map_fds)?;
    let attachments = start
        .update
        .attachments
        .iter()
        .map(Attachment::from)
        .collect();
    self_metrics.reattaches.inc_by(start.update.reattaches);
    let all_adopted = start.all_adopted;
    let mut resume_first = false;
    let detector = match saved {
        Some(saved) => {
            if all_adopted {
                log::info!(
                    "restored baselines from {}; the kept link counted throughout",
                    config.state_file.display()
                );
            } else {
                // Issue 10: the program was not attached since the state was saved (a
                // restart without a kept link, or a reboot that lost the pins): that time
                // is unobserved, not silence. The first poll resumes (no rate, baseline
                // or warm-up update for the gap) instead of stepping.
                resume_first = true;
                log::info!(
                    "restored baselines from {}; the time the program was not attached is \
                     not learned from",
                    config.state_file.display()
                );
            }
            Detector::restore(config.detector.clone(), saved)
        }
        None => Detector::new(config.detector.clone()),
    };
    let interval = config.detector.interval;
    let save_interval = config.save_interval;
    let shared = Arc::new(Mutex::new(Shared {
        metrics: self_metrics,
        ports: vec![0; PORTS as usize],
        recent: Recent::new(interval),
        tables: PortTables::default(),
        breadth: Breadth::new(&config.detector),
        prefixes: Prefixes::default(),
        samples: Vec::new(),
        clock: DetectorClock::new(),
        config,
        counters,
        attachments,
        detector,
        classes: Vec::new(),
        last_error: None,
        resume_first,
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
    for (address, _) in &listeners {
        log::info!("serving http://{address}{telemetry_path}");
    }
    let mut saver = Saver::default();
    let mut updates = receive_updates(channel);
    let mut server = tokio::spawn(web::serve(
        listeners,
        app,
        web::Limits::default(),
        counters,
        web_config,
    ));

    let mut poll_tick = tokio::time::interval(interval);
    let mut save_tick = tokio::time::interval(save_interval);
    poll_tick.tick().await;
    save_tick.tick().await;
    let mut attacher_gone = None;
    loop {
        tokio::select! {
            _ = poll_tick.tick() => published.publish(poll(&shared)),
            received = updates.recv() => match received {
                Some(Ok((ToWorker::Update(update), fds))) => {
                    apply(&mut lock(&shared), &update, fds)?;
                }
                Some(Ok((ToWorker::Start { .. }, _))) => {
                    log::warn!("a second start message from the attacher: ignored");
                }
                Some(Err(e)) => { attacher_gone = Some(e.to_string()); break; }
                None => { attacher_gone = Some("its channel closed".into()); break; }
            },
            _ = save_tick.tick() => saver.save(&shared),
            _ = sigint.recv() => { log::info!("SIGINT: saving the state"); break; }
            _ = sigterm.recv() => {
                // The parent-death signal is SIGTERM too.
                if std::os::unix::process::parent_id() != attacher {
                    attacher_gone = Some("parent-death signal".into());
                } else {
                    log::info!("SIGTERM: saving the state");
                }
                break;
            }
            result = &mut server => bail!("HTTP server stopped: {result:?}"),
        }
    }
    if let Some(why) = &attacher_gone {
        log::error!("the attacher (pid {attacher}) is gone ({why}): saving the state");
    }
    server.abort();
    saver.save(&shared);
    if attacher_gone.is_some() {
        bail!("the attacher is gone: state saved, stopped");
    }
    Ok(())
}

/// Applies an update from the attacher: new maps, renamed or gone loads, attachments.
fn apply(s: &mut Shared, update: &Update, fds: Vec<OwnedFd>) -> Result<()> {
    s.counters
        .import(&update.layout, fds)
        .context("applying the attacher's update")?;
    s.attachments = update.attachments.iter().map(Attachment::from).collect();
    let counted = s.metrics.reattaches.get();
    s.metrics
        .reattaches
        .inc_by(update.reattaches.saturating_sub(counted));
    Ok(())
}

type Received = Result<(ToWorker, Vec<OwnedFd>), privsep::PrivsepError>;

/// Reads the channel on a thread of its own (blocking `recvmsg`); the last item is the
/// error that ended it (end of file: the attacher is gone).
fn receive_updates(channel: OwnedFd) -> tokio::sync::mpsc::UnboundedReceiver<Received> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let spawned = std::thread::Builder::new()
        .name("attacher-channel".into())
        .spawn(move || {
            loop {
                let received = privsep::receive(channel.as_fd());
                let end = received.is_err();
                if tx.send(received).is_err() || end {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the channel thread: {e}");
    }
    rx
}

fn lock(shared: &SharedState) -> std::sync::MutexGuard<'_, Shared> {
    // A panic while holding the lock is a bug; the data is still usable.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads every port counter (mmap, no syscall), steps the detector, captures what the
/// metrics export and returns the view HTTP serves until the next poll.
fn poll(shared: &SharedState) -> View {
    let mut guard = lock(shared);
    let s = &mut *guard;
    let timer = s.metrics.poll_duration.start_timer();
    s.counters.read_ports(&mut s.ports);
    let now = s.clock.now();
    if std::mem::take(&mut s.resume_first) {
        s.detector.resume(now, &s.ports);
    } else {
        s.detector.step(now, &s.ports);
    }
    count_detector_events(s);
    let mut taken = Vec::new();
    s.counters.take_sketches(&mut taken);
    for idle in s.breadth.step(now, taken) {
        s.counters.free_sketch_slot(idle);
    }
    // Sources sampled since the last poll (for the ports flagged then), and the budget
    // (the rate cap) of the ports flagged now.
    let flagged: Vec<u16> = s.detector.flagged_ports().iter().map(|p| p.port).collect();
    s.samples.clear();
    s.counters.drain_samples(&mut s.samples);
    s.prefixes.record(&s.samples, &flagged);
    let budget = SAMPLES_PER_SECOND * s.config.detector.interval.as_secs_f64();
    s.counters
        .set_sample_budgets(&flagged, budget.clamp(1.0, f64::from(u32::MAX)) as u32);
    let exported = Metrics::exported_ports(&s.detector, &s.config.watch_ports, s.config.top_ports);
    s.recent.record(&s.detector, &exported, now.as_secs_f64());
    match s.counters.read_syn_no_slot() {
        Ok(total) => {
            let before = s.metrics.syns_without_slot.get();
            if total > before {
                if before == 0 {
                    log::error!(
                        "SYNs found no slot in the port map (a CPU id beyond its {} slices): \
                         they are not counted by port; report this with the content of {}",
                        crate::cpus::port_map_slices().unwrap_or(0),
                        crate::cpus::POSSIBLE
                    );
                }
                s.metrics.syns_without_slot.inc_by(total - before);
            }
        }
        Err(e) => {
            s.metrics.poll_errors.inc();
            log::debug!("reading the no-slot counter: {e}");
        }
    }
    match s.counters.read_interface_classes() {
        Ok(classes) => {
            s.classes = classes;
            s.last_error = None;
        }
        Err(e) => {
            s.metrics.poll_errors.inc();
            // Logged when it starts, not at every poll.
            if s.last_error.is_none() {
                log::error!("reading packet classes: {e}");
            }
            s.last_error = Some(e.to_string());
        }
    }
    timer.observe_duration();
    log_flagged(&s.detector);
    // Rendered by the first scrape of this view, if any.
    let exposition = s.metrics.exposition(&Snapshot {
        ports: &s.ports,
        classes: &s.classes,
        detector: &s.detector,
        breadth: &s.breadth,
        attachments: &s.attachments,
        configured: &s.config.interfaces,
        watch_ports: &s.config.watch_ports,
        top_ports: s.config.top_ports,
        export_hold: s.config.export_hold,
        now,
        last_poll: unix_now().as_secs_f64(),
    });
    let attachments = &s.attachments;
    // Attached interfaces that vanished (until the next re-attach check forgets them),
    // and configured names with no program on them (gone, or not created yet).
    let mut gone: Vec<&str> = attachments
        .iter()
        .filter(|a| !a.interface_exists())
        .map(|a| a.interface.as_str())
        .collect();
    gone.extend(
        s.config
            .interfaces
            .iter()
            .filter(|name| !interfaces::is_pattern(name))
            .filter(|name| !attachments.iter().any(|a| a.interface == **name))
            .map(String::as_str),
    );
    let problem = if !gone.is_empty() {
        Some(format!(
            "interface gone or not there, program not attached: {}",
            gone.join(", ")
        ))
    } else if attachments.is_empty() {
        Some("not attached to any interface".to_string())
    } else {
        s.last_error
            .as_ref()
            .map(|error| format!("last map read failed: {error}"))
    };
    View {
        taken: Instant::now(),
        interval: s.config.detector.interval,
        metrics: exposition,
        problem,
        attachments: View::describe_attachments(attachments),
        telemetry_path: s.config.telemetry_path.clone(),
        api: ApiData::new(
            &s.detector,
            &s.ports,
            &mut s.tables,
            ApiParts {
                breadth: s.breadth.view(),
                prefixes: s.prefixes.view(),
                recent: s.recent.clone(),
                exported,
                time: now.as_secs_f64(),
            },
        ),
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

/// Loads the saved state. Never fatal: a file that cannot be loaded is moved aside,
/// warned about and counted (`scan_agent_state_restore_failures_total`), and learning
/// starts afresh; a bad cache file never stops the agent from watching the network.
fn restore_state(config: &AgentConfig, metrics: &Metrics) -> Option<DetectorState> {
    let path = &config.state_file;
    let stale = state::remove_stale_temp_files(path);
    if stale > 0 {
        log::info!(
            "removed {stale} temporary file(s) left by an interrupted save of {}",
            path.display()
        );
    }
    match state::load(path) {
        Ok(Some(saved)) => Some(saved),
        Ok(None) => {
            log::info!(
                "no state file at {}: learning baselines from scratch (warm-up {})",
                path.display(),
                humantime::format_duration(config.detector.warmup)
            );
            None
        }
        Err(e) => {
            metrics.state_restore_failures.inc();
            let moved = match state::quarantine(path) {
                Ok(to) => format!("moved it to {}", to.display()),
                Err(move_error) => format!("could not move it aside ({move_error})"),
            };
            log::warn!(
                "{}; {moved}; learning baselines from scratch (warm-up {})",
                crate::error_chain(&e),
                humantime::format_duration(config.detector.warmup)
            );
            None
        }
    }
}

/// The one place that re-attaches (issue 10): compares the interfaces that exist with
/// what is attached, by ifindex. A deleted interface took the program with it: forgotten.
/// A renamed one keeps it. A configured name or pattern that appears (created after the
/// start, or deleted and recreated) is attached. Kept links whose pins were removed are
/// pinned again. Called on every link notification and at every poll.
fn reattach(s: &mut Attacher) {
    let present = interfaces::present();
    for a in s.sensor.attachments().to_vec() {
        match present.iter().find(|p| p.index == a.ifindex) {
            None => {
                log::warn!(
                    "{} (index {}) is gone, and the program with it; it is attached again \
                     when the interface returns",
                    a.interface,
                    a.ifindex
                );
                s.sensor.forget(a.ifindex);
            }
            Some(p) if p.name != a.interface => {
                log::info!(
                    "{} (index {}) is now called {}; the program stays attached",
                    a.interface,
                    a.ifindex,
                    p.name
                );
                s.sensor.renamed(a.ifindex, &p.name);
            }
            Some(_) => {}
        }
    }
    for path in s.sensor.repin() {
        log::warn!(
            "the pin {} was removed under the running agent: pinned again",
            path.display()
        );
    }
    for p in present
        .iter()
        .filter(|p| interfaces::wanted(&s.config.interfaces, &p.name))
    {
        if s.sensor.attachments().iter().any(|a| a.ifindex == p.index) {
            continue;
        }
        let request = AttachRequest {
            hook: s.config.attach,
            xdp_mode: s.config.xdp_mode,
            multiprog: s.config.xdp_multiprog,
        };
        match s.sensor.attach(&p.name, request, s.config.keep_attached) {
            Ok(a) => {
                s.attach_failures.retain(|&index| index != p.index);
                s.reattaches += 1;
                log_attached(&a, s.config.keep_attached);
            }
            Err(e) => {
                if !s.attach_failures.contains(&p.index) {
                    s.attach_failures.push(p.index);
                    log::warn!(
                        "cannot attach to {} (index {}): {e}; retrying at every poll",
                        p.name,
                        p.index
                    );
                }
            }
        }
    }
}

/// Exports the detector's totals of counter resets and clock steps, and logs each event
/// once.
fn count_detector_events(s: &mut Shared) {
    let resets = s.detector.counter_resets_total();
    s.metrics
        .counter_resets
        .inc_by(resets.saturating_sub(s.metrics.counter_resets.get()));
    let steps = s.detector.clock_steps_total();
    s.metrics
        .clock_steps
        .inc_by(steps.saturating_sub(s.metrics.clock_steps.get()));
    match s.detector.last_outcome() {
        StepOutcome::Updated { counter_resets } if counter_resets > 0 => {
            log::warn!(
                "{counter_resets} port counter(s) went backwards (the maps were recreated, e.g. \
                 their pins were removed): their new values are taken as the deltas"
            );
        }
        StepOutcome::TimeWentBackwards { by } => {
            log::warn!(
                "the clock is {} behind the last reading (stepped back?): this reading becomes \
                 the reference, nothing is learned from it",
                humantime::format_duration(Duration::from_secs(by.as_secs()))
            );
        }
        _ => {}
    }
}

/// Saves the state when it changed since the last successful save (no flash wear while
/// nothing happens); a failed save is retried at the next tick.
#[derive(Default)]
struct Saver {
    /// Fingerprint of the bytes last written (not the state itself: with every port active
    /// that is 2 MiB kept for a comparison). The encoding is deterministic, so equal states
    /// give equal bytes; a changed state passes for unchanged only on a 64-bit collision.
    last_saved: Option<u64>,
}

impl Saver {
    fn save(&mut self, shared: &SharedState) {
        use std::hash::{Hash, Hasher};
        // Encoding and fsync happen outside the lock so polls and scrapes do not wait.
        let (path, snapshot) = {
            let s = lock(shared);
            (s.config.state_file.clone(), s.detector.snapshot())
        };
        let encoded = state::encode(&path, &snapshot);
        drop(snapshot);
        let written = encoded.and_then(|bytes| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut hasher);
            let fingerprint = hasher.finish();
            if self.last_saved == Some(fingerprint) {
                return Ok(None);
            }
            state::write(&path, &bytes).map(|written| Some((written, fingerprint)))
        });
        match written {
            Ok(None) => {}
            Ok(Some((bytes, fingerprint))) => {
                lock(shared).metrics.state_file_bytes.set(bytes as i64);
                self.last_saved = Some(fingerprint);
            }
            Err(e) => {
                lock(shared).metrics.state_save_errors.inc();
                log::error!("{}", crate::error_chain(&e));
            }
        }
    }
}

/// Logs a new attachment: where, how, and whether it was adopted or will be kept.
fn log_attached(a: &crate::sensor::Attachment, keep: bool) {
    log::info!(
        "attached to {} (index {}, {} link: parsed from the {} header) at {} in {} mode{}{}",
        a.interface,
        a.ifindex,
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
        if keep {
            "; it stays attached when the agent stops"
        } else {
            ""
        },
    );
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
