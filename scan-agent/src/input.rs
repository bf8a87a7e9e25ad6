//! Opening the files the agent reads (config, state, captures): regular files only,
//! opened without blocking and read with a size limit. A FIFO, a device, a socket or a
//! directory given by mistake is refused at once with an error saying what it is,
//! instead of hanging the agent (a FIFO) or reading without end (`/dev/zero`).
use std::{
    fs::{File, Metadata, OpenOptions},
    io::{self, Read},
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

/// Which input a path is for: names it, and the flag to fix, in messages.
#[derive(Clone, Copy, Debug)]
pub struct InputKind {
    /// E.g. "config file".
    pub what: &'static str,
    /// E.g. "--config".
    pub flag: &'static str,
    /// A good value, e.g. "/etc/scan-agent/scan-agent.toml".
    pub example: &'static str,
}

/// The `--config` file.
pub const CONFIG: InputKind = InputKind {
    what: "config file",
    flag: "--config",
    example: "/etc/scan-agent/scan-agent.toml",
};

/// The `--state-file`.
pub const STATE: InputKind = InputKind {
    what: "state file",
    flag: "--state-file",
    example: "/var/lib/scan-agent/state.bin",
};

/// The capture given to `replay`.
pub const CAPTURE: InputKind = InputKind {
    what: "capture",
    flag: "replay",
    example: "capture.pcap, or - for standard input",
};

/// Why an input file cannot be used. Every message names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot open the {} {path:?}: {source}", kind.what)]
    Open {
        kind: InputKind,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "the {} {path:?} is {file_type}, not a regular file; give {} the path of a regular \
         file, e.g. {}",
        kind.what, kind.flag, kind.example
    )]
    NotRegular {
        kind: InputKind,
        path: PathBuf,
        file_type: &'static str,
    },
    #[error(
        "the {} {path:?} is larger than the {limit} bytes a {} can be; is it the right file?",
        kind.what, kind.what
    )]
    TooLarge {
        kind: InputKind,
        path: PathBuf,
        limit: u64,
    },
    #[error("cannot read the {} {path:?}: {source}", kind.what)]
    Read {
        kind: InputKind,
        path: PathBuf,
        source: io::Error,
    },
}

impl InputError {
    /// The OS error of a failed open, e.g. to tell a missing file from the rest.
    pub fn open_error_kind(&self) -> Option<io::ErrorKind> {
        match self {
            Self::Open { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}

/// "a directory", "a FIFO (named pipe)", ... for what is not a regular file.
pub fn file_type_name(metadata: &Metadata) -> Option<&'static str> {
    let t = metadata.file_type();
    Some(if t.is_file() {
        return None;
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    })
}

/// Opens `path` for reading if it is a regular file. The type is checked before the
/// open (so no device is ever opened) and again on the open descriptor (so a swap in
/// between is caught); the open itself is non-blocking, so even then a FIFO cannot
/// block. Returns the file and its size.
pub fn open_regular(path: &Path, kind: InputKind) -> Result<(File, u64), InputError> {
    let not_regular = |metadata: &Metadata| {
        file_type_name(metadata).map(|file_type| InputError::NotRegular {
            kind,
            path: path.to_path_buf(),
            file_type,
        })
    };
    let open_error = |source| InputError::Open {
        kind,
        path: path.to_path_buf(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(open_error)?;
    if let Some(e) = not_regular(&metadata) {
        return Err(e);
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(open_error)?;
    let metadata = file.metadata().map_err(open_error)?;
    if let Some(e) = not_regular(&metadata) {
        return Err(e);
    }
    Ok((file, metadata.len()))
}

/// Reads all of the regular file `path`, refusing one over `limit` bytes (also one
/// that grows past it while being read).
pub fn read_regular(path: &Path, kind: InputKind, limit: u64) -> Result<Vec<u8>, InputError> {
    let (file, size) = open_regular(path, kind)?;
    let too_large = || InputError::TooLarge {
        kind,
        path: path.to_path_buf(),
        limit,
    };
    if size > limit {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| InputError::Read {
            kind,
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fifo(tag: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("scan-agent-input-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        path
    }

    #[test]
    fn fifo_is_refused_without_blocking() {
        let path = fifo("fifo");
        let err = read_regular(&path, CONFIG, 1 << 20).unwrap_err();
        std::fs::remove_file(&path).ok();
        let text = err.to_string();
        assert!(
            text.contains("is a FIFO (named pipe), not a regular file")
                && text.contains("give --config the path of a regular file"),
            "{text}"
        );
    }

    #[test]
    fn devices_and_directories_are_refused() {
        for (path, what) in [
            ("/dev/zero", "a character device"),
            ("/dev/null", "a character device"),
            ("/", "a directory"),
            ("/tmp/", "a directory"),
        ] {
            let err = read_regular(Path::new(path), STATE, 1 << 20).unwrap_err();
            assert!(
                matches!(err, InputError::NotRegular { file_type, .. } if file_type == what),
                "{path}: {err}"
            );
            assert!(err.to_string().contains("--state-file"), "{err}");
        }
    }

    #[test]
    fn size_limit_is_enforced() {
        let path =
            std::env::temp_dir().join(format!("scan-agent-input-{}-big", std::process::id()));
        std::fs::write(&path, vec![b'#'; 1025]).unwrap();
        let err = read_regular(&path, CONFIG, 1024).unwrap_err();
        assert!(
            matches!(err, InputError::TooLarge { limit: 1024, .. }),
            "{err}"
        );
        assert_eq!(read_regular(&path, CONFIG, 1025).unwrap().len(), 1025);
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn missing_file_keeps_its_os_error() {
        let err = read_regular(Path::new("/nonexistent/scan-agent"), CONFIG, 10).unwrap_err();
        assert_eq!(err.open_error_kind(), Some(io::ErrorKind::NotFound));
    }
}
