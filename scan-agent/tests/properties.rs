//! Property tests (issue 14) of the parsers of user input: the config file, the flags
//! and the state file take any input without panicking, accept exactly what the rules
//! allow, and what they accept is safe to compute with.
use std::{path::Path, time::Duration};

use clap::Parser as _;
use proptest::prelude::*;
use scan_agent::{
    config::{
        AgentConfig, Cli, Command, MAX_IFACE_LEN, MAX_INTERVAL, MAX_SAVE_INTERVAL, MAX_TOP_PORTS,
        MAX_WATCH_PORTS, MAX_WINDOW, MIN_INTERVAL, MIN_SAVE_INTERVAL, validate_interfaces,
    },
    detector::{Detector, DetectorConfig, PORTS},
    state,
};

/// Parses `scan-agent run ARGS` and resolves it; any error as text.
fn resolve(args: &[String]) -> Result<AgentConfig, String> {
    let cli = Cli::try_parse_from(
        ["scan-agent", "run"]
            .into_iter()
            .map(String::from)
            .chain(args.iter().cloned()),
    )
    .map_err(|e| e.to_string())?;
    let Command::Run(run) = cli.command else {
        unreachable!("parsed `run`")
    };
    run.resolve().map_err(|e| e.to_string())
}

/// What every accepted config satisfies: each value in its range, and the arithmetic
/// the agent does on them cannot overflow.
fn assert_safe(c: &AgentConfig) {
    let d = &c.detector;
    assert!((MIN_INTERVAL..=MAX_INTERVAL).contains(&d.interval), "{c:?}");
    for w in [
        d.short_window,
        d.baseline_window,
        d.warmup,
        d.surge_adapt_window,
    ] {
        assert!(w <= MAX_WINDOW, "{c:?}");
    }
    assert!(d.interval <= d.short_window && d.short_window < d.baseline_window);
    assert!(d.surge_threshold.is_finite() && d.surge_threshold > 1.0);
    assert!(d.floor.is_finite() && d.floor > 0.0);
    assert!((MIN_SAVE_INTERVAL..=MAX_SAVE_INTERVAL).contains(&c.save_interval));
    assert!(c.top_ports <= MAX_TOP_PORTS && c.watch_ports.len() <= MAX_WATCH_PORTS);
    // What /healthz and the poll loop compute.
    assert!(d.interval.checked_mul(3).is_some());
    assert!(d.baseline_window.checked_add(d.warmup).is_some());
    assert!(validate_interfaces(&c.interfaces).is_ok());
}

/// The kernel's `dev_valid_name`, written out independently of the agent's check.
fn kernel_accepts(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFACE_LEN
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

/// A duration as a user might write it, well-formed or not.
fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            any::<u64>(),
            prop::sample::select(vec!["ns", "us", "ms", "s", "m", "h", "d", "y", "years", ""])
        )
            .prop_map(|(n, unit)| format!("{n}{unit}")),
        (0u64..200, prop::sample::select(vec!["ms", "s", "m", "h"]))
            .prop_map(|(n, unit)| format!("{n}{unit}")),
        "-?[0-9]{1,25}[a-z]{0,6}",
        "\\PC{0,12}",
    ]
}

/// A number as a user might write it.
fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<f64>().prop_map(|x| x.to_string()),
        any::<i64>().prop_map(|x| x.to_string()),
        "-?[0-9]{0,20}(\\.[0-9]{0,5})?(e-?[0-9]{1,4})?",
        prop::sample::select(vec!["NaN", "inf", "-inf", "-0", "1e309", ""]).prop_map(String::from),
    ]
}

/// One `run` flag with a value.
fn flag() -> impl Strategy<Value = Vec<String>> {
    let duration_flag = prop::sample::select(vec![
        "--interval",
        "--short-window",
        "--baseline-window",
        "--warmup",
        "--surge-adapt-window",
        "--save-interval",
    ]);
    let number_flag = prop::sample::select(vec!["--floor", "--surge-threshold", "--top-ports"]);
    prop_oneof![
        (duration_flag, duration_text()).prop_map(|(f, v)| vec![f.to_string(), v]),
        (number_flag, number_text()).prop_map(|(f, v)| vec![f.to_string(), v]),
        "[0-9,-]{0,30}".prop_map(|v| vec!["--watch-ports".to_string(), v]),
        "\\PC{0,20}".prop_map(|v| vec!["--iface".to_string(), v]),
    ]
}

/// One TOML line of a config file.
fn toml_line() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "interval",
        "short_window",
        "baseline_window",
        "warmup",
        "surge_adapt_window",
        "save_interval",
        "floor",
        "surge_threshold",
        "top_ports",
        "watch_ports",
        "iface",
        "keep_attached",
        "intervall",
    ]);
    let value = prop_oneof![
        duration_text().prop_map(|t| format!("{t:?}")),
        number_text(),
        any::<bool>().prop_map(|b| b.to_string()),
        prop::collection::vec("\\PC{0,18}", 0..4).prop_map(|v| format!("{v:?}")),
        prop::collection::vec(any::<i32>(), 0..4).prop_map(|v| format!("{v:?}")),
        "\\PC{0,20}",
    ];
    (key, value).prop_map(|(k, v)| format!("{k} = {v}"))
}

fn temp_path(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "scan-agent-prop-{}-{tag}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any flags: an error or a safe config, never a panic.
    #[test]
    fn any_flags_give_an_error_or_a_safe_config(flags in prop::collection::vec(flag(), 0..6)) {
        let args: Vec<String> = flags.concat();
        if let Ok(config) = resolve(&args) {
            assert_safe(&config);
        }
    }

    /// `--interval` alone is accepted exactly in its range (and up to the default short
    /// window of 1 minute, which must span a poll).
    #[test]
    fn interval_accepted_exactly_in_range(nanos in prop_oneof![
        any::<u64>(),
        0u64..200_000_000_000,
        90_000_000u64..110_000_000,
    ]) {
        let result = resolve(&["--interval".into(), format!("{nanos}ns")]);
        let d = Duration::from_nanos(nanos);
        let expected = d >= MIN_INTERVAL && d <= Duration::from_secs(60);
        prop_assert_eq!(result.is_ok(), expected, "{:?}: {:?}", d, result);
        if let Err(e) = result {
            prop_assert!(e.contains("--interval") || e.contains("--short-window"), "{}", e);
        }
    }

    /// `--save-interval` alone is accepted exactly in its range.
    #[test]
    fn save_interval_accepted_exactly_in_range(secs in prop_oneof![any::<u64>(), 0u64..200_000]) {
        let result = resolve(&["--save-interval".into(), format!("{secs}s")]);
        let d = Duration::from_secs(secs);
        let expected = (MIN_SAVE_INTERVAL..=MAX_SAVE_INTERVAL).contains(&d);
        prop_assert_eq!(result.is_ok(), expected, "{:?}: {:?}", d, result);
    }

    /// Interface names: accepted exactly when the kernel would take them.
    #[test]
    fn interface_names_as_the_kernel(name in prop_oneof![
        "\\PC{0,20}",
        "[a-z0-9./: *\t-]{0,18}",
        prop::sample::select(vec![".", "..", "", "lo", "eth0", "ppp*", "a/b"]).prop_map(String::from),
    ]) {
        let result = validate_interfaces(std::slice::from_ref(&name));
        prop_assert_eq!(result.is_ok(), kernel_accepts(&name), "{:?}: {:?}", name, result);
        if kernel_accepts(&name) {
            let twice = validate_interfaces(&[name.clone(), name.clone()]);
            prop_assert!(twice.is_err(), "{:?} twice accepted", name);
        }
    }

    /// Any config file text: an error or a safe config, never a panic.
    #[test]
    fn any_config_file_gives_an_error_or_a_safe_config(
        lines in prop::collection::vec(toml_line(), 0..8),
        noise in "\\PC{0,30}",
        with_noise in any::<bool>(),
    ) {
        let mut text = lines.join("\n");
        if with_noise {
            text.push_str(&noise);
        }
        let path = temp_path("config.toml");
        std::fs::write(&path, &text).unwrap();
        let result = resolve(&["--config".into(), path.display().to_string()]);
        std::fs::remove_file(&path).ok();
        if let Ok(config) = result {
            assert_safe(&config);
        }
    }

    /// Any bytes as a state file: an error, or a state that passes its own checks.
    #[test]
    fn any_state_bytes_decode_or_fail_cleanly(bytes in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        "\\PC{0,200}".prop_map(String::into_bytes),
        ("[0-9]{1,25}", "\\PC{0,60}").prop_map(|(v, rest)| format!("{{\"version\": {v}, {rest}").into_bytes()),
    ]) {
        if let Ok(decoded) = state::decode(Path::new("state.json"), &bytes) {
            prop_assert!(decoded.check().is_ok());
        }
    }

    /// A detector's saved state round-trips exactly, and a damaged copy never panics
    /// the loader.
    #[test]
    fn detector_state_round_trips(
        steps in prop::collection::vec((1u64..100_000, any::<u16>(), 0u64..1_000_000), 1..30),
        damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut detector = Detector::new(DetectorConfig::default());
        let mut counts = vec![0u64; PORTS];
        let mut now = Duration::from_secs(1_700_000_000);
        for (dt_ms, port, add) in steps {
            counts[usize::from(port)] += add;
            now += Duration::from_millis(dt_ms);
            detector.step(now, &counts);
        }
        let saved = detector.snapshot();
        let path = Path::new("state.json");
        let bytes = state::encode(path, &saved).unwrap();
        prop_assert_eq!(&state::decode(path, &bytes).unwrap(), &saved);
        let mut damaged = bytes.clone();
        for (at, byte) in damage {
            let i = at.index(damaged.len());
            damaged[i] = byte;
        }
        if let Ok(decoded) = state::decode(path, &damaged) {
            prop_assert!(decoded.check().is_ok());
        }
        let truncated = &bytes[..cut.index(bytes.len())];
        prop_assert!(state::decode(path, truncated).is_err());
    }
}
