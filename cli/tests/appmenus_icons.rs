//! Application menu icons end to end: `bulkhead appmenus` asks domaind for each chosen
//! application's icon (GetApplicationIcon, from the template root) and writes it framed in
//! the domain's label colour next to the menu directory; an application without a usable
//! icon gets a plain square of that colour; the icons go with their entries. The real
//! domaind and CLI on a private bus, a mini template (no domain runs).

use std::path::Path;

use bulkhead_appmenus::icon::{
    decode_icon, encode_icon, label_rgb, plain_icon, ICON_FRAME, ICON_SIZE,
};
use bulkhead_testkit::{DomaindOptions, TestBus, TestCli, TestDomaind};

#[tokio::test(flavor = "multi_thread")]
async fn menu_icons_are_the_templates_framed_in_the_domains_colour() {
    let bus = TestBus::start().expect("dbus-daemon starts");
    let daemon = TestDomaind::start(&bus, DomaindOptions::default())
        .await
        .expect("domaind starts");
    let pre = format!("mi{}-", std::process::id() % 100_000);
    let tmpl = format!("{pre}tmpl");
    let work = format!("{pre}work");
    let root = daemon.mini_template(&tmpl).expect("mini template");
    let apps = root.join("usr/share/applications");
    let hicolor = root.join("usr/share/icons/hicolor/48x48/apps");
    let pixmaps = root.join("usr/share/pixmaps");
    for dir in [&apps, &hicolor, &pixmaps] {
        std::fs::create_dir_all(dir).expect("template dirs");
    }
    let entry = |id: &str, icon: &str| {
        let icon = if icon.is_empty() {
            String::new()
        } else {
            format!("Icon={icon}\n")
        };
        std::fs::write(
            apps.join(id),
            format!("[Desktop Entry]\nType=Application\nName={id}\n{icon}Exec=true\n"),
        )
        .expect("desktop entry");
    };
    entry("red.desktop", "bh-red");
    let red = encode_icon(&plain_icon([255, 0, 0])).expect("a red PNG");
    std::fs::write(hicolor.join("bh-red.png"), red).expect("icon");
    entry("plain.desktop", "");
    entry("broken.desktop", "bh-broken");
    std::fs::write(
        pixmaps.join("bh-broken.png"),
        b"\x89PNG\r\n\x1a\nnot really",
    )
    .expect("icon");

    let cli = TestCli::new(env!("CARGO_BIN_EXE_bulkhead"), &daemon);
    cli.ok(&["create", "-C", "template", "-l", "black", &tmpl]);
    cli.ok(&["create", "-t", &tmpl, "-l", "orange", &work]);
    let home = tempfile::tempdir().expect("home");
    let with_data = |args: &[&str]| cli.ok_env(args, "XDG_DATA_HOME", home.path());
    with_data(&[
        "appmenus",
        &work,
        "--set",
        "red.desktop",
        "plain.desktop",
        "broken.desktop",
    ]);

    let menu = home.path().join("applications");
    let icons = home.path().join("icons/bulkhead");
    let [r, g, b] = label_rgb("orange");
    let orange = [r, g, b, 255];
    let icon_of = |id: &str| {
        let text = std::fs::read_to_string(menu.join(format!("bulkhead-{work}+{id}.desktop")))
            .expect("entry");
        let path = text
            .lines()
            .find_map(|l| l.strip_prefix("Icon="))
            .expect("an Icon line")
            .to_owned();
        assert_eq!(
            Path::new(&path),
            icons.join(format!("bulkhead-{work}+{id}.png")),
            "{text}"
        );
        let img = decode_icon(&std::fs::read(&path).expect("icon file")).expect("a PNG");
        assert_eq!(img.dimensions(), (ICON_SIZE, ICON_SIZE));
        for (x, y, p) in img.enumerate_pixels() {
            let frame = x < ICON_FRAME
                || y < ICON_FRAME
                || x >= ICON_SIZE - ICON_FRAME
                || y >= ICON_SIZE - ICON_FRAME;
            if frame {
                assert_eq!(p.0, orange, "{id}: frame pixel {x},{y}");
            }
        }
        img
    };
    // the template's red picture, tinted in orange (the label's hue, the picture's lightness)
    let img = icon_of("red");
    let [tr, tg, tb] = bulkhead_appmenus::tint_rgb([255, 0, 0], [r, g, b]);
    assert_eq!(
        img.get_pixel(ICON_SIZE / 2, ICON_SIZE / 2).0,
        [tr, tg, tb, 255]
    );
    for id in ["plain", "broken"] {
        let img = icon_of(id);
        assert!(img.pixels().all(|p| p.0 == orange), "{id}: a plain square");
    }

    // One application fewer: its entry and icon go, the others stay.
    with_data(&["appmenus", &work, "--set", "red.desktop"]);
    assert!(!icons.join(format!("bulkhead-{work}+plain.png")).exists());
    assert!(!menu.join(format!("bulkhead-{work}+plain.desktop")).exists());
    icon_of("red");
    // The domain goes, its icons go.
    with_data(&["rm", &work]);
    assert!(!menu.join(format!("bulkhead-{work}+red.desktop")).exists());
    assert!(
        !icons.join(format!("bulkhead-{work}+red.png")).exists(),
        "the icon outlived its domain"
    );
}
