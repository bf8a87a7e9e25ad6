//! The detector's state file: the only I/O of the detector.
//!
//! The state ([`DetectorState`]: baselines, short-term rates, reference counters, warm-up
//! progress) is saved as JSON, atomically: it is written to a temporary file in the same
//! directory, flushed to disk, renamed over the state file, and the directory is flushed, so a
//! crash or power loss at any moment leaves either the old or the new file, never a torn one.
//!
//! Loading never resets silently: a missing file means a first start (`Ok(None)`, the detector
//! warms up); an unreadable, corrupt or other-version file is an error that names the file and
//! says to move it away.

use crate::detector::{DetectorState, STATE_VERSION};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Why the state file could not be saved or loaded; every message names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The path does not end in a file name.
    #[error(
        "the state file path {path:?} does not name a file; give a file path such as \
         /var/lib/scan-agent/state.json"
    )]
    NotAFile {
        /// The path given.
        path: PathBuf,
    },
    /// A directory on the way to the state file is a file.
    #[error(
        "the state file path {path:?} goes through {parent:?}, which is a file, not a \
         directory; give --state-file a path in a directory, e.g. /var/lib/scan-agent/state.json"
    )]
    ParentNotDir {
        /// The path given.
        path: PathBuf,
        /// The ancestor that is not a directory.
        parent: PathBuf,
    },
    /// The state path exists and is not a regular file.
    #[error(
        "the state file path {path:?} is {file_type}, not a regular file; give --state-file \
         the path of a file (it need not exist yet), e.g. /var/lib/scan-agent/state.json"
    )]
    NotRegular {
        /// The path given.
        path: PathBuf,
        /// What it is.
        file_type: &'static str,
    },
    /// The state directory cannot be written (checked at start with a probe file).
    #[error(
        "cannot write in {dir:?}, the directory of the state file {path:?} ({source}): the \
         agent could not save what it learns, and every restart would lose it; make the \
         directory writable by the agent (e.g. `chown` it to the agent's user, or \
         StateDirectory= in the systemd unit), free space on its file system, or choose \
         another --state-file"
    )]
    NotWritable {
        /// The state file.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The state file is not a readable regular file of sane size.
    #[error(transparent)]
    Input(crate::input::InputError),
    /// The directory of the state file could not be created.
    #[error(
        "cannot create the state directory {dir:?}: {source}; create it (writable by the agent) \
         or choose another state file path"
    )]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The state could not be encoded (should not happen).
    #[error(
        "cannot encode the detector state for {path:?}: {source}; this is a bug, please report it"
    )]
    Encode {
        /// The state file.
        path: PathBuf,
        /// The encoder error.
        source: serde_json::Error,
    },
    /// Writing or flushing the temporary file failed.
    #[error(
        "cannot write the temporary state file {tmp:?} (for {path:?}): {source}; check free space \
         and that the directory is writable by the agent; the previous state file is untouched"
    )]
    Write {
        /// The temporary file.
        tmp: PathBuf,
        /// The state file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Renaming the temporary file over the state file failed.
    #[error(
        "cannot rename {tmp:?} to {path:?}: {source}; check that {path:?} is not a directory and \
         that the directory is writable by the agent; the previous state file is untouched"
    )]
    Rename {
        /// The temporary file.
        tmp: PathBuf,
        /// The state file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Flushing the directory after the rename failed.
    #[error(
        "saved {path:?} but cannot flush its directory {dir:?} to disk: {source}; the new state \
         may be lost on power failure; check the file system"
    )]
    SyncDir {
        /// The state file.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The state file exists but cannot be read.
    #[error(
        "cannot read the state file {path:?}: {source}; fix its permissions, or move it away \
         (e.g. `mv {path:?} {path:?}.bad`) to start with fresh baselines and a new warm-up"
    )]
    Read {
        /// The state file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The state file is not a valid state file (not JSON, truncated, wrong fields).
    #[error(
        "the state file {path:?} is corrupt or not a scan-agent state file ({source}); move it \
         away (e.g. `mv {path:?} {path:?}.bad`) to start with fresh baselines and a new warm-up"
    )]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// The decoder error.
        source: serde_json::Error,
    },
    /// The state file has another format version.
    #[error(
        "the state file {path:?} has format version {found}, this scan-agent reads version \
         {expected}; run the scan-agent version that wrote it, or move the file away \
         (e.g. `mv {path:?} {path:?}.old`) to start with fresh baselines and a new warm-up"
    )]
    Version {
        /// The state file.
        path: PathBuf,
        /// Version in the file.
        found: u64,
        /// Version this build reads.
        expected: u32,
    },
    /// The state file parses but holds impossible values.
    #[error(
        "the state file {path:?} holds invalid values ({reason}); move it away \
         (e.g. `mv {path:?} {path:?}.bad`) to start with fresh baselines and a new warm-up"
    )]
    Invalid {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Largest state file read. The largest possible state (every port with the longest
/// values) encodes to well under this: see the `largest_state_fits_the_limit` test, which
/// keeps the bound honest whatever the format.
pub const MAX_STATE_BYTES: u64 = 16 << 20;

/// The file name of `path`, or `None` when the path names a directory (`/`, `/tmp/`,
/// `a/..`).
fn file_name_of(path: &Path) -> Option<&std::ffi::OsStr> {
    if path.as_os_str().as_encoded_bytes().ends_with(b"/") {
        return None;
    }
    path.file_name()
}

/// The first ancestor of `path` that exists but is not a directory, if any.
fn file_in_the_way(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .skip(1)
        .filter(|a| !a.as_os_str().is_empty())
        .find_map(|a| match fs::metadata(a) {
            Ok(m) if !m.is_dir() => Some(a.to_path_buf()),
            _ => None,
        })
}

/// Checks at start that the state can be saved where `path` says: the path names a
/// file, is not something else (a directory, a device, a FIFO), and its directory can
/// be created and written (a probe file is created, written, flushed and removed), so
/// an unwritable or full file system is found before the agent runs and every restart
/// silently loses what it learned.
pub fn check_writable(path: &Path) -> Result<(), StateError> {
    let not_a_file = || StateError::NotAFile {
        path: path.to_path_buf(),
    };
    let name = file_name_of(path).ok_or_else(not_a_file)?;
    if let Some(parent) = file_in_the_way(path) {
        return Err(StateError::ParentNotDir {
            path: path.to_path_buf(),
            parent,
        });
    }
    match fs::metadata(path) {
        Ok(m) => {
            if let Some(file_type) = crate::input::file_type_name(&m) {
                return Err(StateError::NotRegular {
                    path: path.to_path_buf(),
                    file_type,
                });
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    let dir = dir_of(path);
    fs::create_dir_all(dir).map_err(|source| StateError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let mut probe_name = OsString::from(".");
    probe_name.push(name);
    probe_name.push(format!(".probe.{}", std::process::id()));
    let probe = dir.join(probe_name);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|mut f| {
            f.write_all(b"scan-agent write probe\n")?;
            f.sync_all()
        });
    // Removed even when the write failed (a full disk still lets a file be created).
    let removed = fs::remove_file(&probe);
    written
        .and(removed.or_else(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(e)
            }
        }))
        .map_err(|source| StateError::NotWritable {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
            source,
        })
}

/// The directory holding `path` (`.` for a bare file name).
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Saves `state` to `path` atomically (temporary file in the same directory, fsync, rename,
/// fsync of the directory), creating the directory if it is missing. On error the previous
/// state file is untouched and the temporary file is removed.
pub fn save(path: &Path, state: &DetectorState) -> Result<(), StateError> {
    let Some(name) = file_name_of(path) else {
        return Err(StateError::NotAFile {
            path: path.to_path_buf(),
        });
    };
    let dir = dir_of(path);
    fs::create_dir_all(dir).map_err(|source| StateError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let bytes = encode(path, state)?;

    // Hidden, and unique per process so that two agents never write the same temporary file.
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);

    let written = write_synced(&tmp, &bytes)
        .map_err(|source| StateError::Write {
            tmp: tmp.clone(),
            path: path.to_path_buf(),
            source,
        })
        .and_then(|()| {
            fs::rename(&tmp, path).map_err(|source| StateError::Rename {
                tmp: tmp.clone(),
                path: path.to_path_buf(),
                source,
            })
        });
    if let Err(e) = written {
        // Best effort: the error above is the one worth reporting.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StateError::SyncDir {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
            source,
        })
}

/// The bytes [`save`] writes for `state` (`path` names the file in errors).
pub fn encode(path: &Path, state: &DetectorState) -> Result<Vec<u8>, StateError> {
    serde_json::to_vec(state).map_err(|source| StateError::Encode {
        path: path.to_path_buf(),
        source,
    })
}

fn write_synced(tmp: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Only the version, read before the rest so that a file of another version is reported as
/// such even if its other fields changed.
#[derive(serde::Deserialize)]
struct VersionProbe {
    version: u64,
}

/// Loads the state saved at `path`. `Ok(None)` if the file does not exist (first start); an
/// unreadable, corrupt, other-version or invalid file is an error naming the path, never a
/// silent reset.
pub fn load(path: &Path) -> Result<Option<DetectorState>, StateError> {
    use crate::input::{self, InputError};
    if file_name_of(path).is_none() {
        return Err(StateError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let bytes = match input::read_regular(path, input::STATE, MAX_STATE_BYTES) {
        Ok(bytes) => bytes,
        Err(InputError::Open { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(InputError::Open { source, .. }) if source.kind() == io::ErrorKind::NotADirectory => {
            return Err(StateError::ParentNotDir {
                path: path.to_path_buf(),
                parent: file_in_the_way(path).unwrap_or_else(|| dir_of(path).to_path_buf()),
            });
        }
        Err(InputError::NotRegular { file_type, .. }) => {
            return Err(StateError::NotRegular {
                path: path.to_path_buf(),
                file_type,
            });
        }
        Err(InputError::Open { source, .. } | InputError::Read { source, .. }) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
        Err(e) => return Err(StateError::Input(e)),
    };
    decode(path, &bytes).map(Some)
}

/// Decodes and checks the bytes of a state file (`path` names it in errors): the
/// loader's whole parser, whatever the bytes (property tests and a fuzz target feed
/// it arbitrary input).
pub fn decode(path: &Path, bytes: &[u8]) -> Result<DetectorState, StateError> {
    let corrupt = |source| StateError::Corrupt {
        path: path.to_path_buf(),
        source,
    };
    let probe: VersionProbe = serde_json::from_slice(bytes).map_err(corrupt)?;
    if probe.version != u64::from(STATE_VERSION) {
        return Err(StateError::Version {
            path: path.to_path_buf(),
            found: probe.version,
            expected: STATE_VERSION,
        });
    }
    let state: DetectorState = serde_json::from_slice(bytes).map_err(corrupt)?;
    state.check().map_err(|reason| StateError::Invalid {
        path: path.to_path_buf(),
        reason,
    })?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::{Detector, DetectorConfig, PORTS};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "scan-agent-state-test-{}-{}-{name}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("create temp dir");
            Self(dir)
        }

        fn entries(&self) -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(&self.0)
                .expect("read temp dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A detector state with some history on a few ports.
    fn sample_state(seed: u64) -> DetectorState {
        let mut det = Detector::new(DetectorConfig::default());
        let mut cum = vec![0u64; PORTS];
        let t0 = Duration::from_secs(1_700_000_000);
        for i in 0..100u64 {
            cum[22] += i % 3 + seed;
            cum[445] += 10 + i % 7;
            cum[65_535] += 1;
            det.step(t0 + Duration::from_secs(5 * i), &cum);
        }
        det.snapshot()
    }

    #[test]
    fn round_trip() {
        let tmp = TempDir::new("round-trip");
        let path = tmp.0.join("state.json");
        let state = sample_state(1);
        save(&path, &state).expect("save");
        let loaded = load(&path).expect("load").expect("file exists");
        assert_eq!(loaded, state);
        // And the restored detector is the same detector.
        let config = DetectorConfig::default();
        assert_eq!(Detector::restore(config, loaded).snapshot(), state);
        assert_eq!(tmp.entries(), vec!["state.json"]);
    }

    #[test]
    fn missing_file_is_none() {
        let tmp = TempDir::new("missing");
        assert!(load(&tmp.0.join("state.json")).expect("load").is_none());
        assert!(
            load(&tmp.0.join("no-such-dir/state.json"))
                .expect("load")
                .is_none()
        );
    }

    #[test]
    fn creates_missing_parent_directories() {
        let tmp = TempDir::new("mkdir");
        let path = tmp.0.join("a/b/state.json");
        let state = sample_state(2);
        save(&path, &state).expect("save");
        assert_eq!(load(&path).expect("load"), Some(state));
    }

    #[test]
    fn corrupt_file_is_a_clear_error() {
        let tmp = TempDir::new("corrupt");
        let path = tmp.0.join("state.json");
        for content in [
            &b""[..],
            b"not json",
            b"{\"version\": 2",
            b"{\"version\": 2}",
            b"[1, 2, 3]",
            b"{\"ports\": []}",
        ] {
            fs::write(&path, content).expect("write");
            let err = load(&path).expect_err("corrupt file accepted");
            assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(
                msg.contains("state.json") && msg.contains("move it away"),
                "{msg}"
            );
        }
        // A truncated real file.
        save(&path, &sample_state(3)).expect("save");
        let bytes = fs::read(&path).expect("read");
        fs::write(&path, &bytes[..bytes.len() / 2]).expect("write");
        assert!(matches!(load(&path), Err(StateError::Corrupt { .. })));
        // The file is left where it was: the operator decides.
        assert!(path.exists());
    }

    #[test]
    fn other_version_is_a_clear_error() {
        let tmp = TempDir::new("version");
        let path = tmp.0.join("state.json");
        let text = format!(
            "{{\"version\": {}, \"something\": \"else\"}}",
            STATE_VERSION + 1
        );
        fs::write(&path, text).expect("write");
        let err = load(&path).expect_err("other version accepted");
        let expected = u64::from(STATE_VERSION) + 1;
        assert!(matches!(err, StateError::Version { found, .. } if found == expected));
        let msg = err.to_string();
        assert!(
            msg.contains("state.json") && msg.contains("move the file away"),
            "{msg}"
        );
    }

    #[test]
    fn invalid_values_are_a_clear_error() {
        let tmp = TempDir::new("invalid");
        let path = tmp.0.join("state.json");
        let mut state = sample_state(4);
        state.ports[0].rate = f64::NAN;
        save(&path, &state).expect("save");
        let err = load(&path).expect_err("NaN accepted");
        assert!(matches!(err, StateError::Invalid { .. }), "{err:?}");
        assert!(err.to_string().contains("rate"), "{err}");
    }

    #[test]
    fn save_replaces_atomically_and_leaves_no_temp_file() {
        let tmp = TempDir::new("atomic");
        let path = tmp.0.join("state.json");
        save(&path, &sample_state(5)).expect("first save");
        let newer = sample_state(6);
        save(&path, &newer).expect("second save");
        assert_eq!(load(&path).expect("load"), Some(newer));
        assert_eq!(tmp.entries(), vec!["state.json"]);
    }

    #[test]
    fn failed_save_leaves_no_temp_file_and_keeps_the_target() {
        let tmp = TempDir::new("failed");
        // The target is a non-empty directory: writing the temp file works, the rename fails.
        let path = tmp.0.join("state.json");
        fs::create_dir_all(path.join("inside")).expect("mkdir");
        let err = save(&path, &sample_state(7)).expect_err("rename over a directory");
        assert!(matches!(err, StateError::Rename { .. }), "{err:?}");
        assert!(err.to_string().contains("state.json"), "{err}");
        assert_eq!(tmp.entries(), vec!["state.json"]);
        assert!(path.join("inside").is_dir());
        // Reading a directory is an error that says so, not "missing".
        assert!(matches!(
            load(&path),
            Err(StateError::NotRegular {
                file_type: "a directory",
                ..
            })
        ));
    }

    #[test]
    fn path_without_file_name_is_refused() {
        let err = save(Path::new("/"), &sample_state(8)).expect_err("root accepted");
        assert!(matches!(err, StateError::NotAFile { .. }), "{err:?}");
    }

    fn fifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    }

    /// Issue 14: a state file of `/`, `/tmp/` or `/dev/null` suggested
    /// `mv "/dev/null" "/dev/null".bad`; `/dev/zero` or a parent that is a file ended
    /// in "fix its permissions"; a FIFO blocked the agent after attaching.
    #[test]
    fn state_paths_that_are_not_files_get_the_right_message() {
        let tmp = TempDir::new("paths");
        let fifo_path = tmp.0.join("state.fifo");
        fifo(&fifo_path);
        let a_file = tmp.0.join("plain");
        fs::write(&a_file, "x").unwrap();
        let under_a_file = a_file.join("state.json");
        for (path, expected) in [
            (Path::new("/"), "does not name a file"),
            (Path::new("/tmp/"), "does not name a file"),
            (
                Path::new("/dev/null"),
                "is a character device, not a regular file",
            ),
            (
                Path::new("/dev/zero"),
                "is a character device, not a regular file",
            ),
            (
                fifo_path.as_path(),
                "is a FIFO (named pipe), not a regular file",
            ),
            (under_a_file.as_path(), "which is a file, not a directory"),
        ] {
            for (what, err) in [
                ("start check", check_writable(path).expect_err("accepted")),
                ("load", load(path).expect_err("accepted")),
            ] {
                let text = err.to_string();
                assert!(text.contains(expected), "{what} {path:?}: {text}");
                assert!(
                    !text.contains("mv ") && !text.contains("permissions"),
                    "{what} {path:?}: misleading advice: {text}"
                );
            }
        }
        // Nothing was left behind by the probes.
        let mut entries = tmp.entries();
        entries.sort();
        assert_eq!(entries, vec!["plain", "state.fifo"]);
    }

    /// Issue 14: a state file on an unwritable file system was accepted at start.
    #[test]
    fn unwritable_state_directory_is_refused_at_start() {
        let tmp = TempDir::new("unwritable");
        let good = tmp.0.join("sub/state.json");
        check_writable(&good).expect("a writable directory passes");
        assert_eq!(tmp.entries(), vec!["sub"]);
        assert!(
            fs::read_dir(tmp.0.join("sub")).unwrap().next().is_none(),
            "probe left behind"
        );
        // /proc/sys is a file system where no file can be created, even by root.
        let err = check_writable(Path::new("/proc/sys/scan-agent-state.json"))
            .expect_err("unwritable directory accepted");
        assert!(matches!(err, StateError::NotWritable { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("cannot write in \"/proc/sys\"")
                && text.contains("every restart would lose it")
                && text.contains("choose another --state-file"),
            "{text}"
        );
    }

    #[test]
    fn oversized_state_file_is_refused_unread() {
        let tmp = TempDir::new("oversized");
        let path = tmp.0.join("state.json");
        let file = File::create(&path).unwrap();
        file.set_len(MAX_STATE_BYTES + 1).unwrap();
        let err = load(&path).expect_err("oversized state accepted");
        assert!(err.to_string().contains("larger than"), "{err}");
    }

    /// The limit is a bound of the format: the largest possible state fits under it.
    #[test]
    fn largest_state_fits_the_limit() {
        let tmp = TempDir::new("largest");
        let path = tmp.0.join("state.json");
        let mut state = sample_state(9);
        state.ports = (0..=u16::MAX)
            .map(|port| crate::detector::PortSnapshot {
                port,
                count: u64::MAX,
                rate: 1.234_567_890_123_456_7e-300,
                baseline: 1.234_567_890_123_456_7e300,
            })
            .collect();
        state.last_step = Some(Duration::new(u64::MAX, 999_999_999));
        state.history = Duration::new(u64::MAX, 999_999_999);
        save(&path, &state).expect("save");
        let size = fs::metadata(&path).unwrap().len();
        assert!(size <= MAX_STATE_BYTES, "{size} bytes");
        assert_eq!(load(&path).expect("load"), Some(state));
    }
}
