//! The `bulkhead-manager` binary itself: started on a private Xvfb against a real domaind on
//! a private bus, it shows the domains (a label swatch found by pixel); with a bus it cannot
//! reach it exits non-zero with a message.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use bulkhead_domain::Label;
use bulkhead_testkit::{DomaindOptions, TestBus, TestDomaind};
use dom0_manager::testing::{find_block, save_artifact, wait_for_screen, Xvfb};

/// Kills the child on drop (a failed assertion must not leave the window running).
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_shows_the_domains() {
    let xvfb = match Xvfb::start() {
        Ok(x) => x,
        Err(e) => {
            bulkhead_test_skip::skip(e);
            return;
        }
    };
    let bus = TestBus::start().expect("dbus-daemon");
    let d = TestDomaind::start(&bus, DomaindOptions::default())
        .await
        .expect("domaind");
    let (_c, p) = d.client().await.expect("client");
    p.create("base", "template", "", "orange", HashMap::new())
        .await
        .expect("create");

    let bin = env!("CARGO_BIN_EXE_bulkhead-manager");
    let child = Command::new(bin)
        .args(["--bus-address", d.bus_address()])
        .env("DISPLAY", xvfb.display())
        .env("GDK_BACKEND", "x11")
        .env("GSK_RENDERER", "cairo")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn bulkhead-manager");
    let _child = Kill(child);
    let display = xvfb.display().to_owned();
    let shot = tokio::task::spawn_blocking(move || {
        wait_for_screen(&display, Duration::from_secs(30), |img| {
            find_block(img, Label::Orange.color_rgb(), 24, 24, 2).is_some()
        })
    })
    .await
    .expect("join");
    match shot {
        Ok(img) => {
            let _ = save_artifact("bin-manager", &img);
        }
        Err(last) => {
            let p = save_artifact("bin-manager-FAILED", &last);
            panic!("the manager window never showed domain 'base'; last screenshot {p:?}");
        }
    }

    let out = Command::new(bin)
        .args(["--bus-address", "unix:path=/nonexistent/bus"])
        .env("DISPLAY", xvfb.display())
        .output()
        .expect("run bulkhead-manager");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot connect to the bus domaind serves on"),
        "{err}"
    );
}
