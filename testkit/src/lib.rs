//! Test support shared by the integration tests of domaind, the CLI, the dom0 GUIs and the
//! benches (a dev-dependency; it does not link domaind, it runs it).
//!
//! Everything here starts real programs: a private `dbus-daemon` per test and the real
//! `domaind` binary with temporary config/state/runtime dirs, so its own cgroup root too:
//! tests can run on a host where Bulkhead is installed and in use.
//!
//! ```no_run
//! # async fn t() {
//! use bulkhead_testkit::*;
//! let bus = TestBus::start().unwrap();
//! let d = TestDomaind::start(&bus, DomaindOptions::default()).await.unwrap();
//! let (_conn, proxy) = d.client().await.unwrap();
//! proxy.list().await.unwrap();
//! # }
//! ```
//!
//! The environment it reads:
//! - `BULKHEAD_TEST_DOMAIND`: the domaind binary (or the caller passes the path in
//!   [`DomaindOptions::binary`]);
//! - `BULKHEAD_TEST_LIBEXEC`: a dir with the `bulkhead-sandbox` launcher (and `bulkhead-vmm`);
//! - `BULKHEAD_TEST_GUEST_TOOLS`: a dir with `bulkhead-init`, `bulkhead-agent` and the other
//!   guest tools;
//!
//!   each of these three, when unset: the test executable's own `<target>/debug` when they
//!   are there (`cargo build --workspace --bins` first, as scripts/test.sh does); else built
//!   with cargo into `<target>/domaind-test-helpers` (a separate target dir, so it never
//!   waits on the lock of the `cargo test` that runs us). See [`bins`].
//! - `BULKHEAD_TEST_TEMPLATE_CACHE`: a state dir whose `templates/` holds a built debian-12
//!   template ([`template_cache`]); tests of Debian domains skip without it.
//! - `BULKHEAD_TEST_IN_L1`: set inside the nested L1 of a VM test ([`vm`]).
//!
//! Modules, by what they are:
//! - [`bins`], finding or building the binaries, the guest tools dir;
//! - [`bus`], [`TestBus`], a private dbus-daemon;
//! - [`domaind`], [`TestDomaind`] and [`DomaindOptions`], [`Debian12Env`], waiting on domain
//!   states;
//! - [`stdio`], [`StdioPipes`] and the `Run`/`BuildTemplate` calls built on them;
//! - [`cli`], [`TestCli`], the `bulkhead` CLI against a test domaind;
//! - [`ask`], [`TestAskAgent`];
//! - [`miniroot`], mini templates from host binaries, [`MiniEnv`];
//! - [`vm`], VM artefacts and the nested-KVM re-run ([`hardware_vm_here_or_nested`]);
//! - [`probes`], skip probes ([`sandbox_available`], [`template_cache`]);
//! - [`procfs`], what tests read from `/proc`;
//! - [`scripts`], shell scripts tests run inside domains;
//! - [`net`], a test "internet" namespace for network tests.
//!
//! Everything is re-exported at the root: `use bulkhead_testkit::{...}`.

use std::path::{Path, PathBuf};

pub mod ask;
pub mod bins;
pub mod bus;
pub mod cli;
pub mod domaind;
pub mod miniroot;
pub mod net;
pub mod probes;
pub mod procfs;
pub mod scripts;
pub mod stdio;
pub mod vm;

pub use ask::*;
pub use bins::*;
pub use bus::*;
pub use cli::*;
pub use domaind::*;
pub use miniroot::*;
pub use net::*;
pub use probes::*;
pub use procfs::*;
pub use scripts::*;
pub use stdio::*;
pub use vm::*;

/// What the set-up functions return: the error says what failed, for a test's panic.
pub type TestResult<T> = Result<T, String>;

/// The source tree (recipes, `packaging/`, the test guests, scripts).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."))
}
