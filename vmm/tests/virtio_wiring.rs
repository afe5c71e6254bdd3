//! The spec's virtio devices appear at their windows, in spec order, on the command line and
//! in the DSDT.

mod common;

use common::*;

struct Tap(String);
impl Drop for Tap {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["tuntap", "del", "dev", &self.0, "mode", "tap"])
            .status();
    }
}

#[test]
fn every_device_is_discoverable_in_spec_order() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut spec = guest_spec(&build_guest("virtio_discovery"), dir.path());
    for (i, ro) in [(0, false), (1, true)] {
        let p = dir.path().join(format!("disk{i}.img"));
        std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
        spec.disks.push(DiskSpec {
            path: p,
            read_only: ro,
        });
    }
    spec.vsock = Some(VsockSpec {
        guest_cid: 3,
        uds_path: dir.path().join("vsock.sock"),
    });
    let tap_name = format!("bhvt{}", std::process::id() % 100000);
    let tap = std::process::Command::new("ip")
        .args(["tuntap", "add", "dev", &tap_name, "mode", "tap"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
        .then(|| Tap(tap_name.clone()));
    if tap.is_some() {
        spec.nets = vec![NetSpec {
            tap: tap_name.clone(),
            mac: [0x02, 0, 0, 0, 0, 1],
            fd: None,
        }];
    } else {
        eprintln!("note: cannot create a tap with `ip tuntap`; net device not checked");
    }
    spec.rng = true;
    let out = run_guest(spec);
    out.assert_passed();

    // virtio device ids: block 2, vsock 19, net 1, rng 4.
    let mut want = vec![(0, 2), (1, 2), (2, 19)];
    if tap.is_some() {
        want.push((3, 1));
    }
    want.push((want.len(), 4));
    let got: Vec<(usize, u32)> = out
        .lines_with("VIRTIO ")
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f[2], "2", "virtio-mmio version 2 expected: {l}");
            (f[0].parse().unwrap(), f[4].parse().unwrap())
        })
        .collect();
    assert_eq!(got, want, "{}", out.serial);
    assert_eq!(out.lines_with("DSDT VIRTIO "), vec![want.len().to_string()]);
    let cmdline = &out.lines_with("CMDLINE ")[0];
    for (i, _) in &want {
        let entry = format!(
            "virtio_mmio.device=4K@0x{:x}:{}",
            0xd000_0000u64 + *i as u64 * 0x1000,
            5 + i
        );
        assert!(cmdline.contains(&entry), "{entry} missing from {cmdline}");
    }
    // The vsock device listens on its socket while the VM runs; the VM is gone now.
    assert!(dir.path().join("vsock.sock").exists());
}

#[test]
fn a_missing_disk_is_an_error_naming_it() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut spec = guest_spec(&build_guest("hello"), dir.path());
    spec.disks.push(DiskSpec {
        path: dir.path().join("absent.img"),
        read_only: true,
    });
    let out = run_guest(spec);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("absent.img"), "{}", out.stderr);
}

#[test]
fn rng_request_through_ioeventfd_and_interrupt_through_irqfd_and_ioapic() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut spec = guest_spec(&build_guest("virtio_rng_irq"), dir.path());
    spec.rng = true;
    let out = run_guest(spec);
    out.assert_passed();
    assert_eq!(out.lines_with("USED LEN "), vec!["64"], "{}", out.serial);
}
