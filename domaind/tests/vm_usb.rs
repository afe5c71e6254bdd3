//! USB devices between domains, for real: L1 gets an emulated USB disk and keyboard from QEMU
//! (`nested-kvm.sh --usb-disk FILE --usb-kbd --monitor`); the usb domain is a sandbox in L1
//! (it shares L1's kernel, which holds the devices), and two VM domains receive them.
//!
//! - an attached disk is readable in the VM it is attached to and nowhere else (not in a
//!   sandbox, not in dom0, whose kernel has it bound to `usbip-host`), written there, detached,
//!   attached to the sandbox and read there (with what the VM wrote);
//! - a device is attached to one domain at a time; the policy refuses what it should;
//!   `usb list` says where each device is;
//! - the sandbox receives the disk through dom0's kernel (vhci-hcd there), its node handed to
//!   that sandbox's user alone (not to the usb domain, private to that user in dom0);
//! - keys typed on the emulated keyboard (QEMU's monitor `sendkey`) reach only the VM it is
//!   attached to;
//! - the keyboard for dom0 goes through the input proxy: a uinput device in dom0 gets the key,
//!   the keyboard's own node (grabbed by the usb domain's sender) gives dom0 nothing, and a
//!   detach removes it;
//! - a domain that shuts down gives its devices back; a domaind killed while a device is
//!   attached leaves nothing bound: the restarted one gives the device back to dom0's
//!   drivers and the VM's kernel has unplugged it;
//! - figures (printed, not asserted): reading the disk in the VM over our path and reading it
//!   directly in L1, in the same run; a key press to dom0 through the input proxy and from the
//!   keyboard's own node.
//!
//! Needs hardware virtualization; runs itself inside L1 where there is none (see
//! `vm_full_boot.rs`).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bulkhead_api::{Domaind1Proxy, Error};
use bulkhead_testkit::{
    bounded, hardware_vm_here_or_nested_with, template_cache, Debian12Env, DomaindOptions, VmHost,
    ENV_IN_L1,
};

const TEST_LIMIT: Duration = Duration::from_secs(1500);
const TEST_NAME: &str = "usb_devices_move_between_vm_domains";
/// What the emulated disk holds at offset 0.
const MARKER: &str = "bulkhead-usb-disk-marker-0f3a";
/// What the first VM writes at 1 MiB.
const WRITTEN: &str = "written-by-the-first-vm-77c1";
/// Size of the emulated disk.
const DISK_MIB: u64 = 64;
const DISK_PRODUCT: &str = "QEMU USB HARDDRIVE";
const KBD_PRODUCT: &str = "QEMU USB Keyboard";

/// The disk image of `test` (one each: the two tests of this file run in one process, and one
/// removes its image when done while the other may still wait for L1).
fn disk_image(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bulkhead-usb-disk-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("disk dir");
    let path = dir.join("disk.img");
    let f = std::fs::File::create(&path).expect("disk image");
    f.set_len(DISK_MIB << 20).expect("disk size");
    std::fs::write(&path, MARKER).expect("marker");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("disk image");
    f.set_len(DISK_MIB << 20).expect("disk size");
    // Something other than zeros to read for the throughput figure.
    let mut data = Vec::with_capacity(1 << 20);
    for i in 0..(1u32 << 18) {
        data.extend_from_slice(&i.to_le_bytes());
    }
    use std::os::unix::fs::FileExt;
    for mib in 2..DISK_MIB {
        f.write_all_at(&data, mib << 20).expect("fill");
    }
    path
}

/// Both tests: the template cache with its VM files, and (on the host, before L1) the disk
/// image for L1's emulated USB disk, with its path as nested-kvm.sh's argument.
fn prepare(test: &str) -> (PathBuf, Option<PathBuf>, String) {
    let Some(cache) = template_cache() else {
        panic!("the USB test needs the debian-12 template cache (scripts/test.sh builds it)");
    };
    if std::env::var_os(ENV_IN_L1).is_none() {
        bulkhead_testkit::ensure_vm_files(&cache, "debian-12")
            .unwrap_or_else(|e| panic!("the VM files of debian-12: {e}"));
    }
    let disk = (std::env::var_os(ENV_IN_L1).is_none()).then(|| disk_image(test));
    let disk_arg = disk
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    (cache, disk, disk_arg)
}

#[test]
fn usb_devices_move_between_vm_domains() {
    let (cache, disk, disk_arg) = prepare(TEST_NAME);
    let host = hardware_vm_here_or_nested_with(
        TEST_NAME,
        &["--usb-disk", &disk_arg, "--usb-kbd", "--monitor"],
    );
    match host {
        VmHost::PassedInL1 => {
            // What the first VM wrote reached the disk image itself.
            let disk = disk.expect("disk image");
            let mut f = std::fs::File::open(&disk).expect("disk image");
            let mut buf = vec![0u8; (1 << 20) + WRITTEN.len()];
            f.read_exact(&mut buf).expect("read the disk image");
            assert_eq!(&buf[1 << 20..], WRITTEN.as_bytes());
            let _ = std::fs::remove_dir_all(disk.parent().expect("dir"));
        }
        VmHost::Here => {
            if std::env::var_os(ENV_IN_L1).is_none() {
                bulkhead_test_skip::skip(
                    "hardware virtualization here, but no emulated USB devices (this test brings its own only in L1)",
                );
                return;
            }
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(bounded(TEST_LIMIT, scenario(cache)))
        }
    }
}

const USB_VM_TEST: &str = "usb_devices_through_a_usb_vm";

/// The usb domain as a VM: a device reaches the receiving VM in two hops (dom0's usbip-host
/// to the usb VM's vhci-hcd, the usb VM's usbip-host to the receiving VM's vhci-hcd), each
/// relayed and checked; a detach or the usb VM's end undoes both.
#[test]
fn usb_devices_through_a_usb_vm() {
    let (cache, disk, disk_arg) = prepare(USB_VM_TEST);
    match hardware_vm_here_or_nested_with(USB_VM_TEST, &["--usb-disk", &disk_arg]) {
        VmHost::PassedInL1 => {
            if let Some(d) = disk {
                let _ = std::fs::remove_dir_all(d.parent().expect("dir"));
            }
        }
        VmHost::Here => {
            if std::env::var_os(ENV_IN_L1).is_none() {
                bulkhead_test_skip::skip(
                    "hardware virtualization here, but no emulated USB devices (this test brings its own only in L1)",
                );
                return;
            }
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(bounded(TEST_LIMIT, usb_vm_scenario(cache)))
        }
    }
}

async fn usb_vm_scenario(cache: PathBuf) {
    let pre = format!("uv{}-", std::process::id() % 100_000);
    let (usb, work) = (format!("{pre}usb"), format!("{pre}work"));
    let env = Debian12Env::start(DomaindOptions {
        binary: Some(env!("CARGO_BIN_EXE_domaind").into()),
        env: vec![("BULKHEAD_USB_DOMAIN".into(), usb.clone())],
        ..DomaindOptions::debian12(cache)
    })
    .await;
    let (d, p) = (env.d, env.p);
    let disk = busid_of(&p, DISK_PRODUCT).await;
    let policy = d.paths.config_dir.join("policy.d");
    std::fs::create_dir_all(&policy).expect("policy dir");
    std::fs::write(
        policy.join("30-usb.policy"),
        format!("bulkhead.usb.Attach  +{disk}  {work}  {usb}  allow\n"),
    )
    .expect("policy");
    for (vm, class) in [(&usb, "service"), (&work, "app")] {
        let props = HashMap::from([("isolation", "vm"), ("memory", "640"), ("vcpus", "1")]);
        p.create(vm, class, "debian-12", "red", props)
            .await
            .expect("create a VM");
        if let Err(e) = p.start(vm).await {
            panic!(
                "start {vm}: {e}\n{}\n{}",
                bulkhead_testkit::domain_log(&p, vm).await,
                d.log()
            );
        }
    }
    let vhci_in_use = |out: &str| {
        out.lines()
            .filter(|l| l.starts_with("hs") || l.starts_with("ss"))
            .any(|l| l.split_whitespace().nth(2) != Some("004"))
    };

    // Two hops: dom0 -> usb -> work.
    if let Err(e) = p.usb_attach(&disk, &work).await {
        panic!(
            "attach {disk} to {work} through {usb}: {e}\nusb console:\n{}\ndomaind:\n{}",
            bulkhead_testkit::domain_log(&p, &usb).await,
            d.log()
        );
    }
    assert_eq!(attached_to(&p, &disk).await, work.as_str());
    assert_eq!(dom0_driver(&disk), "usbip-host");
    let (code, out) = root_sh(&p, &work, &read_disk(0, MARKER.len(), 90)).await;
    assert!(
        code == 0 && out.contains(MARKER),
        "{work} cannot read the disk through {usb}: {out}\n{}",
        d.log()
    );
    // In the usb VM the device is usbip-host's (exported onwards), not a disk of its own.
    let (_, out) = root_sh(
        &p,
        &usb,
        "ls /sys/bus/usb/drivers/usbip-host/; echo BLOCK; ls /sys/block",
    )
    .await;
    let (stub, block) = out.split_once("BLOCK").unwrap_or((&out, ""));
    assert!(
        stub.split_whitespace()
            .any(|e| e.contains('-') && !e.contains(':')),
        "nothing bound to usbip-host in {usb}: {out}"
    );
    assert!(
        !block.split_whitespace().any(|b| b.starts_with("sd")),
        "{usb} has the disk as its own: {out}"
    );

    // Detach undoes both hops.
    p.usb_detach(&disk).await.expect("detach");
    wait_gone(&p, &work, "after the detach").await;
    assert_ne!(dom0_driver(&disk), "usbip-host", "dom0 still exports it");
    // The usb VM's agent unplugs it once its streams ended (after the detach returned).
    let t0 = Instant::now();
    let mut out = String::new();
    while t0.elapsed() < Duration::from_secs(60) {
        out = root_sh(&p, &usb, "cat /sys/devices/platform/vhci_hcd.0/status*")
            .await
            .1;
        if !vhci_in_use(&out) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if vhci_in_use(&out) {
        panic!(
            "{usb} still has it plugged in: {out}\n{usb}'s console:\n{}\n{}",
            bulkhead_testkit::domain_log(&p, &usb).await,
            d.log()
        );
    }

    // The usb VM's end takes the device from work and gives it back to dom0.
    p.usb_attach(&disk, &work).await.expect("attach again");
    let (code, out) = root_sh(&p, &work, &read_disk(0, MARKER.len(), 90)).await;
    assert!(code == 0 && out.contains(MARKER), "{out}");
    p.kill(&usb).await.expect("kill the usb VM");
    wait_gone(&p, &work, "after the usb VM's end").await;
    assert_eq!(attached_to(&p, &disk).await, "");
    let t0 = Instant::now();
    while dom0_driver(&disk) == "usbip-host" && t0.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_ne!(dom0_driver(&disk), "usbip-host", "{}", d.log());
    let _ = p.kill(&work).await;
}

/// `sh -c script` as root in `domain`: (exit code, stdout + stderr).
async fn root_sh(p: &Domaind1Proxy<'_>, domain: &str, script: &str) -> (i32, String) {
    bulkhead_testkit::run_sh_as(p, domain, "root", script).await
}

/// The bus id of the device whose product string is `product` (from `usb list`).
async fn busid_of(p: &Domaind1Proxy<'_>, product: &str) -> String {
    let rows = p.usb_list().await.expect("UsbList");
    rows.iter()
        .find(|r| r.3 == product)
        .unwrap_or_else(|| panic!("no {product:?} in usb list: {rows:?}"))
        .0
        .clone()
}

/// Where `usb list` says `busid` is attached ("" when it is not).
async fn attached_to(p: &Domaind1Proxy<'_>, busid: &str) -> String {
    let rows = p.usb_list().await.expect("UsbList");
    let row = rows
        .iter()
        .find(|r| r.0 == busid)
        .unwrap_or_else(|| panic!("{busid} not in usb list: {rows:?}"));
    row.5
        .split_once(", attached to ")
        .map(|(_, d)| d.to_owned())
        .unwrap_or_default()
}

/// The driver dom0's kernel has bound to `busid`.
fn dom0_driver(busid: &str) -> String {
    std::fs::read_link(format!("/sys/bus/usb/devices/{busid}/driver"))
        .ok()
        .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

/// A shell loop in the VM that waits up to `secs` for a USB disk (`sd*`) and prints the
/// first `len` bytes at `offset` of it.
fn read_disk(offset: u64, len: usize, secs: u32) -> String {
    format!(
        "i=0; while [ $i -lt {secs} ]; do for b in /sys/block/sd*; do [ -e \"$b\" ] && d=/dev/${{b##*/}} && \
         dd if=$d bs=1 skip={offset} count={len} 2>/dev/null && exit 0; done; i=$((i+1)); sleep 1; done; \
         echo NO-USB-DISK; ls /sys/block; exit 1"
    )
}

async fn wait_gone(p: &Domaind1Proxy<'_>, vm: &str, what: &str) {
    let t0 = Instant::now();
    loop {
        let (_, out) = root_sh(p, vm, "ls /sys/block").await;
        if !out.split_whitespace().any(|b| b.starts_with("sd")) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{what}: {vm} still has a USB disk: {out}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Seconds to read `mib` MiB from the first `sd*` disk in `vm` (or in dom0 when `vm` is None).
async fn read_speed(p: &Domaind1Proxy<'_>, vm: Option<&str>, dev: &str, mib: u64) -> f64 {
    let script = format!(
        "s=$(date +%s%N); dd if={dev} of=/dev/null bs=1M count={mib} iflag=direct 2>/dev/null; e=$(date +%s%N); echo $(( (e-s)/1000000 ))"
    );
    let out = match vm {
        Some(vm) => root_sh(p, vm, &script).await.1,
        None => String::from_utf8_lossy(
            &Command::new("sh")
                .args(["-c", &script])
                .output()
                .expect("sh")
                .stdout,
        )
        .into_owned(),
    };
    out.trim().parse::<f64>().unwrap_or(f64::NAN) / 1000.0
}

/// The event device of the keyboard in `vm` (`/dev/input/eventN`), waiting up to 60 s.
async fn kbd_event_dev(p: &Domaind1Proxy<'_>, vm: &str) -> Option<String> {
    let script = format!(
        "i=0; while [ $i -lt 60 ]; do for e in /sys/class/input/event*; do \
         [ -e \"$e/device/name\" ] && grep -q \"{KBD_PRODUCT}\" \"$e/device/name\" && echo /dev/input/${{e##*/}} && exit 0; \
         done; i=$((i+1)); sleep 1; done; exit 1"
    );
    let (code, out) = root_sh(p, vm, &script).await;
    (code == 0).then(|| out.trim().to_owned())
}

/// Types `a` on the emulated keyboard through QEMU's monitor.
fn sendkey() {
    let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/nested-monitor");
    // QEMU's main loop answers the monitor; under load (TCG threads, nested guests) that can
    // take a while.
    let out = Command::new(&helper)
        .args(["sendkey", "a"])
        .env("BULKHEAD_NESTED_MONITOR_TIMEOUT", "60")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", helper.display()));
    assert!(
        out.status.success(),
        "nested-monitor sendkey: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reads input events in `vm` for a few seconds while keys are typed; true when KEY_A
/// (code 30) came.
async fn vm_sees_key(p: &Domaind1Proxy<'_>, vm: &str, dev: &str) -> bool {
    // od prints each 24-byte event; type (EV_KEY = 1) and code (30) are at bytes 16..20.
    let script = format!(
        "timeout 60 head -c 72 {dev} > /tmp/ev 2>/dev/null & sleep 3; echo ready; wait; od -An -v -tx1 -w24 /tmp/ev"
    );
    let reader = root_sh(p, vm, &script);
    let typer = async {
        tokio::time::sleep(Duration::from_secs(6)).await;
        tokio::task::spawn_blocking(sendkey).await.expect("sendkey");
    };
    let ((_, out), ()) = tokio::join!(reader, typer);
    out.lines().any(|l| {
        let b: Vec<&str> = l.split_whitespace().collect();
        b.len() == 24 && b[16] == "01" && b[17] == "00" && b[18] == "1e" && b[19] == "00"
    })
}

async fn scenario(cache: PathBuf) {
    let pre = format!("vu{}-", std::process::id() % 100_000);
    // One VM (each L2 guest costs the emulator, which fails now and then under them), and a
    // sandbox as the other receiving domain.
    let (usb, work, sbx) = (
        format!("{pre}usb"),
        format!("{pre}work"),
        format!("{pre}sbx"),
    );
    let env = Debian12Env::start(DomaindOptions {
        binary: Some(env!("CARGO_BIN_EXE_domaind").into()),
        env: vec![("BULKHEAD_USB_DOMAIN".into(), usb.clone())],
        ..DomaindOptions::debian12(cache)
    })
    .await;
    let (mut d, p) = (env.d, env.p);

    let disk = busid_of(&p, DISK_PRODUCT).await;
    let kbd = busid_of(&p, KBD_PRODUCT).await;
    println!("the disk is {disk}, the keyboard {kbd}");
    let policy = d.paths.config_dir.join("policy.d");
    std::fs::create_dir_all(&policy).expect("policy dir");
    std::fs::write(
        policy.join("30-usb.policy"),
        format!(
            "bulkhead.usb.Attach  +{disk}  {work}   {usb}  allow\n\
             bulkhead.usb.Attach  +{disk}  {sbx}    {usb}  allow\n\
             bulkhead.usb.Attach  +{kbd}   {work}   {usb}  allow\n\
             bulkhead.usb.Attach  +{kbd}   @adminvm {usb} allow\n\
             bulkhead.usb.Attach  *        @anyvm   @anyvm deny\n"
        ),
    )
    .expect("policy");

    // The direct read in L1, for the figure, before anything is exported.
    let direct = {
        let out = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "modprobe usb_storage && modprobe sd_mod && for i in $(seq 30); do \
                     for b in /sys/bus/usb/devices/{disk}/*/host*/target*/*/block/sd*; do [ -e \"$b\" ] && echo /dev/${{b##*/}} && exit 0; done; sleep 1; done; exit 1"
                ),
            ])
            .output()
            .expect("sh");
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            out.status.success(),
            "the USB disk did not show up in L1: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        read_speed(&p, None, &dev, 32).await
    };

    // The usb domain: a sandbox (L1's kernel holds the devices) on a mini template.
    let tmpl = format!("{pre}tmpl");
    d.mini_template(&tmpl).expect("mini template");
    let none = HashMap::new();
    p.create(&tmpl, "template", "", "black", none.clone())
        .await
        .expect("register the mini template");
    p.create(&usb, "service", &tmpl, "red", none.clone())
        .await
        .expect("create usb");
    p.create(&sbx, "app", &tmpl, "yellow", none.clone())
        .await
        .expect("create a sandbox");
    let props = HashMap::from([("isolation", "vm"), ("memory", "640"), ("vcpus", "1")]);
    p.create(&work, "app", "debian-12", "green", props)
        .await
        .expect("create a VM");
    // Not yet: both domains must run.
    let e = p.usb_attach(&disk, &work).await.unwrap_err();
    assert!(
        matches!(&e, Error::InvalidState(m) if m.contains("start it first")),
        "{e:?}"
    );
    p.start(&usb).await.expect("start usb");
    p.start(&sbx).await.expect("start the sandbox");
    let t0 = Instant::now();
    if let Err(e) = p.start(&work).await {
        panic!(
            "start {work}: {e}\n{}\n{}",
            bulkhead_testkit::domain_log(&p, &work).await,
            d.log()
        );
    }
    println!("{work} started in {:?}", t0.elapsed());

    // The disk goes to work: readable there, and nowhere else.
    let t0 = Instant::now();
    if let Err(e) = p.usb_attach(&disk, &work).await {
        panic!(
            "attach {disk} to {work}: {e}\nconsole:\n{}\ndomaind:\n{}",
            bulkhead_testkit::domain_log(&p, &work).await,
            d.log()
        );
    }
    assert_eq!(attached_to(&p, &disk).await, work.as_str());
    assert_eq!(dom0_driver(&disk), "usbip-host");
    let (code, out) = root_sh(&p, &work, &read_disk(0, MARKER.len(), 90)).await;
    assert!(
        code == 0 && out.contains(MARKER),
        "{work} cannot read the disk: {out}\n{}\n{}",
        bulkhead_testkit::domain_log(&p, &work).await,
        d.log()
    );
    println!("{work} read the disk {:?} after the attach", t0.elapsed());
    let (_, out) = bulkhead_testkit::run_sh(&p, &sbx, "ls /dev").await;
    assert!(!out.contains("sd"), "{sbx} sees a disk: {out}");
    let dom0_disks = || -> Vec<String> {
        std::fs::read_dir("/sys/block")
            .expect("/sys/block")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("sd"))
            .collect()
    };
    let t0 = Instant::now();
    while !dom0_disks().is_empty() && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(dom0_disks().is_empty(), "dom0 still has {:?}", dom0_disks());
    // One domain at a time; the policy decides.
    let e = p.usb_attach(&disk, &sbx).await.unwrap_err();
    assert!(
        matches!(&e, Error::InvalidState(m) if m.contains(&format!("attached to {work}"))),
        "{e:?}"
    );
    let e = p.usb_attach(&kbd, &sbx).await.unwrap_err();
    assert!(matches!(e, Error::AccessDenied(_)), "{e:?}");

    // The figure: the same 32 MiB over our path.
    let (_, dev) = root_sh(&p, &work, "ls /sys/block | grep ^sd | head -n1").await;
    let ours = read_speed(&p, Some(&work), &format!("/dev/{}", dev.trim()), 32).await;
    println!(
        "USB BENCH disk read 32 MiB: in {work} over usbip {ours:.2} s ({:.1} MiB/s); directly in L1 {direct:.2} s ({:.1} MiB/s); ratio {:.2}",
        32.0 / ours,
        32.0 / direct,
        ours / direct
    );

    // work writes; detach; the disk is gone from work and back with dom0's drivers.
    let (code, out) = root_sh(
        &p,
        &work,
        &format!(
            "d=/dev/$(ls /sys/block | grep ^sd | head -n1); printf %s {WRITTEN} | dd of=$d bs=1 seek=1048576 conv=notrunc,fsync 2>&1"
        ),
    )
    .await;
    assert_eq!(code, 0, "write in {work}: {out}");
    p.usb_detach(&disk).await.expect("detach");
    assert_eq!(attached_to(&p, &disk).await, "");
    wait_gone(&p, &work, "after the detach").await;
    assert_ne!(dom0_driver(&disk), "usbip-host", "still exported");
    // Storage never goes to dom0.
    let e = p.usb_attach(&disk, "dom0").await.unwrap_err();
    assert!(
        matches!(&e, Error::AccessDenied(m) if m.contains("only keyboards and mice")),
        "{e:?}"
    );

    // Attached to the sandbox (which shares dom0's kernel: the disk is plugged in there and
    // its node handed to the sandbox alone, for its user): it reads what work wrote.
    p.usb_attach(&disk, &sbx)
        .await
        .expect("attach to the sandbox");
    let (code, out) = bulkhead_testkit::run_sh(
        &p,
        &sbx,
        &format!(
            "i=0; while [ $i -lt 60 ]; do for d in /dev/sd*; do [ -e \"$d\" ] && {{ head -c {m}; echo; head -c {skip} >/dev/null; head -c {w}; }} < $d && exit 0; done; i=$((i+1)); sleep 1; done; ls -l /dev; exit 1",
            m = MARKER.len(),
            skip = (1 << 20) - MARKER.len(),
            w = WRITTEN.len()
        ),
    )
    .await;
    assert!(
        code == 0 && out.contains(MARKER) && out.contains(WRITTEN),
        "{sbx} cannot read the disk, or not what {work} wrote: {out}\n{}",
        d.log()
    );
    let node = std::fs::read_dir("/sys/block")
        .expect("/sys/block")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("sd"))
        .expect("the disk's node in dom0");
    let meta = std::fs::metadata(format!("/dev/{node}")).expect("stat the node");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.mode() & 0o777, 0o600, "dom0's node is not private");
    assert_ne!(meta.uid(), 0, "dom0's node still belongs to root");
    let (_, out) = bulkhead_testkit::run_sh(&p, &usb, "ls /dev").await;
    assert!(!out.contains("sd"), "the usb domain sees the disk: {out}");
    // The sandbox shuts down: the disk comes back.
    p.shutdown(&sbx, 30).await.expect("shutdown the sandbox");
    assert_eq!(attached_to(&p, &disk).await, "");
    let t0 = Instant::now();
    while dom0_driver(&disk) == "usbip-host" && t0.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_ne!(dom0_driver(&disk), "usbip-host");

    // The keyboard goes to work: its keys reach work only.
    p.usb_attach(&kbd, &work)
        .await
        .expect("attach the keyboard");
    let Some(dev) = kbd_event_dev(&p, &work).await else {
        panic!(
            "no keyboard in {work}\n{}",
            bulkhead_testkit::domain_log(&p, &work).await
        );
    };
    assert!(
        vm_sees_key(&p, &work, &dev).await,
        "{work} did not get the key"
    );
    assert!(
        !Path::new(&format!("/sys/bus/usb/devices/{kbd}/{kbd}:1.0/driver")).exists(),
        "dom0 drives the keyboard's interface while work has it"
    );

    // domaind killed with the keyboard attached: the new one gives it back, and work's kernel
    // has unplugged it.
    d.kill9();
    d.restart().await.expect("restart domaind");
    let (_c, p) = d.client().await.expect("client");
    assert_eq!(attached_to(&p, &kbd).await, "");
    assert_ne!(dom0_driver(&kbd), "usbip-host", "{}", d.log());
    let (_, out) = root_sh(&p, &work, "cat /sys/class/input/event*/device/name").await;
    let t0 = Instant::now();
    let mut out = out;
    while out.contains(KBD_PRODUCT) && t0.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        out = root_sh(&p, &work, "cat /sys/class/input/event*/device/name")
            .await
            .1;
    }
    assert!(
        !out.contains(KBD_PRODUCT),
        "{work} still has the keyboard: {out}"
    );

    // The keyboard for dom0: through the input proxy. First the figure without it: dom0
    // reading the keyboard's own node.
    let t_direct = {
        let modprobe = Command::new("modprobe")
            .args(["-a", "usbhid", "hid_generic", "evdev"])
            .status();
        assert!(modprobe.is_ok_and(|s| s.success()), "modprobe usbhid");
        // HID names an input device "<manufacturer> <product>" ("QEMU QEMU USB Keyboard").
        let raw =
            wait_for_node(|name| name.contains(KBD_PRODUCT) && !name.starts_with("bulkhead:"))
                .expect("the keyboard's node in dom0");
        dom0_key_latency(&raw).expect("dom0 reads the key from the keyboard itself")
    };
    p.usb_attach(&kbd, "dom0")
        .await
        .unwrap_or_else(|e| panic!("attach the keyboard to dom0: {e}\n{}", d.log()));
    assert_eq!(attached_to(&p, &kbd).await, "dom0");
    let is_proxied = |name: &str| {
        name.starts_with("bulkhead: ")
            && name.contains(KBD_PRODUCT)
            && name.ends_with(&format!("(from {usb})"))
    };
    let proxied = wait_for_node(is_proxied)
        .unwrap_or_else(|| panic!("no uinput device for the keyboard in dom0\n{}", d.log()));
    let raw = wait_for_node(|name| name.contains(KBD_PRODUCT) && !name.starts_with("bulkhead:"))
        .expect("the keyboard's node");
    // The usb domain holds the keyboard's own node grabbed: dom0 reads nothing there.
    let raw_reader = std::thread::spawn(move || read_events(&raw, Duration::from_secs(20)));
    let t_proxied =
        dom0_key_latency(&proxied).expect("the proxied key reaches dom0's uinput device");
    let raw_got = raw_reader.join().expect("raw reader");
    assert!(
        raw_got.is_empty(),
        "dom0 read {} raw events from the grabbed keyboard",
        raw_got.len()
    );
    println!(
        "INPUT BENCH key press to dom0 (QEMU monitor sendkey included): through the input proxy {:.0} ms, from the keyboard's own node {:.0} ms, ratio {:.2}",
        t_proxied.as_secs_f64() * 1000.0,
        t_direct.as_secs_f64() * 1000.0,
        t_proxied.as_secs_f64() / t_direct.as_secs_f64()
    );
    p.usb_detach(&kbd)
        .await
        .expect("detach the keyboard from dom0");
    assert!(
        wait_gone_node(is_proxied),
        "the uinput device is still there after the detach"
    );

    let _ = p.kill(&work).await;
    let _ = p.kill(&usb).await;
}

/// The event node (`/dev/input/eventN`) of the input device whose name passes `want`, waiting
/// up to 30 s.
fn wait_for_node(want: impl Fn(&str) -> bool) -> Option<PathBuf> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        for e in std::fs::read_dir("/sys/class/input").ok()?.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if !n.starts_with("event") {
                continue;
            }
            let name = std::fs::read_to_string(e.path().join("device/name")).unwrap_or_default();
            if want(name.trim()) {
                return Some(PathBuf::from("/dev/input").join(n));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

fn wait_gone_node(want: impl Fn(&str) -> bool) -> bool {
    let present = || {
        std::fs::read_dir("/sys/class/input").is_ok_and(|d| {
            d.flatten().any(|e| {
                std::fs::read_to_string(e.path().join("device/name")).is_ok_and(|n| want(n.trim()))
            })
        })
    };
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20) {
        if !present() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// The (type, code, value) events read from `node` within `limit` (stops at a KEY_A press).
fn read_events(node: &Path, limit: Duration) -> Vec<(u16, u16, i32)> {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(node)
    else {
        return Vec::new();
    };
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 24];
    while t0.elapsed() < limit {
        match f.read(&mut buf) {
            Ok(24) => {
                let t = u16::from_le_bytes([buf[16], buf[17]]);
                let c = u16::from_le_bytes([buf[18], buf[19]]);
                let v = i32::from_le_bytes([buf[20], buf[21], buf[22], buf[23]]);
                out.push((t, c, v));
                if (t, c, v) == (1, 30, 1) {
                    break;
                }
            }
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    out
}

/// Types `a` and measures until dom0 reads the press on `node`.
fn dom0_key_latency(node: &Path) -> Option<Duration> {
    let node = node.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let _ = tx.send(());
        let got = read_events(&node, Duration::from_secs(60));
        (got.contains(&(1, 30, 1)), Instant::now())
    });
    let _ = rx.recv();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    sendkey();
    let (ok, at) = reader.join().ok()?;
    ok.then(|| at.saturating_duration_since(t0))
}
