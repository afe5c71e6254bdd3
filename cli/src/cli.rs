//! The command line: `bulkhead <command>`, in the spirit of Qubes' `qvm-*` tools.

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "bulkhead",
    version,
    about = "Manage Bulkhead domains through domaind",
    // The exit codes, from the one table in bulkhead-api.
    after_help = crate::failure::exit_codes_help()
)]
pub struct Cli {
    /// D-Bus address of domaind's bus (default: the system bus).
    #[arg(
        long,
        global = true,
        env = "BULKHEAD_BUS_ADDRESS",
        value_name = "ADDRESS"
    )]
    pub bus_address: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List domains: name, class, state, label, memory.
    Ls(LsArgs),
    /// Create a domain.
    Create(CreateArgs),
    /// Copy a domain (its settings and private volume) under a new name.
    Clone { source: String, dest: String },
    /// Remove halted domains with all their data.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Start domains, showing progress.
    Start {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Shut domains down gracefully (through their init), killing them after the timeout.
    Shutdown {
        #[arg(required = true)]
        names: Vec<String>,
        /// Seconds to wait before killing (default: domaind's, 20 s).
        #[arg(long, default_value_t = 0)]
        timeout: u32,
    },
    /// Kill domains at once.
    Kill {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Freeze every process of domains.
    Pause {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Thaw paused domains.
    Unpause {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Show or change a domain's properties.
    Prefs(PrefsArgs),
    /// Run a command in a domain (or in a new disposable), with stdin/stdout/stderr passed through.
    Run(RunArgs),
    /// Show a domain's log (its init and agent); control characters are replaced on a terminal.
    Log { name: String },
    /// The serial console of a running VM domain, interactively (a root shell the domain's
    /// init keeps there); output filtered as `log` does on a terminal; Ctrl-] leaves.
    Console { name: String },
    /// Templates: root file systems built from Debian packages.
    #[command(subcommand)]
    Template(TemplateCommand),
    /// Policies: who may call what between domains.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// A domain's firewall (applied in its netvm at once), in Qubes' rule format.
    Firewall(FirewallArgs),
    /// USB devices held by the usb domain: list them, attach one to a domain, detach it.
    #[command(subcommand)]
    Usb(UsbCommand),
    /// Start an application of a domain's menu by its desktop id (what a menu entry runs);
    /// DOMAIN may be @dispvm:NAME for a new disposable of disposable template NAME.
    App { domain: String, desktop_id: String },
    /// A domain's applications in dom0's menu (qvm-appmenus): list, choose, refresh.
    Appmenus(AppmenusArgs),
}

#[derive(Debug, clap::Args)]
pub struct AppmenusArgs {
    /// The domain (not needed with --sync).
    #[arg(required_unless_present = "sync")]
    pub domain: Option<String>,
    /// The applications its template provides, those in the menu marked with `*`.
    #[arg(long, conflicts_with_all = ["set", "sync"])]
    pub list: bool,
    /// Put exactly these desktop ids in its menu (none: empty it), then refresh the menu.
    #[arg(long, num_args = 0.., value_name = "DESKTOP_ID")]
    pub set: Option<Vec<String>>,
    /// Rewrite this user's menu entries of every domain (remove those of domains and
    /// applications that are gone).
    #[arg(long)]
    pub sync: bool,
}

#[derive(Debug, Subcommand)]
pub enum UsbCommand {
    /// The usb domain's devices: bus id, vendor:product, manufacturer, product, serial, class
    /// (and where each is attached). Says so when the kernel lacks USB/IP.
    List {
        /// Print JSON (an array of objects) for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Attach device BUSID to DOMAIN (`dom0` for a keyboard or mouse). The policy decides
    /// (service bulkhead.usb.Attach+BUSID from DOMAIN to the usb domain); exit 7 when refused.
    Attach { busid: String, domain: String },
    /// Give device BUSID back to the usb domain.
    Detach { busid: String },
}

#[derive(Debug, Args)]
pub struct FirewallArgs {
    /// The domain whose outgoing traffic the rules govern.
    pub domain: String,
    #[command(subcommand)]
    pub command: FirewallCommand,
}

#[derive(Debug, Subcommand)]
pub enum FirewallCommand {
    /// Show the rules, numbered (an empty list allows everything but other domains).
    List,
    /// Add a rule: KEY=VALUE words, e.g. `action=accept dst4=192.0.2.0/24 proto=tcp
    /// dstports=443` (keys: action, dst4, dst6, dsthost, specialtarget=dns, proto, dstports,
    /// icmptype, expire=SECONDS|+SECONDS, comment=rest of the line).
    Add {
        /// Insert before rule N (default: append).
        #[arg(long, value_name = "N")]
        before: Option<u32>,
        /// The rule's words.
        #[arg(required = true, num_args = 1.., trailing_var_arg = true)]
        rule: Vec<String>,
    },
    /// Remove rule N (as numbered by list).
    Del { index: u32 },
    /// Remove every rule (back to the default).
    Reset,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Lint the policy files (with their includes); print every error as `file:line: message`.
    /// Any error means every call is denied, so exit code 5 says the policy is unusable.
    Check {
        /// The policy directory.
        #[arg(long, default_value = "/etc/bulkhead/policy.d", value_name = "DIR")]
        dir: std::path::PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Print JSON (an array of objects) for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    pub name: String,
    /// app, template, standalone, disposable-template, disposable or service.
    #[arg(long, short = 'C', default_value = "app")]
    pub class: String,
    /// The template that provides the root file system.
    #[arg(long, short = 't', default_value = "")]
    pub template: String,
    /// Colour: red, orange, yellow, green, gray, blue, purple, black.
    #[arg(long, short = 'l')]
    pub label: String,
    /// Further properties, KEY=VALUE (memory, vcpus, netvm, isolation, default_dispvm, autostart, features.X).
    #[arg(long = "property", short = 'P', value_name = "KEY=VALUE")]
    pub properties: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PrefsArgs {
    pub name: String,
    /// The property to show or set.
    pub property: Option<String>,
    /// The new value ("" clears netvm, template or default_dispvm).
    pub value: Option<String>,
    /// Print JSON when listing all properties.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The domain to run in (omit with --dispvm); with --service, the call's TARGET.
    #[arg(required_unless_present_any = ["dispvm", "service"])]
    pub name: Option<String>,
    /// With --service: SERVICE or SERVICE+ARGUMENT.
    #[arg(requires = "service", value_name = "SERVICE[+ARG]")]
    pub service_name: Option<String>,
    /// Make a service call from dom0 instead: `bulkhead run --service [--] TARGET SERVICE[+ARG]`.
    /// It goes through the policy (source @adminvm); TARGET may be a domain, @dispvm,
    /// @dispvm:TEMPLATE or @default. Exits with the service's status, 126 when the policy
    /// refused the call, 125 when it could not be made.
    #[arg(long, conflicts_with_all = ["dispvm", "user"])]
    pub service: bool,
    /// Run in a new disposable made from this disposable template; it is removed when the command ends.
    #[arg(long, value_name = "TEMPLATE", conflicts_with = "name")]
    pub dispvm: Option<String>,
    /// User inside the domain (default: the domain's default user).
    #[arg(long, short = 'u', default_value = "")]
    pub user: String,
    /// Pass the domain's output to a terminal unfiltered. By default control characters
    /// (escape sequences) are replaced with `_` when stdout or stderr is a terminal.
    #[arg(long)]
    pub no_filter_escape_chars: bool,
    /// The command and its arguments.
    #[arg(last = true, required_unless_present = "service")]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Installed templates (ready, changed since built, stale, ...) and the recipes that are
    /// not installed.
    List {
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Install a template from its recipe (build it, or reuse the tree when the recipe is
    /// unchanged) and register its domain. To add software to an installed template, start
    /// it and install into it: `bulkhead run -u root NAME -- sh -c 'apt-get update && apt-get install -y PACKAGE'`.
    #[command(alias = "build")]
    Install { name: String },
    /// Remove a template with its trees (refused while a domain uses it).
    Remove { name: String },
    /// Copy a template under a new name, to change the copy only.
    Clone { source: String, dest: String },
    /// Undo the template's last change (what was installed or changed in it, kept when it
    /// stopped) or rebuild: its root before becomes current again. A second revert undoes
    /// the first. Only while the template is halted; domains that run keep their root, their
    /// next start uses this one.
    Revert { name: String },
}
