//! The file-copy receiver's stream parser on arbitrary bytes, with small limits. Whatever
//! it accepts must satisfy the receiver's rules: checked names, symlinks inside the copied
//! tree, parents on the current branch, counts and sizes within the limits.
#![no_main]

use bulkhead_services::filecopy::{EntryKind, Limits, StreamReader};
use bulkhead_services::names;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_entries: 64,
        max_total_bytes: 4096,
        max_file_bytes: 1024,
        max_depth: 8,
        max_path_bytes: 256,
    };
    let mut r = StreamReader::new(data, limits);
    if r.read_magic().is_err() {
        return;
    }
    let mut entries = 0u64;
    let mut total = 0u64;
    let mut buf = [0u8; 97];
    loop {
        let depth_before = r.branch_depth();
        let e = match r.next_entry() {
            Ok(Some(e)) => e,
            Ok(None) => {
                let _ = r.expect_eof();
                return;
            }
            Err(_) => return,
        };
        entries += 1;
        assert!(entries <= limits.max_entries);
        assert!(!e.path.is_empty() && e.path.len() <= limits.max_depth);
        assert!(e.path.len() - 1 <= depth_before, "parent not on the branch");
        assert!(e.display_path().len() <= limits.max_path_bytes);
        for c in &e.path {
            assert!(names::check_component(c.as_bytes()).is_ok());
        }
        match e.kind {
            EntryKind::Dir => assert_eq!(e.size, 0),
            EntryKind::Symlink => {
                let t = e.target.as_deref().expect("symlink has a target");
                assert!(names::check_symlink_target(e.path.len(), t.as_bytes()).is_ok());
                assert!(!t.starts_with('/'));
            }
            EntryKind::File => {
                assert!(e.size <= limits.max_file_bytes);
                total += e.size;
                assert!(total <= limits.max_total_bytes);
                let mut got = 0u64;
                loop {
                    match r.read_data(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => got += n as u64,
                        Err(_) => return,
                    }
                }
                assert_eq!(got, e.size);
            }
        }
    }
});
