//! The pcap/pcapng reader on any bytes: frames or an error, never a panic, and no frame
//! longer than any capture holds.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use scan_agent::capture::{CaptureReader, MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    let Ok(reader) =
        CaptureReader::from_reader(Path::new("fuzz"), std::io::Cursor::new(data.to_vec()))
    else {
        return;
    };
    for frame in reader {
        match frame {
            Ok((_, bytes)) => assert!(bytes.len() <= MAX_FRAME as usize),
            Err(_) => break,
        }
    }
});
