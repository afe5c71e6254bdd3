//! Skip probes: whether this host can run what a test needs (root and the kernel features of
//! sandboxes, a template cache). A probe that says no prints `SKIP ...` through
//! `bulkhead-test-skip`, so the test is counted as skipped, not passed.

use std::path::PathBuf;

/// Environment variable with a pre-built template cache (state dir `templates/`).
pub const ENV_TEMPLATE_CACHE: &str = "BULKHEAD_TEST_TEMPLATE_CACHE";

/// The template cache from `$BULKHEAD_TEST_TEMPLATE_CACHE`, or None with the reason printed.
pub fn template_cache() -> Option<PathBuf> {
    match std::env::var_os(ENV_TEMPLATE_CACHE).filter(|p| !p.is_empty()) {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            bulkhead_test_skip::skip(format_args!(
                "{ENV_TEMPLATE_CACHE} is not set (a state dir whose templates/ holds a built debian-12 template)"
            ));
            None
        }
    }
}

/// Whether this host can run sandbox domains; prints the reason and returns false if not.
pub fn sandbox_available() -> bool {
    if !nix::unistd::geteuid().is_root() {
        bulkhead_test_skip::skip("sandbox domains need root");
        return false;
    }
    let caps = bulkhead_sandbox::probe();
    let why = if !caps.user_namespaces {
        Some("user namespaces disabled".to_owned())
    } else if !caps.overlayfs {
        Some("no overlayfs".to_owned())
    } else if !caps.idmapped_mounts {
        Some("no idmapped mounts".to_owned())
    } else if caps.cgroup_mode.starts_with("unusable") {
        Some(format!("cgroups: {}", caps.cgroup_mode))
    } else {
        None
    };
    match why {
        Some(w) => {
            bulkhead_test_skip::skip(format_args!("cannot run sandboxes here: {w}"));
            false
        }
        None => true,
    }
}

/// For a test of real domains of the debian-12 template in sandboxes: the template cache
/// ([`template_cache`]) if it is set and this host can run sandboxes
/// ([`sandbox_available`]); else None, the reason printed.
pub fn sandbox_template_cache() -> Option<PathBuf> {
    let cache = template_cache()?;
    sandbox_available().then_some(cache)
}
