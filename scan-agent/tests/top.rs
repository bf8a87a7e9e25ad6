//! `scan-agent top` in a real terminal (tmux, 80x24) against a lab agent with a surge:
//! the surging port is on top, sorting and filtering work, `q` exits 0 and leaves the
//! terminal as it found it; NO_COLOR removes the colours; `--once` prints a plain table.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use scan_agent::api::PortsResponse;
use scan_lab::{Agent, Lab, Scratch, tmux::Tmux};

const AGENT: &str = env!("CARGO_BIN_EXE_scan-agent");
const WAIT: Duration = Duration::from_secs(10);

/// The port in the first column of table row `row` (0 = first data row).
fn port_at(screen: &[String], row: usize) -> Option<u16> {
    screen
        .get(2 + row)?
        .split_whitespace()
        .next()?
        .trim_end_matches('!')
        .parse()
        .ok()
}

/// The ports of every data row on screen, top to bottom.
fn ports_on(screen: &[String]) -> Vec<u16> {
    (0..screen.len().saturating_sub(3))
        .map_while(|row| port_at(screen, row))
        .collect()
}

/// Whether SGR parameters `params` set a foreground or background colour (not the default).
fn sets_colour(params: &str) -> bool {
    let p: Vec<&str> = params.split(';').collect();
    p.iter()
        .any(|x| matches!(x.parse::<u8>(), Ok(30..=37 | 40..=47 | 90..=97 | 100..=107)))
        || p.windows(2).any(|w| matches!(w, ["38" | "48", "5" | "2"]))
}

/// Whether SGR parameters `params` set red (8-colour or the first 256-colour entries).
fn sets_red(params: &str) -> bool {
    params.split(';').any(|x| x == "31") || params.contains("38;5;1") || params.contains("38;5;9")
}

/// Parameters of every SGR escape sequence (`ESC [ ... m`) in `text`.
fn sgr_params(text: &str) -> Vec<String> {
    text.split("\x1b[")
        .skip(1)
        .filter_map(|s| s.split_once('m').map(|(p, _)| p.to_string()))
        .filter(|p| p.chars().all(|c| c.is_ascii_digit() || c == ';'))
        .collect()
}

#[test]
fn top_in_a_terminal_shows_the_surge_sorts_filters_and_quits_cleanly() {
    let lab = Lab::create().expect("creating the lab (needs root and network namespaces)");
    let scratch = Scratch::new("top", AGENT.as_ref()).expect("scratch directories");
    let agent = scratch
        .start_agent(
            &lab.host_if,
            &[
                "--warmup",
                "6s",
                "--surge-threshold",
                "4",
                "--watch-ports",
                "22,80,445",
                "--top-ports",
                "5",
            ],
            "agent",
        )
        .expect("agent");
    let url = format!("http://{}", agent.listen);

    // Normal traffic through the warm-up, then a surge on 445 (all bounded in count).
    std::thread::scope(|scope| {
        scope.spawn(|| lab.syns_at_rate(22, 40, 4.0).expect("SYNs to 22"));
        scope.spawn(|| lab.syns_at_rate(80, 20, 2.0).expect("SYNs to 80"));
    });
    lab.syns_at_rate(445, 300, 100.0).expect("surge on 445");
    let started = Instant::now();
    loop {
        let (_, body) = scan_lab::http::get(agent.listen, "/api/v1/ports").unwrap();
        let ports: PortsResponse = serde_json::from_str(&body).expect(&body);
        if ports.ports.iter().any(|p| p.port == 445 && p.flagged) {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "445 not flagged: {body}\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // --once: a plain table for scripts, 445 first, no escape sequences.
    let once = Command::new(AGENT)
        .args(["top", "--once", "--url", &url])
        .output()
        .unwrap();
    let text = String::from_utf8(once.stdout).unwrap();
    assert!(
        once.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&once.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[1].starts_with("  PORT"), "{text}");
    assert_eq!(lines[2].split_whitespace().next(), Some("445!"), "{text}");
    assert!(!text.contains('\x1b'), "{text}");

    let term = Tmux::start(
        "top",
        80,
        24,
        &[("LANG", "C.UTF-8"), ("TERM", "xterm-256color")],
    )
    .expect("tmux");
    term.type_line("PS1='$ '; stty sane").unwrap();
    term.type_line(&format!(
        "{AGENT} top --url {url} --refresh 500ms; echo EXIT=$?"
    ))
    .unwrap();
    let screen = term
        .wait_for(WAIT, "445 on top", |s| port_at(s, 0) == Some(445))
        .unwrap();
    assert!(screen[0].contains("scan-agent"), "{}", screen.join("\n"));
    assert!(screen[1].contains("PORT") && screen[1].contains("RATIO"));
    assert!(screen.last().unwrap().contains("sort: ratio"));
    assert_eq!(term.format("#{alternate_on}").unwrap(), "1");
    // Flagged rows are red in colour.
    let escapes = term.screen_with_escapes().unwrap();
    assert!(
        sgr_params(&escapes).iter().any(|p| sets_red(p)),
        "no red in {escapes:?}"
    );
    assert!(
        screen.iter().any(|l| l.contains('▁') || l.contains('█')),
        "no sparkline: {}",
        screen.join("\n")
    );

    // s: ratio -> SYN/s -> episode -> port.
    term.keys(&["s", "s", "s"]).unwrap();
    let screen = term
        .wait_for(WAIT, "sorted by port", |s| {
            s.last().is_some_and(|l| l.contains("sort: port"))
        })
        .unwrap();
    let ports = ports_on(&screen);
    assert!(ports.len() >= 3, "{}", screen.join("\n"));
    assert!(ports.is_sorted(), "{}", screen.join("\n"));
    assert_eq!(&ports[..3], [22, 80, 445], "{}", screen.join("\n"));

    // /: filter to port 80, then c clears it.
    term.keys(&["/", "8", "0", "Enter"]).unwrap();
    let screen = term
        .wait_for(WAIT, "filtered to 80", |s| {
            s.last().is_some_and(|l| l.contains("filter: 80"))
        })
        .unwrap();
    assert_eq!(ports_on(&screen), [80], "{}", screen.join("\n"));
    term.keys(&["/", "9", "9", "9", "9", ",", "4", "4", "5", "Enter"])
        .unwrap();
    let screen = term
        .wait_for(WAIT, "filtered to 445 and an idle port", |s| {
            ports_on(s).len() == 2
        })
        .unwrap();
    assert_eq!(ports_on(&screen), [445, 9999], "{}", screen.join("\n"));
    term.keys(&["c"]).unwrap();
    term.wait_for(WAIT, "filter cleared", |s| {
        s.last().is_some_and(|l| l.contains("filter: all")) && ports_on(s).len() >= 3
    })
    .unwrap();

    // p pauses: the header says so and it resumes.
    term.keys(&["p"]).unwrap();
    term.wait_for(WAIT, "paused", |s| s[0].contains("PAUSED"))
        .unwrap();
    term.keys(&["p"]).unwrap();
    term.wait_for(WAIT, "resumed", |s| !s[0].contains("PAUSED"))
        .unwrap();

    // q: exit status 0, normal screen back, cursor shown, cooked mode with echo.
    term.keys(&["q"]).unwrap();
    term.wait_for(WAIT, "exit status", |s| s.iter().any(|l| l == "EXIT=0"))
        .unwrap();
    assert_eq!(
        term.format("#{alternate_on} #{cursor_flag}").unwrap(),
        "0 1"
    );
    term.type_line("echo MODE $(stty -a | tr ' ;' '\\n\\n' | grep -x -e -icanon -e icanon -e -echo -e echo | sort | tr '\\n' ' ')")
        .unwrap();
    term.wait_for(WAIT, "terminal modes", |s| {
        s.iter().any(|l| l.starts_with("MODE "))
    })
    .map(|s| {
        let line = s
            .iter()
            .find(|l| l.starts_with("MODE "))
            .unwrap()
            .trim()
            .to_string();
        assert_eq!(line, "MODE echo icanon", "terminal left in raw mode");
    })
    .unwrap();

    // NO_COLOR: the same view without any colour; flagged rows still marked with `!`.
    term.type_line("clear").unwrap();
    term.type_line(&format!(
        "NO_COLOR=1 {AGENT} top --url {url} --refresh 500ms; echo EXIT=$?"
    ))
    .unwrap();
    let screen = term
        .wait_for(WAIT, "445 on top without colour", |s| {
            port_at(s, 0) == Some(445)
        })
        .unwrap();
    assert!(
        screen[2].trim_start().starts_with("445!"),
        "{}",
        screen.join("\n")
    );
    let escapes = term.screen_with_escapes().unwrap();
    let coloured: Vec<String> = sgr_params(&escapes)
        .into_iter()
        .filter(|p| sets_colour(p))
        .collect();
    assert!(coloured.is_empty(), "colours with NO_COLOR: {coloured:?}");
    term.keys(&["q"]).unwrap();
    term.wait_for(WAIT, "exit status", |s| {
        s.iter().filter(|l| *l == "EXIT=0").count() == 1
    })
    .unwrap();
}

/// `top --once` against an agent serving TLS with a required client certificate and
/// basic auth: with the scraper's options it reads the table; without the CA, with a
/// wrong password or without the client certificate it fails saying why.
#[test]
fn top_reads_an_agent_over_mutual_tls_with_basic_auth() {
    use scan_lab::pki::{Pki, bcrypt_hash};
    let lab = Lab::create().expect("creating the lab (needs root and network namespaces)");
    let scratch = Scratch::new("top-tls", AGENT.as_ref()).expect("scratch directories");
    let pki = Pki::new(&scratch.dir, "top").expect("test CA");
    let server = pki.server("agent").expect("server certificate");
    let client = pki
        .client("top", "top.example")
        .expect("client certificate");
    let path = |p: &std::path::Path| p.display().to_string();
    let web_config = scratch.file("web.yml");
    std::fs::write(
        &web_config,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n\
             basic_auth_users:\n  operator: '{}'\n",
            path(&server.cert),
            path(&server.key),
            path(&pki.ca),
            bcrypt_hash("s3cret").unwrap()
        ),
    )
    .unwrap();
    let password = scratch.file("password");
    std::fs::write(&password, "s3cret\n").unwrap();
    let wrong = scratch.file("wrong");
    std::fs::write(&wrong, "guess\n").unwrap();
    let mut args: Vec<String> = ["--iface", &lab.host_if, "--interval", "1s"]
        .map(String::from)
        .to_vec();
    args.extend(scratch.agent_args());
    args.extend(["--web.config.file".into(), path(&web_config)]);
    let curl = [
        "--cacert",
        &path(&pki.ca),
        "--cert",
        &path(&client.cert),
        "--key",
        &path(&client.key),
        "-u",
        "operator:s3cret",
    ]
    .map(String::from)
    .to_vec();
    let agent = Agent::start_with(
        AGENT.as_ref(),
        &args,
        &scratch.file("agent.log"),
        Some(curl),
    )
    .expect("agent serving TLS");
    lab.syns(false, 445, 7).unwrap();
    let url = format!("https://{}", agent.listen);
    let top = |extra: &[&str]| {
        let out = Command::new(AGENT)
            .args(["top", "--once", "--url", &url])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ca = path(&pki.ca);
    let cert = path(&client.cert);
    let key = path(&client.key);
    let good_password = path(&password);
    let all = [
        "--ca-file",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "--user",
        "operator",
        "--password-file",
        &good_password,
    ];
    // The API renders the last poll: wait for the one that saw the 7 SYNs.
    let started = Instant::now();
    loop {
        let (ok, out, err) = top(&all);
        assert!(ok, "top over mutual TLS with basic auth: {out}{err}");
        assert!(
            out.lines().nth(1).unwrap_or_default().starts_with("  PORT"),
            "{out}"
        );
        if out.contains(" 7 SYNs") {
            break;
        }
        assert!(started.elapsed() < WAIT, "7 SYNs not shown: {out}");
        std::thread::sleep(Duration::from_millis(300));
    }

    let (ok, _, err) = top(&all[2..]);
    assert!(!ok && err.contains("--ca-file"), "without the CA: {err}");
    let wrong_password = path(&wrong);
    let mut with_wrong = all.to_vec();
    with_wrong[9] = &wrong_password;
    let (ok, _, err) = top(&with_wrong);
    assert!(!ok && err.contains("401"), "wrong password: {err}");
    let (ok, _, err) = top(&[&all[..2], &all[6..]].concat());
    assert!(
        !ok && err.contains("error:"),
        "without the client certificate: {err}"
    );
    let (ok, _, err) = top(&["--cert", &cert]);
    assert!(!ok && err.contains("--key"), "--cert without --key: {err}");
}
