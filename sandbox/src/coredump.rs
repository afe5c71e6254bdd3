//! Core dumps of domain processes stay inside the domain.
//!
//! `/proc/sys/kernel/core_pattern` is global (not per namespace). What the kernel does with
//! a crashing domain process, on Linux 6.1 (Debian 12) and 6.18 alike (fs/coredump.c;
//! `do_coredump()` in 6.1, `coredump_file()`/`coredump_pipe()`/`coredump_socket()` since the
//! 6.16 split):
//! - a plain file pattern (`core`, `core.%p`, `/var/crash/%e.core`): the kernel opens the
//!   file with the crashing task's own root, working directory and credentials, so the core
//!   lands in the domain's own tree, bounded by RLIMIT_CORE (a limit below a page writes
//!   nothing). It stays inside; the domain's own limit is left alone. One exception below.
//! - `|helper ...` (systemd-coredump, apport): the kernel starts the helper as root in the
//!   host's namespaces and writes the whole core to its stdin; RLIMIT_CORE is ignored
//!   (`cprm.limit = RLIM_INFINITY`) except for the value 1, the kernel's recursion sentinel:
//!   with RLIMIT_CORE == 1 it logs "RLIMIT_CORE is set to 1, aborting core" and starts no
//!   helper. A limit of 0 does not help: the helper runs and is only *told* the limit
//!   (`%c`); upstream systemd-coredump and apport then store nothing, but Debian's packaged
//!   systemd-coredump pattern passes a fixed huge value instead of `%c`.
//! - `@socket` / `@@socket` (Linux 6.16+): the core goes to a host socket server; the kernel
//!   checks no limit at all. The limit is still set to 1 so a server that reads the crashing
//!   process's limits can honour it, but only the server can enforce that.
//! - with `fs.suid_dumpable = 2` (which systemd's 50-coredump.conf sets), a process that is
//!   not dumpable (one that changed its credentials and has not exec'd since, e.g. a daemon
//!   that switched to the domain user) is dumped with fsuid host root, and an absolute file pattern is then opened
//!   relative to the *host's* root directory (init_task's, by design: the task's own root is
//!   not trusted). That core would leave the domain; it is stopped the same way (1 byte is
//!   below the ELF minimum of a page, so no file is written).
//!
//! So when the host's pattern hands cores to the host, the domain's init gets a soft and hard
//! RLIMIT_CORE of 1 (set on the launcher before the init is forked); every domain process
//! inherits it and none can raise it. Should the launcher inherit a hard limit of 0 and lack
//! CAP_SYS_RESOURCE to raise it to 1, the start goes on with 0 and says so in the domain's log
//! and the launcher's. A domain process could otherwise lower its own limit to 0, after which
//! a pipe helper would be started again: in those cases the seccomp filter also makes setting
//! RLIMIT_CORE a no-op that reports success (`seccomp::core_limit_filter`). With a plain file
//! pattern the domain keeps the limit it inherits from the launcher, and may change it.

/// What to do with the domain's RLIMIT_CORE under a host's core dump settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoreLimit {
    /// Cores are written inside the domain: keep the inherited limit.
    Keep,
    /// Cores would reach the host: soft and hard limit 1, with the reason.
    One(&'static str),
}

/// The limit for `core_pattern` (the sysctl's text) and `fs.suid_dumpable` (None: unknown).
pub fn core_limit_for(core_pattern: Option<&str>, suid_dumpable: Option<u32>) -> CoreLimit {
    let Some(pattern) = core_pattern else {
        return CoreLimit::One("the host's core_pattern could not be read");
    };
    let pattern = pattern.trim_start();
    if pattern.starts_with('|') {
        return CoreLimit::One(
            "the host's core_pattern pipes cores to a helper that runs as root on the host; \
             a limit of 1 makes the kernel start no helper",
        );
    }
    if pattern.starts_with('@') {
        return CoreLimit::One(
            "the host's core_pattern sends cores to a socket on the host (the kernel checks no \
             limit there; the limit tells the server to drop them)",
        );
    }
    if pattern.starts_with('/') && suid_dumpable != Some(0) && suid_dumpable != Some(1) {
        return CoreLimit::One(
            "fs.suid_dumpable is 2 and the host's core_pattern is an absolute path: cores of \
             non-dumpable processes would be written as host root below the host's root",
        );
    }
    CoreLimit::Keep
}

/// Reads the host's settings and decides.
pub fn host_core_limit() -> CoreLimit {
    let read = |p: &str| crate::read_small(std::path::Path::new(p)).ok();
    let pattern = read("/proc/sys/kernel/core_pattern");
    let suid = read("/proc/sys/fs/suid_dumpable").and_then(|s| s.trim().parse().ok());
    core_limit_for(pattern.as_deref(), suid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_patterns_keep_the_domain_limit() {
        for p in [
            "core",
            "core.%p",
            "  core",
            "cores/%e.%p",
            "/var/crash/core.%p\n",
        ] {
            for suid in [Some(0), Some(1)] {
                assert_eq!(
                    core_limit_for(Some(p), suid),
                    CoreLimit::Keep,
                    "{p:?} {suid:?}"
                );
            }
        }
        // a relative pattern is never used for suid-safe dumps, so 2 does not matter there
        assert_eq!(core_limit_for(Some("core"), Some(2)), CoreLimit::Keep);
    }

    #[test]
    fn host_handlers_get_a_limit_of_one() {
        for p in [
            "|/lib/systemd/systemd-coredump %P %u %g %s %t 9223372036854775808 %h",
            "|/usr/share/apport/apport -p%p -s%s -c%c -d%d -P%P -u%u -g%g -- %E",
            " |/bin/true",
            "@/run/systemd/coredump.socket",
            "@@/run/coredump.socket",
        ] {
            for suid in [Some(0), Some(2), None] {
                assert!(
                    matches!(core_limit_for(Some(p), suid), CoreLimit::One(_)),
                    "{p:?} {suid:?}"
                );
            }
        }
    }

    #[test]
    fn absolute_patterns_with_suid_dumpable_2_get_a_limit_of_one() {
        assert!(matches!(
            core_limit_for(Some("/var/crash/core.%p"), Some(2)),
            CoreLimit::One(_)
        ));
        assert!(matches!(
            core_limit_for(Some("/var/crash/core.%p"), None),
            CoreLimit::One(_)
        ));
        // unreadable settings: the safe side
        assert!(matches!(core_limit_for(None, Some(0)), CoreLimit::One(_)));
    }
}
