//! The logging set-up every Bulkhead binary shares, host and guest side alike.
//!
//! - One environment variable, [`ENV`] (`BULKHEAD_LOG`), holds the filter in tracing's
//!   env-filter syntax (`debug`, `info,zbus=warn`, ...). Unset or not parsable: the default
//!   the binary passes (each binary keeps its own, e.g. `info` for domaind, `warn` for the
//!   VMM and the services).
//! - Lines go to stderr, each with its time stamp and level: domaind's stderr is the journal
//!   (or a test's log file), a domain's init, agent and VMM write theirs into the domain log.
//! - ANSI colour only when stderr is a terminal (and `NO_COLOR` is unset or empty): a log
//!   file or the journal gets plain lines.
#![forbid(unsafe_code)]

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// The environment variable with the log filter.
pub const ENV: &str = "BULKHEAD_LOG";

/// Sets up logging to stderr: filter from [`ENV`], else `default_filter`. Does nothing if
/// this process already has a global subscriber.
pub fn init(default_filter: &str) {
    Setup::new(default_filter).init();
}

/// [`init`] with options.
#[derive(Clone, Copy, Debug)]
pub struct Setup<'a> {
    default_filter: &'a str,
    targets: bool,
}

impl<'a> Setup<'a> {
    /// Filter from [`ENV`], else `default_filter`; each line names its target (module path).
    pub fn new(default_filter: &'a str) -> Self {
        Self {
            default_filter,
            targets: true,
        }
    }

    /// Whether each line names its target (module path); on by default.
    pub fn targets(mut self, on: bool) -> Self {
        self.targets = on;
        self
    }

    /// Installs it as the process's global subscriber (nothing happens if there is one).
    pub fn init(self) {
        let value = std::env::var(ENV).ok();
        let no_color = std::env::var_os("NO_COLOR");
        let ansi = use_ansi(std::io::stderr().is_terminal(), no_color.as_deref());
        let _ = self
            .builder(value.as_deref(), ansi, std::io::stderr)
            .try_init();
    }

    /// The subscriber for `env_value` (the value of [`ENV`], if set), writing to `writer`.
    fn builder<W>(
        self,
        env_value: Option<&str>,
        ansi: bool,
        writer: W,
    ) -> tracing_subscriber::fmt::SubscriberBuilder<
        tracing_subscriber::fmt::format::DefaultFields,
        tracing_subscriber::fmt::format::Format,
        EnvFilter,
        W,
    >
    where
        W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
    {
        tracing_subscriber::fmt()
            .with_env_filter(filter(env_value, self.default_filter))
            .with_writer(writer)
            .with_ansi(ansi)
            .with_target(self.targets)
    }
}

/// The filter `value` gives, or `default_filter` when it is unset or does not parse (as
/// `EnvFilter::try_from_env(ENV).unwrap_or_else(|_| EnvFilter::new(default_filter))`).
fn filter(value: Option<&str>, default_filter: &str) -> EnvFilter {
    value
        .and_then(|v| EnvFilter::builder().parse(v).ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter))
}

/// Colour only on a terminal, and only if `NO_COLOR` is unset or empty (<https://no-color.org>).
fn use_ansi(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Buf {
        type Writer = Buf;
        fn make_writer(&'w self) -> Buf {
            self.clone()
        }
    }

    /// What `setup` writes for one event at each level, with `env_value` as [`ENV`].
    fn output(setup: Setup<'_>, env_value: Option<&str>, ansi: bool) -> String {
        let buf = Buf::default();
        let sub = setup.builder(env_value, ansi, buf.clone()).finish();
        tracing::subscriber::with_default(sub, || {
            tracing::error!(domain = "work", "an error");
            tracing::warn!("a warning");
            tracing::info!("some news");
            tracing::debug!("a detail");
        });
        let out = buf.0.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn plain_lines_with_levels() {
        let out = output(Setup::new("info"), None, false);
        assert!(!out.contains('\u{1b}'), "{out:?}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].contains(" ERROR "), "{out}");
        assert!(lines[0].contains("an error domain=\"work\""), "{out}");
        assert!(lines[1].contains("  WARN "), "{out}");
        assert!(lines[2].contains("  INFO "), "{out}");
        // the target: this module
        assert!(
            lines[2].contains("bulkhead_logging::tests: some news"),
            "{out}"
        );
    }

    #[test]
    fn colour_only_when_asked() {
        assert!(output(Setup::new("info"), None, true).contains('\u{1b}'));
    }

    #[test]
    fn env_value_over_default() {
        let out = output(Setup::new("warn"), Some("debug"), false);
        assert_eq!(out.lines().count(), 4, "{out}");
        let out = output(Setup::new("warn"), None, false);
        assert_eq!(out.lines().count(), 2, "{out}");
        let out = output(Setup::new("info"), Some("error"), false);
        assert_eq!(out.lines().count(), 1, "{out}");
        // directives per target
        let out = output(Setup::new("error"), Some("bulkhead_logging=info"), false);
        assert_eq!(out.lines().count(), 3, "{out}");
    }

    #[test]
    fn unparsable_env_value_means_the_default() {
        let out = output(Setup::new("warn"), Some("[not a filter"), false);
        assert_eq!(out.lines().count(), 2, "{out}");
    }

    #[test]
    fn without_targets() {
        let out = output(Setup::new("info").targets(false), None, false);
        assert!(!out.contains("bulkhead_logging"), "{out}");
        assert!(out.contains("  INFO some news"), "{out}");
    }

    #[test]
    fn ansi_only_on_a_terminal_without_no_color() {
        assert!(use_ansi(true, None));
        assert!(use_ansi(true, Some(OsStr::new(""))));
        assert!(!use_ansi(true, Some(OsStr::new("1"))));
        assert!(!use_ansi(false, None));
    }
}
