//! Process resource limits the sensor needs: RLIMIT_MEMLOCK for map memory.
//!
//! Kernels before 5.11 charge BPF map memory to RLIMIT_MEMLOCK (64 KiB by default, far
//! below the port map's 512 KiB per CPU); from 5.11 it is charged to the memory cgroup
//! and the limit does not matter. The shipped unit sets `LimitMEMLOCK=infinity`; this is
//! for runs outside it.

/// Kernel release as (major, minor), from `/proc/sys/kernel/osrelease`.
pub fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    parse_release(&release)
}

fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    Some((parts.next()?.ok()?, parts.next()?.ok()?))
}

/// Raises RLIMIT_MEMLOCK to infinity. A failure matters only before 5.11 (warned
/// about); on newer kernels (or without CAP_SYS_RESOURCE) it is logged at debug.
pub fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass; no other memory is touched.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
        log::debug!("RLIMIT_MEMLOCK raised to infinity");
        return;
    }
    let error = std::io::Error::last_os_error();
    match kernel_version() {
        Some(version) if version >= (5, 11) => log::debug!(
            "cannot raise RLIMIT_MEMLOCK ({error}); not needed: this kernel charges map \
             memory to the memory cgroup"
        ),
        _ => log::warn!(
            "cannot raise RLIMIT_MEMLOCK ({error}); kernels before 5.11 charge map memory to \
             it, so loading may fail: run with CAP_SYS_RESOURCE or LimitMEMLOCK=infinity"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases() {
        assert_eq!(parse_release("5.10.0-28-amd64\n"), Some((5, 10)));
        assert_eq!(parse_release("6.8.0"), Some((6, 8)));
        assert_eq!(parse_release("5.11"), Some((5, 11)));
        assert_eq!(parse_release(""), None);
        assert_eq!(parse_release("linux"), None);
    }
}
