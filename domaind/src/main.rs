//! `domaind`: the Bulkhead controller daemon. See the library docs (`domaind::daemon`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use domaind::config::{DaemonConfig, DEFAULT_AGENT_TIMEOUT, DEFAULT_RECIPES_DIR};

#[derive(Parser, Debug)]
#[command(
    name = "domaind",
    version,
    about = "Bulkhead domain controller (D-Bus org.bulkhead.Domaind1)"
)]
struct Args {
    /// Domain config files live in <DIR>/domains/<name>.toml.
    #[arg(long, env = "BULKHEAD_CONFIG_DIR", default_value = bulkhead_domain::DEFAULT_CONFIG_DIR)]
    config_dir: PathBuf,
    /// Templates, private and scratch volumes, logs.
    #[arg(long, env = "BULKHEAD_STATE_DIR", default_value = bulkhead_domain::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Channel sockets and instance records of running domains.
    #[arg(long, env = "BULKHEAD_RUNTIME_DIR", default_value = bulkhead_domain::DEFAULT_RUNTIME_DIR)]
    runtime_dir: PathBuf,
    /// Which domaind instance this is: `system` (the default with the default runtime dir)
    /// keeps its domains' cgroups in bulkhead/<domain>; NAME uses bulkhead-NAME/<domain>;
    /// without it, any other runtime dir gets bulkhead-<hash of the runtime dir>/<domain>.
    /// An instance never lists or removes another's cgroups.
    #[arg(long, env = domaind::config::ENV_INSTANCE)]
    instance: Option<String>,
    /// bulkhead-init and bulkhead-agent, mounted into every domain.
    #[arg(long, env = "BULKHEAD_GUEST_TOOLS_DIR", default_value = bulkhead_domain::DEFAULT_GUEST_TOOLS_DIR)]
    guest_tools_dir: PathBuf,
    /// Template recipes (<DIR>/<name>.toml).
    #[arg(long, env = "BULKHEAD_RECIPES_DIR", default_value = DEFAULT_RECIPES_DIR)]
    recipes_dir: PathBuf,
    /// Serve on this bus address instead of the system bus (tests).
    #[arg(long, env = "BULKHEAD_BUS_ADDRESS", conflicts_with = "system")]
    bus_address: Option<String>,
    /// Serve on the system bus (the default).
    #[arg(long)]
    system: bool,
    /// Seconds a start waits for the domain's agent.
    #[arg(long, default_value_t = DEFAULT_AGENT_TIMEOUT.as_secs())]
    agent_timeout: u64,
    /// Seconds a start waits for the agent of a VM domain (its kernel boots first).
    #[arg(long, env = "BULKHEAD_VM_AGENT_TIMEOUT", default_value_t = domaind::config::DEFAULT_VM_AGENT_TIMEOUT.as_secs())]
    vm_agent_timeout: u64,
    /// Seconds the ask agent (the GUI) has to answer an `ask` policy decision; then deny.
    #[arg(long, env = "BULKHEAD_ASK_TIMEOUT", default_value_t = domaind::calls::DEFAULT_ASK_TIMEOUT.as_secs_f64())]
    ask_timeout: f64,
    /// Disposable template for `@dispvm` calls made from dom0.
    #[arg(long, env = "BULKHEAD_DOM0_DEFAULT_DISPVM")]
    default_dispvm: Option<String>,
    /// Start VM domains even without hardware virtualization (PVM or other software KVM).
    /// For tests: a stock Linux guest cannot boot there, so such a start returns once the VMM
    /// runs instead of waiting for the domain's agent. Never use it in production.
    #[arg(long)]
    allow_software_kvm: bool,
    /// Disposables (warm pool members and cold starts alike): start one only if the host's
    /// MemAvailable minus its memory stays at or above this many MiB.
    #[arg(long, env = domaind::config::ENV_POOL_MEMORY_MARGIN, default_value_t = domaind::config::DEFAULT_POOL_MEMORY_MARGIN_MIB)]
    pool_memory_margin_mib: u64,
    /// The sysfs tree USB devices are listed from (tests point it at recorded trees).
    #[arg(long, env = "BULKHEAD_USB_SYSFS_ROOT", default_value = "/sys")]
    usb_sysfs_root: PathBuf,
    /// The service domain that holds the USB devices.
    #[arg(long, env = "BULKHEAD_USB_DOMAIN", default_value = bulkhead_usb::DEFAULT_USB_DOMAIN)]
    usb_domain: String,
}

fn main() -> anyhow::Result<()> {
    bulkhead_logging::init("info");
    let args = Args::parse();
    let exe = std::env::current_exe().ok();
    let file = domaind::config::load_daemon_file(&args.config_dir)
        .map_err(anyhow::Error::msg)
        .context("domaind's settings")?;
    let cgroup_root = domaind::config::cgroup_root(
        args.instance.as_deref().filter(|i| !i.is_empty()),
        &args.runtime_dir,
    )?;
    let cfg = DaemonConfig {
        cgroup_root,
        paths: bulkhead_domain::Paths {
            config_dir: args.config_dir,
            state_dir: args.state_dir,
            runtime_dir: args.runtime_dir,
        },
        guest_tools_dir: args.guest_tools_dir,
        recipes_dir: args.recipes_dir,
        launcher: domaind::config::find_launcher(exe.as_deref()),
        agent_timeout: std::time::Duration::from_secs(args.agent_timeout.max(1)),
        vm_agent_timeout: std::time::Duration::from_secs(args.vm_agent_timeout.max(1)),
        ask_timeout: std::time::Duration::try_from_secs_f64(args.ask_timeout.max(0.0))
            .context("--ask-timeout is out of range")?,
        dom0_default_dispvm: args
            .default_dispvm
            .filter(|s| !s.is_empty())
            .map(|s| bulkhead_domain::DomainName::new(&s))
            .transpose()
            .context("--default-dispvm is not a valid domain name")?,
        vmm: domaind::config::find_vmm(exe.as_deref()),
        allow_software_kvm: args.allow_software_kvm,
        pool_memory_margin_mib: args.pool_memory_margin_mib,
        net: file.net,
        disposables: file.disposables,
        usb_sysfs_root: args.usb_sysfs_root,
        usb_domain: args.usb_domain,
    };
    let bus = if args.system {
        None
    } else {
        args.bus_address.filter(|a| !a.is_empty())
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(domaind::daemon::run(cfg, bus))?;
    Ok(())
}
