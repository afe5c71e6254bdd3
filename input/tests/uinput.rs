//! The real evdev and uinput paths: a uinput device made from a Hello, read back through its
//! evdev node by the grabbing reader; the caps policy as the kernel sees it; `forward` end to
//! end with a mouse, up to a violation that destroys the device.
//!
//! Needs `/dev/uinput` and evdev. Where they cannot be had (our build machines: no uinput
//! module), the test runs itself inside an L1 Debian kernel through `scripts/nested-kvm.sh`
//! (`--smp 1 --mem 1024`, one L1 run; once more if L1 itself ended, exit 123), and skips when
//! no L1 can be set up (exit 125).

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bulkhead_input::evdev::{read_abs_bits, read_caps, read_name, EvdevReader};
use bulkhead_input::proto::*;
use bulkhead_input::uinput::{device_name, event_node_of, UinputDevice, UINPUT_PATH};
use bulkhead_input::{forward_with, ForwardError};
use tokio::io::AsyncWriteExt;

const ENV_IN_L1: &str = "BULKHEAD_TEST_IN_L1";
const NESTED_L1_ENDED: i32 = 123;
const NESTED_SETUP_FAILED: i32 = 125;

fn uinput_opens() -> bool {
    OpenOptions::new().write(true).open(UINPUT_PATH).is_ok()
}

fn modprobe(modules: &[&str]) {
    let _ = Command::new("modprobe")
        .arg("-a")
        .args(modules)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// True: run the body here. False: it ran (and passed) inside L1, or was skipped.
fn here_or_in_l1(test: &str) -> bool {
    modprobe(&["uinput", "evdev"]);
    if uinput_opens() {
        return true;
    }
    if std::env::var_os(ENV_IN_L1).is_some() {
        panic!("inside L1 and still cannot open {UINPUT_PATH}");
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/nested-kvm.sh");
    if !script.exists() {
        bulkhead_test_skip::skip(format!("no {UINPUT_PATH} here and no {}", script.display()));
        return false;
    }
    let exe = std::env::current_exe().expect("current_exe");
    println!("no {UINPUT_PATH} here; running {test} inside L1");
    let run = || {
        let started = Instant::now();
        let out = Command::new(&script)
            .args(["--smp", "1", "--mem", "1024", "--timeout", "900", "--"])
            .arg(&exe)
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(ENV_IN_L1, "1")
            .stdin(Stdio::null())
            .output()
            .expect("run nested-kvm.sh");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        println!(
            "---- {test} inside L1 ({:.0?}) ----\n{text}---- end of L1 output ----\n{}",
            started.elapsed(),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status, text)
    };
    let (mut status, mut text) = run();
    if status.code() == Some(NESTED_L1_ENDED) {
        eprintln!("L1 RESET {test}: L1 ended before the test did; once more in a new L1");
        (status, text) = run();
    }
    if status.code() == Some(NESTED_SETUP_FAILED) {
        bulkhead_test_skip::skip("no uinput here and no L1 could be set up (see above)");
        return false;
    }
    assert!(
        status.success(),
        "{test} failed inside L1 ({status}); output above"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("SKIP")),
        "{test} skipped inside L1"
    );
    assert!(
        text.contains("test result: ok. 1 passed"),
        "{test} did not run inside L1"
    );
    false
}

/// Polls `f` for up to 5 s.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn node_of(sys: &Path) -> PathBuf {
    wait_for("the event node", || {
        event_node_of(sys).filter(|n| n.exists())
    })
}

fn keyboard_hello() -> Hello {
    Hello {
        name: "Test Keyboard A".into(),
        kind: Kind::Keyboard,
        caps: Caps {
            types: [EV_SYN, EV_KEY, EV_MSC, EV_ABS, EV_LED]
                .into_iter()
                .collect(),
            keys: (0..=KEY_MAX).collect(),
            rels: RelSet::default(),
        },
    }
}

fn mouse_hello() -> Hello {
    Hello {
        name: "Test Mouse B".into(),
        kind: Kind::Mouse,
        caps: Caps {
            types: [EV_SYN, EV_KEY, EV_REL, EV_ABS].into_iter().collect(),
            keys: [BTN_LEFT, BTN_LEFT + 1, KEY_SYSRQ].into_iter().collect(),
            rels: [REL_X, REL_Y, REL_WHEEL, 7].into_iter().collect(),
        },
    }
}

fn ev(t: u16, c: u16, v: i32) -> Event {
    Event::new(t, c, v)
}

fn nothing_to_read(f: &mut File) {
    let mut buf = [0u8; 256];
    match f.read(&mut buf) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("a second reader of a grabbed device got {other:?}"),
    }
}

#[test]
fn uinput_and_evdev() {
    if !here_or_in_l1("uinput_and_evdev") {
        return;
    }
    let started = Instant::now();
    keyboard_through_uinput_and_evdev();
    mouse_through_forward();
    println!("uinput_and_evdev body took {:.1?}", started.elapsed());
}

fn keyboard_through_uinput_and_evdev() {
    let hello = keyboard_hello();
    let mut validator = Validator::new(&hello, Limits::default());
    let caps = validator.caps().clone();
    let dev = UinputDevice::create(&caps, &hello.name, "work").expect("create uinput device");
    assert_eq!(dev.name(), "bulkhead: Test Keyboard A (from work)");
    assert!(dev.sysname().starts_with("input"), "{}", dev.sysname());
    let sys = dev.sys_path();
    let node = node_of(&sys);

    // What the kernel says the device has: the restricted caps, no SysRq, no EV_ABS.
    {
        let f = File::open(&node).expect("open event node");
        let got = read_caps(&f).expect("EVIOCGBIT");
        assert_eq!(got, caps);
        assert!(!got.keys.contains(KEY_SYSRQ));
        assert!(!got.types.contains(EV_ABS));
        assert!(!got.types.contains(EV_MSC));
        assert_eq!(read_abs_bits(&f).expect("EVIOCGBIT(EV_ABS)"), 0);
        assert_eq!(
            read_name(&f).expect("EVIOCGNAME"),
            device_name(&hello.name, "work").as_bytes()
        );
        let bus = std::fs::read_to_string(sys.join("id/bustype")).expect("bustype");
        assert_eq!(bus.trim(), "0006");
    }

    // The grabbing reader sees the device as it is, and yields what was written.
    let mut reader = EvdevReader::open(&node, None).expect("open and grab");
    assert_eq!(reader.hello().kind, Kind::Keyboard);
    assert_eq!(reader.hello().caps, caps);
    assert_eq!(reader.hello().name, dev.name());
    let mut second = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&node)
        .expect("second open");

    let mut dev = dev;
    let sent = [
        vec![
            ev(EV_MSC, 4, 0x70004),
            ev(EV_KEY, KEY_A, 1),
            Event::syn_report(),
        ],
        vec![ev(EV_KEY, KEY_A, 2), Event::syn_report()],
        vec![ev(EV_KEY, KEY_A, 0), Event::syn_report()],
        vec![
            ev(EV_KEY, KEY_ESC, 1),
            ev(EV_KEY, KEY_MICMUTE, 1),
            Event::syn_report(),
        ],
        vec![
            ev(EV_KEY, KEY_ESC, 0),
            ev(EV_KEY, KEY_MICMUTE, 0),
            Event::syn_report(),
        ],
    ];
    let mut expected = Vec::new();
    for batch in &sent {
        let checked = validator.check(batch, Instant::now()).expect("valid");
        dev.write_events(&checked.events).expect("write");
        expected.push(checked.events);
    }
    assert_eq!(expected[0], [ev(EV_KEY, KEY_A, 1), Event::syn_report()]);
    for want in &expected {
        let got = reader.next_batch().expect("read").expect("a batch");
        assert_eq!(&got, want);
    }
    nothing_to_read(&mut second);

    // SysRq cannot come out of the device even when written past the validator: the kernel
    // drops a key the device does not have.
    dev.write_events(&[ev(EV_KEY, KEY_SYSRQ, 1), Event::syn_report()])
        .expect("write");
    dev.write_events(&[ev(EV_KEY, KEY_SYSRQ, 0), Event::syn_report()])
        .expect("write");
    dev.write_events(&[ev(EV_KEY, KEY_A + 1, 1), Event::syn_report()])
        .expect("write");
    assert_eq!(
        reader.next_batch().expect("read").expect("a batch"),
        [ev(EV_KEY, KEY_A + 1, 1), Event::syn_report()]
    );
    nothing_to_read(&mut second);

    // Destroying the device removes its node; the reader sees the end.
    drop(dev);
    wait_for("the device to go", || (!sys.exists()).then_some(()));
    wait_for("the node to go", || (!node.exists()).then_some(()));
    // Key-up of the held key on unregister, then the end.
    let mut tail = Vec::new();
    while let Some(b) = reader.next_batch().expect("read") {
        tail.push(b);
    }
    assert!(
        tail.iter()
            .flatten()
            .all(|e| e.type_ == EV_SYN || e.value == 0),
        "{tail:?}"
    );
}

fn mouse_through_forward() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (mut client, server) = tokio::io::duplex(4096);
    let (tx, rx) = std::sync::mpsc::channel();
    let task = rt.spawn(forward_with(server, "usb", Limits::default(), move |d| {
        let _ = tx.send(d.sys_path());
    }));
    let hello = mouse_hello();
    rt.block_on(client.write_all(&encode(&Msg::Hello(hello.clone()))))
        .expect("send hello");
    let sys = rx.recv_timeout(Duration::from_secs(5)).expect("device");
    let node = node_of(&sys);
    let mut reader = EvdevReader::open(&node, None).expect("open and grab");
    assert_eq!(reader.hello().name, "bulkhead: Test Mouse B (from usb)");
    assert_eq!(reader.hello().kind, Kind::Mouse);
    let f = File::open(&node).expect("open");
    assert_eq!(read_abs_bits(&f).expect("EVIOCGBIT(EV_ABS)"), 0);
    let caps = read_caps(&f).expect("EVIOCGBIT");
    assert_eq!(caps, restrict(&hello));
    assert_eq!(
        caps.rels.iter().collect::<Vec<_>>(),
        [REL_X, REL_Y, REL_WHEEL]
    );
    assert_eq!(
        caps.keys.iter().collect::<Vec<_>>(),
        [BTN_LEFT, BTN_LEFT + 1]
    );

    let stream = [
        vec![
            ev(EV_REL, REL_X, 5),
            ev(EV_REL, REL_Y, -3),
            Event::syn_report(),
        ],
        // REL_DIAL (7) and KEY_SYSRQ: claimed, off-policy: dropped.
        vec![
            ev(EV_REL, 7, 1),
            ev(EV_KEY, KEY_SYSRQ, 1),
            ev(EV_KEY, BTN_LEFT, 1),
            Event::syn_report(),
        ],
        vec![
            ev(EV_KEY, BTN_LEFT, 0),
            ev(EV_REL, REL_WHEEL, -1),
            Event::syn_report(),
        ],
    ];
    for b in &stream {
        rt.block_on(client.write_all(&encode_events(b)))
            .expect("send");
    }
    let want = [
        vec![
            ev(EV_REL, REL_X, 5),
            ev(EV_REL, REL_Y, -3),
            Event::syn_report(),
        ],
        vec![ev(EV_KEY, BTN_LEFT, 1), Event::syn_report()],
        vec![
            ev(EV_KEY, BTN_LEFT, 0),
            ev(EV_REL, REL_WHEEL, -1),
            Event::syn_report(),
        ],
    ];
    for w in &want {
        assert_eq!(&reader.next_batch().expect("read").expect("batch"), w);
    }

    // A relative value beyond the bound: forward ends with a violation, the device goes.
    rt.block_on(client.write_all(&encode_events(&[
        ev(EV_REL, REL_X, 100_000),
        Event::syn_report(),
    ])))
    .expect("send");
    let end = rt.block_on(task).expect("join");
    assert!(
        matches!(
            end,
            Err(ForwardError::Violation(Violation::RelValue { .. }))
        ),
        "{end:?}"
    );
    assert_eq!(reader.next_batch().expect("read"), None);
    wait_for("the device to go", || (!sys.exists()).then_some(()));
}
