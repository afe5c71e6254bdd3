//! Desktop entries from a (template) domain's application menu, on arbitrary text: dom0
//! lists them for the domain manager (`ListApplications`) and turns the chosen one into an
//! argv (`RunApplication`). Parsing never panics; an entry that parses keeps its id and has
//! an Exec line, and its argv, when there is one, is non-empty.
#![no_main]

use std::path::Path;

use bulkhead_services::xdg::{launch_argv, parse_menu_entry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(entry) = parse_menu_entry("x.desktop", Path::new("/apps/x.desktop"), text) else {
        return;
    };
    assert_eq!(entry.id, "x.desktop");
    assert!(!entry.exec.is_empty());
    if let Ok(argv) = launch_argv(&entry) {
        assert!(!argv.is_empty());
    }
});
