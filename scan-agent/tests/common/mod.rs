//! Shared by the test binaries that load the real XDP program.
use scan_agent::sensor::{Hook, LinkKind, Sensor};

/// Loads the XDP Ethernet entry point with private maps, or fails the test saying
/// why: these tests are never skipped.
#[allow(dead_code)] // not every test binary uses it
pub fn load_sensor() -> Sensor {
    load_entry(Hook::Xdp, LinkKind::Ethernet)
}

/// Loads the entry point for `hook` and `kind` with private maps, or fails the test.
#[allow(dead_code)] // not every test binary runs every entry point
pub fn load_entry(hook: Hook, kind: LinkKind) -> Sensor {
    match Sensor::unattached(hook, kind) {
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
