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
use bulkhead_wire::{
    OpenRequest, StreamEvent, UsbExportReply, UsbExportRequest, UsbImportReply, UsbImportRequest,
    USB_VERSION,
};
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use crate::backend::DomainRecord;
use crate::calls::{CallError, DOM0};
use crate::state::DomainState;
use crate::usb::{row, Attachment, UsbRow};

use super::{blocking, lock, Manager};

/// How long the receiving agent has to plug the device in.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a detach waits for the device to be given back.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(60);
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
    fn usb_running(&self, name: &str, role: &str) -> Result<Running, Error> {
        let dn = DomainName::new(name).map_err(|e| Error::InvalidProperty(e.to_string()))?;
        let rt = self.runtime(&dn);
        match (rt.state(), rt.instance()) {
            (DomainState::Running, Some(inst)) => Ok(Running {
                record: inst.record.clone(),
                exited: inst.exited.clone(),
            }),
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
        let usb_running = self.usb_running(&usb_domain, "the usb domain")?;
        if to_dom0 && matches!(usb_running.record, DomainRecord::Vm(_)) {
            return Err(Error::Backend(format!(
                "the usb domain '{usb_domain}' is a VM; its input proxy to dom0 is not built yet (keyboards and mice reach dom0 through a sandbox usb domain)"
            )));
        }
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
        // The device the policy decided on must still be the one at that bus id (not another
        // one plugged in there since: its device number changes with every plug).
        let now = self.usb_inventory().await?;
        if now.get(&busid) != Some(dev) {
            return Err(Error::InvalidState(format!(
                "USB device {busid} changed while it was being attached (unplugged or replaced); try again"
            )));
        }
        let usb_dn =
            DomainName::new(&usb_domain).map_err(|e| Error::InvalidProperty(e.to_string()))?;
        match (record, usb_running.record) {
            (Some(running), DomainRecord::Sandbox(_)) => {
                self.usb_connect(busid, domain, running, None).await
            }
            (Some(running), DomainRecord::Vm(v)) => {
                let usb = Running {
                    record: DomainRecord::Vm(v),
                    exited: usb_running.exited,
                };
                self.usb_connect(busid, domain, running, Some((usb_dn, usb)))
                    .await
            }
            (None, DomainRecord::Sandbox(usb_rec)) => {
                let kind = dev.kind();
                self.usb_input_to_dom0(busid, kind, &usb_domain, usb_rec, usb_running.exited)
                    .await
            }
            (None, DomainRecord::Vm(_)) => Err(Error::Backend(format!(
                "the usb domain '{usb_domain}' is a VM; its input proxy to dom0 is not built yet"
            ))),
        }
    }

    /// Exports `busid` in dom0's kernel, plugs it into the receiving domain's kernel and starts
    /// the relay (see [`crate::usb`]). With a usb VM (`usb_vm`), two hops: dom0 -> the usb
    /// VM's vhci-hcd, then the usb VM's usbip-host -> the receiving domain, each relayed and
    /// checked on its own.
    async fn usb_connect(
        self: &Arc<Self>,
        busid: BusId,
        domain: &str,
        running: Running,
        usb_vm: Option<(DomainName, Running)>,
    ) -> Result<(), Error> {
        let Running { record, exited } = running;
        let dn = DomainName::new(domain).map_err(|e| Error::InvalidProperty(e.to_string()))?;
        // Every VM agent on the way must speak the USB streams before anything is exported.
        let conn = match &record {
            DomainRecord::Vm(_) => Some(self.usb_agent(&dn).await?),
            DomainRecord::Sandbox(_) => None,
        };
        let usb_conn = match &usb_vm {
            Some((udn, _)) => Some(self.usb_agent(udn).await?),
            None => None,
        };
        let (stub_end, exporter) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| Error::Io(format!("USB socket pair: {e}")))?;
        let sysfs = self.usb_sysfs();
        let b = busid.clone();
        let (endpoints, exported, exporter) = blocking(move || {
            // The kernel holds its own reference once it took the socket.
            let r = sysfs.export(&b, stub_end.as_raw_fd());
            drop(stub_end);
            let exported = r.map_err(|e| format!("cannot export USB device {b}: {e}"))?;
            // The guard checks every submit against the device's endpoints, read once
            // usbip-host holds the device (binding it sets its configuration afresh) and
            // before any URB can flow (the relay has not started). A device whose
            // descriptors cannot be read or parsed is not attached.
            match sysfs.endpoint_map(&b) {
                Ok(endpoints) => Ok((endpoints, exported, exporter)),
                Err(e) => {
                    // Our end closed first: usbip-host ends the connection, then the
                    // device is given back (see `Sysfs::unexport_unbound`).
                    drop(exporter);
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
        let exporter = match exporter
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(exporter))
        {
            Ok(e) => e,
            Err(e) => {
                self.usb_give_back(&busid).await;
                return Err(Error::Io(format!("USB relay socket: {e}")));
            }
        };
        let limits = |devid: u32| GuardLimits {
            devid: Some(devid),
            endpoints: Some(endpoints.clone()),
            ..GuardLimits::default()
        };
        // With a usb VM: the first hop runs on its own, and the device is exported onwards
        // from the usb VM's kernel.
        let (exporter, devid, speed, upstream) = match (usb_vm, usb_conn) {
            (Some((udn, urun)), Some(uconn)) => {
                let (importer1, receiver1, port) = match self
                    .usb_import_vm(&uconn, &busid, udn.as_str(), exported)
                    .await
                {
                    Ok(v) => v,
                    Err(e) => {
                        drop(exporter);
                        self.usb_give_back(&busid).await;
                        return Err(e);
                    }
                };
                let (stop1_tx, stop1_rx) = oneshot::channel();
                let (released1_tx, released1_rx) = watch::channel(false);
                let hop1 = UsbTask {
                    mgr: Arc::clone(self),
                    busid: busid.clone(),
                    domain: udn.to_string(),
                    id: None,
                    unexport_dom0: true,
                    upstream: None,
                };
                tokio::spawn(hop1.run(
                    (importer1, exporter),
                    receiver1,
                    limits(exported.devid),
                    stop1_rx,
                    urun.exited,
                    released1_tx,
                ));
                match self.usb_export_vm(&uconn, &busid, udn.as_str(), port).await {
                    Ok((exporter2, wire, devid2, speed2)) => (
                        exporter2,
                        devid2,
                        speed2,
                        Some(Upstream {
                            stop: stop1_tx,
                            released: released1_rx,
                            wire,
                        }),
                    ),
                    Err(e) => {
                        let _ = stop1_tx.send(());
                        let mut r = released1_rx;
                        let _ = tokio::time::timeout(RELEASE_TIMEOUT, r.wait_for(|x| *x)).await;
                        return Err(e);
                    }
                }
            }
            _ => (exporter, exported.devid, exported.speed, None),
        };
        let onward = ExportedDevice { devid, speed };
        let plugged = match (&record, conn) {
            (DomainRecord::Vm(_), Some(conn)) => self
                .usb_import_vm(&conn, &busid, domain, onward)
                .await
                .map(|(i, r, _)| (i, r)),
            (DomainRecord::Sandbox(rec), _) => self.usb_import_dom0(onward, rec).await,
            (DomainRecord::Vm(_), None) => {
                Err(Error::Agent(format!("no agent connection of '{domain}'")))
            }
        };
        let (importer, receiver) = match plugged {
            Ok(v) => v,
            Err(e) => {
                // The relay's socket closes first: usbip-host (dom0's, or the usb VM's) sees
                // the end before the device is taken from it.
                drop(exporter);
                match upstream {
                    Some(u) => u.end().await,
                    None => self.usb_give_back(&busid).await,
                }
                return Err(e);
            }
        };
        let (id, stop_rx, released_tx) = self.usb_record(&busid, domain);
        let unexport_dom0 = upstream.is_none();
        let task = UsbTask {
            mgr: Arc::clone(self),
            busid: busid.clone(),
            domain: domain.to_owned(),
            id: Some(id),
            unexport_dom0,
            upstream,
        };
        tokio::spawn(task.run(
            (importer, exporter),
            receiver,
            limits(devid),
            stop_rx,
            exited,
            released_tx,
        ));
        info!(busid = %busid, domain, "USB device attached");
        Ok(())
    }

    /// Records `busid` as attached to `domain`: the attachment's id, the receiver its task
    /// is told to end on, and the sender it says it ended (the device given back) with.
    pub(super) fn usb_record(
        &self,
        busid: &BusId,
        domain: &str,
    ) -> (u64, oneshot::Receiver<()>, watch::Sender<bool>) {
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
        (id, stop_rx, released_tx)
    }

    /// Forgets attachment `id` of `busid` (if it is still that one).
    pub(super) fn usb_forget(&self, busid: &BusId, id: u64) {
        let mut attached = lock(&self.usb_state().attached);
        if attached.get(busid.as_str()).is_some_and(|a| a.id == id) {
            attached.remove(busid.as_str());
        }
    }

    /// The agent connection of running VM `dn`, if it speaks the USB streams.
    async fn usb_agent(&self, dn: &DomainName) -> Result<bulkhead_wire::Connection, Error> {
        let conn = self.running_agent_conn(dn).await?;
        if u16::from(conn.version()) < USB_VERSION {
            return Err(Error::Agent(format!(
                "the agent of '{dn}' speaks channel protocol {}, USB devices need {USB_VERSION}; update the domain's guest tools",
                conn.version()
            )));
        }
        Ok(conn)
    }

    /// Gives `busid` back to dom0's drivers (after a failed attach).
    async fn usb_give_back(&self, busid: &BusId) {
        let sysfs = self.usb_sysfs();
        let b = busid.clone();
        match blocking(move || sysfs.unexport(&b)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(busid = %busid, error = %e, "cannot give the USB device back"),
            Err(e) => warn!(busid = %busid, error = %e, "cannot give the USB device back"),
        }
    }

    /// The usb VM exports the device at its vhci-hcd `port` onwards (`UsbExport`); returns
    /// the relay's exporting side (one end of a pair whose other end the wire stream relays),
    /// that relay's task, and the device's id and speed there.
    async fn usb_export_vm(
        &self,
        conn: &bulkhead_wire::Connection,
        busid: &BusId,
        usb_domain: &str,
        port: u32,
    ) -> Result<(tokio::net::UnixStream, WireTask, u32, u32), Error> {
        let request = OpenRequest::UsbExport(UsbExportRequest {
            busid: busid.to_string(),
            port,
        });
        let late = format!("the usb VM '{usb_domain}' did not export USB device {busid}");
        let (stream, (devid, speed)) =
            usb_stream(conn, request, usb_domain, "USB export", &late, |m| {
                match UsbExportReply::decode(m)? {
                    UsbExportReply::Exported { devid, speed } => Ok(Ok((devid, speed))),
                    UsbExportReply::Failed { reason } => Ok(Err(format!(
                        "the usb VM '{usb_domain}' could not export it: {reason}"
                    ))),
                }
            })
            .await?;
        info!(busid = %busid, usb_domain, devid, "the usb VM exports the device onwards");
        let (exporter, wire) = relay_end(stream)?;
        Ok((exporter, wire, devid, speed))
    }

    /// A VM plugs the device into its own `vhci-hcd` (its agent answers with the port); the
    /// relay's importing side is one end of a pair whose other end the wire stream relays.
    async fn usb_import_vm(
        &self,
        conn: &bulkhead_wire::Connection,
        busid: &BusId,
        domain: &str,
        exported: ExportedDevice,
    ) -> Result<(tokio::net::UnixStream, Receiver, u32), Error> {
        let request = OpenRequest::UsbImport(UsbImportRequest {
            busid: busid.to_string(),
            devid: exported.devid,
            speed: exported.speed,
        });
        let late = format!("the agent of '{domain}' did not plug USB device {busid} in");
        let (stream, port) =
            usb_stream(
                conn,
                request,
                domain,
                "USB import",
                &late,
                |m| match UsbImportReply::decode(m)? {
                    UsbImportReply::Attached { port } => Ok(Ok(port)),
                    UsbImportReply::Failed { reason } => {
                        Ok(Err(format!("'{domain}' could not plug it in: {reason}")))
                    }
                },
            )
            .await?;
        info!(busid = %busid, domain, port, "the VM plugged the USB device in");
        let (importer, wire) = relay_end(stream)?;
        Ok((importer, Receiver::Vm { wire }, port))
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
                    target: bulkhead_sandbox::devices::Target::of(rec),
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
        if tokio::time::timeout(RELEASE_TIMEOUT, released.wait_for(|r| *r))
            .await
            .is_err()
        {
            warn!(
                busid,
                secs = RELEASE_TIMEOUT.as_secs(),
                "the USB device was not given back in time; it stays marked attached until it is"
            );
        }
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

/// The task that relays a wire stream to one end of a socket pair.
type WireTask = tokio::task::JoinHandle<Result<(), bulkhead_wire::WireError>>;

/// Opens a USB stream (`request`, `what` for messages) to the agent of `domain` and reads its
/// one answer within [`IMPORT_TIMEOUT`] (`late` says what did not happen in time): `answer`
/// turns the decoded message into the value or the agent's reason for refusing.
async fn usb_stream<T>(
    conn: &bulkhead_wire::Connection,
    request: OpenRequest,
    domain: &str,
    what: &str,
    late: &str,
    answer: impl Fn(&[u8]) -> Result<Result<T, String>, bulkhead_wire::MessageError>,
) -> Result<(bulkhead_wire::Stream, T), Error> {
    let exchange = async {
        let mut stream = conn
            .open(request)
            .await
            .map_err(|e| format!("opening the {what} stream of '{domain}': {e}"))?;
        match stream.recv().await {
            Ok(StreamEvent::Message(m)) => match answer(&m) {
                Ok(Ok(v)) => Ok((stream, v)),
                Ok(Err(refused)) => Err(refused),
                Err(e) => {
                    stream.reset("bad reply");
                    Err(format!("the agent of '{domain}' answered nonsense: {e}"))
                }
            },
            Ok(other) => {
                stream.reset("unexpected");
                Err(format!(
                    "the agent of '{domain}' answered {other:?} instead of a {what} reply"
                ))
            }
            Err(e) => Err(format!("the {what} stream of '{domain}' ended: {e}")),
        }
    };
    match tokio::time::timeout(IMPORT_TIMEOUT, exchange).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(why)) => Err(Error::Agent(why)),
        Err(_) => Err(Error::Agent(format!(
            "{late} within {} s",
            IMPORT_TIMEOUT.as_secs()
        ))),
    }
}

/// One end of a socket pair for the relay, the other relayed to `stream` by a task.
fn relay_end(stream: bulkhead_wire::Stream) -> Result<(tokio::net::UnixStream, WireTask), Error> {
    let (ours, stream_end) =
        tokio::net::UnixStream::pair().map_err(|e| Error::Io(format!("USB relay sockets: {e}")))?;
    Ok((
        ours,
        tokio::spawn(bulkhead_wire::relay::relay_bytes(stream, stream_end)),
    ))
}

/// A running domain's record, and its watch of the end of its init or VMM.
pub(super) struct Running {
    pub record: DomainRecord,
    pub exited: watch::Receiver<bool>,
}

/// Where the device went.
enum Receiver {
    /// Into a VM's kernel: this task relays the wire stream to the relay's importing side.
    Vm { wire: WireTask },
    /// Into dom0's `vhci-hcd` at `port`, its nodes handed to the sandbox `target` for host
    /// uid `owner`; `given` are the nodes handed so far (name, device number).
    Sandbox {
        port: u32,
        target: bulkhead_sandbox::devices::Target,
        owner: u32,
        given: Vec<(String, (u32, u32))>,
    },
}

/// How often a sandbox's attached device is looked at for new nodes.
const NODE_POLL: Duration = Duration::from_millis(500);

/// One attachment's life: the relay, the nodes of a sandbox's device, and the release.
struct UsbTask {
    mgr: Arc<Manager>,
    busid: BusId,
    domain: String,
    /// The attachment this task ends (None: the first hop through a usb VM, which the second
    /// hop's task ends).
    id: Option<u64>,
    /// dom0's kernel exports the device on this hop (give it back at the end).
    unexport_dom0: bool,
    /// The hop before this one (through a usb VM), ended after this one.
    upstream: Option<Upstream>,
}

/// The first hop through a usb VM, seen from the second: how to end it.
struct Upstream {
    stop: oneshot::Sender<()>,
    released: watch::Receiver<bool>,
    /// The relay of the usb VM's export stream.
    wire: WireTask,
}

impl Upstream {
    async fn end(self) {
        let mut wire = self.wire;
        if tokio::time::timeout(CLOSE_GRACE, &mut wire).await.is_err() {
            wire.abort();
        }
        let _ = self.stop.send(());
        let mut r = self.released;
        let _ = tokio::time::timeout(RELEASE_TIMEOUT, r.wait_for(|x| *x)).await;
    }
}

impl UsbTask {
    async fn run(
        self,
        (importer, exporter): (tokio::net::UnixStream, tokio::net::UnixStream),
        mut receiver: Receiver,
        limits: GuardLimits,
        stop: oneshot::Receiver<()>,
        mut exited: watch::Receiver<bool>,
        released: watch::Sender<bool>,
    ) {
        let (busid, domain) = (&self.busid, self.domain.as_str());
        // A task of its own: the relay keeps moving while this one hands nodes over (a node
        // handed over is read at once, and that I/O goes through the relay).
        let mut relay = tokio::spawn(relay_urbs(importer, exporter, limits));
        let mut relay_ended = false;
        let mut stop = stop;
        let mut tick = tokio::time::interval(NODE_POLL);
        loop {
            tokio::select! {
                r = &mut relay => {
                    match r {
                        Ok(Ok(stats)) => info!(busid = %busid, domain, ?stats, "USB relay ended"),
                        Ok(Err(e)) => warn!(busid = %busid, domain, error = %e, "USB relay dropped"),
                        Err(e) => warn!(busid = %busid, domain, error = %e, "USB relay task failed"),
                    }
                    relay_ended = true;
                    break;
                }
                _ = &mut stop => {
                    info!(busid = %busid, domain, "USB device detached");
                    break;
                }
                // The receiving domain is gone (even before its teardown reached us).
                _ = async { let _ = exited.wait_for(|e| *e).await; } => {
                    info!(busid = %busid, domain, "the receiving domain stopped");
                    break;
                }
                _ = tick.tick(), if matches!(receiver, Receiver::Sandbox { .. }) => {
                    self.give_new_nodes(&mut receiver).await;
                }
            }
        }
        // The relay's sockets close with it: the other kernels see the connection end. (A
        // relay that ended is not awaited again: polling a finished JoinHandle panics, and
        // this task's clean-up below would never run.)
        if !relay_ended {
            relay.abort();
            let _ = relay.await;
        }
        self.unplug(receiver).await;
        if self.unexport_dom0 {
            self.mgr.usb_give_back(busid).await;
        }
        if let Some(u) = self.upstream {
            u.end().await;
        }
        if let Some(id) = self.id {
            self.mgr.usb_forget(busid, id);
        }
        let _ = released.send(true);
    }

    /// Hands the sandbox the nodes its device has that it was not given yet (and loads the
    /// device's drivers once it enumerated, as udev would), and takes back at once any node
    /// that is gone or is another device now. The raw usbfs node (`/dev/bus/usb/...`) is not
    /// handed over: with it the sandbox could detach dom0's drivers from the device and free
    /// its disk's or input device's number for another device while it still holds the node.
    async fn give_new_nodes(&self, receiver: &mut Receiver) {
        let Receiver::Sandbox {
            port,
            target,
            owner,
            given,
        } = receiver
        else {
            return;
        };
        let (port, target, owner) = (*port, *target, *owner);
        let sysfs = self.mgr.usb_sysfs();
        let already = given.clone();
        let launcher = bulkhead_sandbox::Launcher {
            path: self.mgr.config().launcher.clone(),
        };
        let first = already.is_empty();
        let res = blocking(move || {
            let Ok(Some(local)) = sysfs.vhci_device(port) else {
                return (Vec::new(), Vec::new());
            };
            if first {
                sysfs.load_drivers(&local);
            }
            let now: Vec<(String, (u32, u32))> = sysfs
                .device_nodes(&local)
                .into_iter()
                .filter(|n| !n.is_usbfs())
                .map(|n| (n.devname, (n.major, n.minor)))
                .collect();
            let mut gone = Vec::new();
            for old in &already {
                if !now.contains(old) {
                    if let Err(e) =
                        bulkhead_sandbox::devices::remove_device(&launcher, target, &old.0)
                    {
                        tracing::debug!(node = %old.0, error = %e, "stale node not taken back");
                    }
                    gone.push(old.clone());
                }
            }
            let mut newly = Vec::new();
            for (name, rdev) in now {
                if already.iter().any(|(n, _)| *n == name) {
                    continue;
                }
                let host = std::path::Path::new("/dev").join(&name);
                if !host.exists() {
                    continue; // devtmpfs has not made it yet: next time
                }
                let r = bulkhead_sandbox::devices::add_device(
                    &launcher, target, &host, rdev, &name, owner,
                );
                newly.push((name, rdev, r.err().map(|e| e.to_string())));
            }
            (gone, newly)
        })
        .await
        .unwrap_or_default();
        let (gone, newly) = res;
        given.retain(|g| !gone.contains(g));
        for (name, _) in &gone {
            info!(busid = %self.busid, domain = %self.domain, node = %name, "device node gone; taken back from the sandbox");
        }
        for (name, rdev, err) in newly {
            match err {
                None => {
                    info!(busid = %self.busid, domain = %self.domain, node = %name, "device node handed to the sandbox")
                }
                Some(e) => {
                    warn!(busid = %self.busid, domain = %self.domain, node = %name, error = %e, "cannot hand a device node to the sandbox")
                }
            }
            // tried once: a node that could not be handed over is not retried every tick
            given.push((name, rdev));
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
                target,
                given,
                ..
            } => {
                let sysfs = self.mgr.usb_sysfs();
                let launcher = bulkhead_sandbox::Launcher {
                    path: self.mgr.config().launcher.clone(),
                };
                let busid = self.busid.clone();
                let _ = blocking(move || {
                    for (name, _) in given.iter().rev() {
                        // The sandbox may be gone already; then so are its mounts (and the
                        // helper refuses a pid that is another process now).
                        if let Err(e) = bulkhead_sandbox::devices::remove_device(&launcher, target, name) {
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
