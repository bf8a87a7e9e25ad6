//! scan-agent: reads the XDP sensor's counters, learns per-port baselines, detects
//! surges and exports them to Prometheus. `main.rs` is only the command line.
pub mod api;
pub mod breadth;
pub mod capture;
pub mod check;
pub mod config;
pub mod counters;
pub mod cpus;
pub mod daemon;
pub mod detector;
pub mod dispatcher;
pub mod docs;
pub mod input;
pub mod interfaces;
pub mod limits;
pub mod metrics;
pub mod prefixes;
pub mod privsep;
pub mod replay;
pub mod sensor;
pub mod sketch;
pub mod state;
pub mod top;
pub mod web;
pub mod xdp_hook;

/// An error with every cause, each once: the operator sees the errno (e.g. "Read-only
/// file system") and not only the outermost message, and a cause that its context
/// already quotes is not repeated.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
