//! Shared by the test binaries that load the real XDP program.
use scan_agent::sensor::Sensor;

/// Loads the program with private maps, or fails the test saying why: these tests
/// are never skipped.
pub fn load_sensor() -> Sensor {
    match Sensor::load(None) {
        Ok(sensor) => sensor,
        Err(e) => panic!(
            "cannot load the XDP program, so these tests cannot run: {e}\n\
             (effective uid {}; they need root, or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON, \
             and a kernel with BPF; `cargo xtask test` runs them as root)",
            // SAFETY: geteuid has no preconditions.
            unsafe { libc::geteuid() }
        ),
    }
}
