//! `bulkhead-bench`: measurements printed next to a peer measured in the same run.
//!
//! `bulkhead-bench disposable` times a disposable sandbox domain running `true`, from the
//! request to its removal (one `RunDisposable` call on domaind's D-Bus API), and bubblewrap
//! running `/bin/true` in the same template root with comparable namespaces (user, pid, net,
//! uts, ipc, cgroup, mount). It prints both medians and their ratio. By default it starts its
//! own private dbus-daemon and domaind over the template store in `--template-cache`; with
//! `--bus-address` (or `--system`) it measures an installed domaind instead.
//!
//! `bulkhead-bench vmm` measures the KVM monitor (see `vmm.rs`).
//!
//! `bulkhead-bench open-in-dvm` measures opening a file in a disposable (see `open_in_dvm.rs`).
//!
//! `bulkhead-bench call` measures a service call's round trip (see `call.rs`).
//!
//! `bulkhead-bench storage` measures per-domain storage against what it replaced (see
//! `storage.rs`).
//!
//! `bulkhead-bench gui` measures GUI forwarding by bulkhead-gui-agent against waypipe (see `gui.rs`).
#![forbid(unsafe_code)]

use anyhow::{bail, Context, Result};
use bulkhead_api::Domaind1Proxy;
use bulkhead_templates::TemplateStore;
use bulkhead_testkit::{DomaindOptions, TestBus, TestDomaind};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use zbus::zvariant::Fd;

mod call;

/// The domaind a bench talks to: the one on `bus_address`, or a private one started here
/// (guest tools, the template cache, the shipped recipes) whose only policy file holds
/// `policy` (an installed domaind uses its installed policy). Keep the returned guard for as
/// long as the connection is used.
pub(crate) async fn domaind_for_bench(
    bus_address: Option<String>,
    cache: &std::path::Path,
    policy: &str,
) -> Result<(zbus::Connection, Option<(TestBus, TestDomaind)>)> {
    if let Some(address) = bus_address {
        return Ok((bulkhead_api::connect(Some(&address)).await?, None));
    }
    let bus = TestBus::start().map_err(anyhow::Error::msg)?;
    let daemon = TestDomaind::start(&bus, DomaindOptions::debian12(cache.to_owned()))
        .await
        .map_err(anyhow::Error::msg)?;
    let dir = daemon.paths.config_dir.join("policy.d");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("30-bench.policy"), policy)?;
    let connection = daemon.connect().await.map_err(anyhow::Error::msg)?;
    Ok((connection, Some((bus, daemon))))
}
mod gui;
mod net;
mod open_in_dvm;
mod storage;
mod vm;
mod vmm;

#[derive(Parser)]
#[command(
    version,
    about = "Bulkhead benchmarks, each against a peer measured in the same run"
)]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Disposable sandbox doing `true` (request to removal) vs `bwrap ... /bin/true`.
    Disposable {
        /// Measured runs of each (after one warm-up run of each).
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Template store holding a built template (as `bulkhead-template build --store` makes).
        #[arg(
            long,
            env = "BULKHEAD_TEST_TEMPLATE_CACHE",
            default_value = "/var/lib/bulkhead/templates"
        )]
        template_cache: PathBuf,
        /// The template the disposables (and bwrap) use.
        #[arg(long, default_value = "debian-12")]
        template: String,
        /// Measure the domaind on this bus instead of starting a private one.
        #[arg(long)]
        bus_address: Option<String>,
    },
    /// KVM monitor: process start to the guest's first instruction, and resident memory beyond
    /// guest RAM, vs spawning /bin/true and a `sleep`'s resident memory.
    Vmm {
        /// Measured runs of each (after one warm-up run of each).
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// The bulkhead-vmm binary (default: the one beside this binary).
        #[arg(long)]
        vmm: Option<PathBuf>,
        /// Run the monitor confined (namespaces, empty root, uid 65534, seccomp), as domaind will.
        #[arg(long)]
        confined: bool,
    },
    /// VM domains (needs VT-x/AMD-V: run inside scripts/nested-kvm.sh here): bulkhead-vmm vs
    /// `qemu -accel kvm -M microvm` booting the same kernel, initramfs and disks to the
    /// initramfs's hand-over; a VM domain's start to its agent vs a sandbox domain's; a
    /// disposable VM running `true`, request to removal.
    Vm {
        /// Measured runs of each (after one warm-up run of each).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Template store holding a built template with its VM files (`bulkhead-template build --vm`).
        #[arg(long, env = "BULKHEAD_TEST_TEMPLATE_CACHE")]
        template_cache: PathBuf,
        /// The template of every domain measured.
        #[arg(long, default_value = "debian-12")]
        template: String,
        /// The QEMU binary of the peer.
        #[arg(long, default_value = "qemu-system-x86_64")]
        qemu: PathBuf,
    },
    /// `bulkhead-open-in-dvm FILE` in an app domain, to the disposable's application started,
    /// next to a cold disposable start (`true`, request to removal) of the same run; then both
    /// again with a warm pool of paused disposables (`--pool-size`), and the ratio warm / cold.
    OpenInDvm {
        /// Measured runs of each (after one warm-up run of each).
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Template store holding a built template (as `bulkhead-template build --store` makes).
        #[arg(
            long,
            env = "BULKHEAD_TEST_TEMPLATE_CACHE",
            default_value = "/var/lib/bulkhead/templates"
        )]
        template_cache: PathBuf,
        /// The template of the caller and of the disposable template.
        #[arg(long, default_value = "debian-12")]
        template: String,
        /// Measure the domaind on this bus instead of starting a private one (it makes and
        /// removes the domains bench-open-dvm and bench-open-src).
        #[arg(long)]
        bus_address: Option<String>,
        /// Warm pool size for the warm half (the pool is refilled before each request).
        #[arg(long, default_value_t = 1)]
        pool_size: u32,
    },
    /// Service call from dom0 into a running domain whose service echoes a byte (D-Bus
    /// `Call` to the exit status) vs a plain unix-socket echo between two processes.
    Call {
        /// Measured runs of each (after one warm-up run of each).
        #[arg(long, default_value_t = 200)]
        runs: usize,
        /// Template store holding a built template (as `bulkhead-template build --store` makes).
        #[arg(
            long,
            env = "BULKHEAD_TEST_TEMPLATE_CACHE",
            default_value = "/var/lib/bulkhead/templates"
        )]
        template_cache: PathBuf,
        /// The template of the target domain.
        #[arg(long, default_value = "debian-12")]
        template: String,
        /// Measure the domaind on this bus instead of starting a private one (it makes and
        /// removes the domain bench-call-target).
        #[arg(long)]
        bus_address: Option<String>,
    },
    /// TCP latency and throughput from a sandbox domain through its net domain to a server
    /// in a test internet namespace, vs the same from a bare network namespace.
    Net {
        /// Measured rounds of each (after one warm-up of each), alternating.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// 1-byte round trips per round.
        #[arg(long, default_value_t = 2000)]
        round_trips: u32,
        /// MiB sent per round.
        #[arg(long, default_value_t = 256)]
        mib: u32,
        /// Template store holding a built template (as `bulkhead-template build --store` makes).
        #[arg(
            long,
            env = "BULKHEAD_TEST_TEMPLATE_CACHE",
            default_value = "/var/lib/bulkhead/templates"
        )]
        template_cache: PathBuf,
        /// The template of the net and client domains.
        #[arg(long, default_value = "debian-12")]
        template: String,
    },
    /// Per-domain storage (private volume images on loop devices) against the private
    /// directories they replaced: first start, every start, a disposable's seeding.
    Storage {
        /// Measured runs of each (after one warm-up run of each).
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Private volume size in MiB (a domain's `private_size`).
        #[arg(long, default_value_t = bulkhead_domain::DEFAULT_PRIVATE_SIZE_MIB)]
        size_mib: u64,
    },
    /// 1920x1080 frames (full-frame and small damage) from a Wayland client through
    /// bulkhead-gui-agent to a dom0 receiver vs through waypipe to a headless weston.
    Gui {
        /// Measured frames per case (after 5 warm-up frames).
        #[arg(long, default_value_t = 120)]
        frames: u32,
        /// The bulkhead-gui-agent binary (default: the one beside this binary).
        #[arg(long)]
        agent: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    // Before any thread exists: the environment is read by the private domaind's launcher.
    use_binaries_beside_this_one();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match Cli::parse().command {
        Bench::Disposable {
            runs,
            template_cache,
            template,
            bus_address,
        } => runtime.block_on(disposable(runs, template_cache, template, bus_address)),
        Bench::Vmm {
            runs,
            vmm,
            confined,
        } => vmm::run(runs, vmm, confined),
        Bench::Call {
            runs,
            template_cache,
            template,
            bus_address,
        } => runtime.block_on(call::bench(runs, template_cache, template, bus_address)),
        Bench::OpenInDvm {
            runs,
            template_cache,
            template,
            bus_address,
            pool_size,
        } => runtime.block_on(open_in_dvm::bench(
            runs,
            template_cache,
            template,
            bus_address,
            pool_size,
        )),
        Bench::Gui { frames, agent } => gui::run(frames, agent),
        Bench::Storage { runs, size_mib } => storage::run(runs, size_mib),
        Bench::Vm {
            runs,
            template_cache,
            template,
            qemu,
        } => runtime.block_on(vm::bench(runs, template_cache, template, qemu)),
        Bench::Net {
            rounds,
            round_trips,
            mib,
            template_cache,
            template,
        } => runtime.block_on(net::bench(
            rounds,
            round_trips,
            mib,
            template_cache,
            template,
        )),
    }
}

async fn disposable(
    runs: usize,
    cache: PathBuf,
    template: String,
    bus_address: Option<String>,
) -> Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let name = bulkhead_domain::DomainName::new(&template)
        .with_context(|| format!("'{template}' is not a template name"))?;
    let root = TemplateStore::new(cache.clone())
        .root_path(&name)
        .with_context(|| format!("template '{template}' in {}", cache.display()))?;

    // Our side: a private bus and domaind unless told to use an installed one.
    let mut _private = None;
    let connection = match bus_address {
        Some(address) => bulkhead_api::connect(Some(&address)).await?,
        None => {
            let bus = TestBus::start().map_err(anyhow::Error::msg)?;
            let daemon = TestDomaind::start(&bus, DomaindOptions::debian12(cache.clone()))
                .await
                .map_err(anyhow::Error::msg)?;
            let connection = daemon.connect().await.map_err(anyhow::Error::msg)?;
            _private = Some((bus, daemon));
            connection
        }
    };
    let proxy = Domaind1Proxy::new(&connection).await?;
    // Registers the template domain; the root is already in the store, so this is a cache hit.
    let null = std::fs::File::options().write(true).open("/dev/null")?;
    proxy
        .build_template(&template, Fd::from(&null))
        .await
        .map_err(|e| anyhow::anyhow!("BuildTemplate {template}: {}", e.message()))?;

    let ours = measure(runs, || async {
        disposable_true(&proxy, &template).await.map(drop)
    })
    .await?;

    let bwrap = measure(runs, || async {
        let status = Command::new("bwrap")
            .args(["--unshare-user", "--uid", "0", "--gid", "0"])
            .args(["--unshare-pid", "--unshare-net", "--unshare-uts"])
            .args(["--unshare-ipc", "--unshare-cgroup", "--die-with-parent"])
            .arg("--ro-bind")
            .arg(&root)
            .arg("/")
            .args([
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "--tmpfs",
                "/tmp",
                "/bin/true",
            ])
            .stdin(Stdio::null())
            .status()
            .context("cannot run bwrap (apt-get install bubblewrap)")?;
        if !status.success() {
            bail!("bwrap /bin/true failed: {status}");
        }
        Ok(())
    })
    .await?;

    let (ours_median, bwrap_median) = (median(&ours), median(&bwrap));
    println!("disposable sandbox `true`, request to removal ({runs} runs): median {:.1} ms, min {:.1} ms, max {:.1} ms",
        ms(ours_median), ms(ours[0]), ms(ours[ours.len() - 1]));
    println!("bwrap /bin/true, same root, same namespaces ({runs} runs):  median {:.1} ms, min {:.1} ms, max {:.1} ms",
        ms(bwrap_median), ms(bwrap[0]), ms(bwrap[bwrap.len() - 1]));
    println!(
        "ratio disposable/bwrap: {:.2} (target: disposable under 100 ms; Qubes: 5.8 s cold)",
        ours_median.as_secs_f64() / bwrap_median.as_secs_f64()
    );
    Ok(())
}

/// Measure the binaries built with this one (`cargo build --release` gives release
/// domaind, launcher and guest tools), unless the environment names others.
fn use_binaries_beside_this_one() {
    let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(PathBuf::from))
    else {
        return;
    };
    let has = |names: &[&str]| names.iter().all(|n| dir.join(n).is_file());
    let set = |var: &str, value: PathBuf| {
        if std::env::var_os(var).is_none() {
            std::env::set_var(var, value);
        }
    };
    if has(&["domaind"]) {
        set(bulkhead_testkit::ENV_DOMAIND, dir.join("domaind"));
    }
    if has(&["bulkhead-sandbox"]) {
        set(bulkhead_testkit::ENV_LIBEXEC, dir.clone());
    }
    if has(&["bulkhead-init", "bulkhead-agent"]) {
        set(bulkhead_testkit::ENV_GUEST_TOOLS, dir.clone());
    }
}

/// `true` in a new disposable of `template` (`RunDisposable`, every stream on /dev/null);
/// returns the disposable's name (it is gone by then); an error unless `true` exited 0.
pub(crate) async fn disposable_true(proxy: &Domaind1Proxy<'_>, template: &str) -> Result<String> {
    let null = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let (name, status) = proxy
        .run_disposable(
            template,
            &["true"],
            "",
            Fd::from(&null),
            Fd::from(&null),
            Fd::from(&null),
        )
        .await
        .map_err(|e| anyhow::anyhow!("RunDisposable {template}: {}", e.message()))?;
    if status != 0 {
        bail!("`true` in a disposable of {template} exited {status}");
    }
    Ok(name)
}

/// One warm-up run, then `runs` timed runs, sorted.
async fn measure<F, Fut>(runs: usize, mut f: F) -> Result<Vec<Duration>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    f().await?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        f().await?;
        times.push(start.elapsed());
    }
    times.sort();
    Ok(times)
}

fn median(sorted: &[Duration]) -> Duration {
    sorted[sorted.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
