//! Keyboards and mice for dom0 through the input proxy (see [`crate::usb`]): the device's
//! event nodes go to the usb domain, `bulkhead-input-sender` there streams each one, and
//! domaind checks the events and injects them through a uinput device of its own.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_api::Error;
use bulkhead_domain::DomainName;
use bulkhead_input::proto::Kind;
use bulkhead_sandbox::devices::Target;
use bulkhead_sandbox::{Launcher, SandboxRecord};
use bulkhead_usb::host::DeviceNode;
use bulkhead_usb::{BusId, DeviceKind};
use bulkhead_wire::ExecRequest;
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use super::{blocking, Manager};

/// How long a device's event nodes may take to appear after its drivers are loaded.
const NODES_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the usb domain's sender has to describe the device (its Hello).
const HELLO_TIMEOUT: Duration = Duration::from_secs(20);
/// The sender, in the guest tools (`packaging/guest-tools.txt`).
const SENDER: &str = "/usr/lib/bulkhead/bulkhead-input-sender";

/// One proxied event node: the stream's task and the uinput device it made.
struct Proxied {
    node: String,
    task: tokio::task::JoinHandle<()>,
}

/// What an event node may be, by the USB interface it belongs to (what dom0 reads from its
/// own sysfs, never what the sender says): a boot keyboard interface types, anything else
/// only points and clicks.
fn node_kind(node: &DeviceNode) -> Kind {
    match node.interface_protocol() {
        Some(1) => Kind::Keyboard,
        _ => Kind::Mouse,
    }
}

impl Manager {
    /// `UsbAttach BUSID dom0` for an input device, the usb domain a sandbox (`usb_rec`).
    pub(super) async fn usb_input_to_dom0(
        self: &Arc<Self>,
        busid: BusId,
        kind: DeviceKind,
        usb_domain: &str,
        usb_rec: SandboxRecord,
        mut usb_exited: watch::Receiver<bool>,
    ) -> Result<(), Error> {
        if !kind.is_input() {
            return Err(Error::AccessDenied(format!(
                "USB device {busid} is a {}; dom0 takes only keyboards and mice",
                kind.describe()
            )));
        }
        let sysfs = self.usb_sysfs();
        let b = busid.clone();
        // The device's drivers and evdev, as udev would load them; then its event nodes.
        let nodes = blocking(move || {
            for m in ["evdev", "uinput"] {
                let _ = std::process::Command::new("modprobe").arg(m).output();
            }
            sysfs.load_drivers(&b);
            let t0 = Instant::now();
            loop {
                let nodes: Vec<DeviceNode> = sysfs
                    .device_nodes(&b)
                    .into_iter()
                    .filter(|n| n.devname.starts_with("input/event"))
                    .filter(|n| Path::new("/dev").join(&n.devname).exists())
                    .collect();
                if !nodes.is_empty() || t0.elapsed() > NODES_TIMEOUT {
                    return nodes;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
        .await?;
        if nodes.is_empty() {
            return Err(Error::Backend(format!(
                "USB device {busid} has no input event device in dom0's kernel after {} s (is its driver, usbhid, available?)",
                NODES_TIMEOUT.as_secs()
            )));
        }
        let launcher = Launcher {
            path: self.config().launcher.clone(),
        };
        let usb_dn =
            DomainName::new(usb_domain).map_err(|e| Error::InvalidProperty(e.to_string()))?;
        let conn = self.running_agent_conn(&usb_dn).await?;
        let owner = usb_rec.uid_base + bulkhead_sandbox::DOMAIN_USER_UID;
        let target = Target::of(&usb_rec);
        let mut proxied: Vec<Proxied> = Vec::new();
        let mut failure = None;
        for dn in &nodes {
            let node = &dn.devname;
            let (l, n, rdev) = (launcher.clone(), node.clone(), (dn.major, dn.minor));
            let handed = blocking(move || {
                bulkhead_sandbox::devices::add_device(
                    &l,
                    target,
                    &Path::new("/dev").join(&n),
                    rdev,
                    &n,
                    owner,
                )
            })
            .await
            .and_then(|r| r.map_err(|e| Error::Backend(e.to_string())));
            if let Err(e) = handed {
                failure = Some(Error::Backend(format!(
                    "cannot hand /dev/{node} to the usb domain: {e}"
                )));
                break;
            }
            match self
                .start_sender(&conn, usb_domain, node, node_kind(dn))
                .await
            {
                Ok(task) => proxied.push(Proxied {
                    node: node.clone(),
                    task,
                }),
                Err(e) => {
                    // this node was handed over: take it back with the others
                    proxied.push(Proxied {
                        node: node.clone(),
                        task: tokio::spawn(async {}),
                    });
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            self.release_input(&busid, &launcher, target, proxied).await;
            return Err(e);
        }
        let (id, stop_rx, released_tx) = self.usb_record(&busid, "dom0");
        let names: Vec<&str> = nodes.iter().map(|n| n.devname.as_str()).collect();
        info!(busid = %busid, usb_domain, nodes = ?names, "input device attached to dom0 through the input proxy");
        let me = Arc::clone(self);
        tokio::spawn(async move {
            // Ends on detach, or when every stream ended (unplugged, the usb domain gone, a
            // violation).
            let all_done = async {
                for p in proxied.iter_mut() {
                    let _ = (&mut p.task).await;
                }
            };
            let usb_gone = async {
                let _ = usb_exited.wait_for(|e| *e).await;
            };
            tokio::select! {
                _ = stop_rx => info!(busid = %busid, "input device detached from dom0"),
                _ = all_done => info!(busid = %busid, "the input proxy's streams ended"),
                _ = usb_gone => info!(busid = %busid, "the usb domain stopped"),
            }
            me.release_input(&busid, &launcher, target, proxied).await;
            me.usb_forget(&busid, id);
            let _ = released_tx.send(true);
        });
        Ok(())
    }

    /// Runs the sender on `/dev/<node>` in the usb domain and forwards its stream into a new
    /// uinput device; returns once that device exists (the task runs on).
    async fn start_sender(
        &self,
        conn: &bulkhead_wire::Connection,
        usb_domain: &str,
        node: &str,
        kind: Kind,
    ) -> Result<tokio::task::JoinHandle<()>, Error> {
        let req = ExecRequest {
            argv: vec![SENDER.to_owned(), format!("/dev/{node}")],
            user: Some("user".to_owned()),
            env: Vec::new(),
            cwd: None,
        };
        let (out_r, out_w) = tokio::net::UnixStream::pair()
            .map_err(|e| Error::Io(format!("input proxy pipe: {e}")))?;
        let conn = conn.clone();
        let (created_tx, created_rx) = oneshot::channel::<PathBuf>();
        let domain = usb_domain.to_owned();
        let node_s = node.to_owned();
        // What the sender said on stderr and how it ended, for the error when it ends before
        // it described the device.
        let said = Arc::new(std::sync::Mutex::new(String::new()));
        let said_in = said.clone();
        let task = tokio::spawn(async move {
            let sender = async {
                let mut err: Vec<u8> = Vec::new();
                let r =
                    bulkhead_wire::exec::run(&conn, req, tokio::io::empty(), out_w, &mut err).await;
                let text = String::from_utf8_lossy(&err[..err.len().min(2048)])
                    .trim()
                    .to_owned();
                let end = match &r {
                    Ok(status) => format!("exit {}", status.as_shell_code()),
                    Err(e) => format!("stream failed: {e}"),
                };
                warn!(node = %node_s, %end, stderr = %text, "the input sender ended");
                if let Ok(mut s) = said_in.lock() {
                    *s = format!("{end}; it said: {text}");
                }
            };
            let mut created_tx = Some(created_tx);
            let forward = bulkhead_input::forward_with(
                out_r,
                &domain,
                bulkhead_input::proto::Limits {
                    kind: Some(kind),
                    ..bulkhead_input::proto::Limits::default()
                },
                |dev| {
                    info!(device = %dev.name(), node = ?dev.event_node(), "uinput device made for a proxied input device");
                    if let Some(tx) = created_tx.take() {
                        let _ = tx.send(dev.sys_path().to_path_buf());
                    }
                },
            );
            tokio::pin!(forward, sender);
            tokio::select! {
                r = &mut forward => match r {
                    Ok(end) => info!(node = %node_s, ?end, "input proxy stream ended"),
                    Err(e) => warn!(node = %node_s, error = %e, "input proxy stream dropped"),
                },
                _ = &mut sender => {
                    // what it wrote before it ended still counts
                    let _ = tokio::time::timeout(Duration::from_secs(1), &mut forward).await;
                }
            }
        });
        match tokio::time::timeout(HELLO_TIMEOUT, created_rx).await {
            Ok(Ok(_)) => Ok(task),
            other => {
                // let the task record how the sender ended
                tokio::time::sleep(Duration::from_millis(200)).await;
                task.abort();
                let said = said.lock().map(|s| s.clone()).unwrap_or_default();
                Err(Error::Backend(format!(
                    "the usb domain's input sender did not describe /dev/{node} within {} s{}",
                    HELLO_TIMEOUT.as_secs(),
                    if matches!(other, Ok(Err(_))) {
                        format!(" (it ended: {said})")
                    } else {
                        String::new()
                    }
                )))
            }
        }
    }
}

impl Manager {
    /// Stops the streams (dropping a stream ends the sender in the usb domain), takes the nodes
    /// back from the usb domain, and unplugs the device logically and plugs it in again
    /// (`authorized` 0 then 1): whatever the usb domain still holds open on the old nodes
    /// stops working, and the new nodes are dom0's again.
    async fn release_input(
        &self,
        busid: &BusId,
        launcher: &Launcher,
        target: Target,
        proxied: Vec<Proxied>,
    ) {
        for p in &proxied {
            p.task.abort();
        }
        let launcher = launcher.clone();
        let sysfs = self.usb_sysfs();
        let b = busid.clone();
        let _ = blocking(move || {
            for p in proxied {
                if let Err(e) = bulkhead_sandbox::devices::remove_device(&launcher, target, &p.node) {
                    tracing::debug!(node = %p.node, error = %e, "input node not taken back (the usb domain may be gone)");
                }
            }
            if let Err(e) = sysfs.reauthorize(&b) {
                warn!(busid = %b, error = %e, "cannot re-plug the input device; the usb domain may still read it");
            }
        })
        .await;
    }
}
