//! `bulkhead usb list|attach|detach`: the usb domain's devices through domaind.

use std::io::Write;

use bulkhead_api::Domaind1Proxy;

use crate::cli::UsbCommand;
use crate::failure::{Code, Failure};
use crate::terminal::sanitize_line;

pub async fn usb(proxy: &Domaind1Proxy<'_>, cmd: UsbCommand) -> Result<(), Failure> {
    match cmd {
        UsbCommand::List { json } => list(proxy, json).await,
        // When the kernel lacks USB/IP, domaind's message says so (after the policy decision).
        UsbCommand::Attach { busid, domain } => Ok(proxy.usb_attach(&busid, &domain).await?),
        UsbCommand::Detach { busid } => Ok(proxy.usb_detach(&busid).await?),
    }
}

#[derive(serde::Serialize)]
struct Row<'a> {
    busid: &'a str,
    id: &'a str,
    manufacturer: &'a str,
    product: &'a str,
    serial: &'a str,
    class: &'a str,
}

async fn list(proxy: &Domaind1Proxy<'_>, json: bool) -> Result<(), Failure> {
    let devices = proxy.usb_list().await?;
    let status = proxy.usb_status().await?;
    let rows: Vec<Row<'_>> = devices
        .iter()
        .map(|d| Row {
            busid: &d.0,
            id: &d.1,
            manufacturer: &d.2,
            product: &d.3,
            serial: &d.4,
            class: &d.5,
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &rows)
            .map_err(|e| Failure::new(Code::Failure, format!("cannot write JSON: {e}")))?;
        writeln!(out).ok();
    } else if rows.is_empty() {
        writeln!(out, "no USB devices").ok();
    } else {
        let w = |f: for<'r> fn(&'r Row<'_>) -> &'r str, min: usize| {
            rows.iter()
                .map(|r| f(r).chars().count())
                .max()
                .unwrap_or(0)
                .max(min)
        };
        let (wb, wm, wp, ws) = (
            w(|r| r.busid, 5),
            w(|r| r.manufacturer, 12),
            w(|r| r.product, 7),
            w(|r| r.serial, 6),
        );
        writeln!(
            out,
            "{:wb$}  {:9}  {:wm$}  {:wp$}  {:ws$}  CLASS",
            "BUSID", "ID", "MANUFACTURER", "PRODUCT", "SERIAL"
        )
        .ok();
        for r in &rows {
            // Descriptor strings come from the device: never raw to a terminal.
            writeln!(
                out,
                "{:wb$}  {:9}  {:wm$}  {:wp$}  {:ws$}  {}",
                sanitize_line(r.busid),
                sanitize_line(r.id),
                sanitize_line(r.manufacturer),
                sanitize_line(r.product),
                sanitize_line(r.serial),
                sanitize_line(r.class)
            )
            .ok();
        }
    }
    if !status.is_empty() {
        eprintln!("note: {}", sanitize_line(&status));
    }
    Ok(())
}
