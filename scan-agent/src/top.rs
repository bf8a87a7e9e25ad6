//! `scan-agent top`: a live terminal view of a running agent, read from its JSON API
//! (`/api/v1/ports`): ports by surge ratio with SYN/s, normal, ratio, episode age and a
//! sparkline of the last minutes. Keys sort, filter, pause and quit; `--once` prints one
//! plain table for scripts. Fits 80x24; without colour (NO_COLOR, TERM=dumb) flagged
//! ports are still marked in text and sparklines use ASCII.
//!
//! An agent with `--web.config.file` (TLS, client certificates, basic auth) is read over
//! `https://` with the options a scraper has: a CA file, a client certificate and key, a
//! user and a password file.
use std::{
    io::IsTerminal as _,
    ops::RangeInclusive,
    path::PathBuf,
    str::FromStr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
    text::Line,
    widgets::{Cell, Paragraph, Row, Table},
};

use crate::api::{PortView, PortsResponse};

/// Most single ports of a `--port` filter fetched one by one when not exported.
const MAX_FETCHED_PORTS: usize = 32;

/// `scan-agent top` flags.
#[derive(Args, Debug, Clone)]
pub struct TopArgs {
    /// Base URL of the agent's HTTP server (its --listen address)
    #[arg(long, default_value = "http://127.0.0.1:9745")]
    pub url: String,
    /// How often to refresh
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub refresh: Duration,
    /// Print one table to stdout and exit (no terminal control, no colour)
    #[arg(long)]
    pub once: bool,
    /// Sort order at start (key `s` cycles through them)
    #[arg(long, value_enum, default_value_t = SortKey::Ratio)]
    pub sort: SortKey,
    /// Show only these ports: comma-separated ports or ranges, e.g. 445,3389,8000-8100
    /// (key `/` changes it). Single ports are shown even when not exported.
    #[arg(long)]
    pub port: Option<PortFilter>,
    /// CA certificate(s), PEM, that signed the agent's certificate (https:// only;
    /// default: the Mozilla roots)
    #[arg(long, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate, PEM, for an agent that requires one (with --key)
    #[arg(long, value_name = "PATH", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key of --cert, PEM
    #[arg(long, value_name = "PATH", requires = "cert")]
    pub key: Option<PathBuf>,
    /// User for HTTP basic auth (with --password-file)
    #[arg(long, requires = "password_file")]
    pub user: Option<String>,
    /// File holding the basic-auth password (one line; not on the command line, where
    /// other users could see it)
    #[arg(long, value_name = "PATH", requires = "user")]
    pub password_file: Option<PathBuf>,
}

/// Row order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SortKey {
    /// Highest surge ratio first
    Ratio,
    /// Highest SYN/s first
    Rate,
    /// Oldest surge episode first, then by ratio
    Episode,
    /// Lowest port number first
    Port,
}

impl SortKey {
    fn next(self) -> Self {
        match self {
            Self::Ratio => Self::Rate,
            Self::Rate => Self::Episode,
            Self::Episode => Self::Port,
            Self::Port => Self::Ratio,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Ratio => "ratio",
            Self::Rate => "SYN/s",
            Self::Episode => "episode",
            Self::Port => "port",
        }
    }
}

/// A set of ports: single ports and inclusive ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortFilter {
    ranges: Vec<RangeInclusive<u16>>,
    text: String,
}

impl FromStr for PortFilter {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let port = |p: &str| {
            p.trim().parse::<u16>().map_err(|_| {
                format!(
                    "'{}' is not a port: use numbers 0-65535, e.g. 445,3389,8000-8100",
                    p.trim()
                )
            })
        };
        let mut ranges = Vec::new();
        for part in text.split(',').filter(|p| !p.trim().is_empty()) {
            let range = match part.split_once('-') {
                Some((a, b)) => port(a)?..=port(b)?,
                None => port(part)?..=port(part)?,
            };
            if range.is_empty() {
                return Err(format!(
                    "range '{}' is empty: write the low port first",
                    part.trim()
                ));
            }
            ranges.push(range);
        }
        if ranges.is_empty() {
            return Err("no port given: use e.g. 445 or 8000-8100".into());
        }
        Ok(Self {
            ranges,
            text: text.trim().to_string(),
        })
    }
}

impl PortFilter {
    fn matches(&self, port: u16) -> bool {
        self.ranges.iter().any(|r| r.contains(&port))
    }

    fn single_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.ranges
            .iter()
            .filter(|r| r.start() == r.end())
            .map(|r| *r.start())
            .take(MAX_FETCHED_PORTS)
    }
}

/// Reads the agent's JSON API.
struct Client {
    agent: ureq::Agent,
    base: String,
    /// `Authorization` header value for basic auth.
    authorization: Option<String>,
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
}

/// Every certificate in a PEM file; an error names the file when there is none.
fn certificates(path: &PathBuf, what: &str) -> Result<Vec<ureq::tls::Certificate<'static>>> {
    let pem = read(path, what)?;
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        bail!("{}: no PEM certificate in this {what}", path.display());
    }
    Ok(certs)
}

impl Client {
    fn new(args: &TopArgs) -> Result<Self> {
        use base64::Engine as _;
        use ureq::tls::{ClientCert, PrivateKey, RootCerts, TlsConfig};

        let url = args.url.as_str();
        let base = url.trim_end_matches('/').to_string();
        let https = base.starts_with("https://");
        if !https && !base.starts_with("http://") {
            bail!("{url}: not an http:// or https:// URL; use e.g. http://127.0.0.1:9745")
        }
        if !https && (args.ca_file.is_some() || args.cert.is_some()) {
            bail!("--ca-file and --cert are for an agent serving TLS: use an https:// --url")
        }
        let mut tls = TlsConfig::builder();
        if let Some(ca) = &args.ca_file {
            tls = tls.root_certs(RootCerts::new_with_certs(&certificates(ca, "CA file")?));
        }
        if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
            let chain = certificates(cert, "client certificate")?;
            let key = PrivateKey::from_pem(&read(key, "client key")?)
                .map_err(|e| anyhow::anyhow!("{}: not a PEM private key: {e}", key.display()))?;
            tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
        }
        let authorization = match (&args.user, &args.password_file) {
            (Some(user), Some(file)) => {
                let password = String::from_utf8(read(file, "password file")?)
                    .with_context(|| format!("{}: the password is not UTF-8", file.display()))?;
                let password = password.trim_end_matches(['\n', '\r']);
                let token =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                Some(format!("Basic {token}"))
            }
            _ => None,
        };
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(3)))
            .tls_config(tls.build())
            .build()
            .into();
        Ok(Self {
            agent,
            base,
            authorization,
        })
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let mut request = self.agent.get(&url);
        if let Some(authorization) = &self.authorization {
            request = request.header("Authorization", authorization);
        }
        let mut response = match request.call() {
            Ok(response) => response,
            Err(ureq::Error::StatusCode(401)) => bail!(
                "GET {url}: 401 Unauthorized: give the agent's basic-auth --user and --password-file"
            ),
            Err(ureq::Error::StatusCode(code)) => bail!("GET {url}: HTTP status {code}"),
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "GET {url}: is the agent running, is this its --listen address, and \
                     for TLS, does --ca-file hold the CA of its certificate?"
                )));
            }
        };
        let body = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("GET {url}: reading the response"))?;
        serde_json::from_str(&body)
            .with_context(|| format!("GET {url}: not the JSON of scan-agent's API"))
    }

    /// The exported ports, plus each single port of `filter` that is not exported.
    fn fetch(&self, filter: Option<&PortFilter>) -> Result<PortsResponse> {
        let mut data: PortsResponse = self.get("/api/v1/ports")?;
        if let Some(filter) = filter {
            for port in filter.single_ports() {
                if !data.ports.iter().any(|p| p.port == port) {
                    data.ports.push(self.get(&format!("/api/v1/ports/{port}"))?);
                }
            }
        }
        Ok(data)
    }
}

/// One line of the table, formatted.
#[derive(Debug, PartialEq)]
struct TableRow {
    port: u16,
    flagged: bool,
    cells: [String; COLUMNS],
}

const COLUMNS: usize = 7;
/// NORMAL is the detector's expectation (what the ratio divides by); SRCS the distinct
/// sources over the short window, where the agent has a sketch for the port.
const HEADERS: [&str; COLUMNS] = [
    "PORT",
    "SYN/s",
    "NORMAL",
    "RATIO",
    "SRCS",
    "EPISODE",
    "LAST MINUTES",
];
/// Widths of the right-aligned columns; the sparkline takes the rest.
const WIDTHS: [u16; COLUMNS - 1] = [6, 9, 9, 8, 6, 8];

/// The rows shown: filtered, sorted, formatted; sparklines `spark_width` wide.
fn table_rows(
    data: &PortsResponse,
    sort: SortKey,
    filter: Option<&PortFilter>,
    spark_width: usize,
    ascii: bool,
) -> Vec<TableRow> {
    let mut ports: Vec<&PortView> = data
        .ports
        .iter()
        .filter(|p| filter.is_none_or(|f| f.matches(p.port)))
        .collect();
    let by_ratio =
        |a: &&PortView, b: &&PortView| b.ratio.total_cmp(&a.ratio).then(a.port.cmp(&b.port));
    match sort {
        SortKey::Ratio => ports.sort_by(by_ratio),
        SortKey::Rate => ports.sort_by(|a, b| b.rate.total_cmp(&a.rate).then(a.port.cmp(&b.port))),
        SortKey::Port => ports.sort_by_key(|p| p.port),
        SortKey::Episode => ports.sort_by(|a, b| {
            let start = |p: &PortView| p.episode_start.unwrap_or(f64::INFINITY);
            start(a).total_cmp(&start(b)).then_with(|| by_ratio(a, b))
        }),
    }
    ports
        .into_iter()
        .map(|p| TableRow {
            port: p.port,
            flagged: p.flagged,
            cells: [
                format!("{}{}", p.port, if p.flagged { "!" } else { "" }),
                number(p.rate),
                number(p.expected),
                number(p.ratio),
                p.sources.map_or_else(|| "-".into(), |n| format!("{n:.0}")),
                p.episode_start
                    .map_or_else(|| "-".into(), |start| age(data.time - start)),
                sparkline(&p.history, spark_width, ascii),
            ],
        })
        .collect()
}

/// Three significant digits or so, within 8 columns.
fn number(value: f64) -> String {
    match value {
        v if !v.is_finite() => "-".into(),
        v if v < 10.0 => format!("{v:.2}"),
        v if v < 1000.0 => format!("{v:.1}"),
        v if v < 1e6 => format!("{v:.0}"),
        v => format!("{:.1}M", v / 1e6),
    }
}

/// `42s`, `3m05s`, `2h07m`, `3d04h`.
fn age(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// The last `width` samples as bars scaled to their maximum.
fn sparkline(history: &[f64], width: usize, ascii: bool) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    const ASCII: [char; 8] = ['_', '.', '-', '~', '=', '+', '*', '#'];
    let bars = if ascii { &ASCII } else { &BARS };
    let recent = &history[history.len().saturating_sub(width)..];
    let max = recent.iter().copied().fold(0.0f64, f64::max);
    recent
        .iter()
        .map(|&v| {
            if max <= 0.0 || !v.is_finite() {
                bars[0]
            } else {
                bars[((v / max) * 7.0).round().clamp(0.0, 7.0) as usize]
            }
        })
        .collect()
}

fn header_line(data: &PortsResponse, url: &str) -> String {
    let learning = if data.warming_up {
        format!("learning, {:.0}s left", data.warmup_remaining_seconds)
    } else {
        "learned".into()
    };
    format!(
        "scan-agent {} at {url} | surge >= {} | {learning} | {} SYNs",
        data.agent_version,
        number(data.surge_threshold),
        data.syn_total_all_ports
    )
}

/// `--once`: the table as plain text.
fn render_plain(
    data: &PortsResponse,
    url: &str,
    sort: SortKey,
    filter: Option<&PortFilter>,
) -> String {
    let mut out = header_line(data, url);
    out.push('\n');
    let row = |cells: [&str; COLUMNS]| {
        let mut line = String::new();
        for (i, width) in WIDTHS.iter().enumerate() {
            line.push_str(&format!("{:>w$} ", cells[i], w = usize::from(*width)));
        }
        line.push_str(cells[COLUMNS - 1]);
        line.trim_end().to_string() + "\n"
    };
    out.push_str(&row(HEADERS));
    for r in table_rows(data, sort, filter, 30, true) {
        out.push_str(&row([
            &r.cells[0],
            &r.cells[1],
            &r.cells[2],
            &r.cells[3],
            &r.cells[4],
            &r.cells[5],
            &r.cells[6],
        ]));
    }
    out
}

/// Whether to use colour and Unicode: not with NO_COLOR set, TERM=dumb or no TERM.
fn colour_allowed() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let term = std::env::var("TERM").unwrap_or_default();
    !no_color && !term.is_empty() && term != "dumb"
}

fn unicode_allowed() -> bool {
    let term = std::env::var("TERM").unwrap_or_default();
    let locale = ["LC_ALL", "LC_CTYPE", "LANG"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_default()
        .to_ascii_lowercase();
    term != "dumb" && (locale.contains("utf-8") || locale.contains("utf8"))
}

/// What the interactive view shows and edits.
struct App {
    url: String,
    sort: SortKey,
    filter: Option<PortFilter>,
    /// The filter being typed after `/`.
    editing: Option<String>,
    paused: bool,
    data: Option<PortsResponse>,
    error: Option<String>,
    colour: bool,
    ascii: bool,
}

impl App {
    /// Handles one key; false to quit.
    fn key(&mut self, code: KeyCode, modifiers: KeyModifiers) -> bool {
        if modifiers.contains(KeyModifiers::CONTROL) && code == KeyCode::Char('c') {
            return false;
        }
        if let Some(text) = &mut self.editing {
            match code {
                KeyCode::Enter => {
                    let text = std::mem::take(text);
                    self.editing = None;
                    if text.trim().is_empty() {
                        self.filter = None;
                        self.error = None;
                    } else {
                        match text.parse() {
                            Ok(filter) => {
                                self.filter = Some(filter);
                                self.error = None;
                            }
                            Err(e) => self.error = Some(e),
                        }
                    }
                }
                KeyCode::Esc => self.editing = None,
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char(c) if c.is_ascii_digit() || c == ',' || c == '-' => text.push(c),
                _ => {}
            }
            return true;
        }
        match code {
            KeyCode::Char('q') | KeyCode::Esc => return false,
            KeyCode::Char('s') => self.sort = self.sort.next(),
            KeyCode::Char('p') | KeyCode::Char(' ') => self.paused = !self.paused,
            KeyCode::Char('/') => self.editing = Some(String::new()),
            KeyCode::Char('c') => self.filter = None,
            _ => {}
        }
        true
    }

    fn draw(&self, frame: &mut Frame<'_>) {
        let [top, table_area, bottom] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(3),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        let style = |s: Style| if self.colour { s } else { Style::default() };
        let title = match &self.data {
            Some(data) => header_line(data, &self.url),
            None => format!("scan-agent top: waiting for {}", self.url),
        };
        // First, so that a narrow terminal does not cut it off.
        let title = if self.paused {
            format!("PAUSED | {title}")
        } else {
            title
        };
        frame.render_widget(
            Paragraph::new(Line::from(title))
                .style(style(Style::new().add_modifier(Modifier::REVERSED))),
            top,
        );
        let fixed: u16 = WIDTHS.iter().map(|w| w + 1).sum();
        let spark_width = usize::from(table_area.width.saturating_sub(fixed).max(8));
        let rows: Vec<Row<'_>> = self
            .data
            .as_ref()
            .map(|data| {
                table_rows(
                    data,
                    self.sort,
                    self.filter.as_ref(),
                    spark_width,
                    self.ascii,
                )
            })
            .unwrap_or_default()
            .into_iter()
            .map(|r| {
                let row_style = if r.flagged {
                    style(Style::new().fg(Color::Red).add_modifier(Modifier::BOLD))
                } else {
                    Style::default()
                };
                Row::new(r.cells.into_iter().enumerate().map(|(i, c)| {
                    if i < COLUMNS - 1 {
                        Cell::from(Line::from(c).right_aligned())
                    } else {
                        Cell::from(c)
                    }
                }))
                .style(row_style)
            })
            .collect();
        let mut widths: Vec<Constraint> = WIDTHS.iter().map(|&w| Constraint::Length(w)).collect();
        widths.push(Constraint::Min(8));
        let header = Row::new(HEADERS.iter().enumerate().map(|(i, h)| {
            if i < COLUMNS - 1 {
                Cell::from(Line::from(*h).right_aligned())
            } else {
                Cell::from(*h)
            }
        }))
        .style(style(
            Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED),
        ));
        frame.render_widget(
            Table::new(rows, widths).header(header).column_spacing(1),
            table_area,
        );
        let status = if let Some(text) = &self.editing {
            format!(
                "filter ports (e.g. 445,8000-8100; empty: all): {text}_   Enter apply, Esc cancel"
            )
        } else if let Some(error) = &self.error {
            format!("error: {error}")
        } else {
            format!(
                "sort: {} [s]  filter: {} [/ c]  [p]ause  [q]uit",
                self.sort.name(),
                self.filter.as_ref().map_or("all", |f| f.text.as_str()),
            )
        };
        let status_style = if self.error.is_some() && self.editing.is_none() {
            style(Style::new().fg(Color::Yellow))
        } else {
            Style::default()
        };
        frame.render_widget(
            Paragraph::new(Line::from(status)).style(status_style),
            bottom,
        );
    }
}

/// `scan-agent top`.
pub fn run(args: TopArgs) -> Result<()> {
    let client = Client::new(&args)?;
    if args.once {
        let data = client.fetch(args.port.as_ref())?;
        print!(
            "{}",
            render_plain(&data, &client.base, args.sort, args.port.as_ref())
        );
        return Ok(());
    }
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        bail!("scan-agent top needs a terminal; for scripts use --once");
    }
    let mut app = App {
        url: client.base.clone(),
        sort: args.sort,
        filter: args.port,
        editing: None,
        paused: false,
        data: None,
        error: None,
        colour: colour_allowed(),
        ascii: !unicode_allowed(),
    };
    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    let result = (|| -> Result<()> {
        let mut last_fetch: Option<Instant> = None;
        loop {
            if !app.paused && last_fetch.is_none_or(|t| t.elapsed() >= args.refresh) {
                last_fetch = Some(Instant::now());
                match client.fetch(app.filter.as_ref()) {
                    Ok(data) => {
                        app.data = Some(data);
                        app.error = None;
                    }
                    Err(e) => app.error = Some(crate::error_chain(e.as_ref())),
                }
            }
            terminal.draw(|frame| app.draw(frame))?;
            if event::poll(Duration::from_millis(100))?
                && let Event::Key(key) = event::read()?
                && key.kind == KeyEventKind::Press
                && !app.key(key.code, key.modifiers)
            {
                return Ok(());
            }
        }
    })();
    ratatui::try_restore().context("restoring the terminal")?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(port: u16, rate: f64, ratio: f64, episode_start: Option<f64>) -> PortView {
        PortView {
            port,
            syn_total: 0,
            rate,
            baseline: rate / ratio,
            expected: rate / ratio,
            learning: "baseline".into(),
            ratio,
            flagged: episode_start.is_some(),
            episode_start,
            sources: None,
            sources_baseline: None,
            targets: None,
            targets_baseline: None,
            top_prefixes: Vec::new(),
            history: vec![0.0, rate / 2.0, rate],
        }
    }

    fn data() -> PortsResponse {
        let mut surging = port(445, 60.0, 50.0, Some(940.0));
        surging.sources = Some(37.4);
        PortsResponse {
            version: 1,
            agent_version: "0.1.0".into(),
            time: 1000.0,
            interval_seconds: 1.0,
            surge_threshold: 3.0,
            warming_up: false,
            warmup_remaining_seconds: 0.0,
            syn_total_all_ports: 10,
            ports_left_out: 0,
            ports: vec![
                port(22, 4.0, 1.0, None),
                surging,
                port(3389, 80.0, 4.0, Some(990.0)),
            ],
        }
    }

    fn order(sort: SortKey, filter: Option<&str>) -> Vec<u16> {
        let filter = filter.map(|f| f.parse().unwrap());
        table_rows(&data(), sort, filter.as_ref(), 10, true)
            .iter()
            .map(|r| r.port)
            .collect()
    }

    #[test]
    fn sorts_and_filters() {
        assert_eq!(order(SortKey::Ratio, None), [445, 3389, 22]);
        assert_eq!(order(SortKey::Rate, None), [3389, 445, 22]);
        assert_eq!(order(SortKey::Port, None), [22, 445, 3389]);
        assert_eq!(order(SortKey::Episode, None), [445, 3389, 22]);
        assert_eq!(order(SortKey::Ratio, Some("22,3000-4000")), [3389, 22]);
    }

    #[test]
    fn rows_are_formatted_for_80_columns() {
        let rows = table_rows(&data(), SortKey::Ratio, None, 10, true);
        assert_eq!(
            rows[0].cells,
            ["445!", "60.0", "1.20", "50.0", "37", "1m00s", "_=#"].map(String::from)
        );
        let plain = render_plain(&data(), "http://x", SortKey::Ratio, None);
        assert!(plain.lines().all(|l| l.chars().count() <= 80), "{plain}");
        assert!(!plain.contains('\x1b'));
        assert_eq!(
            plain.lines().nth(2).unwrap().split_whitespace().next(),
            Some("445!")
        );
    }

    #[test]
    fn filter_errors_name_the_fix() {
        assert!(
            "70000"
                .parse::<PortFilter>()
                .unwrap_err()
                .contains("0-65535")
        );
        assert!(
            "90-80"
                .parse::<PortFilter>()
                .unwrap_err()
                .contains("low port first")
        );
        assert!(",".parse::<PortFilter>().unwrap_err().contains("no port"));
        assert_eq!(
            "445, 1-3"
                .parse::<PortFilter>()
                .unwrap()
                .single_ports()
                .collect::<Vec<_>>(),
            [445]
        );
    }

    #[test]
    fn formats() {
        assert_eq!(age(59.9), "59s");
        assert_eq!(age(3725.0), "1h02m");
        assert_eq!(number(0.123), "0.12");
        assert_eq!(number(123456.0), "123456");
        assert_eq!(sparkline(&[0.0, 0.0], 5, false), "▁▁");
        assert_eq!(sparkline(&[1.0, 2.0, 4.0, 8.0], 2, true), "=#");
    }
}
