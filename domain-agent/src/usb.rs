//! USB devices attached to this domain (`OpenRequest::UsbImport`, VM domains only).
//!
//! domaind has exported the device in the usb domain and relays its USB/IP stream, checking
//! every message. Here the agent plugs one end of a socket pair into a free port of this
//! kernel's `vhci-hcd` and relays the other end to the stream; the kernel then sees the device
//! as if it were plugged in (a disk appears as `/dev/sdX`, a keyboard under `/dev/input`).
//! When the stream ends (detach, the usb domain or domaind gone) or the kernel drops the
//! connection, the port is unplugged. A sandbox shares dom0's kernel: domaind attaches its
//! devices there, so a sandbox's agent refuses the stream.
//!
//! A usb VM also exports onwards (`OpenRequest::UsbExport`): the device domaind imported into
//! it is bound to this kernel's `usbip-host` and carried to the receiving domain, so the
//! receiving domain's USB/IP commands reach the usb VM's kernel, never dom0's.

use std::os::fd::AsRawFd;

use bulkhead_usb::host::Sysfs;
use bulkhead_usb::BusId;
use bulkhead_wire::{Stream, UsbExportReply, UsbExportRequest, UsbImportReply, UsbImportRequest};

/// The sysfs of this domain's kernel.
const SYSFS: &str = "/sys";

async fn reply(stream: &Stream, r: UsbImportReply) -> bool {
    match stream.send_message(&r.encode()).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot answer a USB import");
            false
        }
    }
}

/// Serves one `UsbImport` stream until the device is detached.
pub async fn serve_import(req: UsbImportRequest, stream: Stream) {
    tracing::info!(busid = %req.busid, devid = req.devid, speed = req.speed, "USB import requested");
    if !crate::in_vm() {
        reply(
            &stream,
            UsbImportReply::Failed {
                reason: "this domain is a sandbox: it shares dom0's kernel, where domaind attaches its USB devices".into(),
            },
        )
        .await;
        stream.reset("not a VM");
        return;
    }
    let (kernel_end, ours) = match std::os::unix::net::UnixStream::pair() {
        Ok(p) => p,
        Err(e) => {
            let reason = format!("cannot make a socket pair: {e}");
            reply(&stream, UsbImportReply::Failed { reason }).await;
            stream.reset("socket pair");
            return;
        }
    };
    let (devid, speed) = (req.devid, req.speed);
    let attached = tokio::task::spawn_blocking(move || {
        // The kernel takes its own reference to the socket; ours closes when this returns.
        Sysfs::new(SYSFS).vhci_attach(kernel_end.as_raw_fd(), devid, speed)
    })
    .await;
    let port = match attached {
        Ok(Ok(port)) => port,
        Ok(Err(e)) => {
            tracing::warn!(busid = %req.busid, error = %e, "USB import failed");
            reply(
                &stream,
                UsbImportReply::Failed {
                    reason: e.to_string(),
                },
            )
            .await;
            stream.reset("attach failed");
            return;
        }
        Err(e) => {
            let reason = format!("internal task failed: {e}");
            reply(&stream, UsbImportReply::Failed { reason }).await;
            stream.reset("attach failed");
            return;
        }
    };
    tracing::info!(busid = %req.busid, port, "USB device plugged into vhci-hcd");
    let relayed = async {
        ours.set_nonblocking(true)?;
        let io = tokio::net::UnixStream::from_std(ours)?;
        Ok::<_, std::io::Error>(io)
    };
    match relayed.await {
        Ok(io) if reply(&stream, UsbImportReply::Attached { port }).await => {
            match bulkhead_wire::relay::relay_bytes(stream, io).await {
                Ok(()) => tracing::info!(busid = %req.busid, port, "USB stream ended"),
                Err(e) => tracing::warn!(busid = %req.busid, port, error = %e, "USB stream failed"),
            }
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot relay the USB stream");
            stream.reset("relay");
        }
    }
    let detached = tokio::task::spawn_blocking(move || Sysfs::new(SYSFS).vhci_detach(port)).await;
    match detached {
        Ok(Ok(())) => tracing::info!(busid = %req.busid, port, "USB device detached"),
        Ok(Err(e)) => {
            tracing::warn!(busid = %req.busid, port, error = %e, "cannot unplug the USB device")
        }
        Err(e) => tracing::warn!(error = %e, "internal task failed"),
    }
}

/// Serves one `UsbExport` stream (a usb VM): the device plugged into this kernel's vhci-hcd
/// port `req.port` is bound to `usbip-host` and exported over a socket pair whose other end
/// is relayed to the stream; given back to its drivers when the stream ends.
pub async fn serve_export(req: UsbExportRequest, stream: Stream) {
    tracing::info!(busid = %req.busid, port = req.port, "USB export requested");
    let failed = |reason: String| UsbExportReply::Failed { reason };
    if !crate::in_vm() {
        let _ = stream
            .send_message(
                &failed(
                    "this domain is a sandbox: domaind exports from dom0's kernel itself".into(),
                )
                .encode(),
            )
            .await;
        stream.reset("not a VM");
        return;
    }
    let (kernel_end, ours) = match std::os::unix::net::UnixStream::pair() {
        Ok(p) => p,
        Err(e) => {
            let _ = stream
                .send_message(&failed(format!("cannot make a socket pair: {e}")).encode())
                .await;
            stream.reset("socket pair");
            return;
        }
    };
    let port = req.port;
    // The device enumerates in this kernel after the import: wait for its bus id.
    let exported = tokio::task::spawn_blocking(move || {
        let sysfs = Sysfs::new(SYSFS);
        let t0 = std::time::Instant::now();
        let local = loop {
            match sysfs.vhci_device(port) {
                Ok(Some(b)) if sysfs.driver_of(&b).is_some() => break b,
                _ if t0.elapsed() > std::time::Duration::from_secs(20) => {
                    return Err(format!(
                        "no device enumerated at vhci-hcd port {port} within 20 s"
                    ))
                }
                _ => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        };
        let r = sysfs
            .export(&local, kernel_end.as_raw_fd())
            .map_err(|e| e.to_string());
        drop(kernel_end);
        r.map(|d| (local, d))
    })
    .await;
    let (local, dev) = match exported {
        Ok(Ok(v)) => v,
        Ok(Err(reason)) => {
            tracing::warn!(busid = %req.busid, port, reason = %reason, "USB export failed");
            let _ = stream.send_message(&failed(reason).encode()).await;
            stream.reset("export failed");
            return;
        }
        Err(e) => {
            let _ = stream
                .send_message(&failed(format!("internal task failed: {e}")).encode())
                .await;
            stream.reset("export failed");
            return;
        }
    };
    tracing::info!(busid = %req.busid, local = %local, devid = dev.devid, "USB device exported onwards");
    // The kernel's end must not see the connection end before the device left usbip-host:
    // an end of file makes usbip-host reset the device, a reset that goes through this
    // kernel's own import of it and holds up usbip's event worker, and with it the detach of
    // that import, for minutes. So the device is unbound first (when the peer ended, or after
    // any other end of the relay), with a second handle keeping the socket open until then.
    let keep = match ours.try_clone() {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = %e, "cannot relay the USB export");
            stream.reset("relay");
            release_export(local).await;
            drop(ours);
            return;
        }
    };
    let io = ours
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(ours));
    let reply = UsbExportReply::Exported {
        devid: dev.devid,
        speed: dev.speed,
    };
    // One release, started by whichever comes first (the peer's end, or the relay's end in
    // any other way) and awaited by both: a step cancelled halfway must not let the socket
    // close before the unbind finished.
    let release = OnceRelease::new(local.clone());
    match io {
        Ok(io) if stream.send_message(&reply.encode()).await.is_ok() => {
            match bulkhead_wire::relay::relay_bytes_with(stream, io, || release.run()).await {
                Ok(()) => tracing::info!(local = %local, "USB export stream ended"),
                Err(e) => tracing::warn!(local = %local, error = %e, "USB export stream failed"),
            }
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot relay the USB export");
            stream.reset("relay");
        }
    }
    release.run().await;
    drop(keep);
}

/// [`release_export`] run at most once, in a task of its own (it finishes even when the
/// caller that started it is cancelled); every [`OnceRelease::run`] waits for its end.
struct OnceRelease {
    start: std::sync::Mutex<Option<(BusId, tokio::sync::watch::Sender<bool>)>>,
    done: tokio::sync::watch::Receiver<bool>,
}

impl OnceRelease {
    fn new(local: BusId) -> Self {
        let (tx, done) = tokio::sync::watch::channel(false);
        Self {
            start: std::sync::Mutex::new(Some((local, tx))),
            done,
        }
    }

    fn run(&self) -> impl std::future::Future<Output = ()> {
        let start = match self.start.lock() {
            Ok(mut s) => s.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some((local, tx)) = start {
            tokio::spawn(async move {
                release_export(local).await;
                let _ = tx.send(true);
            });
        }
        let mut done = self.done.clone();
        async move {
            // Err: the task ended without saying so (it panicked); nothing more to wait for.
            let _ = done.wait_for(|d| *d).await;
        }
    }
}

/// Takes an exported device from `usbip-host` without the reset of an ended connection, and
/// not back to this kernel's drivers: it is about to be unplugged (its import ends next), and
/// a driver probing it now would stall that on I/O through the closing connection. Safe to
/// call twice.
async fn release_export(local: BusId) {
    let l = local.clone();
    let undone = tokio::task::spawn_blocking(move || Sysfs::new(SYSFS).unbind_from_stub(&l)).await;
    match undone {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(local = %local, error = %e, "cannot take the device back from usbip-host")
        }
        Err(e) => tracing::warn!(local = %local, error = %e, "internal task failed"),
    }
}
