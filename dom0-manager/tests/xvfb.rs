//! The screenshot support itself: a private Xvfb, a GTK window of a known colour, found in a
//! root-window screenshot (and missing before the window is shown).
//!
//! `harness = false`: GTK must run on the process's main thread.

use std::time::Duration;

use dom0_manager::testing::{
    color_bbox, count_color, save_artifact, screenshot, wait_for_screen, Xvfb,
};
use relm4::gtk;
use relm4::gtk::prelude::*;

const COLOUR: u32 = 0x12ab34;

fn main() {
    let xvfb = match Xvfb::start() {
        Ok(x) => x,
        Err(e @ dom0_manager::testing::TestingError::XvfbSpawn(_)) => {
            bulkhead_test_skip::skip(e);
            return;
        }
        Err(e) => panic!("{e}"),
    };
    // Before any thread starts.
    std::env::set_var("DISPLAY", xvfb.display());
    std::env::set_var("GDK_BACKEND", "x11");
    std::env::set_var("GSK_RENDERER", "cairo");

    let before = screenshot(xvfb.display()).expect("screenshot of the empty screen");
    assert_eq!(before.dimensions(), (1280, 800));
    assert_eq!(
        count_color(&before, COLOUR, 2),
        0,
        "colour on screen before the window"
    );

    gtk::init().expect("gtk init on Xvfb");
    let css = gtk::CssProvider::new();
    css.load_from_data(&format!("window.probe {{ background: #{COLOUR:06x}; }}"));
    gtk::style_context_add_provider_for_display(
        &gtk::gdk::Display::default().expect("display"),
        &css,
        gtk::STYLE_PROVIDER_PRIORITY_APPLICATION,
    );
    let win = gtk::Window::builder()
        .title("probe")
        .default_width(320)
        .default_height(200)
        .build();
    win.add_css_class("probe");
    win.present();

    let shot = wait_for_screen(xvfb.display(), Duration::from_secs(30), |img| {
        count_color(img, COLOUR, 2) >= 300 * 180
    });
    let img = match shot {
        Ok(img) => img,
        Err(last) => {
            let p = save_artifact("xvfb-probe-failed", &last);
            panic!("window colour not found on screen; last screenshot {p:?}");
        }
    };
    let (_, _, w, h) = color_bbox(&img, COLOUR, 2).expect("bbox");
    assert!(w >= 300 && h >= 180, "coloured area {w}x{h}");
    let path = save_artifact("xvfb-probe", &img).expect("save artefact");
    println!(
        "xvfb test ok: window found ({w}x{h}), screenshot {}",
        path.display()
    );
    drop(win);
    drop(xvfb);
}
