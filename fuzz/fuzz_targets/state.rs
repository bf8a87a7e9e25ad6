//! The state loader's parser on any bytes: an error, or a state that passes its checks
//! and encodes again.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use scan_agent::state;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("state.json");
    if let Ok(decoded) = state::decode(path, data) {
        assert!(decoded.check().is_ok());
        let again = state::encode(path, &decoded).expect("a decoded state encodes");
        assert_eq!(
            state::decode(path, &again).expect("re-encoded state decodes"),
            decoded
        );
    }
});
