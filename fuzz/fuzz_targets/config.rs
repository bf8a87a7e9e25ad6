//! The config file parser and validation on any bytes: an error, or a config whose
//! values are in range and safe to compute with.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use scan_agent::config::{FileConfig, MAX_INTERVAL, MAX_WINDOW, MIN_INTERVAL, RunArgs};

fuzz_target!(|data: &[u8]| {
    let Ok(file) = FileConfig::parse(Path::new("fuzz.toml"), data) else {
        return;
    };
    let Ok(config) = RunArgs::default().resolve_with(file) else {
        return;
    };
    let d = &config.detector;
    assert!((MIN_INTERVAL..=MAX_INTERVAL).contains(&d.interval));
    assert!(d.interval.checked_mul(3).is_some());
    for window in [
        d.short_window,
        d.baseline_window,
        d.warmup,
        d.surge_adapt_window,
    ] {
        assert!(window <= MAX_WINDOW);
    }
    assert!(d.surge_threshold.is_finite() && d.floor.is_finite());
});
