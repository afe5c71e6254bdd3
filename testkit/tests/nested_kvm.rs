//! `scripts/nested-kvm.sh` itself, with real L1s: the command's exit status comes back, and an
//! L1 whose kernel reports a CPU locked up for two minutes is stopped at once with exit 123 (so
//! that the harness runs the test again) instead of at the timeout; an emulated USB disk is
//! read and written from L1, and keys typed on an emulated USB keyboard through QEMU's monitor
//! (driven from inside L1) come out of its evdev device. Each case boots an L1 (about 10-20 s
//! here).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/nested-kvm.sh")
}

/// Whether this host can boot an L1 (root, QEMU); prints the skip reason if not.
fn can_run() -> bool {
    if !nix::unistd::geteuid().is_root() {
        bulkhead_test_skip::skip("nested-kvm.sh runs as root");
        return false;
    }
    let qemu = Command::new("qemu-system-x86_64").arg("--version").output();
    if !qemu.is_ok_and(|o| o.status.success()) {
        bulkhead_test_skip::skip("no qemu-system-x86_64 (scripts/install-deps.sh installs it)");
        return false;
    }
    true
}

fn nested(timeout_s: u32, shell: &str) -> Output {
    nested_with(&[], timeout_s, shell)
}

/// `nested-kvm.sh OPTIONS --timeout T -- sh -c SHELL`.
fn nested_with(options: &[&str], timeout_s: u32, shell: &str) -> Output {
    Command::new(script())
        .args(options)
        .args(["--timeout", &timeout_s.to_string(), "--", "sh", "-c", shell])
        .output()
        .expect("run nested-kvm.sh")
}

fn said(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_commands_output_and_exit_status_come_back() {
    if !can_run() {
        return;
    }
    let out = nested(300, "echo from-l1; exit 7");
    assert_eq!(out.status.code(), Some(7), "{}", said(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("from-l1"),
        "{}",
        said(&out)
    );
}

#[test]
fn an_l1_that_locks_up_is_stopped_at_once_with_123() {
    if !can_run() {
        return;
    }
    // What L1's kernel prints when a CPU is stuck (as seen with two L2 guests), then a command
    // that would run for 250 s more.
    let lockup = "[  130.0] watchdog: BUG: soft lockup - CPU#1 stuck for 130s! [vcpu0:1]";
    let out = nested(
        600,
        &format!("echo '{lockup}' >/dev/ttyS0; sleep 250; echo not stopped"),
    );
    assert_eq!(out.status.code(), Some(123), "{}", said(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("L1 locked up"), "{}", said(&out));
    assert!(
        err.contains(lockup),
        "L1's console is shown: {}",
        said(&out)
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("not stopped"),
        "{}",
        said(&out)
    );
}

#[test]
fn a_short_lockup_report_is_not_a_lockup() {
    if !can_run() {
        return;
    }
    // Soft-lockup reports start at about 22 s; under TCG a busy L1 can print one and recover.
    let out = nested(
        300,
        "echo '[ 30.0] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [x:1]' >/dev/ttyS0; sleep 8; exit 0",
    );
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
}

/// A 1 MiB disk image: a marker at offset 0, then a pattern.
const USB_MARKER: &[u8] = b"BULKHEAD-USB-DISK-MARKER-7f3a";
const USB_WRITE_AT: usize = 1000 * 512;
const USB_WRITTEN: &[u8] = b"WRITTEN-BY-L1-c41d";

fn usb_disk_image() -> Vec<u8> {
    let mut image: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    image[..USB_MARKER.len()].copy_from_slice(USB_MARKER);
    image
}

#[test]
fn a_usb_disk_is_read_and_written_from_l1() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let disk = dir.path().join("usb.img");
    let image = usb_disk_image();
    std::fs::write(&disk, &image).expect("write the disk image");
    let marker = String::from_utf8_lossy(USB_MARKER);
    let written = String::from_utf8_lossy(USB_WRITTEN);
    // The sdX whose USB device (an ancestor in sysfs) has the disk's serial; its first block;
    // then one block written at USB_WRITE_AT, straight to the device.
    let shell = format!(
        r#"set -e
[ "$BULKHEAD_NESTED_USB" = 1 ] || {{ echo "no BULKHEAD_NESTED_USB"; exit 3; }}
modprobe -a usb_storage sd_mod
dev=
for i in $(seq 100); do
    for b in /sys/block/sd*; do
        [ -e "$b/device" ] || continue
        d=$(readlink -f "$b/device")
        while [ "$d" != / ] && [ ! -f "$d/serial" ]; do d=$(dirname "$d"); done
        [ "$(cat "$d/serial" 2>/dev/null)" = bh-usb-disk-1 ] && dev=/dev/${{b##*/}}
    done
    [ -n "$dev" ] && [ -b "$dev" ] && break
    sleep 0.2
done
[ -n "$dev" ] || {{ echo "no sd device with serial bh-usb-disk-1"; ls -l /sys/block; exit 4; }}
echo "disk: $dev on $(basename "$(dirname "$d")")/$(basename "$d")"
echo "first block: $(dd if="$dev" bs=512 count=1 iflag=direct 2>/dev/null | head -c 64 | tr -c 'A-Za-z0-9-' .)"
{{ printf '%s' '{written}'; head -c $((512 - {len})) /dev/zero; }} |
    dd of="$dev" bs=512 seek={seek} count=1 iflag=fullblock oflag=direct conv=fsync 2>/dev/null
echo wrote
"#,
        len = USB_WRITTEN.len(),
        seek = USB_WRITE_AT / 512,
    );
    let started = std::time::Instant::now();
    let out = nested_with(&["--usb-disk", disk.to_str().unwrap()], 300, &shell);
    eprintln!("L1 with a USB disk: {:?}", started.elapsed());
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("disk: /dev/sd") && stdout.contains("on usb2/2-1"),
        "the disk is 2-1 on L1's USB3 bus: {}",
        said(&out)
    );
    assert!(
        stdout.contains(&format!("first block: {marker}")),
        "{}",
        said(&out)
    );
    assert!(stdout.contains("wrote"), "{}", said(&out));
    let after = std::fs::read(&disk).expect("read the disk image back");
    assert_eq!(after.len(), image.len());
    let mut expected = image.clone();
    expected[USB_WRITE_AT..USB_WRITE_AT + 512].fill(0);
    expected[USB_WRITE_AT..USB_WRITE_AT + USB_WRITTEN.len()].copy_from_slice(USB_WRITTEN);
    assert!(
        after == expected,
        "the block L1 wrote is in the file, and nothing else changed: {}",
        said(&out)
    );
}

#[test]
fn a_key_sent_through_the_monitor_comes_out_of_the_usb_keyboard() {
    if !can_run() {
        return;
    }
    let monitor = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/nested-monitor");
    // The keyboard's event device (under its USB device, 1-5), a reader on it, `sendkey a`
    // through the monitor, then what was read as input_event records (24 bytes on x86_64).
    let shell = format!(
        r#"set -e
[ "$BULKHEAD_NESTED_MONITOR" = /dev/ttyS2 ] || {{ echo "no BULKHEAD_NESTED_MONITOR"; exit 3; }}
modprobe -a usbhid hid_generic evdev
ev=
for i in $(seq 100); do
    ev=$(find /sys/bus/usb/devices/1-5/ -name 'event[0-9]*' | head -n 1)
    [ -n "$ev" ] && [ -c "/dev/input/${{ev##*/}}" ] && break
    sleep 0.2
done
[ -n "$ev" ] || {{ echo "no event device under the keyboard 1-5"; exit 4; }}
ev=/dev/input/${{ev##*/}}
echo "keyboard: $ev ($(cat /sys/class/input/${{ev##*/}}/device/name))"
timeout 20 cat "$ev" >/tmp/ev &
reader=$!
sleep 1
{monitor} sendkey a
echo sent
sleep 3
kill "$reader" 2>/dev/null || true
wait "$reader" || true
echo events:
od -An -v -tx1 -w24 /tmp/ev
echo info usb:
{monitor} info usb
"#,
        monitor = monitor.display(),
    );
    let started = std::time::Instant::now();
    let out = nested_with(&["--usb-kbd", "--monitor"], 300, &shell);
    eprintln!(
        "L1 with a USB keyboard and the monitor: {:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("sent"), "{}", said(&out));
    // EV_KEY (1), KEY_A (30), value 1 (pressed): the last 8 bytes of an input_event.
    let pressed = stdout.lines().any(|line| {
        let bytes: Vec<&str> = line.split_whitespace().collect();
        bytes.len() == 24 && bytes[16..] == ["01", "00", "1e", "00", "01", "00", "00", "00"]
    });
    assert!(pressed, "an EV_KEY KEY_A press was read: {}", said(&out));
    assert!(
        stdout.contains("Product QEMU USB Keyboard"),
        "the monitor's reply to info usb comes back: {}",
        said(&out)
    );
}
