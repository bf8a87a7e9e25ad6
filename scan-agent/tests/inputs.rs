//! Hostile inputs to the `scan-agent` binary (issue 14): each case once hung the agent,
//! panicked it, or gave a misleading error. Every run here is bounded in time (a hang
//! fails the test) and can attach nothing: the interface does not exist and the pin
//! path is not on a bpffs, so a check that wrongly passed would still stop the agent.
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const AGENT: &str = env!("CARGO_BIN_EXE_scan-agent");
const LIMIT: Duration = Duration::from_secs(20);

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("scan-agent-inputs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    fn fifo(&self, name: &str) -> PathBuf {
        let path = self.0.join(name);
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the agent with `args` (and `stdin`), killing it after [`LIMIT`]: returns
/// whether it succeeded, stdout and stderr.
fn agent(args: &[&str], stdin: &[u8]) -> (bool, String, String) {
    let mut child = Command::new(AGENT)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start scan-agent");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        // The agent may exit without reading: a broken pipe is fine.
        let _ = input.write_all(&stdin);
    });
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "scan-agent {args:?} hung for {LIMIT:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    writer.join().expect("stdin writer");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `run` with settings that can attach nothing, plus `extra`.
fn run_refused(extra: &[&str]) -> String {
    let mut args = vec![
        "run",
        "--iface",
        "nosuchif14",
        "--pin-path",
        "/nonexistent-scan-agent-test/pins",
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let (ok, _, stderr) = agent(&args, b"");
    assert!(!ok, "scan-agent {args:?} started; stderr:\n{stderr}");
    assert!(!stderr.contains("attached to"), "{stderr}");
    stderr
}

#[test]
fn fifo_as_config_is_refused_at_once() {
    let dir = TempDir::new("config-fifo");
    let fifo = dir.fifo("agent.toml");
    let err = run_refused(&["--config", fifo.to_str().unwrap()]);
    assert!(
        err.contains("is a FIFO (named pipe), not a regular file")
            && err.contains("give --config the path of a regular file"),
        "{err}"
    );
    let err = run_refused(&["--config", "/dev/zero"]);
    assert!(err.contains("is a character device"), "{err}");
}

#[test]
fn bad_state_paths_are_refused_before_attaching() {
    let dir = TempDir::new("state");
    let fifo = dir.fifo("state.json");
    let plain = dir.0.join("plain");
    std::fs::write(&plain, "x").unwrap();
    let under_file = plain.join("state.json");
    let cases: [(&Path, &str); 7] = [
        (&fifo, "is a FIFO (named pipe), not a regular file"),
        (
            Path::new("/dev/null"),
            "is a character device, not a regular file",
        ),
        (
            Path::new("/dev/zero"),
            "is a character device, not a regular file",
        ),
        (Path::new("/"), "does not name a file"),
        (Path::new("/tmp/"), "does not name a file"),
        (&under_file, "which is a file, not a directory"),
        (
            Path::new("/proc/sys/scan-agent-state.json"),
            "every restart would lose it",
        ),
    ];
    for (path, expected) in cases {
        let err = run_refused(&["--state-file", path.to_str().unwrap()]);
        assert!(err.contains(expected), "{path:?}: {err}");
        assert!(
            !err.contains(".bad") && !err.contains("fix its permissions"),
            "{path:?}: misleading advice: {err}"
        );
    }
}

/// The values that made every `/healthz` call panic on `interval * 3`.
#[test]
fn century_long_durations_are_refused() {
    let err = run_refused(&[
        "--interval",
        "200000000000y",
        "--short-window",
        "200000000001y",
        "--baseline-window",
        "200000000002y",
    ]);
    assert!(
        err.contains("--interval") && err.contains("100ms to 1day"),
        "{err}"
    );
    let dir = TempDir::new("century");
    let config = dir.0.join("agent.toml");
    std::fs::write(
        &config,
        "interval = \"200000000000y\"\nshort_window = \"200000000001y\"\n",
    )
    .unwrap();
    let err = run_refused(&["--config", config.to_str().unwrap()]);
    assert!(
        err.contains("--interval") && err.contains("`interval`"),
        "{err}"
    );
}

#[test]
fn misleading_errors_now_say_what_is_wrong() {
    let err = run_refused(&["--floor", "-1"]);
    assert!(
        err.contains("--floor") && err.contains("got -1") && !err.contains("unexpected argument"),
        "{err}"
    );
    for name in [".", "/", "", "lab0/../lab0"] {
        let mut args = vec!["run", "--iface", name];
        args.extend(["--pin-path", "/nonexistent-scan-agent-test/pins"]);
        let (ok, _, err) = agent(&args, b"");
        assert!(!ok);
        assert!(
            err.contains("not a valid interface name") && !err.contains("driver"),
            "{name:?}: {err}"
        );
    }
    let err = run_refused(&["--iface", "nosuchif14"]);
    assert!(err.contains("given twice"), "{err}");
    let err = run_refused(&["--interval", "1ns"]);
    assert!(err.contains("100ms"), "{err}");
    let err = run_refused(&["--save-interval", "1ns"]);
    assert!(
        err.contains("--save-interval") && err.contains("10s"),
        "{err}"
    );
    let dir = TempDir::new("unitless");
    let config = dir.0.join("agent.toml");
    std::fs::write(&config, "interval = 5\n").unwrap();
    let err = run_refused(&["--config", config.to_str().unwrap()]);
    assert!(err.contains("no unit") && err.contains("\"5s\""), "{err}");
}

#[test]
fn replay_of_a_fifo_is_refused_at_once() {
    let dir = TempDir::new("replay-fifo");
    let fifo = dir.fifo("capture.pcap");
    let (ok, _, err) = agent(&["replay", fifo.to_str().unwrap()], b"");
    assert!(!ok);
    assert!(
        err.contains("is a FIFO (named pipe), not a regular file")
            && err.contains("- for standard input"),
        "{err}"
    );
    let (ok, _, err) = agent(&["replay", "/dev/zero"], b"");
    assert!(!ok);
    assert!(err.contains("is a character device"), "{err}");
}

/// Replay from a pipe used to end in `Illegal seek`; `-` now reads standard input in
/// one pass (this runs the real program: root, as `cargo xtask test` does).
#[test]
fn replay_reads_a_pipe_from_dash() {
    use scan_lab::frames::{Frame, tcp};
    let dir = TempDir::new("replay-pipe");
    let syn = |port| Frame::ipv4_tcp([198, 18, 0, 1], [198, 19, 0, 1], 1, port, tcp::SYN).build();
    let frames: Vec<(Duration, Vec<u8>)> = (0..7)
        .map(|i| (Duration::from_secs(1_700_000_000 + i), syn(445)))
        .collect();
    for (name, write) in [
        ("c.pcap", scan_lab::pcap::write_pcap as fn(&Path, &_) -> _),
        ("c.pcapng", scan_lab::pcap::write_pcapng),
    ] {
        let path = dir.0.join(name);
        write(&path, &frames).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let (ok, out, err) = agent(&["replay", "--format", "json", "-"], &bytes);
        assert!(
            ok,
            "{name}: {err}\n(replay needs root or CAP_BPF + CAP_NET_ADMIN: effective uid {})",
            // SAFETY: geteuid has no preconditions.
            unsafe { libc::geteuid() }
        );
        let report: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
        assert_eq!(report["packets"], 7, "{out}");
        assert_eq!(report["ports"]["445"], 7, "{out}");
    }
    let (ok, _, err) = agent(&["replay", "-"], b"");
    assert!(!ok);
    assert!(err.contains("is empty (0 bytes)"), "{err}");
}

/// Issue 14: `detach --pin-path /tmp/x` deleted a regular file named `SCAN_CLASSES`
/// there, then failed with "Directory not empty".
#[test]
fn detach_outside_bpffs_removes_nothing() {
    let dir = TempDir::new("detach");
    let decoy = dir.0.join("SCAN_CLASSES");
    std::fs::write(&decoy, "not a pin").unwrap();
    let (ok, _, err) = agent(&["detach", "--pin-path", dir.0.to_str().unwrap()], b"");
    assert!(!ok);
    assert!(
        err.contains("is not a directory on a bpffs") && err.contains("removed nothing"),
        "{err}"
    );
    assert!(decoy.exists(), "detach removed a file outside bpffs");
    let (ok, _, err) = agent(&["detach", "--pin-path", decoy.to_str().unwrap()], b"");
    assert!(
        !ok && err.contains("is not a directory on a bpffs"),
        "{err}"
    );
    assert!(decoy.exists());
}

/// On a bpffs, `detach` removes only pins of its own names and types: a map of another
/// type pinned under one of its names, or a directory of that name, stays.
#[test]
fn detach_removes_only_its_own_pins() {
    use scan_agent::sensor::{Hook, LinkKind, Sensor, detach_all};
    let ours = scan_lab::agent::Scratch::new("detach-ours", Path::new(AGENT)).unwrap();
    let other = scan_lab::agent::Scratch::new("detach-other", Path::new(AGENT)).unwrap();
    let sensor = Sensor::unattached_pinned(&ours.pin_path, Hook::Xdp, LinkKind::Ethernet)
        .unwrap_or_else(|e| {
            panic!(
                "cannot load the program with pins, so this test cannot run: {e} (effective uid \
             {}; it needs root and a bpffs at /sys/fs/bpf, as `cargo xtask test` has)",
                // SAFETY: geteuid has no preconditions.
                unsafe { libc::geteuid() }
            )
        });
    drop(sensor);
    std::fs::create_dir_all(&other.pin_path).unwrap();
    // The sketch map (an Array named SCAN_SKETCHES) pinned as SCAN_CLASSES (a
    // per-CPU array of scan-agent's), and a directory named like the port map.
    std::fs::rename(
        ours.pin_path.join("SCAN_SKETCHES"),
        other.pin_path.join("SCAN_CLASSES"),
    )
    .unwrap();
    std::fs::create_dir(other.pin_path.join("SCAN_PORT_SYNS")).unwrap();
    let removed = detach_all(&other.pin_path).expect("detach");
    assert_eq!(removed, Vec::<String>::new());
    assert!(other.pin_path.join("SCAN_CLASSES").exists());
    assert!(other.pin_path.join("SCAN_PORT_SYNS").is_dir());
    let mut expected: Vec<String> = std::fs::read_dir(&ours.pin_path)
        .unwrap()
        .map(|e| format!("map pin {}", e.unwrap().path().display()))
        .collect();
    assert!(expected.len() >= 2, "{expected:?}");
    expected.push(format!("directory {}", ours.pin_path.display()));
    let mut removed = detach_all(&ours.pin_path).expect("detach");
    expected.sort();
    removed.sort();
    assert_eq!(removed, expected);
    assert!(!ours.pin_path.exists());
}

/// Issue 14: of 200 concurrent `/metrics` requests whose clients shut their write side
/// after sending, 36 got an empty reply (hyper's half-close support is off by default).
#[test]
fn half_closed_requests_are_all_answered() {
    use std::{
        io::Read,
        net::{Shutdown, TcpStream},
        sync::{Arc, Barrier},
    };
    const CLIENTS: usize = 200;
    let lab =
        scan_lab::Lab::create().expect("creating the lab (needs root and network namespaces)");
    let scratch = scan_lab::Scratch::new("half-close", Path::new(AGENT)).unwrap();
    let mut args = vec!["--iface".to_string(), lab.host_if.clone()];
    args.extend(scratch.agent_args());
    let agent = scan_lab::Agent::start(Path::new(AGENT), &args, &scratch.file("agent.log"))
        .unwrap_or_else(|e| panic!("the agent does not start: {e:#}"));
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let barrier = barrier.clone();
            let address = agent.listen;
            std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
                let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(10))?;
                stream.set_read_timeout(Some(Duration::from_secs(30)))?;
                barrier.wait();
                stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")?;
                stream.shutdown(Shutdown::Write)?;
                let mut reply = Vec::new();
                stream.read_to_end(&mut reply)?;
                Ok(reply)
            })
        })
        .collect();
    let mut answered = 0;
    let mut failures = Vec::new();
    for client in clients {
        match client.join().expect("client thread") {
            Ok(reply) if reply.starts_with(b"HTTP/1.1 200 ") => answered += 1,
            Ok(reply) => failures.push(format!(
                "{:?}",
                String::from_utf8_lossy(&reply[..reply.len().min(60)])
            )),
            Err(e) => failures.push(e.to_string()),
        }
    }
    assert_eq!(
        answered,
        CLIENTS,
        "unanswered: {failures:?}\nagent log:\n{}",
        agent.log_text()
    );
}
