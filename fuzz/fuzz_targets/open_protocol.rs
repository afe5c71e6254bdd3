//! The other peer-facing parsers of the services on arbitrary bytes: the open-in-vm request
//! (service side, written into a private temp dir), the open-in-vm answer (client side, an
//! edited copy written back over a scratch file) and the file-copy answer line. None may
//! panic; files only ever appear inside their directories.
#![no_main]

use std::sync::OnceLock;

use bulkhead_services::{filecopy, open};
use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
}

fuzz_target!(|data: &[u8]| {
    let base = scratch().path();
    if let Ok(inc) = open::receive_request(data, base) {
        assert_eq!(inc.path.parent(), Some(inc.dir.path()));
        assert!(inc.path.starts_with(base));
    }
    let doc = base.join("doc");
    if std::fs::write(&doc, b"original").is_ok() {
        match open::read_answer(data, &doc, true, open::MAX_OPEN_BYTES) {
            Ok(open::Opened::Replaced(n)) => {
                assert!(n > 0);
                assert_eq!(std::fs::metadata(&doc).map(|m| m.len()).ok(), Some(n));
            }
            Ok(open::Opened::Unchanged) | Err(_) => {
                assert_eq!(std::fs::read(&doc).ok().as_deref(), Some(&b"original"[..]));
            }
        }
    }
    let _ = filecopy::parse_answer(data);
});
