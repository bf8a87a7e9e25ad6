//! Command line and config file. Every `run` setting is a flag and a key of the
//! TOML file given by `--config`; a flag wins over the file, the file over the default.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::{
    detector::{ConfigError as DetectorConfigError, DetectorConfig},
    input::{self, InputError},
    sensor::{HookChoice, ModeChoice, MultiprogChoice},
};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9745";
pub const DEFAULT_TELEMETRY_PATH: &str = "/metrics";
/// Paths the agent serves besides the telemetry path.
pub const RESERVED_PATHS: &[&str] = &["/", "/healthz", "/api/v1/ports"];
pub const DEFAULT_STATE_FILE: &str = "/var/lib/scan-agent/state.bin";
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/scan-agent";
/// Ports scanned most often (DShield/GreyNoise top lists: remote shells, file
/// sharing, databases, remote desktops, web admin): always exported.
pub const DEFAULT_WATCH_PORTS: &[u16] = &[
    22, 23, 25, 80, 135, 139, 443, 445, 1433, 2323, 3306, 3389, 5432, 5900, 6379, 8080, 8443, 9200,
    27017,
];
pub const DEFAULT_TOP_PORTS: usize = 20;
pub const DEFAULT_SAVE_INTERVAL: Duration = Duration::from_secs(120);
/// Largest config file read (a real one is a few hundred bytes).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Most ports exported by `--top-ports` (each is a handful of series).
pub const MAX_TOP_PORTS: usize = 1000;
/// Most ports in `--watch-ports` (each is a handful of series).
pub const MAX_WATCH_PORTS: usize = 1000;
/// Shortest poll interval: shorter only burns a core re-reading the counters.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Longest poll interval.
pub const MAX_INTERVAL: Duration = Duration::from_secs(86_400);
/// Shortest save interval: every save is a write and two fsyncs.
pub const MIN_SAVE_INTERVAL: Duration = Duration::from_secs(10);
/// Longest save interval.
pub const MAX_SAVE_INTERVAL: Duration = Duration::from_secs(86_400);
/// Windows and warm-up stay within a century (so sums and products of them stay far
/// from `Duration`'s limits).
pub const MAX_WINDOW: Duration = Duration::from_secs(3_155_760_000); // humantime's 100years
/// Longest interface name the kernel takes (`IFNAMSIZ` 16, with the NUL).
pub const MAX_IFACE_LEN: usize = 15;
pub const DEFAULT_EXPORT_HOLD: Duration = Duration::from_secs(3600);

#[derive(Parser, Debug)]
#[command(
    name = "scan-agent",
    version,
    about = "Counts TCP SYNs per destination port with XDP, learns what is normal for \
             each port, and exports surge ratios as Prometheus metrics"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Attach to interfaces, count, detect surges, serve /metrics (the daemon).
    Run(Box<RunArgs>),
    /// Preflight: kernel, BTF, capabilities, bpffs and interfaces.
    Check(CheckArgs),
    /// Run a pcap/pcapng capture through the real XDP program (private maps) and
    /// report per-port SYNs, packet classes and surge episodes on capture time.
    Replay(ReplayArgs),
    /// Detach a program kept attached by `run --keep-attached`, and remove the
    /// pinned maps (this discards the kernel counts).
    Detach(DetachArgs),
    /// Live terminal view of a running agent (its JSON API): ports by surge ratio,
    /// SYN/s, normal, episode age, sparklines. Keys: s sort, / filter, p pause, q quit.
    Top(crate::top::TopArgs),
    /// Write the man pages and shell completions generated from these definitions
    /// (used by packaging).
    #[command(hide = true)]
    GenerateDocs(crate::docs::DocsArgs),
    /// The unprivileged part of `run` (HTTP, polls, state), started by `run` itself
    /// with the same arguments and its channel at fd 3 (see `privsep`).
    #[command(hide = true)]
    Worker(Box<RunArgs>),
}

/// Detector flags shared by `run` and `replay`.
#[derive(Args, Debug, Default, Clone)]
pub struct DetectorArgs {
    /// Map read and detector step period [default: 5s]
    #[arg(long, allow_hyphen_values = true, value_parser = parse_duration)]
    pub interval: Option<Duration>,
    /// Time constant of the short-term SYN rate [default: 1m]
    #[arg(long, allow_hyphen_values = true, value_parser = parse_duration)]
    pub short_window: Option<Duration>,
    /// Time constant of the learned baseline rate [default: 6h]
    #[arg(long, allow_hyphen_values = true, value_parser = parse_duration)]
    pub baseline_window: Option<Duration>,
    /// History needed before any port is flagged [default: 15m]
    #[arg(long, allow_hyphen_values = true, value_parser = parse_duration)]
    pub warmup: Option<Duration>,
    /// Surge ratio at or above which a port is flagged [default: 3]
    #[arg(long, allow_negative_numbers = true)]
    pub surge_threshold: Option<f64>,
    /// SYN/s added to rate and baseline in the ratio, so quiet ports are not flagged
    /// for a handful of SYNs [default: 0.1]
    #[arg(long, allow_negative_numbers = true)]
    pub floor: Option<f64>,
    /// Time constant with which a flagged port's baseline still learns, so a lasting
    /// new level becomes normal after hours [default: 12h]
    #[arg(long, allow_hyphen_values = true, value_parser = parse_duration)]
    pub surge_adapt_window: Option<Duration>,
}

#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// TOML file with any of the settings below (keys are the flag names with `_`)
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Interface to attach to; repeat for several [default: the default route's]
    #[arg(long = "iface")]
    pub iface: Vec<String>,
    /// auto: native (driver) XDP, falling back to SKB (generic) mode [default: auto]
    #[arg(long, value_enum)]
    pub xdp_mode: Option<ModeChoice>,
    /// auto: XDP where the hook is free, TCX ingress where another XDP program
    /// (not a libxdp dispatcher) holds it; xdp: XDP only; tc: TCX ingress only
    /// (Linux >= 6.6) [default: auto]
    #[arg(long, value_enum)]
    pub attach: Option<HookChoice>,
    /// on: XDP through a libxdp dispatcher (join the interface's, or make one that
    /// xdp-filter, xdp-loader and other libxdp users can join); off: XDP alone on
    /// the hook [default: off]
    #[arg(long, value_enum)]
    pub xdp_multiprog: Option<MultiprogChoice>,
    /// One port map per interface instead of one shared by all (costs
    /// possible CPUs x 512 KiB of kernel memory per interface)
    #[arg(long)]
    pub per_interface_ports: bool,
    /// Address of the HTTP server for /metrics, /healthz, / and /api/v1; repeat for
    /// several (`--listen` is an alias) [default: 127.0.0.1:9745]
    #[arg(
        long = "web.listen-address",
        visible_alias = "listen",
        value_name = "ADDRESS"
    )]
    pub listen: Vec<SocketAddr>,
    /// Path under which the metrics are served [default: /metrics]
    #[arg(long = "web.telemetry-path", value_name = "PATH")]
    pub telemetry_path: Option<String>,
    /// exporter-toolkit web configuration (YAML): TLS, client certificates, basic auth,
    /// response headers; re-read when it or a file it names changes [default: none:
    /// plain HTTP]
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,
    #[command(flatten)]
    pub detector: DetectorArgs,
    /// Ports always exported, comma-separated [default: the ports scanned most
    /// often: 22,23,25,80,135,139,443,445,1433,2323,3306,3389,5432,5900,6379,8080,8443,9200,27017]
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true, value_parser = parse_port)]
    pub watch_ports: Option<Vec<u16>>,
    /// Also export the K active ports with the highest surge ratio [default: 20]
    #[arg(long, allow_negative_numbers = true, value_parser = parse_top_ports)]
    pub top_ports: Option<usize>,
    /// A port keeps its series this long after it was last in the watch list or the
    /// top set, so its counter does not flap in and out of existence [default: 1h]
    #[arg(long, value_parser = parse_duration)]
    pub export_hold: Option<Duration>,
    /// Where baselines are saved (atomically) and restored from [default:
    /// /var/lib/scan-agent/state.bin]
    #[arg(long)]
    pub state_file: Option<PathBuf>,
    /// How often the state file is written, besides at shutdown [default: 2m]
    #[arg(long, allow_hyphen_values = true, value_parser = parse_duration)]
    pub save_interval: Option<Duration>,
    /// bpffs directory for the pinned maps (and kept links) [default: /sys/fs/bpf/scan-agent]
    #[arg(long)]
    pub pin_path: Option<PathBuf>,
    /// Leave the program attached (pinned link) when the agent stops, so no SYN goes
    /// uncounted while it is down or upgraded; the next start adopts it
    #[arg(long)]
    pub keep_attached: bool,
    /// Log every packet's parse outcome from the XDP program (debugging only: costly)
    #[arg(long)]
    pub debug_program: bool,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Interfaces to check [default: the default route's]
    #[arg(long = "iface")]
    pub iface: Vec<String>,
    /// bpffs directory the agent would pin to
    #[arg(long, default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// Really attach (then detach) the program in this mode to learn whether the
    /// driver takes it; some drivers reset the link when XDP is attached natively
    #[arg(long, value_enum)]
    pub try_attach: Option<ModeChoice>,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// A pcap or pcapng file with Ethernet frames (- reads standard input, e.g. from
    /// `tcpdump -w -`)
    pub file: PathBuf,
    /// Output format
    #[arg(long, value_enum, default_value_t = ReplayFormat::Table)]
    pub format: ReplayFormat,
    #[command(flatten)]
    pub detector: DetectorArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayFormat {
    Table,
    Json,
}

#[derive(Args, Debug)]
pub struct DetachArgs {
    /// bpffs directory of the pins
    #[arg(long, default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.trim_start().starts_with('-') {
        return Err("a duration cannot be negative: write one such as 5s, 90s, 10m or 6h".into());
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{e}: write a duration such as 5s, 90s, 10m or 6h"))
}

fn parse_top_ports(text: &str) -> Result<usize, String> {
    text.trim()
        .parse::<usize>()
        .ok()
        .filter(|&k| k <= MAX_TOP_PORTS)
        .ok_or_else(|| {
            format!("must be a whole number from 0 to {MAX_TOP_PORTS}, e.g. {DEFAULT_TOP_PORTS}")
        })
}

fn parse_port(text: &str) -> Result<u16, String> {
    text.trim().parse::<u16>().map_err(|_| {
        format!("{text:?} is not a port: ports are whole numbers from 0 to 65535, e.g. 22,443")
    })
}

/// The `--config` file: the same settings as `run`'s flags.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    iface: Option<Vec<String>>,
    xdp_mode: Option<ModeChoice>,
    attach: Option<HookChoice>,
    xdp_multiprog: Option<MultiprogChoice>,
    per_interface_ports: Option<bool>,
    #[serde(alias = "listen")]
    web_listen_address: Option<Vec<SocketAddr>>,
    web_telemetry_path: Option<String>,
    web_config_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde_opt")]
    interval: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    short_window: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    baseline_window: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    warmup: Option<Duration>,
    surge_threshold: Option<f64>,
    floor: Option<f64>,
    #[serde(default, with = "humantime_serde_opt")]
    surge_adapt_window: Option<Duration>,
    watch_ports: Option<Vec<u16>>,
    top_ports: Option<usize>,
    #[serde(default, with = "humantime_serde_opt")]
    export_hold: Option<Duration>,
    state_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde_opt")]
    save_interval: Option<Duration>,
    pin_path: Option<PathBuf>,
    keep_attached: Option<bool>,
    debug_program: Option<bool>,
}

mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// What a TOML value may be, so a number can be told apart from a bad string.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Integer(i64),
        Float(f64),
        Other(toml::Value),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        use serde::de::Error as _;
        let Some(raw) = Option::<Raw>::deserialize(d)? else {
            return Ok(None);
        };
        let number = match raw {
            Raw::Text(t) => {
                if t.trim_start().starts_with('-') {
                    return Err(D::Error::custom(format!(
                        "{t:?}: a duration cannot be negative; write one such as \"5s\" or \"6h\""
                    )));
                }
                return humantime::parse_duration(&t).map(Some).map_err(|e| {
                    D::Error::custom(format!(
                        "{t:?}: {e}; write a duration such as \"5s\" or \"6h\""
                    ))
                });
            }
            Raw::Integer(n) => n.to_string(),
            Raw::Float(x) => x.to_string(),
            Raw::Other(v) => {
                return Err(D::Error::custom(format!(
                    "{v} is not a duration; write a quoted duration with a unit such as \"5s\" or \"6h\""
                )));
            }
        };
        Err(D::Error::custom(format!(
            "{number} has no unit; write a quoted duration with its unit, e.g. \"{number}s\" \
             (seconds), \"{number}ms\" or \"{number}m\""
        )))
    }
}

/// Every setting of `run`, resolved and validated.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub interfaces: Vec<String>,
    pub xdp_mode: ModeChoice,
    pub attach: HookChoice,
    pub xdp_multiprog: MultiprogChoice,
    pub per_interface_ports: bool,
    /// Where the HTTP server listens (at least one address).
    pub listen: Vec<SocketAddr>,
    pub telemetry_path: String,
    /// `--web.config.file`.
    pub web_config_file: Option<PathBuf>,
    pub detector: DetectorConfig,
    pub watch_ports: Vec<u16>,
    pub top_ports: usize,
    pub export_hold: Duration,
    pub state_file: PathBuf,
    pub save_interval: Duration,
    pub pin_path: PathBuf,
    pub keep_attached: bool,
    pub debug_program: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Read(#[from] InputError),
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let bytes = input::read_regular(path, input::CONFIG, MAX_CONFIG_BYTES)?;
        Self::parse(path, &bytes)
    }

    /// Parses the bytes of a config file (`path` names it in errors): the loader's
    /// whole parser, whatever the bytes (a fuzz target feeds it arbitrary input).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, ConfigError> {
        let text = std::str::from_utf8(bytes).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: format!("it is not UTF-8 text ({e}); a config file is TOML text"),
        })?;
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }
}

/// Flags over file over defaults, then checks that the values make sense together.
pub fn resolve_detector(
    flags: &DetectorArgs,
    file: &FileConfig,
) -> Result<DetectorConfig, ConfigError> {
    let d = DetectorConfig::default();
    let config = DetectorConfig {
        interval: flags.interval.or(file.interval).unwrap_or(d.interval),
        short_window: flags
            .short_window
            .or(file.short_window)
            .unwrap_or(d.short_window),
        baseline_window: flags
            .baseline_window
            .or(file.baseline_window)
            .unwrap_or(d.baseline_window),
        warmup: flags.warmup.or(file.warmup).unwrap_or(d.warmup),
        surge_threshold: flags
            .surge_threshold
            .or(file.surge_threshold)
            .unwrap_or(d.surge_threshold),
        floor: flags.floor.or(file.floor).unwrap_or(d.floor),
        surge_adapt_window: flags
            .surge_adapt_window
            .or(file.surge_adapt_window)
            .unwrap_or(d.surge_adapt_window),
    };
    validate_detector(&config)?;
    Ok(config)
}

/// One duration's allowed range, checked before anything uses it, so that no later
/// sum or product of settings can overflow.
fn check_duration(
    flag: &str,
    value: Duration,
    min: Duration,
    max: Duration,
    example: &str,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        let human = |d: Duration| humantime::format_duration(d).to_string();
        let min = if min.is_zero() {
            "0".to_string()
        } else {
            human(min)
        };
        return Err(ConfigError::Invalid(format!(
            "{flag} (config key `{key}`) is {value}, outside the allowed range {min} to {max}; \
             e.g. {flag} {example}",
            key = flag.trim_start_matches('-').replace('-', "_"),
            value = human(value),
            max = human(max),
        )));
    }
    Ok(())
}

fn validate_detector(c: &DetectorConfig) -> Result<(), ConfigError> {
    // Ranges first: they bound every later computation on these values.
    check_duration("--interval", c.interval, MIN_INTERVAL, MAX_INTERVAL, "5s")?;
    for (flag, value, example) in [
        ("--short-window", c.short_window, "1m"),
        ("--baseline-window", c.baseline_window, "6h"),
        ("--warmup", c.warmup, "15m"),
        ("--surge-adapt-window", c.surge_adapt_window, "1day"),
    ] {
        check_duration(flag, value, Duration::ZERO, MAX_WINDOW, example)?;
    }
    // The detector's own rules, prefixed with the flag (and config key) that sets the value.
    c.validate().map_err(|e| {
        let flag = match &e {
            DetectorConfigError::ZeroDuration { name, .. } => {
                format!("--{}", name.replace(' ', "-"))
            }
            DetectorConfigError::WindowsOrder { .. } => "--short-window, --baseline-window".into(),
            DetectorConfigError::Threshold(_) => "--surge-threshold".into(),
            DetectorConfigError::Floor(_) => "--floor".into(),
        };
        ConfigError::Invalid(format!("{flag}: {e}"))
    })?;
    // The agent's own rule: the short window must span at least one poll.
    if c.short_window < c.interval {
        return Err(ConfigError::Invalid(format!(
            "--short-window ({}) must be at least --interval ({})",
            humantime::format_duration(c.short_window),
            humantime::format_duration(c.interval)
        )));
    }
    Ok(())
}

/// Interface names as the kernel's `dev_valid_name` takes them: 1 to 15 bytes, not `.`
/// or `..`, no `/`, `:` or white space; each given once. A `*` is kept for patterns.
pub fn validate_interfaces(names: &[String]) -> Result<(), ConfigError> {
    let bad = |name: &str, why: &str| {
        ConfigError::Invalid(format!(
            "--iface {name:?} is not a valid interface name: {why}; give a name as `ip link` \
             lists it, e.g. --iface eth0"
        ))
    };
    for (i, name) in names.iter().enumerate() {
        if name.is_empty() {
            return Err(bad(name, "it is empty"));
        }
        if name.len() > MAX_IFACE_LEN {
            return Err(bad(
                name,
                &format!(
                    "it is {} bytes long, the kernel allows at most {MAX_IFACE_LEN}",
                    name.len()
                ),
            ));
        }
        if name == "." || name == ".." {
            return Err(bad(name, "`.` and `..` are not interface names"));
        }
        if let Some(c) = name
            .chars()
            .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
        {
            return Err(bad(
                name,
                &format!("it contains {c:?}, which no interface name can"),
            ));
        }
        if names[..i].contains(name) {
            return Err(ConfigError::Invalid(format!(
                "--iface {name:?} is given twice; give each interface once"
            )));
        }
    }
    Ok(())
}

/// Longest file name (Linux `NAME_MAX`).
const NAME_MAX: usize = 255;
/// Room left for the pin names under `--pin-path` (`link-<15-byte name>-native`).
const PIN_NAME_ROOM: usize = 32;

/// A pin path the kernel can take: an absolute path with components of at most
/// `NAME_MAX` bytes, short enough for the pins under it to fit in `PATH_MAX`.
pub fn validate_pin_path(path: &Path) -> Result<(), ConfigError> {
    let bad = |why: String| {
        ConfigError::Invalid(format!(
            "--pin-path {path:?} {why}; give a bpffs directory such as {DEFAULT_PIN_PATH}"
        ))
    };
    if !path.is_absolute() {
        return Err(bad("is not an absolute path".into()));
    }
    let len = path.as_os_str().len();
    let max = libc::PATH_MAX as usize - 1 - PIN_NAME_ROOM;
    if len > max {
        return Err(bad(format!(
            "is {len} bytes long; with the pin names under it, at most {max} bytes fit"
        )));
    }
    if let Some(long) = path
        .components()
        .map(|c| c.as_os_str().len())
        .find(|&n| n > NAME_MAX)
    {
        return Err(bad(format!(
            "has a name of {long} bytes; a file name can have at most 255"
        )));
    }
    Ok(())
}

impl RunArgs {
    pub fn resolve(&self) -> Result<AgentConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        self.resolve_with(file)
    }

    /// Flags over `file` over defaults, validated.
    pub fn resolve_with(&self, file: FileConfig) -> Result<AgentConfig, ConfigError> {
        let detector = resolve_detector(&self.detector, &file)?;
        let interfaces = if self.iface.is_empty() {
            file.iface.clone().unwrap_or_default()
        } else {
            self.iface.clone()
        };
        let config = AgentConfig {
            interfaces,
            xdp_mode: self.xdp_mode.or(file.xdp_mode).unwrap_or_default(),
            attach: self.attach.or(file.attach).unwrap_or_default(),
            xdp_multiprog: self
                .xdp_multiprog
                .or(file.xdp_multiprog)
                .unwrap_or_default(),
            per_interface_ports: self.per_interface_ports
                || file.per_interface_ports.unwrap_or(false),
            listen: if self.listen.is_empty() {
                file.web_listen_address.clone().unwrap_or_else(|| {
                    vec![
                        DEFAULT_LISTEN
                            .parse()
                            .expect("the default listen address parses"),
                    ]
                })
            } else {
                self.listen.clone()
            },
            telemetry_path: self
                .telemetry_path
                .clone()
                .or(file.web_telemetry_path.clone())
                .unwrap_or_else(|| DEFAULT_TELEMETRY_PATH.into()),
            web_config_file: self
                .web_config_file
                .clone()
                .or(file.web_config_file.clone()),
            detector,
            watch_ports: self
                .watch_ports
                .clone()
                .or(file.watch_ports)
                .unwrap_or_else(|| DEFAULT_WATCH_PORTS.to_vec()),
            top_ports: self
                .top_ports
                .or(file.top_ports)
                .unwrap_or(DEFAULT_TOP_PORTS),
            export_hold: self
                .export_hold
                .or(file.export_hold)
                .unwrap_or(DEFAULT_EXPORT_HOLD),
            state_file: self
                .state_file
                .clone()
                .or(file.state_file)
                .unwrap_or_else(|| DEFAULT_STATE_FILE.into()),
            save_interval: self
                .save_interval
                .or(file.save_interval)
                .unwrap_or(DEFAULT_SAVE_INTERVAL),
            pin_path: self
                .pin_path
                .clone()
                .or(file.pin_path)
                .unwrap_or_else(|| DEFAULT_PIN_PATH.into()),
            keep_attached: self.keep_attached || file.keep_attached.unwrap_or(false),
            debug_program: self.debug_program || file.debug_program.unwrap_or(false),
        };
        config.validate()?;
        Ok(config)
    }
}

impl AgentConfig {
    /// The checks that are not the detector's (those ran in [`resolve_detector`]).
    fn validate(&self) -> Result<(), ConfigError> {
        validate_interfaces(&self.interfaces)?;
        validate_web(&self.listen, &self.telemetry_path)?;
        if self.top_ports > MAX_TOP_PORTS {
            return Err(ConfigError::Invalid(format!(
                "--top-ports (config key `top_ports`) is {}, which would export too many \
                 series; use 0 to {MAX_TOP_PORTS}, e.g. --top-ports {DEFAULT_TOP_PORTS}",
                self.top_ports
            )));
        }
        if self.watch_ports.len() > MAX_WATCH_PORTS {
            return Err(ConfigError::Invalid(format!(
                "--watch-ports (config key `watch_ports`) lists {} ports, which would export \
                 too many series; list at most {MAX_WATCH_PORTS}, e.g. --watch-ports 22,443,3389",
                self.watch_ports.len()
            )));
        }
        check_duration(
            "--export-hold",
            self.export_hold,
            Duration::ZERO,
            MAX_WINDOW,
            "1h",
        )?;
        validate_pin_path(&self.pin_path)?;
        check_duration(
            "--save-interval",
            self.save_interval,
            MIN_SAVE_INTERVAL,
            MAX_SAVE_INTERVAL,
            "2m",
        )
    }
}

fn validate_web(listen: &[SocketAddr], telemetry_path: &str) -> Result<(), ConfigError> {
    if listen.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "--web.listen-address (config key `web_listen_address`) is an empty list; give at \
             least one address, e.g. {DEFAULT_LISTEN}"
        )));
    }
    if let Some(twice) = listen
        .iter()
        .enumerate()
        .find_map(|(i, a)| listen[..i].contains(a).then_some(a))
    {
        return Err(ConfigError::Invalid(format!(
            "--web.listen-address: {twice} is given twice; list each address once"
        )));
    }
    let bad = |why: &str| {
        Err(ConfigError::Invalid(format!(
            "--web.telemetry-path (config key `web_telemetry_path`) {telemetry_path:?} {why}; \
             e.g. --web.telemetry-path {DEFAULT_TELEMETRY_PATH}"
        )))
    };
    if !telemetry_path.starts_with('/') {
        return bad("must start with /");
    }
    if telemetry_path.len() > 256
        || !telemetry_path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b))
    {
        return bad("may hold only letters, digits and / - _ . ~ (at most 256 bytes)");
    }
    if RESERVED_PATHS.contains(&telemetry_path) || telemetry_path.starts_with("/api/") {
        return bad("is a path the agent already serves (/, /healthz, /api/v1/...)");
    }
    Ok(())
}

impl ReplayArgs {
    pub fn detector(&self) -> Result<DetectorConfig, ConfigError> {
        resolve_detector(&self.detector, &FileConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let cli = Cli::try_parse_from(["scan-agent", "run"].iter().chain(args))?;
        match cli.command {
            Command::Run(run) => Ok(*run),
            _ => unreachable!(),
        }
    }

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("scan-agent-{}-{name}", std::process::id()));
        std::fs::write(&path, text).expect("write temp config");
        path
    }

    #[test]
    fn defaults_are_loopback_and_documented_values() {
        let config = parse(&[]).unwrap().resolve().unwrap();
        assert_eq!(config.listen, vec![DEFAULT_LISTEN.parse().unwrap()]);
        assert!(config.listen[0].ip().is_loopback());
        assert_eq!(config.telemetry_path, "/metrics");
        assert_eq!(config.detector, DetectorConfig::default());
        assert_eq!(config.detector.interval, Duration::from_secs(5));
        assert_eq!(config.watch_ports, DEFAULT_WATCH_PORTS);
        assert_eq!(config.top_ports, 20);
        assert_eq!(config.xdp_mode, ModeChoice::Auto);
        assert!(!config.keep_attached);
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let file = temp_file(
            "override.toml",
            "iface = [\"eth9\"]\ninterval = \"10s\"\ntop_ports = 7\nsurge_threshold = 6.0\n",
        );
        let args = parse(&["--config", file.to_str().unwrap(), "--interval", "2s"]).unwrap();
        let config = args.resolve().unwrap();
        std::fs::remove_file(&file).ok();
        assert_eq!(config.detector.interval, Duration::from_secs(2));
        assert_eq!(config.top_ports, 7);
        assert_eq!(config.detector.surge_threshold, 6.0);
        assert_eq!(config.interfaces, vec!["eth9".to_string()]);
    }

    #[test]
    fn unknown_key_in_file_is_named() {
        let file = temp_file("typo.toml", "intervall = \"10s\"\n");
        let err = parse(&["--config", file.to_str().unwrap()])
            .unwrap()
            .resolve()
            .unwrap_err();
        std::fs::remove_file(&file).ok();
        let text = err.to_string();
        assert!(
            text.contains("intervall") && text.contains("typo.toml"),
            "{text}"
        );
    }

    #[test]
    fn bad_values_name_the_flag_and_the_fix() {
        let err = parse(&["--interval", "5 parsecs"]).unwrap_err().to_string();
        assert!(
            err.contains("--interval") && err.contains("such as"),
            "{err}"
        );
        let err = parse(&["--surge-threshold", "0.5"])
            .unwrap()
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("--surge-threshold"), "{err}");
        let err = parse(&["--short-window", "1s", "--interval", "5s"])
            .unwrap()
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("--short-window"), "{err}");
        let err = parse(&["--listen", "nowhere"]).unwrap_err().to_string();
        assert!(err.contains("--web.listen-address"), "{err}");
    }

    #[test]
    fn help_states_the_real_defaults() {
        use clap::CommandFactory as _;
        let mut command = Cli::command();
        let help = command
            .find_subcommand_mut("run")
            .expect("run subcommand")
            .render_long_help()
            .to_string();
        let d = DetectorConfig::default();
        let human = |t: Duration| humantime::format_duration(t).to_string();
        let watch: Vec<String> = DEFAULT_WATCH_PORTS.iter().map(u16::to_string).collect();
        for expected in [
            format!("[default: {}]", human(d.interval)),
            format!("[default: {}]", human(d.short_window)),
            format!("[default: {}]", human(d.baseline_window)),
            format!("[default: {}]", human(d.warmup)),
            format!("[default: {}]", human(d.surge_adapt_window)),
            format!("[default: {}]", d.surge_threshold),
            format!("[default: {}]", d.floor),
            format!("[default: {DEFAULT_TOP_PORTS}]"),
            format!("[default: {}]", human(DEFAULT_SAVE_INTERVAL)),
            format!("[default: {}]", human(DEFAULT_EXPORT_HOLD)),
            format!("[default: {DEFAULT_LISTEN}]"),
            format!("[default: {DEFAULT_STATE_FILE}]"),
            format!("[default: {DEFAULT_PIN_PATH}]"),
            watch.join(","),
        ] {
            assert!(help.contains(&expected), "--help lacks {expected}:\n{help}");
        }
    }

    #[test]
    fn listen_addresses_repeat_and_the_telemetry_path_is_checked() {
        let config = parse(&[
            "--web.listen-address",
            "127.0.0.1:1",
            "--listen",
            "[::1]:2",
            "--web.telemetry-path",
            "/scan/metrics",
        ])
        .unwrap()
        .resolve()
        .unwrap();
        assert_eq!(
            config.listen,
            vec![
                "127.0.0.1:1".parse::<SocketAddr>().unwrap(),
                "[::1]:2".parse().unwrap()
            ]
        );
        assert_eq!(config.telemetry_path, "/scan/metrics");
        for (path, why) in [
            ("metrics", "must start with /"),
            ("/healthz", "already serves"),
            ("/api/v1/x", "already serves"),
            ("/a b", "only letters"),
        ] {
            let err = parse(&["--web.telemetry-path", path])
                .unwrap()
                .resolve()
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("--web.telemetry-path") && err.contains(why),
                "{path}: {err}"
            );
        }
        let err = parse(&["--listen", "127.0.0.1:1", "--listen", "127.0.0.1:1"])
            .unwrap()
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(err.contains("given twice"), "{err}");
        let file = temp_file(
            "web.toml",
            "web_listen_address = [\"127.0.0.1:3\"]\nweb_telemetry_path = \"/m\"\n",
        );
        let config = parse(&["--config", file.to_str().unwrap()])
            .unwrap()
            .resolve()
            .unwrap();
        std::fs::remove_file(&file).ok();
        assert_eq!(config.listen, vec!["127.0.0.1:3".parse().unwrap()]);
        assert_eq!(config.telemetry_path, "/m");
    }

    #[test]
    fn human_durations_are_accepted() {
        let args = parse(&[
            "--baseline-window",
            "6h",
            "--warmup",
            "30m",
            "--short-window",
            "90s",
        ])
        .unwrap();
        let config = args.resolve().unwrap();
        assert_eq!(
            config.detector.baseline_window,
            Duration::from_secs(6 * 3600)
        );
        assert_eq!(config.detector.warmup, Duration::from_secs(1800));
        assert_eq!(config.detector.short_window, Duration::from_secs(90));
    }

    fn resolve_err(args: &[&str]) -> String {
        match parse(args) {
            Ok(run) => run
                .resolve()
                .expect_err(&format!("{args:?} accepted"))
                .to_string(),
            Err(e) => e.to_string(),
        }
    }

    fn file_err(name: &str, text: &str) -> String {
        let file = temp_file(name, text);
        let err = resolve_err(&["--config", file.to_str().unwrap()]);
        std::fs::remove_file(&file).ok();
        err
    }

    /// Issue 14: `--interval 200000000000y` was accepted and `/healthz` then panicked
    /// on `interval * 3`; the same values came in through the TOML file.
    #[test]
    fn durations_past_a_century_are_refused_from_flags_and_file() {
        let err = resolve_err(&[
            "--interval",
            "200000000000y",
            "--short-window",
            "200000000001y",
            "--baseline-window",
            "200000000002y",
        ]);
        assert!(
            err.contains("--interval") && err.contains("100ms to 1day") && err.contains("e.g."),
            "{err}"
        );
        let err = file_err(
            "century.toml",
            "interval = \"1s\"\nshort_window = \"200000000001y\"\nbaseline_window = \"200000000002y\"\n",
        );
        assert!(
            err.contains("--short-window")
                && err.contains("`short_window`")
                && err.contains("0 to 100years")
                && err.contains("e.g. --short-window 1m"),
            "{err}"
        );
        for flag in ["--warmup", "--baseline-window", "--surge-adapt-window"] {
            let err = resolve_err(&[flag, "101years"]);
            assert!(err.contains(flag) && err.contains("100years"), "{err}");
        }
    }

    #[test]
    fn intervals_have_lower_bounds() {
        let err = resolve_err(&["--interval", "1ns"]);
        assert!(
            err.contains("--interval (config key `interval`) is 1ns")
                && err.contains("100ms to 1day")
                && err.contains("e.g. --interval 5s"),
            "{err}"
        );
        let err = resolve_err(&["--save-interval", "1ns"]);
        assert!(
            err.contains("--save-interval") && err.contains("10s to 1day"),
            "{err}"
        );
        let err = resolve_err(&["--save-interval", "9s"]);
        assert!(err.contains("--save-interval"), "{err}");
        let config = parse(&["--interval", "100ms", "--save-interval", "10s"])
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(config.detector.interval, Duration::from_millis(100));
        assert_eq!(config.save_interval, Duration::from_secs(10));
    }

    /// Issue 14: `--floor -1` said "unexpected argument '-1' found".
    #[test]
    fn negative_numbers_reach_the_validator() {
        let err = resolve_err(&["--floor", "-1"]);
        assert!(
            err.contains("--floor") && err.contains("got -1") && err.contains("e.g. 0.1"),
            "{err}"
        );
        let err = resolve_err(&["--surge-threshold", "-3"]);
        assert!(
            err.contains("--surge-threshold") && err.contains("got -3"),
            "{err}"
        );
        let err = resolve_err(&["--top-ports", "-1"]);
        assert!(
            err.contains("--top-ports") && err.contains("from 0 to 1000"),
            "{err}"
        );
        let err = resolve_err(&["--interval", "-5s"]);
        assert!(
            err.contains("--interval") && err.contains("cannot be negative"),
            "{err}"
        );
        let err = resolve_err(&["--watch-ports", "22,-1"]);
        assert!(
            err.contains("--watch-ports") && err.contains("0 to 65535"),
            "{err}"
        );
        let err = resolve_err(&["--watch-ports", "22,65536"]);
        assert!(err.contains("65536") && err.contains("0 to 65535"), "{err}");
    }

    #[test]
    fn counts_are_bounded() {
        let err = resolve_err(&["--top-ports", "1001"]);
        assert!(err.contains("--top-ports") && err.contains("1000"), "{err}");
        let err = file_err("top.toml", "top_ports = 5000\n");
        assert!(
            err.contains("`top_ports`") && err.contains("0 to 1000"),
            "{err}"
        );
        let many: Vec<String> = (0..1001).map(|p| p.to_string()).collect();
        let err = resolve_err(&["--watch-ports", &many.join(",")]);
        assert!(
            err.contains("--watch-ports") && err.contains("1001"),
            "{err}"
        );
    }

    /// Issue 14: TOML `interval = 5` said `expected a string` without naming the unit.
    #[test]
    fn toml_number_without_unit_says_a_unit_is_needed() {
        let err = file_err("unitless.toml", "interval = 5\n");
        assert!(
            err.contains("interval") && err.contains("no unit") && err.contains("\"5s\""),
            "{err}"
        );
        let err = file_err("unitless-float.toml", "warmup = 1.5\n");
        assert!(err.contains("no unit") && err.contains("\"1.5s\""), "{err}");
        let err = file_err("negative.toml", "interval = \"-5s\"\n");
        assert!(err.contains("cannot be negative"), "{err}");
        let err = file_err("bool.toml", "interval = true\n");
        assert!(err.contains("not a duration"), "{err}");
    }

    /// Issue 14: these passed the existence check and ended in "Does its driver support
    /// that mode?".
    #[test]
    fn interface_names_are_checked_as_the_kernel_does() {
        for (name, why) in [
            (".", "`.` and `..`"),
            ("..", "`.` and `..`"),
            ("/", "contains '/'"),
            ("", "it is empty"),
            ("lab0/../lab0", "contains '/'"),
            ("eth0:1", "contains ':'"),
            ("eth 0", "contains ' '"),
            ("sixteen-chars-xx", "16 bytes long"),
        ] {
            let err = resolve_err(&["--iface", name]);
            assert!(
                err.contains("not a valid interface name") && err.contains(why),
                "{name:?}: {err}"
            );
        }
        let err = resolve_err(&["--iface", "lo", "--iface", "lo"]);
        assert!(err.contains("\"lo\" is given twice"), "{err}");
        let err = file_err("twice.toml", "iface = [\"lo\", \"lo\"]\n");
        assert!(err.contains("given twice"), "{err}");
        // 15 bytes, and patterns, are fine.
        let config = parse(&["--iface", "fifteen-chars-x", "--iface", "ppp*"])
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(config.interfaces, ["fifteen-chars-x", "ppp*"]);
    }

    /// Issue 14: a FIFO as `--config` blocked before attaching; `/dev/zero` was read
    /// without a limit.
    #[test]
    fn config_must_be_a_small_regular_file() {
        let err = resolve_err(&["--config", "/dev/zero"]);
        assert!(
            err.contains("\"/dev/zero\" is a character device, not a regular file")
                && err.contains("give --config the path of a regular file"),
            "{err}"
        );
        let err = resolve_err(&["--config", "/tmp"]);
        assert!(err.contains("is a directory"), "{err}");
        let path =
            std::env::temp_dir().join(format!("scan-agent-{}-fifo.toml", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        let err = resolve_err(&["--config", path.to_str().unwrap()]);
        std::fs::remove_file(&path).ok();
        assert!(err.contains("is a FIFO (named pipe)"), "{err}");
        let big = temp_file("big.toml", &"#".repeat(MAX_CONFIG_BYTES as usize + 1));
        let err = resolve_err(&["--config", big.to_str().unwrap()]);
        std::fs::remove_file(&big).ok();
        assert!(err.contains("larger than the 1048576 bytes"), "{err}");
        let binary =
            std::env::temp_dir().join(format!("scan-agent-{}-bin.toml", std::process::id()));
        std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
        let err = resolve_err(&["--config", binary.to_str().unwrap()]);
        std::fs::remove_file(&binary).ok();
        assert!(err.contains("not UTF-8"), "{err}");
    }

    /// Issue 14: an over-long pin path asked "Is bpffs mounted there?".
    #[test]
    fn over_long_pin_paths_say_so() {
        let long_name = format!("/sys/fs/bpf/{}", "a".repeat(300));
        let err = resolve_err(&["--pin-path", &long_name]);
        assert!(
            err.contains("has a name of 300 bytes") && err.contains("at most 255"),
            "{err}"
        );
        let deep = format!("/sys/fs/bpf{}", "/abcdefgh".repeat(500));
        let err = resolve_err(&["--pin-path", &deep]);
        assert!(
            err.contains("4511 bytes long") && err.contains("at most 4063"),
            "{err}"
        );
        let err = resolve_err(&["--pin-path", "relative/pins"]);
        assert!(err.contains("not an absolute path"), "{err}");
        assert!(!err.contains("Is bpffs mounted"), "{err}");
    }
}
