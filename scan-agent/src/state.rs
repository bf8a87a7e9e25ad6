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
    let Some(name) = path.file_name() else {
        return Err(StateError::NotAFile {
            path: path.to_path_buf(),
        });
    };
    let dir = dir_of(path);
    fs::create_dir_all(dir).map_err(|source| StateError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let bytes = serde_json::to_vec(state).map_err(|source| StateError::Encode {
        path: path.to_path_buf(),
        source,
    })?;

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
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let corrupt = |source| StateError::Corrupt {
        path: path.to_path_buf(),
        source,
    };
    let probe: VersionProbe = serde_json::from_slice(&bytes).map_err(corrupt)?;
    if probe.version != u64::from(STATE_VERSION) {
        return Err(StateError::Version {
            path: path.to_path_buf(),
            found: probe.version,
            expected: STATE_VERSION,
        });
    }
    let state: DetectorState = serde_json::from_slice(&bytes).map_err(corrupt)?;
    state.check().map_err(|reason| StateError::Invalid {
        path: path.to_path_buf(),
        reason,
    })?;
    Ok(Some(state))
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
            b"{\"version\": 1",
            b"{\"version\": 1}",
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
        // Reading a directory is a read error, not "missing".
        assert!(matches!(load(&path), Err(StateError::Read { .. })));
    }

    #[test]
    fn path_without_file_name_is_refused() {
        let err = save(Path::new("/"), &sample_state(8)).expect_err("root accepted");
        assert!(matches!(err, StateError::NotAFile { .. }), "{err:?}");
    }
}
