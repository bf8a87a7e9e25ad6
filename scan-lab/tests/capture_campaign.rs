//! Smoke run of the mutated-capture campaign (issue 14; `cargo xtask capture-campaign`
//! runs 10,000 files): 200 damaged captures through the real program in a process of
//! their own, so the RSS measured is the replay's. Needs root, as `cargo xtask test`.
use std::process::Command;

#[test]
fn mutated_captures_smoke() {
    let dir = std::env::temp_dir().join(format!("scan-lab-campaign-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_scan-lab-capture-campaign"))
        .args(["--files", "200", "--seed", "1414", "--time-limit", "5"])
        .args(["--rss-limit-mib", "64", "--dir"])
        .arg(&dir)
        .output()
        .expect("run the campaign");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    std::fs::remove_dir_all(&dir).ok();
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("200 files,"), "{stdout}");
    assert!(
        stdout.contains("0 panics, 0 over the time limit"),
        "{stdout}"
    );
    // The damage reaches both ends: files replayed to the end and several refusals.
    let count = |label: &str| -> u64 {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(label)?.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(count("replayed:") > 15, "{stdout}");
    assert!(stdout.matches("refused: ").count() >= 4, "{stdout}");
}
