//! The HTTP server in process, with real TLS clients (curl): `--web.config.file` with
//! TLS and basic auth, mutual TLS with allowed SANs, certificate rotation and a broken
//! reload, and the start-time errors that name the key. No root or BPF needed.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use scan_agent::{
    api::{PortTables, Recent},
    breadth::Breadth,
    detector::{Detector, DetectorConfig},
    metrics::{Metrics, Snapshot},
    web::{self, ApiData, ApiParts, Limits, Published, ServerCounters, View, WebConfigSource},
};
use scan_lab::pki::{Pki, bcrypt_hash};

/// Every log line, so a test can look for the reload error.
struct Capture(Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{} {}", record.level(), record.args()));
    }
    fn flush(&self) {}
}

static LOGS: Capture = Capture(Mutex::new(Vec::new()));

fn logs() -> Vec<String> {
    LOGS.0.lock().unwrap().clone()
}

/// The test view's exposition has this series.
const SERIES: &str = "scan_syn_packets_total{port=\"42\"} 42";

fn view() -> View {
    let config = DetectorConfig::default();
    let detector = Detector::new(config.clone());
    let mut ports = vec![0; 43];
    ports[42] = 42;
    let metrics = Metrics::new().unwrap().exposition(&Snapshot {
        ports: &ports,
        classes: &[],
        detector: &detector,
        breadth: &Breadth::new(&config),
        attachments: &[],
        configured: &[],
        watch_ports: &[42],
        top_ports: 0,
        export_hold: Duration::ZERO,
        now: Duration::ZERO,
        last_poll: 0.0,
    });
    View {
        taken: Instant::now(),
        interval: Duration::from_secs(3600),
        metrics,
        problem: None,
        attachments: vec![],
        telemetry_path: "/metrics".into(),
        api: ApiData::new(
            &detector,
            &[],
            &mut PortTables::default(),
            ApiParts {
                recent: Recent::new(config.interval),
                breadth: Default::default(),
                prefixes: Default::default(),
                exported: vec![],
                time: 0.0,
            },
        ),
    }
}

/// Serves the test view with `config` (a web config file) on a free loopback port.
async fn serve(config: Option<&Path>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let source = Arc::new(WebConfigSource::new(config.map(Path::to_path_buf)).unwrap());
    let counters = ServerCounters {
        evicted: prometheus::IntCounter::new("e", "e").unwrap(),
        refused: prometheus::IntCounter::new("r", "r").unwrap(),
    };
    let app = web::router(Published::new(view()), "/metrics");
    tokio::spawn(web::serve(
        vec![(address, listener)],
        app,
        Limits::default(),
        counters,
        source,
    ));
    address
}

/// What curl got: `None` when no HTTP answer came (handshake refused, not HTTP),
/// else the status and the response (headers and body).
fn curl(url: &str, args: &[&str]) -> Option<(u16, String)> {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl (Debian package curl)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (response, code) = text.rsplit_once('\n').unwrap_or(("", "000"));
    let code: u16 = code.trim().parse().unwrap_or(0);
    (out.status.success() && code != 0).then(|| (code, response.to_string()))
}

fn write(path: &Path, text: &str) {
    // Whole-file replace by rename, as a certificate manager does.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("scan-web-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn as_str(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_basic_auth_rotation_and_a_broken_reload() {
    let _ = log::set_logger(&LOGS);
    log::set_max_level(log::LevelFilter::Info);
    let dir = dir("basic");
    let pki = Pki::new(&dir, "first").unwrap();
    let server = pki.server("server").unwrap();
    let config = dir.join("web.yml");
    let config_text = |hash: &str| {
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
             http_server_config:\n  headers:\n    X-Frame-Options: deny\n\
             basic_auth_users:\n  prometheus: '{hash}'\n"
        )
    };
    write(&config, &config_text(&bcrypt_hash("s3cret").unwrap()));
    let address = serve(Some(&config)).await;
    let url = format!("https://{address}/metrics");
    let ca = ["--cacert", path(&pki.ca)];

    // The right password: 200, the metrics and the configured header.
    let (status, response) =
        curl(&url, &[&ca[..], &["-u", "prometheus:s3cret"]].concat()).expect("an HTTPS answer");
    assert_eq!(status, 200, "{response}");
    assert!(response.contains(SERIES), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("x-frame-options: deny"),
        "{response}"
    );
    // Wrong password, unknown user, none: 401 with the Basic challenge.
    for auth in [
        &["-u", "prometheus:wrong"][..],
        &["-u", "nobody:s3cret"][..],
        &[][..],
    ] {
        let (status, response) = curl(&url, &[&ca[..], auth].concat()).expect("an answer");
        assert_eq!(status, 401, "{auth:?}: {response}");
        assert!(
            response
                .to_ascii_lowercase()
                .contains("www-authenticate: basic"),
            "{response}"
        );
    }
    // Plain HTTP to the TLS port: no HTTP answer at all.
    assert_eq!(
        curl(
            &format!("http://{address}/metrics"),
            &["-u", "prometheus:s3cret"]
        ),
        None
    );

    // A changed password applies to the next connection, without a restart.
    write(&config, &config_text(&bcrypt_hash("n3w").unwrap()));
    let auth_new = [&ca[..], &["-u", "prometheus:n3w"]].concat();
    assert_eq!(curl(&url, &auth_new).map(|r| r.0), Some(200));
    assert_eq!(
        curl(&url, &[&ca[..], &["-u", "prometheus:s3cret"]].concat()).map(|r| r.0),
        Some(401)
    );

    // A certificate from another CA replaced on disk is served on the next connection.
    let second = Pki::new(&dir, "second").unwrap();
    let other = second.server("other").unwrap();
    let with_ca = |ca: &Path| -> Vec<String> {
        ["--cacert", path(ca), "-u", "prometheus:n3w"]
            .map(String::from)
            .to_vec()
    };
    assert_eq!(curl(&url, &as_str(&with_ca(&second.ca))), None);
    write(&server.key, &std::fs::read_to_string(&other.key).unwrap());
    write(&server.cert, &std::fs::read_to_string(&other.cert).unwrap());
    assert_eq!(
        curl(&url, &as_str(&with_ca(&second.ca))).map(|r| r.0),
        Some(200)
    );
    assert_eq!(curl(&url, &as_str(&with_ca(&pki.ca))), None);

    // A broken version on reload: the last good one stays, and the log says why.
    write(
        &config,
        "tls_server_config:\n  cert_file: server.crt\nbasic_auth_users:\n  prometheus: x\n",
    );
    assert_eq!(
        curl(&url, &as_str(&with_ca(&second.ca))).map(|r| r.0),
        Some(200)
    );
    let logged = logs();
    assert!(
        logged.iter().any(|l| l.starts_with("ERROR")
            && l.contains("basic_auth_users.prometheus")
            && l.contains("last good version stays")),
        "{logged:#?}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_verified_client_with_an_allowed_san() {
    let dir = dir("mtls");
    let pki = Pki::new(&dir, "mtls").unwrap();
    pki.server("server").unwrap();
    let good = pki.client("client", "prometheus.example").unwrap();
    let wrong_san = pki.client("stranger", "stranger.example").unwrap();
    let foreign = Pki::new(&dir, "foreign")
        .unwrap()
        .client("foreign", "prometheus.example")
        .unwrap();
    let config = dir.join("web.yml");
    write(
        &config,
        &format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n  \
             client_allowed_sans: [prometheus.example]\n  min_version: TLS12\n",
            path(&pki.ca)
        ),
    );
    let address = serve(Some(&config)).await;
    let url = format!("https://{address}/metrics");
    let ca = ["--cacert", path(&pki.ca)];
    let with = |c: &scan_lab::pki::Issued| {
        curl(
            &url,
            &[&ca[..], &["--cert", path(&c.cert), "--key", path(&c.key)]].concat(),
        )
    };
    let (status, response) = with(&good).expect("an answer with the client certificate");
    assert_eq!(status, 200, "{response}");
    assert!(response.contains(SERIES), "{response}");
    // No client certificate, one with a SAN not allowed, one from another CA: refused.
    assert_eq!(curl(&url, &ca), None);
    assert_eq!(with(&wrong_san), None);
    assert_eq!(with(&foreign), None);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn invalid_files_name_the_key_and_the_fix() {
    let dir = dir("invalid");
    let pki = Pki::new(&dir, "bad").unwrap();
    pki.server("server").unwrap();
    let cases = [
        (
            "tls_server_config:\n  cert_file: server.crt\n",
            "tls_server_config.key_file",
            "missing",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: Sometimes\n",
            "tls_server_config.client_auth_type",
            "RequireAndVerifyClientCert",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n",
            "tls_server_config.client_ca_file",
            "give client_ca_file",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS10\n",
            "tls_server_config.min_version",
            "TLS12",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: bad-ca.pem\n",
            "tls_server_config.key_file",
            "private key",
        ),
        (
            "tls_server_config:\n  cert_file: nowhere.crt\n  key_file: server.key\n",
            "tls_server_config.cert_file",
            "nowhere.crt",
        ),
        (
            "tls_server_config:\n  cert_fil: x\n",
            "(syntax)",
            "cert_fil",
        ),
        (
            "basic_auth_users:\n  prom: hunter2\n",
            "basic_auth_users.prom",
            "bcrypt",
        ),
        (
            "http_server_config:\n  headers:\n    Server: x\n",
            "http_server_config.headers.Server",
            "allowed",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
            "tls_server_config.cipher_suites",
            "remove the key",
        ),
    ];
    let config = dir.join("web.yml");
    for (text, key, fix) in cases {
        write(&config, text);
        let err = WebConfigSource::new(Some(config.clone()))
            .err()
            .unwrap_or_else(|| panic!("accepted:\n{text}"))
            .to_string();
        assert!(
            err.contains(&format!(": {key}: ")) && err.contains(fix),
            "{text}\n-> {err}"
        );
    }
    // An empty file is plain HTTP, as with exporter-toolkit.
    write(&config, "");
    assert!(WebConfigSource::new(Some(config.clone())).is_ok());
    std::fs::remove_dir_all(&dir).ok();
}
