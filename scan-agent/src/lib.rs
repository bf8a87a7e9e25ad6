//! scan-agent: reads the XDP sensor's counters, learns per-port baselines, detects
//! surges and exports them to Prometheus. `main.rs` is only the command line.
pub mod capture;
pub mod check;
pub mod config;
pub mod daemon;
pub mod detector;
pub mod frames;
pub mod metrics;
pub mod replay;
pub mod sensor;
pub mod state;
