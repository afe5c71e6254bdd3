//! Networking of domains (issue 7): netvm links, the net domain's uplink and NAT, the
//! per-domain firewall. The mechanics live in `bulkhead_net`; this is the lifecycle glue.
//!
//! - A domain with `netvm = N` gets, once it runs, a veth pair between its network namespace
//!   and N's ([`bulkhead_net::link::link_client`]); its address is stable (the address book in
//!   `<state>/net/addresses.toml`). Starting it starts N first (a halted netvm is started; a
//!   paused one or a cycle of netvms fails the start with a message).
//! - A domain that serves as a netvm (the `[net] domain` of `domaind.toml`, or any domain
//!   named as another's netvm) gets forwarding on and, for the `[net] domain`, the uplink
//!   moved into its namespace. domaind holds its namespace by descriptor while it runs, so
//!   when it stops the uplink can be moved back to the host before the namespace goes away.
//!   When it (re)starts, every running client is linked to it again.
//! - Its nftables ruleset (NAT, DNS redirection, one chain per client with the client's
//!   firewall) is rebuilt and applied atomically on every change: a client linked or gone,
//!   a firewall edited, a rule expired, a domain's `features.allow-inter-domain` set. Clients
//!   never reach each other unless that feature of the source names the destination (see
//!   `bulkhead_net::nft`); no IPv6 passes to or from a client.
//! - A VM domain with a netvm gets the same link, ending in a small namespace of its own
//!   (its *link namespace*: a bridge with the VM's tap and the veth end, see
//!   [`bulkhead_net::tap`]) instead of the guest's; domaind makes it before the VMM starts and
//!   hands the VMM the tap's descriptor ([`crate::vm::VmNet`]); the guest configures the
//!   address from its kernel command line. The netvm sees a client like any other (`vifX.Y`,
//!   the same chain); a restart of the netvm re-links it into the same link namespace, so the
//!   VMM keeps its tap. The tap's descriptor holds the link namespace: when the VMM dies,
//!   everything of the link goes with it. A VM cannot serve as a netvm (its namespace is
//!   not the guest's network), and a netvm set while a VM runs takes effect at its next
//!   start unless it already had one.
//! - A VM serves as a netvm (a *net VM*, Qubes' sys-net) with the clients' firewall in front of
//!   it (Qubes' sys-firewall) in a namespace of domaind's, the *firewall namespace*
//!   ([`bulkhead_net::vmnetvm`]): the clients link there exactly as into a sandbox netvm's
//!   namespace, the per-client chains, DNS redirection and client separation apply there, and
//!   it masquerades them towards the VM through a tap (the VM's second interface). The VM
//!   owns the uplink through its first interface, a tap bridged with the host's uplink in an
//!   uplink namespace (the fallback: this VMM has no VFIO passthrough, so the NIC's driver
//!   stays dom0's; the VM has the address, the routes and the NAT). A compromised net VM
//!   sees one peer and cannot touch the clients' firewall, which is why one firewall, in
//!   domaind's namespace, is enough: Qubes needs a separate sys-firewall VM because its
//!   netvms apply the rules themselves.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bulkhead_api::Error;
use bulkhead_domain::{DomainConfig, DomainName};
use bulkhead_net::firewall::{self, Dest, Rule, RuleFile, RuleSet};
use bulkhead_net::netns::NetNs;
use bulkhead_net::nft::{Client, ClientFirewall, NetPlan, ResolvedRule};
use bulkhead_net::{addr, link, nft, vmnetvm, NetError, DNS_VIRTUAL};
use tokio::sync::Mutex as AsyncMutex;
use tracing::{debug, error, info, warn};

use super::{blocking, lock, Instance, Manager};
use crate::backend::DomainRecord;
use crate::instance::now_secs;
use crate::state::DomainState;
use crate::vm::{VmNet, VmNetvm, VmNetwork};

/// Longest netvm chain followed (a longer one is treated as a cycle).
const MAX_CHAIN: usize = 8;

#[derive(Debug, Clone)]
struct LinkInfo {
    netvm: DomainName,
    vif: String,
}

/// Network state of the daemon.
pub(crate) struct Net {
    /// domaind's own namespace (the host's), where the uplink lives while net is down.
    host: Option<Arc<NetNs>>,
    /// Namespaces of the running domains that serve as netvms.
    held: std::sync::Mutex<HashMap<DomainName, Arc<NetNs>>>,
    /// Linked clients.
    links: std::sync::Mutex<HashMap<DomainName, LinkInfo>>,
    /// Link namespaces of running VM clients (see [`bulkhead_net::tap`]).
    vm_links: std::sync::Mutex<HashMap<DomainName, Arc<NetNs>>>,
    /// Running net VMs: their uplink namespace (None: no uplink); their firewall namespace
    /// is in `held` like a sandbox netvm's namespace.
    vm_netvms: std::sync::Mutex<HashMap<DomainName, Option<Arc<NetNs>>>>,
    /// Serializes link changes and ruleset applications.
    op: AsyncMutex<()>,
    /// Earliest `expire` of any applied rule (u64::MAX: none).
    next_expiry: AtomicU64,
}

impl Net {
    pub(crate) fn new() -> Net {
        let host = match NetNs::current() {
            Ok(n) => Some(Arc::new(n)),
            Err(e) => {
                error!(error = %e, "cannot open domaind's network namespace; no uplink can be moved");
                None
            }
        };
        Net {
            host,
            held: std::sync::Mutex::new(HashMap::new()),
            links: std::sync::Mutex::new(HashMap::new()),
            vm_links: std::sync::Mutex::new(HashMap::new()),
            vm_netvms: std::sync::Mutex::new(HashMap::new()),
            op: AsyncMutex::new(()),
            next_expiry: AtomicU64::new(u64::MAX),
        }
    }
}

fn net_err(what: &str) -> impl FnOnce(NetError) -> Error + '_ {
    move |e| Error::Backend(format!("{what}: {e}"))
}

fn sandbox_ns(inst: &Instance) -> Option<Result<NetNs, NetError>> {
    match &inst.record {
        DomainRecord::Sandbox(s) => Some(NetNs::of_pid(s.init_pid)),
        DomainRecord::Vm(_) => None,
    }
}

impl Manager {
    /// The namespace a client's link ends in: the sandbox's own, or a VM's link namespace
    /// (`true`); None: a VM without one.
    fn client_ns(
        &self,
        name: &DomainName,
        inst: &Instance,
    ) -> Option<Result<(NetNs, bool), NetError>> {
        match &inst.record {
            DomainRecord::Sandbox(s) => Some(NetNs::of_pid(s.init_pid).map(|n| (n, false))),
            DomainRecord::Vm(_) => lock(&self.net.vm_links)
                .get(name)
                .map(|n| n.try_clone().map(|n| (n, true))),
        }
    }

    /// Before a VM start: the VM's link namespace with its tap, linked to its running netvm
    /// and in the netvm's ruleset. None: the VM has no netvm. Undone by [`Self::net_on_stop`].
    pub(super) async fn vm_net_prepare(
        self: &Arc<Self>,
        cfg: &DomainConfig,
    ) -> Result<Option<VmNetwork>, Error> {
        let dn = &cfg.name;
        if self.serves_network(dn) {
            return self.netvm_vm_prepare(cfg).await.map(Some);
        }
        let Some(netvm) = cfg.netvm.clone() else {
            return Ok(None);
        };
        let ns = blocking(NetNs::new_detached)
            .await?
            .map_err(net_err("the VM's link namespace"))?;
        let tap = link::prepare_vm_link(&ns)
            .await
            .map_err(net_err("the VM's tap"))?;
        let ns = Arc::new(ns);
        let _op = self.net.op.lock().await;
        lock(&self.net.vm_links).insert(dn.clone(), ns.clone());
        let ip = match self.link_locked(dn, &ns, &netvm, false, true).await {
            Ok(ip) => ip,
            Err(e) => {
                lock(&self.net.vm_links).remove(dn);
                return Err(e);
            }
        };
        self.apply_locked(&netvm).await;
        Ok(Some(VmNetwork::Client(VmNet {
            tap: Arc::new(tap),
            ip,
            gateway: bulkhead_net::GATEWAY,
            dns: DNS_VIRTUAL.to_vec(),
            mac: bulkhead_net::tap::vm_mac(ip),
        })))
    }

    /// Before a net VM's start: its firewall namespace (served at once, so running clients
    /// link to it) with the tap of its link to the clients, and, for the uplink domain, the
    /// uplink namespace with the host's uplink bridged to its uplink tap. Undone by
    /// [`Self::net_on_stop`].
    async fn netvm_vm_prepare(self: &Arc<Self>, cfg: &DomainConfig) -> Result<VmNetwork, Error> {
        let dn = &cfg.name;
        if cfg.netvm.is_some() {
            return Err(Error::InvalidProperty(format!(
                "'{dn}' is a VM that serves as a netvm; a net VM owns the uplink and cannot have a netvm of its own (set its netvm to none, or make it a sandbox)"
            )));
        }
        let fw = blocking(NetNs::new_detached)
            .await?
            .map_err(net_err("the net VM's firewall namespace"))?;
        let down = vmnetvm::prepare_firewall(&fw).map_err(net_err("the net VM's tap"))?;
        let fw = Arc::new(fw);
        let uplink = if dn.as_str() == self.cfg.net.domain {
            self.cfg.net.uplink().map_err(Error::Backend)?
        } else {
            None
        };
        let up = match (uplink, &self.net.host) {
            (Some(u), Some(host)) => {
                let ns = blocking(NetNs::new_detached)
                    .await?
                    .map_err(net_err("the net VM's uplink namespace"))?;
                let tap = {
                    let _op = self.net.op.lock().await;
                    vmnetvm::prepare_uplink(&ns, host, &u.ifname)
                        .await
                        .map_err(net_err("the net VM's uplink"))?
                };
                info!(domain = %dn, uplink = %u.ifname, "uplink bridged to the net VM (a tap: no VFIO passthrough here)");
                Some((Arc::new(ns), Arc::new(tap), u))
            }
            _ => None,
        };
        lock(&self.net.vm_netvms).insert(dn.clone(), up.as_ref().map(|(ns, _, _)| ns.clone()));
        if let Err(e) = self.serve(dn, fw, false, false).await {
            self.net_on_stop(dn).await;
            return Err(e);
        }
        Ok(VmNetwork::Netvm(VmNetvm {
            uplink: up.map(|(_, tap, u)| (tap, u)),
            down: Arc::new(down),
            dns: self.cfg.net.dns.clone(),
        }))
    }

    /// How the uplink domain reaches the world, for `bulkhead prefs` (property `uplink`):
    /// the host's uplink moved into a sandbox's namespace, or bridged to a net VM's tap.
    pub(crate) fn uplink_mode(&self, cfg: &DomainConfig) -> Option<String> {
        let up = self.cfg.net.uplink.clone()?;
        if cfg.name.as_str() != self.cfg.net.domain || cfg.netvm.is_some() {
            return None;
        }
        Some(if cfg.isolation == bulkhead_domain::Isolation::Vm {
            format!("{up} bridged to the net VM's tap (fallback: this VMM has no VFIO passthrough of the NIC)")
        } else {
            format!("{up} moved into the domain's network namespace")
        })
    }

    fn address_book_path(&self) -> std::path::PathBuf {
        self.cfg.paths.state_dir.join("net").join("addresses.toml")
    }

    fn rule_file(&self, name: &DomainName) -> RuleFile {
        RuleFile::in_dir(&self.cfg.paths.domain_state_dir(name))
    }

    /// Whether `name` serves as a netvm: the uplink domain, or some domain's netvm.
    fn serves_network(&self, name: &DomainName) -> bool {
        if self.cfg.net.domain == name.as_str() {
            return true;
        }
        let (good, _) = self.store.load_all();
        good.iter()
            .any(|c| c.netvm.as_ref().is_some_and(|n| n == name))
    }

    /// Refuse `netvm = value` on `name` if it would make a cycle.
    pub(super) fn check_netvm_cycle(&self, name: &DomainName, value: &str) -> Result<(), Error> {
        let mut cur = value.to_owned();
        for _ in 0..MAX_CHAIN {
            if name == cur.as_str() {
                return Err(Error::InvalidProperty(format!(
                    "netvm '{value}' of '{name}' would make a cycle of netvms"
                )));
            }
            let Ok(dn) = DomainName::new(&cur) else {
                return Ok(());
            };
            match self.store.load(&dn).ok().and_then(|c| c.netvm) {
                Some(n) => cur = n.to_string(),
                None => return Ok(()),
            }
        }
        Err(Error::InvalidProperty(format!(
            "the netvm chain from '{value}' is longer than {MAX_CHAIN}"
        )))
    }

    /// What goes into the domain's /etc/resolv.conf: the uplink's resolvers for the uplink
    /// domain, the virtual DNS addresses for everyone else.
    pub(super) fn resolv_conf_for(&self, cfg: &DomainConfig) -> Option<String> {
        if cfg.name.as_str() == self.cfg.net.domain && cfg.netvm.is_none() {
            if self.cfg.net.dns.is_empty() {
                return None;
            }
            let mut s = String::from("# Bulkhead: the uplink's resolvers\n");
            for d in &self.cfg.net.dns {
                s.push_str(&format!("nameserver {d}\n"));
            }
            return Some(s);
        }
        Some(bulkhead_net::resolv_conf())
    }

    /// Before a start: make sure the domain's netvm runs (start it if halted).
    pub(super) async fn start_netvm_first(
        self: &Arc<Self>,
        cfg: &DomainConfig,
    ) -> Result<(), Error> {
        let Some(netvm_dn) = cfg.netvm.clone() else {
            return Ok(());
        };
        let netvm = netvm_dn.as_str();
        let name = cfg.name.as_str();
        self.check_netvm_cycle(&cfg.name, netvm)?;
        if self.state_of(&netvm_dn) == DomainState::Running {
            return Ok(());
        }
        info!(domain = name, netvm = %netvm, "starting the netvm first");
        Box::pin(self.ensure_running(&netvm_dn))
            .await
            .map(|_| ())
            .map_err(|e| {
                Error::Backend(format!(
                    "cannot start domain '{name}': its netvm '{netvm}' did not start: {}",
                    e.message()
                ))
            })
    }

    /// After a start (the instance is live): serve as netvm if it is one, link to its netvm.
    pub(super) async fn net_after_start(
        self: &Arc<Self>,
        cfg: &DomainConfig,
        inst: &Arc<Instance>,
    ) -> Result<(), Error> {
        let name = &cfg.name;
        let serves = self.serves_network(name);
        if !serves && cfg.netvm.is_none() {
            // No link to make: the domain keeps its empty network namespace.
            return Ok(());
        }
        let Some(ns) = sandbox_ns(inst) else {
            // A VM: linked before its VMM started (vm_net_prepare).
            return Ok(());
        };
        let ns = Arc::new(ns.map_err(net_err("the domain's network namespace"))?);
        if serves {
            self.serve(name, ns.clone(), cfg.netvm.is_some(), false)
                .await?;
        }
        if let Some(netvm) = &cfg.netvm {
            let _op = self.net.op.lock().await;
            self.link_locked(name, &ns, netvm, false, false).await?;
            self.apply_locked(netvm).await;
        }
        Ok(())
    }

    /// Take `name` as a netvm: forwarding, uplink, then link every running client (`adopt`:
    /// after a domaind restart, keep the links that are still there).
    async fn serve(
        self: &Arc<Self>,
        name: &DomainName,
        ns: Arc<NetNs>,
        has_netvm: bool,
        adopt: bool,
    ) -> Result<(), Error> {
        let is_vm_netvm = lock(&self.net.vm_netvms).contains_key(name);
        let uplink = if is_vm_netvm {
            // A net VM's firewall namespace: out through the tap to the VM.
            Some(vmnetvm::firewall_uplink())
        } else if name.as_str() == self.cfg.net.domain && !has_netvm {
            self.cfg.net.uplink().map_err(Error::Backend)?
        } else {
            None
        };
        let host = self.net.host.clone();
        {
            let _op = self.net.op.lock().await;
            match &host {
                Some(h) => link::setup_net(&ns, h, uplink.as_ref()).await,
                None => link::setup_net(&ns, &ns, None).await,
            }
            .map_err(net_err(&format!("setting up netvm '{name}'")))?;
            lock(&self.net.held).insert(name.clone(), ns.clone());
            if let Some(u) = &uplink {
                info!(domain = name.as_str(), uplink = %u.ifname, "uplink moved into the net domain");
            }
            // Clients that run now (a restart of this netvm): link them again.
            let clients: Vec<(DomainName, Arc<Instance>)> = {
                let (good, _) = self.store.load_all();
                good.into_iter()
                    .filter(|c| c.netvm.as_ref().is_some_and(|n| n == name))
                    .filter_map(|c| {
                        let rt = lock(&self.domains).get(&c.name).cloned()?;
                        let st = rt.state();
                        let inst = rt.instance()?;
                        matches!(st, DomainState::Running | DomainState::Paused)
                            .then_some((c.name, inst))
                    })
                    .collect()
            };
            for (client, inst) in clients {
                let Some(Ok((cns, vm))) = self.client_ns(&client, &inst) else {
                    continue;
                };
                if let Err(e) = self.link_locked(&client, &cns, name, adopt, vm).await {
                    error!(domain = %client, netvm = name.as_str(), error = %e.message(), "cannot re-link to the restarted netvm");
                } else if !adopt {
                    info!(domain = %client, netvm = name.as_str(), "re-linked to the restarted netvm");
                }
            }
            self.apply_locked(name).await;
        }
        Ok(())
    }

    /// Link client `name` (namespace `ns`; `vm`: a VM's link namespace) to running `netvm`
    /// (`keep`: an existing link is only recorded). Returns the client's address. Caller
    /// holds `net.op`.
    async fn link_locked(
        &self,
        dn: &DomainName,
        ns: &NetNs,
        netvm_dn: &DomainName,
        keep: bool,
        vm: bool,
    ) -> Result<Ipv4Addr, Error> {
        let (name, netvm) = (dn.as_str(), netvm_dn.as_str());
        let Some(net_ns) = lock(&self.net.held).get(netvm_dn).cloned() else {
            return Err(Error::Backend(format!(
                "cannot link '{name}': its netvm '{netvm}' is not running"
            )));
        };
        let path = self.address_book_path();
        let store = self.store.clone();
        let n = name.to_owned();
        let ip: Ipv4Addr = blocking(move || -> Result<Ipv4Addr, NetError> {
            let mut book = addr::AddressBook::load(&path)?;
            let (ip, changed) = book.get_or_assign(&n, |d| {
                DomainName::new(d)
                    .map(|d| store.exists(&d))
                    .unwrap_or(false)
            })?;
            if changed {
                book.save(&path)?;
            }
            Ok(ip)
        })
        .await?
        .map_err(net_err("client address"))?;
        let vif = addr::vif_name(ip);
        if keep && link::is_linked(&net_ns, ns, &vif).await.unwrap_or(false) {
            debug!(domain = name, netvm, vif = %vif, "kept the existing link");
        } else {
            if vm {
                link::link_vm_client(&net_ns, ns, &vif, ip).await
            } else {
                link::link_client(&net_ns, ns, &vif, ip).await
            }
            .map_err(net_err(&format!("linking '{name}' to '{netvm}'")))?;
            info!(domain = name, netvm, ip = %ip, vif = %vif, vm, "linked");
        }
        lock(&self.net.links).insert(
            dn.clone(),
            LinkInfo {
                netvm: netvm_dn.clone(),
                vif,
            },
        );
        Ok(ip)
    }

    /// A domain stopped (its init is gone): give the uplink back if it had it, forget its
    /// links, drop its chain from its netvm's ruleset.
    pub(super) async fn net_on_stop(&self, dn: &DomainName) {
        let name = dn.as_str();
        let _op = self.net.op.lock().await;
        let held = lock(&self.net.held).remove(dn);
        let vm_netvm = lock(&self.net.vm_netvms).remove(dn);
        if let Some(up_ns) = vm_netvm {
            lock(&self.net.links).retain(|_, l| &l.netvm != dn);
            if let (Some(host), Some(up), Some(ns)) = (&self.net.host, &self.cfg.net.uplink, up_ns)
            {
                match link::return_uplink(&ns, host, up).await {
                    Ok(true) => info!(domain = name, uplink = %up, "uplink returned to the host"),
                    Ok(false) => {}
                    Err(e) => {
                        error!(domain = name, error = %e, "cannot return the uplink to the host")
                    }
                }
            }
        }
        if let Some(ns) = held {
            lock(&self.net.links).retain(|_, l| &l.netvm != dn);
            if let (Some(host), Some(up)) = (&self.net.host, &self.cfg.net.uplink) {
                match link::return_uplink(&ns, host, up).await {
                    Ok(true) => info!(domain = name, uplink = %up, "uplink returned to the host"),
                    Ok(false) => {}
                    Err(e) => {
                        error!(domain = name, error = %e, "cannot return the uplink to the host")
                    }
                }
            }
        }
        let link = lock(&self.net.links).remove(dn);
        // A VM's link namespace: domaind's descriptor goes; with the VMM gone, so does the
        // namespace, and the kernel deletes the tap, the bridge and the veth pair with it.
        lock(&self.net.vm_links).remove(dn);
        if let Some(l) = link {
            self.apply_locked(&l.netvm).await;
        }
    }

    /// `netvm` of a running domain changed: unlink, link to the new one (started if needed).
    pub(super) async fn net_netvm_changed(
        self: &Arc<Self>,
        dn: &DomainName,
        new_netvm: Option<DomainName>,
    ) -> Result<(), Error> {
        let name = dn.as_str();
        let new = new_netvm.as_ref().map(DomainName::as_str);
        let rt = self.runtime(dn);
        let Some(inst) = rt.instance() else {
            return Ok(());
        };
        if !matches!(rt.state(), DomainState::Running | DomainState::Paused) {
            return Ok(());
        }
        let Some(ns) = self.client_ns(dn, &inst) else {
            // A VM started without a netvm has no network device to link.
            warn!(domain = name, new = ?new, "a VM domain's netvm takes effect at its next start (it was started without a network device)");
            return Ok(());
        };
        let (ns, vm) = ns.map_err(net_err("the domain's network namespace"))?;
        if let Some(n) = &new_netvm {
            if self.state_of(n) != DomainState::Running {
                Box::pin(self.ensure_running(n)).await.map_err(|e| {
                    Error::Backend(format!(
                        "the netvm of '{name}' is set to '{n}', which did not start: {}",
                        e.message()
                    ))
                })?;
            }
        }
        let _op = self.net.op.lock().await;
        let old = lock(&self.net.links).remove(dn);
        link::unlink_client(&ns)
            .await
            .map_err(net_err(&format!("unlinking '{name}'")))?;
        if let Some(o) = &old {
            self.apply_locked(&o.netvm).await;
        }
        if let Some(n) = &new_netvm {
            self.link_locked(dn, &ns, n, false, vm).await?;
            self.apply_locked(n).await;
        }
        info!(domain = name, old = ?old.map(|o| String::from(o.netvm)), new = ?new, "re-linked after a netvm change");
        Ok(())
    }

    /// After recovery: hold the namespaces of adopted netvms again and note adopted clients'
    /// links (they survived: their namespaces never went away).
    pub(super) async fn net_adopt(self: &Arc<Self>) {
        let running: Vec<(DomainName, Arc<Instance>)> = lock(&self.domains)
            .iter()
            .filter_map(|(n, rt)| Some((n.clone(), rt.instance()?)))
            .collect();
        let (good, _) = self.store.load_all();
        // VM clients first: their link namespaces, found through the VMM's tap descriptor,
        // so that serving their netvm below keeps their links.
        for (name, inst) in &running {
            let DomainRecord::Vm(v) = &inst.record else {
                continue;
            };
            if !good.iter().any(|c| &c.name == name && c.netvm.is_some()) {
                continue;
            }
            match bulkhead_net::tap::netns_of_tap_in(v.vmm_pid, crate::vm::TAP_FD) {
                Ok(ns) => {
                    lock(&self.net.vm_links).insert(name.clone(), Arc::new(ns));
                }
                Err(e) => {
                    warn!(domain = %name, error = %e, "cannot find the adopted VM's link namespace; it keeps its link but is not re-linked when its netvm restarts")
                }
            }
        }
        // Net VMs: their uplink and firewall namespaces, through the VMM's tap descriptors
        // (the uplink's first when there is one).
        for (name, inst) in &running {
            let DomainRecord::Vm(v) = &inst.record else {
                continue;
            };
            if !self.serves_network(name) {
                continue;
            }
            let has_uplink = name.as_str() == self.cfg.net.domain && self.cfg.net.uplink.is_some();
            let fw_fd = crate::vm::TAP_FD + i32::from(has_uplink);
            let up_ns = if has_uplink {
                bulkhead_net::tap::netns_of_tap_in(v.vmm_pid, crate::vm::TAP_FD)
                    .map(|n| Some(Arc::new(n)))
            } else {
                Ok(None)
            };
            match (up_ns, bulkhead_net::tap::netns_of_tap_in(v.vmm_pid, fw_fd)) {
                (Ok(up), Ok(fw)) => {
                    lock(&self.net.vm_netvms).insert(name.clone(), up);
                    if let Err(e) = self.serve(name, Arc::new(fw), false, true).await {
                        error!(domain = %name, error = %e.message(), "cannot take the adopted net VM back");
                    }
                }
                (Err(e), _) | (_, Err(e)) => {
                    error!(domain = %name, error = %e, "cannot find the adopted net VM's namespaces; its clients are not re-linked")
                }
            }
        }
        for (name, inst) in &running {
            if self.serves_network(name) {
                if let Some(Ok(ns)) = sandbox_ns(inst) {
                    let has_netvm = good.iter().any(|c| &c.name == name && c.netvm.is_some());
                    if let Err(e) = self.serve(name, Arc::new(ns), has_netvm, true).await {
                        error!(domain = %name, error = %e.message(), "cannot take the adopted netvm back");
                    }
                }
            }
        }
    }

    /// Rebuild and apply `netvm`'s ruleset. Caller holds `net.op`. Errors are logged: a
    /// failed application leaves the previous ruleset in place.
    async fn apply_locked(&self, netvm_dn: &DomainName) {
        let netvm = netvm_dn.as_str();
        let Some(ns) = lock(&self.net.held).get(netvm_dn).cloned() else {
            return;
        };
        let clients: Vec<(DomainName, LinkInfo)> = lock(&self.net.links)
            .iter()
            .filter(|(_, l)| &l.netvm == netvm_dn)
            .map(|(n, l)| (n.clone(), l.clone()))
            .collect();
        let is_uplink_domain = netvm == self.cfg.net.domain
            && lock(&self.domains)
                .get(netvm)
                .is_some_and(|_| !lock(&self.net.links).contains_key(netvm));
        let is_vm_netvm = lock(&self.net.vm_netvms).contains_key(netvm_dn);
        let (uplink, dns) = if is_vm_netvm {
            // A net VM's firewall namespace: out to the VM, DNS to the uplink's resolvers
            // (through the VM).
            (
                Some(vmnetvm::FIREWALL_TAP.to_owned()),
                self.cfg.net.dns.clone(),
            )
        } else if lock(&self.net.links).contains_key(netvm) {
            // A netvm behind another netvm: out through its own link, DNS to the next one.
            (Some(link::CLIENT_IF.to_owned()), DNS_VIRTUAL.to_vec())
        } else if is_uplink_domain {
            (self.cfg.net.uplink.clone(), self.cfg.net.dns.clone())
        } else {
            (None, Vec::new())
        };
        let now = now_secs();
        let (configs, _) = self.store.load_all();
        let mut plan_clients = Vec::new();
        for (name, l) in clients {
            let may_reach = configs
                .iter()
                .find(|c| c.name == name)
                .and_then(|c| c.features.get(nft::ALLOW_INTER_DOMAIN_FEATURE))
                .map(|v| match nft::parse_allow_inter_domain(v) {
                    Ok(names) => {
                        info!(domain = %name, to = ?names, "connections to these domains allowed ({})", nft::ALLOW_INTER_DOMAIN_FEATURE);
                        names
                    }
                    Err(why) => {
                        warn!(domain = %name, reason = %why, "features.{} is ignored: no other domain is reachable", nft::ALLOW_INTER_DOMAIN_FEATURE);
                        Vec::new()
                    }
                })
                .unwrap_or_default();
            let file = self.rule_file(&name);
            let set = blocking(move || file.load(now))
                .await
                .unwrap_or_else(|e| RuleSet::Broken(e.message()));
            let firewall = match set {
                RuleSet::Broken(why) => {
                    warn!(domain = %name, reason = %why, "the firewall does not parse; all its traffic is dropped");
                    ClientFirewall::Broken(why)
                }
                RuleSet::Rules(rules) => match self.resolve_rules(&ns, &dns, rules).await {
                    Ok(r) => ClientFirewall::Rules(r),
                    Err(why) => {
                        warn!(domain = %name, reason = %why, "a firewall rule cannot be applied; all its traffic is dropped");
                        ClientFirewall::Broken(why)
                    }
                },
            };
            if let ClientFirewall::Rules(r) = &firewall {
                for e in r.iter().filter_map(|r| r.rule.expire) {
                    self.net.next_expiry.fetch_min(e, Ordering::Relaxed);
                }
            }
            plan_clients.push(Client {
                domain: name.into(),
                vif: l.vif,
                firewall,
                may_reach,
            });
        }
        plan_clients.sort_by(|a, b| a.domain.cmp(&b.domain));
        let plan = NetPlan {
            uplink,
            dns,
            clients: plan_clients,
        };
        let text = nft::ruleset(&plan, now);
        debug!(netvm, ruleset = %text, "applying nftables ruleset");
        match blocking(move || nft::apply(&ns, &text)).await {
            Ok(Ok(())) => info!(netvm, clients = plan.clients.len(), "firewall applied"),
            Ok(Err(e)) => error!(netvm, error = %e, "cannot apply the ruleset"),
            Err(e) => error!(netvm, error = %e.message(), "cannot apply the ruleset"),
        }
    }

    /// Resolve the `dsthost` rules (asking the first resolver from inside the netvm).
    async fn resolve_rules(
        &self,
        ns: &Arc<NetNs>,
        dns: &[Ipv4Addr],
        rules: Vec<Rule>,
    ) -> Result<Vec<ResolvedRule>, String> {
        let mut out = Vec::with_capacity(rules.len());
        for rule in rules {
            let host_addrs = match &rule.dest {
                Some(Dest::Host(h)) => {
                    let Some(server) = dns.first().copied() else {
                        return Err(format!("dsthost={h}: no resolver configured ([net] dns)"));
                    };
                    let (ns, h2) = (ns.clone(), h.clone());
                    let r = blocking(move || bulkhead_net::dns::resolve(&ns, server, &h2))
                        .await
                        .map_err(|e| e.message())?;
                    match r {
                        Ok(a) if !a.is_empty() => a,
                        Ok(_) => return Err(format!("dsthost={h}: the name has no address")),
                        Err(e) => return Err(format!("dsthost={h}: {e}")),
                    }
                }
                _ => Vec::new(),
            };
            out.push(ResolvedRule { rule, host_addrs });
        }
        Ok(out)
    }

    /// `features.allow-inter-domain` of `name` changed: re-apply its netvm's ruleset.
    pub(super) async fn net_features_changed(&self, name: &DomainName) {
        self.reapply_for(name).await;
    }

    /// Re-apply the ruleset of the netvm `name` is linked to (after a firewall change).
    async fn reapply_for(&self, name: &DomainName) {
        let _op = self.net.op.lock().await;
        let netvm = lock(&self.net.links).get(name).map(|l| l.netvm.clone());
        if let Some(n) = netvm {
            self.apply_locked(&n).await;
        }
    }

    /// Remove expired rules from the rule files and re-apply, whenever one is due.
    pub(super) fn spawn_expiry(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let Some(me) = me.upgrade() else { return };
                let now = now_secs();
                if me.net.next_expiry.load(Ordering::Relaxed) > now {
                    continue;
                }
                me.net.next_expiry.store(u64::MAX, Ordering::Relaxed);
                let clients: Vec<DomainName> = lock(&me.net.links).keys().cloned().collect();
                for c in clients {
                    if let Err(e) = me.purge_expired(&c, now).await {
                        warn!(domain = %c, error = %e.message(), "cannot remove expired firewall rules");
                    }
                }
                let netvms: Vec<DomainName> = lock(&me.net.held).keys().cloned().collect();
                let _op = me.net.op.lock().await;
                for n in netvms {
                    me.apply_locked(&n).await;
                }
            }
        });
    }

    async fn purge_expired(&self, dn: &DomainName, now: u64) -> Result<(), Error> {
        let _cl = self.config_lock.lock().await;
        let file = self.rule_file(dn);
        blocking(move || -> Result<(), Error> {
            let text = file.read_text().map_err(|e| Error::Io(e.to_string()))?;
            let lines: Vec<&str> = firewall::entries(&text);
            let keep: Vec<String> = lines
                .iter()
                .filter(|l| !Rule::parse(l, now).is_ok_and(|r| r.expired(now)))
                .map(|l| (*l).to_owned())
                .collect();
            if keep.len() != lines.len() {
                info!(
                    removed = lines.len() - keep.len(),
                    "expired firewall rules removed"
                );
                file.write_lines(&keep)
                    .map_err(|e| Error::Io(e.to_string()))?;
            }
            Ok(())
        })
        .await?
    }

    // ----- the firewall API ----------------------------------------------------------------

    /// `FirewallList`: the rules in order (canonical text); `InvalidProperty` naming the
    /// reason when the rule file does not parse (all the domain's traffic is then dropped).
    pub async fn firewall_list(&self, dn: &DomainName) -> Result<Vec<String>, Error> {
        let name = dn.as_str();
        self.stored(dn)?;
        let file = self.rule_file(dn);
        let now = now_secs();
        let path = file.path.clone();
        match blocking(move || file.load(now)).await? {
            RuleSet::Rules(r) => Ok(r.iter().map(|r| r.to_string()).collect()),
            RuleSet::Broken(why) => Err(Error::InvalidProperty(format!(
                "the firewall of '{name}' is broken ({}): {why}; all its network traffic is dropped until it is fixed (bulkhead firewall {name} del N, or reset)",
                path.display()
            ))),
        }
    }

    /// Change the rule file under the config lock, then re-apply.
    async fn firewall_edit(
        &self,
        dn: &DomainName,
        edit: impl FnOnce(&mut Vec<String>) -> Result<(), Error> + Send + 'static,
    ) -> Result<(), Error> {
        self.stored(dn)?;
        {
            let _cl = self.config_lock.lock().await;
            let file = self.rule_file(dn);
            blocking(move || -> Result<(), Error> {
                let text = file.read_text().map_err(|e| Error::Io(e.to_string()))?;
                let mut lines: Vec<String> = firewall::entries(&text)
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                edit(&mut lines)?;
                file.write_lines(&lines)
                    .map_err(|e| Error::Io(e.to_string()))
            })
            .await??;
        }
        self.reapply_for(dn).await;
        Ok(())
    }

    /// `FirewallAdd`: insert `rule` before index `position` (negative or past the end:
    /// append).
    pub async fn firewall_add(&self, name: &str, rule: &str, position: i32) -> Result<(), Error> {
        let r = Rule::parse(rule, now_secs())
            .map_err(|e| Error::InvalidProperty(format!("firewall rule '{rule}': {e}")))?;
        let text = r.to_string();
        // The rule is checked before the name (clients see that error first).
        let dn = self.name(name)?;
        let n = name.to_owned();
        self.firewall_edit(&dn, move |lines| {
            if lines.len() >= firewall::MAX_RULES {
                return Err(Error::InvalidProperty(format!(
                    "domain '{n}' already has {} firewall rules (the most allowed)",
                    lines.len()
                )));
            }
            let at = usize::try_from(position)
                .ok()
                .filter(|p| *p <= lines.len())
                .unwrap_or(lines.len());
            lines.insert(at, text);
            Ok(())
        })
        .await?;
        info!(domain = name, rule = %r, position, "firewall rule added");
        Ok(())
    }

    /// `FirewallDel`: remove the rule at `index` (works on a broken file too).
    pub async fn firewall_del(&self, dn: &DomainName, index: u32) -> Result<(), Error> {
        let name = dn.as_str();
        let n = name.to_owned();
        self.firewall_edit(dn, move |lines| {
            let i = index as usize;
            if i >= lines.len() {
                return Err(Error::InvalidProperty(format!(
                    "domain '{n}' has {} firewall rules; there is no rule {index} (see bulkhead firewall {n} list)",
                    lines.len()
                )));
            }
            lines.remove(i);
            Ok(())
        })
        .await?;
        info!(domain = name, index, "firewall rule removed");
        Ok(())
    }

    /// `FirewallDelRule`: remove the first rule whose canonical text is `rule`.
    pub async fn firewall_del_rule(&self, dn: &DomainName, rule: &str) -> Result<(), Error> {
        let name = dn.as_str();
        let (n, wanted) = (name.to_owned(), rule.to_owned());
        let now = now_secs();
        self.firewall_edit(dn, move |lines| {
            let at = lines
                .iter()
                .position(|l| Rule::parse(l, now).is_ok_and(|r| r.to_string() == wanted))
                .ok_or_else(|| {
                    Error::InvalidProperty(format!(
                        "domain '{n}' has no firewall rule '{wanted}' (any more); nothing removed (see bulkhead firewall {n} list)"
                    ))
                })?;
            lines.remove(at);
            Ok(())
        })
        .await?;
        info!(domain = name, rule, "firewall rule removed");
        Ok(())
    }

    /// `FirewallReset`: back to the default (accept everything but other domains).
    pub async fn firewall_reset(&self, dn: &DomainName) -> Result<(), Error> {
        let name = dn.as_str();
        self.firewall_edit(dn, |lines| {
            lines.clear();
            Ok(())
        })
        .await?;
        info!(domain = name, "firewall reset");
        Ok(())
    }
}
