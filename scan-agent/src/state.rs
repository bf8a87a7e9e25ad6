//! The state file: the detector's saved state, the only file the agent writes.
//!
//! Format: a 20-byte header, then the state encoded with postcard (compact, not
//! self-describing) and compressed with deflate. Header: magic `SCANSTAT`, container
//! format (u16 LE, [`FORMAT`]), reserved (u16), payload length (u32 LE), CRC-32 of the
//! payload (u32 LE). The state's own version ([`STATE_VERSION`]) is its first field, read
//! before the rest, so that a file written by another build says so. All 65,536 ports
//! active take well under 1 MiB (unit-tested).
//!
//! Saving is atomic and never follows links: the state is written to a new temporary file
//! in the same directory (created with O_CREAT|O_EXCL under an unpredictable name, so no
//! existing file or planted symlink is ever opened), flushed to disk, renamed over the state
//! file, and the directory is flushed: a crash or power loss at any moment leaves the old or
//! the new file, never a torn one.
//!
//! Loading: a missing file is a first start (`Ok(None)`). A path that is no regular file
//! (a directory, a FIFO, a device) is a configuration error; a file that cannot be decoded
//! is reported, and the daemon moves it aside ([`quarantine`]) and learns afresh: a bad
//! cache file never stops the agent from watching the network.
use crate::detector::{DetectorState, STATE_VERSION};
use flate2::{Compression, read::DeflateDecoder, write::DeflateEncoder};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// First bytes of every state file.
pub const MAGIC: [u8; 8] = *b"SCANSTAT";
/// Container format: header + deflate(postcard(state)).
pub const FORMAT: u16 = 1;
const HEADER_LEN: usize = 20;
/// Decoded states larger than this are refused as corrupt (all ports active with every
/// profile take about 2 MiB decoded), so a crafted file cannot make the agent allocate
/// without bound.
const MAX_DECODED: u64 = 64 << 20;

/// Why the state file could not be saved or loaded; every message names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The path does not end in a file name.
    #[error(
        "the state file path {path:?} does not name a file; give a file path such as \
         /var/lib/scan-agent/state.bin"
    )]
    NotAFile {
        /// The path given.
        path: PathBuf,
    },
    /// A directory on the way to the state file is a file.
    #[error(
        "the state file path {path:?} goes through {parent:?}, which is a file, not a \
         directory; give --state-file a path in a directory, e.g. /var/lib/scan-agent/state.bin"
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
         the path of a file (it need not exist yet), e.g. /var/lib/scan-agent/state.bin"
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
        source: postcard::Error,
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
        "the state file {path:?} is corrupt or not a scan-agent state file ({reason}); move it \
         away (e.g. `mv {path:?} {path:?}.bad`) to start with fresh baselines and a new warm-up"
    )]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
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
        found: u32,
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

/// Saves `state` to `path` atomically (see the module documentation), creating the
/// directory if it is missing. On error the previous state file is untouched and the
/// temporary file is removed. Returns the bytes written.
pub fn save(path: &Path, state: &DetectorState) -> Result<usize, StateError> {
    let bytes = encode(path, state)?;
    write(path, &bytes)
}

/// Writes `bytes` (from [`encode`]) to `path` as [`save`] does; returns their length.
pub fn write(path: &Path, bytes: &[u8]) -> Result<usize, StateError> {
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
    let prefix = temp_prefix(name);
    // tempfile opens with O_CREAT|O_EXCL (which never follows a symlink) under a random
    // name, and removes the file if it is dropped before `persist`.
    let write_error = |tmp: &Path, source| StateError::Write {
        tmp: tmp.to_path_buf(),
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .tempfile_in(dir)
        .map_err(|e| write_error(&dir.join(&prefix), e))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| write_error(tmp.path(), e))?;
    tmp.persist(path).map_err(|e| StateError::Rename {
        tmp: e.file.path().to_path_buf(),
        path: path.to_path_buf(),
        source: e.error,
    })?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StateError::SyncDir {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
            source,
        })?;
    Ok(bytes.len())
}

/// Hidden temporary files of `name`: `.state.bin.tmp` + a random suffix.
fn temp_prefix(name: &std::ffi::OsStr) -> String {
    format!(".{}.tmp", name.to_string_lossy())
}

/// Removes temporary files left by a save that was killed (SIGKILL, power loss) before
/// its rename; only regular files with this state file's temporary prefix. Returns how
/// many were removed.
pub fn remove_stale_temp_files(path: &Path) -> usize {
    let (Some(name), dir) = (path.file_name(), dir_of(path)) else {
        return 0;
    };
    let prefix = temp_prefix(name);
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| fs::remove_file(e.path()).is_ok())
        .count()
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

/// The state file's bytes: header, then deflate(postcard(state)).
pub fn encode(path: &Path, state: &DetectorState) -> Result<Vec<u8>, StateError> {
    let encode_error = |source| StateError::Encode {
        path: path.to_path_buf(),
        source,
    };
    let plain = postcard::to_stdvec(state).map_err(encode_error)?;
    // Deflated straight after a header placeholder, patched at the end: one output buffer.
    let mut out = Vec::with_capacity(HEADER_LEN + plain.len() / 2);
    out.resize(HEADER_LEN, 0);
    let mut deflate = DeflateEncoder::new(out, Compression::default());
    // Writing to a Vec cannot fail.
    deflate
        .write_all(&plain)
        .map_err(|_| encode_error(postcard::Error::SerializeBufferFull))?;
    drop(plain);
    let mut bytes = deflate
        .finish()
        .map_err(|_| encode_error(postcard::Error::SerializeBufferFull))?;
    let payload = &bytes[HEADER_LEN..];
    let len = u32::try_from(payload.len())
        .map_err(|_| encode_error(postcard::Error::SerializeBufferFull))?;
    let crc = crc32fast::hash(payload);
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(&MAGIC);
    header.extend_from_slice(&FORMAT.to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&len.to_le_bytes());
    header.extend_from_slice(&crc.to_le_bytes());
    bytes[..HEADER_LEN].copy_from_slice(&header);
    Ok(bytes)
}

/// Decodes and checks the bytes of a state file (`path` names it in errors): the
/// loader's whole parser, whatever the bytes (property tests and a fuzz target feed
/// it arbitrary input).
pub fn decode(path: &Path, bytes: &[u8]) -> Result<DetectorState, StateError> {
    let corrupt = |reason: String| StateError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < HEADER_LEN {
        return Err(corrupt(format!(
            "{} bytes, shorter than the {HEADER_LEN}-byte header",
            bytes.len()
        )));
    }
    if bytes[..8] != MAGIC {
        return Err(corrupt("it does not start with SCANSTAT".into()));
    }
    let word =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let format = u16::from_le_bytes([bytes[8], bytes[9]]);
    if format != FORMAT {
        return Err(corrupt(format!(
            "container format {format}, this build reads format {FORMAT}"
        )));
    }
    let (len, crc) = (word(12) as usize, word(16));
    let payload = &bytes[HEADER_LEN..];
    if payload.len() != len {
        return Err(corrupt(format!(
            "truncated or padded: the header says {len} bytes of payload, the file has {}",
            payload.len()
        )));
    }
    if crc32fast::hash(payload) != crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    let mut plain = Vec::new();
    DeflateDecoder::new(payload)
        .take(MAX_DECODED + 1)
        .read_to_end(&mut plain)
        .map_err(|e| corrupt(format!("cannot decompress: {e}")))?;
    if plain.len() as u64 > MAX_DECODED {
        return Err(corrupt(format!("decodes to more than {MAX_DECODED} bytes")));
    }
    let (version, _) = postcard::take_from_bytes::<u32>(&plain)
        .map_err(|e| corrupt(format!("no version: {e}")))?;
    if version != STATE_VERSION {
        return Err(StateError::Version {
            path: path.to_path_buf(),
            found: version,
            expected: STATE_VERSION,
        });
    }
    let (state, rest): (DetectorState, _) =
        postcard::take_from_bytes(&plain).map_err(|e| corrupt(format!("cannot decode: {e}")))?;
    if !rest.is_empty() {
        return Err(corrupt(format!("{} bytes after the state", rest.len())));
    }
    state.check().map_err(|reason| StateError::Invalid {
        path: path.to_path_buf(),
        reason,
    })?;
    Ok(state)
}

/// Moves a state file that cannot be loaded aside, to `<name>.bad-<unix seconds>` (a new
/// name: an earlier bad file is never overwritten), and returns the new path.
pub fn quarantine(path: &Path) -> io::Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("not a file path"))?
        .to_string_lossy()
        .into_owned();
    for n in 0..1000u32 {
        let suffix = if n == 0 {
            String::new()
        } else {
            format!(".{n}")
        };
        let target = dir_of(path).join(format!("{name}.bad-{stamp}{suffix}"));
        // A hard link fails if the target exists, so nothing is overwritten; then the
        // original name goes.
        match fs::hard_link(path, &target) {
            Ok(()) => {
                fs::remove_file(path)?;
                return Ok(target);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free name to move it to"))
}

/// Serde for the ports of a [`DetectorState`]: rows (`[{port, count, rate, baseline}]`)
/// for human-readable formats, columns for binary ones (the state file). Columns: the
/// ports as gaps from the previous one, then the counters, rates and baselines as byte
/// planes (every value's most significant byte first, then every value's next byte...):
/// the sign, exponent and high bytes of neighbouring values are alike and deflate to
/// almost nothing, where rows interleave them with random low bytes. All 65,536 ports
/// active then fit in 1 MiB with full-precision values.
pub mod port_columns {
    use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error};

    use crate::detector::PortSnapshot;

    #[derive(Serialize, Deserialize)]
    struct Columns {
        gaps: Vec<u16>,
        counts: Vec<u8>,
        rates: Vec<u8>,
        baselines: Vec<u8>,
    }

    fn planes(values: impl ExactSizeIterator<Item = u64>) -> Vec<u8> {
        let values: Vec<[u8; 8]> = values.map(u64::to_be_bytes).collect();
        let mut out = Vec::with_capacity(values.len() * 8);
        for byte in 0..8 {
            out.extend(values.iter().map(|v| v[byte]));
        }
        out
    }

    fn unplanes(bytes: &[u8], n: usize) -> Option<Vec<u64>> {
        if bytes.len() != n.checked_mul(8)? {
            return None;
        }
        Some(
            (0..n)
                .map(|i| u64::from_be_bytes(std::array::from_fn(|byte| bytes[byte * n + i])))
                .collect(),
        )
    }

    pub fn serialize<S: Serializer>(
        ports: &[PortSnapshot],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            return ports.serialize(serializer);
        }
        let mut previous = 0u16;
        let gaps = ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                // Wrapping: an out-of-order list still round-trips (check() rejects it).
                let gap = if i == 0 {
                    p.port
                } else {
                    p.port.wrapping_sub(previous)
                };
                previous = p.port;
                gap
            })
            .collect();
        Columns {
            gaps,
            counts: planes(ports.iter().map(|p| p.count)),
            rates: planes(ports.iter().map(|p| p.rate.to_bits())),
            baselines: planes(ports.iter().map(|p| p.baseline.to_bits())),
        }
        .serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<PortSnapshot>, D::Error> {
        if deserializer.is_human_readable() {
            return Vec::<PortSnapshot>::deserialize(deserializer);
        }
        let c = Columns::deserialize(deserializer)?;
        let n = c.gaps.len();
        let column = |bytes: &[u8], name: &str| {
            unplanes(bytes, n).ok_or_else(|| {
                D::Error::custom(format!("the {name} column does not hold {n} values"))
            })
        };
        let counts = column(&c.counts, "counter")?;
        let rates = column(&c.rates, "rate")?;
        let baselines = column(&c.baselines, "baseline")?;
        let mut port = 0u16;
        Ok((0..n)
            .map(|i| {
                port = if i == 0 {
                    c.gaps[0]
                } else {
                    port.wrapping_add(c.gaps[i])
                };
                PortSnapshot {
                    port,
                    count: counts[i],
                    rate: f64::from_bits(rates[i]),
                    baseline: f64::from_bits(baselines[i]),
                }
            })
            .collect())
    }
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
        let path = tmp.0.join("state.bin");
        let good = encode(&path, &sample_state(3)).expect("encode");
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        let mut other_format = good.clone();
        other_format[8] = 9;
        let mut long = good.clone();
        long.push(0);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("old JSON", b"{\"version\": 1, \"ports\": []}".to_vec()),
            ("header only", good[..HEADER_LEN].to_vec()),
            ("truncated", good[..good.len() / 2].to_vec()),
            ("one byte short", good[..good.len() - 1].to_vec()),
            ("padded", long),
            ("bit flip", flipped),
            ("other container format", other_format),
        ];
        for (what, content) in cases {
            fs::write(&path, &content).expect("write");
            let err = load(&path).expect_err(what);
            assert!(matches!(err, StateError::Corrupt { .. }), "{what}: {err:?}");
            let msg = err.to_string();
            assert!(
                msg.contains("state.bin") && msg.contains("move it away"),
                "{what}: {msg}"
            );
        }
        // A payload with a valid checksum that is not a state (e.g. a tampered file).
        let mut junk = good[..HEADER_LEN].to_vec();
        let payload = {
            let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
            e.write_all(&postcard::to_stdvec(&STATE_VERSION).unwrap())
                .unwrap();
            e.write_all(&[0xFF, 0xFF, 0xFF]).unwrap();
            e.finish().unwrap()
        };
        junk[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        junk[16..20].copy_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        junk.extend_from_slice(&payload);
        fs::write(&path, &junk).expect("write");
        assert!(matches!(load(&path), Err(StateError::Corrupt { .. })));
        // The file is left where it was: moving it aside is the caller's decision.
        assert!(path.exists());
    }

    #[test]
    fn other_version_is_a_clear_error() {
        let tmp = TempDir::new("version");
        let path = tmp.0.join("state.bin");
        let mut state = sample_state(9);
        state.version = STATE_VERSION + 1;
        fs::write(&path, encode(&path, &state).expect("encode")).expect("write");
        let err = load(&path).expect_err("other version accepted");
        assert!(
            matches!(err, StateError::Version { found, expected, .. }
                if found == STATE_VERSION + 1 && expected == STATE_VERSION),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("state.bin") && msg.contains("move the file away"),
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
    fn every_port_active_fits_in_one_mebibyte() {
        // Every port with a distinct, irregular history: full-precision rates and
        // baselines, large counters, the worst case for the compressor.
        let mut det = Detector::new(DetectorConfig::default());
        let mut cum = vec![0u64; PORTS];
        let t0 = Duration::from_secs(1_700_000_000);
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for i in 0..40u64 {
            for c in cum.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *c += 1 + x % 1000;
            }
            det.step(t0 + Duration::from_millis(5_000 * i + x % 900), &cum);
        }
        let state = det.snapshot();
        assert_eq!(state.ports.len(), PORTS);
        let tmp = TempDir::new("size");
        let path = tmp.0.join("state.bin");
        let written = save(&path, &state).expect("save");
        let size = fs::metadata(&path).expect("stat").len();
        assert_eq!(size, written as u64);
        eprintln!("state file with all {PORTS} ports active: {size} bytes");
        assert!(size <= 1 << 20, "{size} bytes");
        assert_eq!(load(&path).expect("load"), Some(state));
    }

    #[test]
    fn temp_file_never_follows_a_planted_link() {
        let tmp = TempDir::new("symlink");
        let path = tmp.0.join("state.bin");
        let victim = tmp.0.join("victim");
        fs::write(&victim, b"precious").expect("write");
        // The names of the old scheme and some guesses of the new one.
        for name in [
            format!(".state.bin.tmp.{}", std::process::id()),
            ".state.bin.tmp".to_string(),
        ] {
            std::os::unix::fs::symlink(&victim, tmp.0.join(name)).expect("symlink");
        }
        save(&path, &sample_state(10)).expect("save");
        assert_eq!(fs::read(&victim).expect("read"), b"precious");
        assert!(load(&path).expect("load").is_some());
    }

    #[test]
    fn stale_temp_files_are_removed_and_quarantine_keeps_every_bad_file() {
        let tmp = TempDir::new("stale");
        let path = tmp.0.join("state.bin");
        fs::write(tmp.0.join(".state.bin.tmpAbC123"), b"half").expect("write");
        fs::write(tmp.0.join(".other.tmpAbC123"), b"not ours").expect("write");
        assert_eq!(remove_stale_temp_files(&path), 1);
        assert_eq!(tmp.entries(), vec![".other.tmpAbC123"]);

        fs::write(&path, b"bad one").expect("write");
        let first = quarantine(&path).expect("quarantine");
        fs::write(&path, b"bad two").expect("write");
        let second = quarantine(&path).expect("quarantine");
        assert_ne!(first, second);
        assert!(!path.exists());
        assert_eq!(fs::read(&first).unwrap(), b"bad one");
        assert_eq!(fs::read(&second).unwrap(), b"bad two");
        assert!(
            first
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("state.bin.bad-")
        );
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
