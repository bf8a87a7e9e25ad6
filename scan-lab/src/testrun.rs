//! Helpers for tests that run frames through the XDP program with `BPF_PROG_TEST_RUN`.
use aya::programs::ProgramError;
use scan_agent::sensor::SensorError;

/// The kernel refused a test-run input (EINVAL), as it does for frames shorter
/// than an Ethernet header.
pub fn is_refused_test_input(error: &SensorError) -> bool {
    matches!(
        error,
        SensorError::TestRun(inner) if matches!(
            &**inner,
            ProgramError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::EINVAL)
        )
    )
}
