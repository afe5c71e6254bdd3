//! The manager's side of USB attachments (see [`crate::usb`]): listing, attach, detach, and
//! releasing a domain's devices when it stops.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bulkhead_api::Error;
use bulkhead_domain::DomainName;
use bulkhead_policy::CallTarget;
use bulkhead_usb::host::{ExportedDevice, Sysfs};
use bulkhead_usb::usbip::{relay_urbs, GuardLimits};
use bulkhead_usb::BusId;
use bulkhead_wire::{OpenRequest, StreamEvent, UsbImportReply, UsbImportRequest, USB_VERSION};
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use crate::backend::DomainRecord;
use crate::calls::{CallError, DOM0};
use crate::state::DomainState;
use crate::usb::{row, Attachment, UsbRow};

use super::{blocking, lock, Manager};

/// How long the receiving agent has to plug the device in.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the stream to the receiving agent may take to close after the relay ended,
/// before it is reset.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

impl Manager {
    async fn usb_inventory(&self) -> Result<bulkhead_usb::Inventory, Error> {
        let root = self.config().usb_sysfs_root.clone();
        tokio::task::spawn_blocking(move || bulkhead_usb::scan(&root))
            .await
            .map_err(|e| Error::Io(format!("internal task failed: {e}")))?
            .map_err(|e| Error::Io(format!("cannot list USB devices: {e}")))
    }

    pub(super) fn usb_sysfs(&self) -> Sysfs {
        Sysfs::new(self.config().usb_sysfs_root.clone())
    }

    /// `UsbList`.
    pub async fn usb_list(&self) -> Result<Vec<UsbRow>, Error> {
        let inv = self.usb_inventory().await?;
        let attached = lock(&self.usb_state().attached);
        Ok(inv
            .devices
            .iter()
            .map(|d| {
                let to = attached.get(d.busid.as_str()).map(|a| a.domain.as_str());
                row(d, to)
            })
            .collect())
    }

    /// `UsbStatus`: "" when USB/IP can be used, else what is missing and what to do.
    pub fn usb_status(&self) -> String {
        bulkhead_usb::probe(&self.config().usb_sysfs_root)
            .message()
            .unwrap_or_default()
    }

    /// Whether a domain exists in the store.
    fn usb_domain_exists(&self, name: &str) -> bool {
        self.store()
            .load_all()
            .0
            .iter()
            .any(|c| c.name.as_str() == name)
    }

    /// The running instance's record of `name`, or why it is not usable.
    fn usb_running(&self, name: &str, role: &str) -> Result<DomainRecord, Error> {
        let dn = DomainName::new(name).map_err(|e| Error::InvalidProperty(e.to_string()))?;
        let rt = self.runtime(&dn);
        match (rt.state(), rt.instance()) {
            (DomainState::Running, Some(inst)) => Ok(inst.record.clone()),
            (st, _) => Err(Error::InvalidState(format!(
                "{role} '{name}' is {}; start it first (bulkhead start {name})",
                st.as_str()
            ))),
        }
    }

    /// `UsbAttach`: policy first, then the kernel, then the data path.
    pub async fn usb_attach(self: &Arc<Self>, busid: &str, domain: &str) -> Result<(), Error> {
        let busid = BusId::new(busid).map_err(|e| Error::InvalidProperty(e.to_string()))?;
        let inv = self.usb_inventory().await?;
        let dev = inv.get(&busid).ok_or_else(|| {
            Error::InvalidProperty(format!(
                "there is no USB device {busid} (see bulkhead usb list)"
            ))
        })?;
        if let Some(a) = lock(&self.usb_state().attached).get(busid.as_str()) {
            return Err(Error::InvalidState(format!(
                "USB device {busid} is attached to {}; detach it first (bulkhead usb detach {busid})",
                a.domain
            )));
        }
        let usb_domain = self.config().usb_domain.clone();
        if !self.usb_domain_exists(&usb_domain) {
            return Err(Error::NoSuchDomain(format!(
                "there is no usb domain '{usb_domain}' to hold the devices; create it (bulkhead create -C service -l red {usb_domain})"
            )));
        }
        let to_dom0 = domain == "dom0" || domain == DOM0;
        let source = if to_dom0 {
            if !dev.kind().is_input() {
                return Err(Error::AccessDenied(format!(
                    "USB device {busid} is a {}; dom0 takes only keyboards and mice from the usb domain",
                    dev.kind().describe()
                )));
            }
            DOM0.to_owned()
        } else {
            if !self.usb_domain_exists(domain) {
                return Err(Error::NoSuchDomain(format!(
                    "no domain named '{domain}' (see bulkhead ls)"
                )));
            }
            if domain == usb_domain {
                return Err(Error::InvalidProperty(format!(
                    "'{domain}' is the usb domain: it holds every device already"
                )));
            }
            domain.to_owned()
        };
        let allow = self
            .decide(
                &source,
                &usb_domain,
                bulkhead_usb::ATTACH_SERVICE,
                busid.as_str(),
            )
            .await?;
        if !matches!(&allow.target, CallTarget::Domain(d) if d.as_str() == usb_domain) {
            return Err(CallError::Failed(format!(
                "the policy sent the attach of {busid} to {}, not to the usb domain {usb_domain}",
                allow.target
            ))
            .into());
        }
        info!(busid = %busid, domain, kind = %dev.kind().describe(), "USB attach allowed by policy");
        if to_dom0 {
            // Input reaches dom0 through the input proxy (uinput), never as the device.
            if let Err(why) = blocking(crate::usb::uinput_available).await? {
                return Err(Error::Backend(format!(
                    "the policy allows attaching {busid} to dom0, but {why}"
                )));
            }
        } else {
            // dom0's kernel exports the device (a sandbox usb domain shares it); a VM
            // receiving it plugs it into its own kernel's vhci-hcd.
            let support = bulkhead_usb::probe(&self.config().usb_sysfs_root);
            if let (false, Some(msg)) = (support.usbip_host, support.message()) {
                return Err(Error::Backend(format!(
                    "the policy allows attaching {busid} to {domain}, but {msg}"
                )));
            }
        }
        let usb_rec = match self.usb_running(&usb_domain, "the usb domain")? {
            DomainRecord::Sandbox(rec) => rec,
            DomainRecord::Vm(_) => {
                return Err(Error::Backend(format!(
                    "the usb domain '{usb_domain}' is a VM; exporting devices from a usb VM is not built yet (make it a sandbox: bulkhead prefs {usb_domain} isolation sandbox)"
                )))
            }
        };
        let record = if to_dom0 {
            None
        } else {
            Some(self.usb_running(domain, "domain")?)
        };
        let _op = self.usb_state().op.lock().await;
        if let Some(a) = lock(&self.usb_state().attached).get(busid.as_str()) {
            return Err(Error::InvalidState(format!(
                "USB device {busid} was just attached to {}",
                a.domain
            )));
        }
        match record {
            Some(record) => self.usb_connect(busid, domain, record).await,
            None => self.usb_input_to_dom0(busid, &usb_domain, usb_rec).await,
        }
    }

    /// Exports `busid` in dom0's kernel, plugs it into the receiving domain's kernel and starts
    /// the relay (see [`crate::usb`]).
    async fn usb_connect(
        self: &Arc<Self>,
        busid: BusId,
        domain: &str,
        record: DomainRecord,
    ) -> Result<(), Error> {
        let dn = DomainName::new(domain).map_err(|e| Error::InvalidProperty(e.to_string()))?;
        // A VM's agent must speak the USB stream before anything is exported.
        let conn = match &record {
            DomainRecord::Vm(_) => {
                let conn = self.running_agent_conn(&dn).await?;
                if u16::from(conn.version()) < USB_VERSION {
                    return Err(Error::Agent(format!(
                        "the agent of '{domain}' speaks channel protocol {}, USB devices need {USB_VERSION}; update the domain's guest tools",
                        conn.version()
                    )));
                }
                Some(conn)
            }
            DomainRecord::Sandbox(_) => None,
        };
        let (stub_end, exporter) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| Error::Io(format!("USB socket pair: {e}")))?;
        let sysfs = self.usb_sysfs();
        let b = busid.clone();
        let (endpoints, exported) = blocking(move || {
            // The kernel holds its own reference once it took the socket.
            let r = sysfs.export(&b, stub_end.as_raw_fd());
            drop(stub_end);
            let exported = r.map_err(|e| format!("cannot export USB device {b}: {e}"))?;
            // The guard checks every submit against the device's endpoints, read once
            // usbip-host holds the device (binding it sets its configuration afresh) and
            // before any URB can flow (the relay has not started). A device whose
            // descriptors cannot be read or parsed is not attached.
            match sysfs.endpoint_map(&b) {
                Ok(endpoints) => Ok((endpoints, exported)),
                Err(e) => {
                    if let Err(undo) = sysfs.unexport(&b) {
                        warn!(busid = %b, error = %undo, "cannot give the device back");
                    }
                    Err(format!(
                        "cannot read the endpoints of USB device {b}, not attaching it: {e}"
                    ))
                }
            }
        })
        .await?
        .map_err(Error::Backend)?;
        let exported: ExportedDevice = exported;
        let plugged = match (&record, conn) {
            (DomainRecord::Vm(_), Some(conn)) => {
                self.usb_import_vm(&conn, &busid, domain, exported).await
            }
            (DomainRecord::Sandbox(rec), _) => self.usb_import_dom0(exported, rec).await,
            (DomainRecord::Vm(_), None) => {
                Err(Error::Agent(format!("no agent connection of '{domain}'")))
            }
        };
        let (importer, receiver) = match plugged.and_then(|p| {
            exporter
                .set_nonblocking(true)
                .and_then(|()| tokio::net::UnixStream::from_std(exporter))
                .map(|e| (p, e))
                .map_err(|e| Error::Io(format!("USB relay socket: {e}")))
        }) {
            Ok(((importer, receiver), exporter)) => ((importer, exporter), receiver),
            Err(e) => {
                let sysfs = self.usb_sysfs();
                let b = busid.clone();
                let _ = blocking(move || sysfs.unexport(&b)).await;
                return Err(e);
            }
        };
        let state = self.usb_state();
        let id = state.next_id.fetch_add(1, Ordering::Relaxed);
        let (stop_tx, stop_rx) = oneshot::channel();
        let (released_tx, released_rx) = watch::channel(false);
        lock(&state.attached).insert(
            busid.to_string(),
            Attachment {
                domain: domain.to_owned(),
                stop: Some(stop_tx),
                released: released_rx,
                id,
            },
        );
        let limits = GuardLimits {
            devid: Some(exported.devid),
            endpoints: Some(endpoints),
            ..GuardLimits::default()
        };
        let task = UsbTask {
            mgr: Arc::clone(self),
            busid: busid.clone(),
            domain: domain.to_owned(),
            id,
        };
        tokio::spawn(task.run(importer, receiver, limits, stop_rx, released_tx));
        info!(busid = %busid, domain, "USB device attached");
        Ok(())
    }

    /// A VM plugs the device into its own `vhci-hcd` (its agent answers with the port); the
    /// relay's importing side is one end of a pair whose other end the wire stream relays.
    async fn usb_import_vm(
        &self,
        conn: &bulkhead_wire::Connection,
        busid: &BusId,
        domain: &str,
        exported: ExportedDevice,
    ) -> Result<(tokio::net::UnixStream, Receiver), Error> {
        let import = async {
            let mut stream = conn
                .open(OpenRequest::UsbImport(UsbImportRequest {
                    busid: busid.to_string(),
                    devid: exported.devid,
                    speed: exported.speed,
                }))
                .await
                .map_err(|e| format!("opening the USB stream to '{domain}': {e}"))?;
            match stream.recv().await {
                Ok(StreamEvent::Message(m)) => match UsbImportReply::decode(&m) {
                    Ok(UsbImportReply::Attached { port }) => Ok((stream, port)),
                    Ok(UsbImportReply::Failed { reason }) => {
                        Err(format!("'{domain}' could not plug it in: {reason}"))
                    }
                    Err(e) => {
                        stream.reset("bad reply");
                        Err(format!("the agent of '{domain}' answered nonsense: {e}"))
                    }
                },
                Ok(other) => {
                    stream.reset("unexpected");
                    Err(format!(
                        "the agent of '{domain}' answered {other:?} instead of a USB import reply"
                    ))
                }
                Err(e) => Err(format!("the USB stream to '{domain}' ended: {e}")),
            }
        };
        let (stream, port) = match tokio::time::timeout(IMPORT_TIMEOUT, import).await {
            Ok(Ok(v)) => v,
            Ok(Err(why)) => return Err(Error::Agent(why)),
            Err(_) => {
                return Err(Error::Agent(format!(
                    "the agent of '{domain}' did not plug USB device {busid} in within {} s",
                    IMPORT_TIMEOUT.as_secs()
                )))
            }
        };
        info!(busid = %busid, domain, port, "the VM plugged the USB device in");
        let (importer, stream_end) = tokio::net::UnixStream::pair()
            .map_err(|e| Error::Io(format!("USB relay sockets: {e}")))?;
        let wire = tokio::spawn(bulkhead_wire::relay::relay_bytes(stream, stream_end));
        Ok((importer, Receiver::Vm { wire }))
    }

    /// A sandbox shares dom0's kernel: the device is plugged into dom0's `vhci-hcd`, and its
    /// nodes are handed to the sandbox as they appear (see [`UsbTask`]).
    async fn usb_import_dom0(
        &self,
        exported: ExportedDevice,
        rec: &bulkhead_sandbox::SandboxRecord,
    ) -> Result<(tokio::net::UnixStream, Receiver), Error> {
        let (vhci_end, importer) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| Error::Io(format!("USB socket pair: {e}")))?;
        let sysfs = self.usb_sysfs();
        let port = blocking(move || {
            let r = sysfs.vhci_attach(vhci_end.as_raw_fd(), exported.devid, exported.speed);
            drop(vhci_end);
            r
        })
        .await?
        .map_err(|e| Error::Backend(format!("cannot plug the device into dom0's vhci-hcd: {e}")))?;
        let importer = importer
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(importer));
        match importer {
            Ok(importer) => Ok((
                importer,
                Receiver::Sandbox {
                    port,
                    init_pid: rec.init_pid,
                    owner: rec.uid_base + bulkhead_sandbox::DOMAIN_USER_UID,
                    given: Vec::new(),
                },
            )),
            Err(e) => {
                let sysfs = self.usb_sysfs();
                let _ = blocking(move || sysfs.vhci_detach(port)).await;
                Err(Error::Io(format!("USB relay socket: {e}")))
            }
        }
    }

    /// Ends an attachment and waits until the device was given back.
    async fn usb_release(&self, busid: &str) -> bool {
        let released = {
            let mut attached = lock(&self.usb_state().attached);
            let Some(a) = attached.get_mut(busid) else {
                return false;
            };
            if let Some(stop) = a.stop.take() {
                let _ = stop.send(());
            }
            a.released.clone()
        };
        let mut released = released;
        let _ = released.wait_for(|r| *r).await;
        true
    }

    /// `UsbDetach`: give an attached device back to the usb domain.
    pub async fn usb_detach(&self, busid: &str) -> Result<(), Error> {
        let busid = BusId::new(busid).map_err(|e| Error::InvalidProperty(e.to_string()))?;
        if self.usb_release(busid.as_str()).await {
            Ok(())
        } else {
            Err(Error::InvalidState(format!(
                "USB device {busid} is not attached to any domain (see bulkhead usb list)"
            )))
        }
    }

    /// A domain stopped: every device attached to it goes back, and when it is the usb domain,
    /// every attached device.
    pub(super) async fn usb_on_stop(&self, name: &DomainName) {
        let all = name.as_str() == self.config().usb_domain;
        let busids: Vec<String> = lock(&self.usb_state().attached)
            .iter()
            .filter(|(_, a)| all || a.domain == name.as_str())
            .map(|(b, _)| b.clone())
            .collect();
        for b in busids {
            info!(busid = %b, domain = %name, "releasing a USB device of a stopped domain");
            self.usb_release(&b).await;
        }
    }

    /// Start-up: devices a previous domaind left bound to `usbip-host` go back to their
    /// drivers (no relay of theirs survived it).
    pub(super) async fn usb_recover(&self) {
        let sysfs = self.usb_sysfs();
        let res = blocking(move || {
            sysfs
                .exported()
                .into_iter()
                .map(|b| {
                    let r = sysfs.unexport(&b);
                    (b, r)
                })
                .collect::<Vec<_>>()
        })
        .await;
        for (b, r) in res.unwrap_or_default() {
            match r {
                Ok(()) => {
                    info!(busid = %b, "gave back a USB device left exported by a previous domaind")
                }
                Err(e) => {
                    warn!(busid = %b, error = %e, "cannot give back a USB device left exported")
                }
            }
        }
    }
}

/// Where the device went.
enum Receiver {
    /// Into a VM's kernel: this task relays the wire stream to the relay's importing side.
    Vm {
        wire: tokio::task::JoinHandle<Result<(), bulkhead_wire::WireError>>,
    },
    /// Into dom0's `vhci-hcd` at `port`, its nodes handed to the sandbox `init_pid` for host
    /// uid `owner`; `given` are the node names handed so far.
    Sandbox {
        port: u32,
        init_pid: i32,
        owner: u32,
        given: Vec<String>,
    },
}

/// How often a sandbox's attached device is looked at for new nodes.
const NODE_POLL: Duration = Duration::from_millis(500);

/// One attachment's life: the relay, the nodes of a sandbox's device, and the release.
struct UsbTask {
    mgr: Arc<Manager>,
    busid: BusId,
    domain: String,
    id: u64,
}

impl UsbTask {
    async fn run(
        self,
        (importer, exporter): (tokio::net::UnixStream, tokio::net::UnixStream),
        mut receiver: Receiver,
        limits: GuardLimits,
        stop: oneshot::Receiver<()>,
        released: watch::Sender<bool>,
    ) {
        let (busid, domain) = (&self.busid, self.domain.as_str());
        // Boxed so that it (and the sockets it owns) can be dropped before the unplug.
        let mut relay = Box::pin(relay_urbs(importer, exporter, limits));
        let mut stop = stop;
        let mut tick = tokio::time::interval(NODE_POLL);
        loop {
            tokio::select! {
                r = &mut relay => {
                    match r {
                        Ok(stats) => info!(busid = %busid, domain, ?stats, "USB relay ended"),
                        Err(e) => warn!(busid = %busid, domain, error = %e, "USB relay dropped"),
                    }
                    break;
                }
                _ = &mut stop => {
                    info!(busid = %busid, domain, "USB device detached");
                    break;
                }
                _ = tick.tick(), if matches!(receiver, Receiver::Sandbox { .. }) => {
                    self.give_new_nodes(&mut receiver).await;
                }
            }
        }
        // The relay's sockets are closed now: the other kernels see the connection end.
        drop(relay);
        self.unplug(receiver).await;
        let sysfs = self.mgr.usb_sysfs();
        let b = busid.clone();
        match blocking(move || sysfs.unexport(&b)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(busid = %busid, error = %e, "cannot give the USB device back"),
            Err(e) => warn!(busid = %busid, error = %e, "cannot give the USB device back"),
        }
        let mut attached = lock(&self.mgr.usb_state().attached);
        if attached
            .get(busid.as_str())
            .is_some_and(|a| a.id == self.id)
        {
            attached.remove(busid.as_str());
        }
        drop(attached);
        let _ = released.send(true);
    }

    /// Hands the sandbox the nodes its device has that it was not given yet (and loads the
    /// device's drivers once it enumerated, as udev would).
    async fn give_new_nodes(&self, receiver: &mut Receiver) {
        let Receiver::Sandbox {
            port,
            init_pid,
            owner,
            given,
        } = receiver
        else {
            return;
        };
        let (port, init_pid, owner) = (*port, *init_pid, *owner);
        let sysfs = self.mgr.usb_sysfs();
        let already = given.clone();
        let launcher = bulkhead_sandbox::Launcher {
            path: self.mgr.config().launcher.clone(),
        };
        let first = already.is_empty();
        let res = blocking(move || {
            let Ok(Some(local)) = sysfs.vhci_device(port) else {
                return Vec::new();
            };
            if first {
                sysfs.load_drivers(&local);
            }
            let mut newly = Vec::new();
            for node in sysfs.device_nodes(&local) {
                if already.contains(&node.devname) {
                    continue;
                }
                let host = std::path::Path::new("/dev").join(&node.devname);
                if !host.exists() {
                    continue; // devtmpfs has not made it yet: next time
                }
                match bulkhead_sandbox::devices::add_device(
                    &launcher,
                    init_pid,
                    &host,
                    &node.devname,
                    owner,
                ) {
                    Ok(()) => newly.push((node.devname, None)),
                    Err(e) => newly.push((node.devname, Some(e.to_string()))),
                }
            }
            newly
        })
        .await
        .unwrap_or_default();
        for (name, err) in res {
            match err {
                None => {
                    info!(busid = %self.busid, domain = %self.domain, node = %name, "device node handed to the sandbox")
                }
                Some(e) => {
                    warn!(busid = %self.busid, domain = %self.domain, node = %name, error = %e, "cannot hand a device node to the sandbox")
                }
            }
            // tried once: a node that could not be handed over is not retried every tick
            given.push(name);
        }
    }

    /// The receiving side lets go of the device.
    async fn unplug(&self, receiver: Receiver) {
        match receiver {
            Receiver::Vm { mut wire } => {
                // The agent sees its stream end and unplugs the device from its vhci-hcd.
                if tokio::time::timeout(CLOSE_GRACE, &mut wire).await.is_err() {
                    wire.abort();
                }
            }
            Receiver::Sandbox {
                port,
                init_pid,
                given,
                ..
            } => {
                let sysfs = self.mgr.usb_sysfs();
                let launcher = bulkhead_sandbox::Launcher {
                    path: self.mgr.config().launcher.clone(),
                };
                let busid = self.busid.clone();
                let _ = blocking(move || {
                    for name in given.iter().rev() {
                        // The sandbox may be gone already; then so are its mounts.
                        if let Err(e) = bulkhead_sandbox::devices::remove_device(&launcher, init_pid, name) {
                            tracing::debug!(busid = %busid, node = %name, error = %e, "device node not taken back");
                        }
                    }
                    if let Err(e) = sysfs.vhci_detach(port) {
                        warn!(busid = %busid, port, error = %e, "cannot unplug the device from dom0's vhci-hcd");
                    }
                })
                .await;
            }
        }
    }
}
