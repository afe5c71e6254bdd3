//! USB devices attached to this domain (`OpenRequest::UsbImport`, VM domains only).
//!
//! domaind has exported the device in the usb domain and relays its USB/IP stream, checking
//! every message. Here the agent plugs one end of a socket pair into a free port of this
//! kernel's `vhci-hcd` and relays the other end to the stream; the kernel then sees the device
//! as if it were plugged in (a disk appears as `/dev/sdX`, a keyboard under `/dev/input`).
//! When the stream ends (detach, the usb domain or domaind gone) or the kernel drops the
//! connection, the port is unplugged. A sandbox shares dom0's kernel: domaind attaches its
//! devices there, so a sandbox's agent refuses the stream.

use std::os::fd::AsRawFd;

use bulkhead_usb::host::Sysfs;
use bulkhead_wire::{Stream, UsbImportReply, UsbImportRequest};

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
