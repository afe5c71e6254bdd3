//! Application menus (Qubes' `qvm-appmenus`): the applications a user chose for each domain
//! (the domain feature `menu-items`: desktop ids separated by spaces), from those its
//! template provides (`ListApplications`), as XDG desktop entries in dom0's menu directory
//! (`$XDG_DATA_HOME/applications`, `~/.local/share/applications`), named
//! `bulkhead-<domain>+<id>`, titled `[domain] Name`. An entry runs
//! `bulkhead app DOMAIN ID`, i.e. `RunApplication`, which starts only the template's own
//! entry of that id in that domain: nothing in an entry is a command line from a domain.
//! A disposable template's entries start a new disposable (`@dispvm:NAME`).
//!
//! Each entry has an icon of its own in the domain's label colour (as Qubes tints its menu
//! icons), `$XDG_DATA_HOME/icons/bulkhead/bulkhead-<domain>+<name>.png` (the desktop id
//! without `.desktop`, named by an absolute `Icon=` path): the template's PNG
//! (`GetApplicationIcon`) decoded with limits and framed in the colour, or a plain square of
//! it when there is none or it does not decode (see [`icon`]).
//!
//! [`plan`] computes the entries from what domaind says; [`apply`] writes them and removes the
//! generated entries (and icons) of domains and applications that are gone; [`sync`] does
//! both from a domaind connection (the CLI's `appmenus --sync`, and dom0-ui as domains
//! change). Names from a template are cut to [`MAX_NAME`] characters without control
//! characters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bulkhead_api::DomainInfo;

pub mod icon;
pub use icon::{
    domain_icon, encode_icon, framed_icon, label_rgb, plain_icon, tint, tint_rgb, IconError,
};

/// The domain feature listing the chosen desktop ids.
pub const FEATURE: &str = "menu-items";
/// Prefix of every generated entry's file name.
pub const FILE_PREFIX: &str = "bulkhead-";
/// Key marking an entry as generated (only those are ever removed).
pub const GENERATED_KEY: &str = "X-Bulkhead-Generated";
/// Longest application name shown.
pub const MAX_NAME: usize = 80;
/// Where the icons go, below the data directory (next to `applications`).
pub const ICON_SUBDIR: &str = "icons/bulkhead";

/// Errors of the menu directory.
#[derive(Debug, thiserror::Error)]
pub enum AppMenuError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("desktop id {0:?} is not a plain file name ending in .desktop")]
    BadId(String),
    #[error("no menu directory: neither XDG_DATA_HOME nor HOME is set")]
    NoMenuDir,
    #[error("asking domaind: {0}")]
    Domaind(#[from] bulkhead_api::Error),
    #[error("encoding the icon: {0}")]
    IconEncode(#[from] png::EncodingError),
}

/// dom0's data directory: `$XDG_DATA_HOME`, else `$HOME/.local/share`.
fn data_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local/share"))
        })
}

/// dom0's menu directory: `$XDG_DATA_HOME/applications`, else `$HOME/.local/share/applications`.
pub fn menu_dir() -> Option<PathBuf> {
    Some(data_dir()?.join("applications"))
}

/// Where the entries' icons go: [`ICON_SUBDIR`] of the data directory of [`menu_dir`].
pub fn icon_dir() -> Option<PathBuf> {
    Some(data_dir()?.join(ICON_SUBDIR))
}

/// The icon file of entry `id` of `domain`: `bulkhead-<domain>+<id without .desktop>.png`.
pub fn icon_file(domain: &str, id: &str) -> String {
    let stem = id.strip_suffix(".desktop").unwrap_or(id);
    format!("{FILE_PREFIX}{domain}+{stem}.png")
}

/// `s` as a desktop entry string value (backslash, newline, tab, carriage return escaped).
fn escape_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// A desktop id as an entry may name it: `[A-Za-z0-9_.-]`, ends in `.desktop`.
pub fn valid_id(id: &str) -> bool {
    id.len() <= 255
        && id.len() > ".desktop".len()
        && id.ends_with(".desktop")
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A display name from a template, safe for a desktop entry value.
pub fn clean_name(name: &str) -> String {
    let s: String = name
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME)
        .collect();
    let s = s.trim().to_owned();
    if s.is_empty() {
        "(unnamed)".into()
    } else {
        s
    }
}

/// Whether `class` gets a menu (not disposables themselves: they come and go).
pub fn has_menu(class: &str) -> bool {
    matches!(
        class,
        "app" | "template" | "standalone" | "service" | "disposable-template"
    )
}

/// An application a domain's template provides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct App {
    /// Its desktop id.
    pub id: String,
    /// Its name (the template's, not yet cleaned).
    pub name: String,
    /// The template's PNG icon (`GetApplicationIcon`; unchecked bytes), empty for none.
    pub icon: Vec<u8>,
}

/// One entry to write, with its icon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MenuEntry {
    pub file: String,
    pub text: String,
    /// The icon's file name (in the icon directory).
    pub icon_file: String,
    /// The icon, a PNG file ([`encode_icon`]).
    pub icon: Vec<u8>,
}

/// The entry of application `id` (named `name` by the template, whose icon is `icon`, see
/// [`domain_icon`]) for `domain`, with its icon in `icon_dir`.
pub fn render(
    domain: &DomainInfo,
    id: &str,
    name: &str,
    icon: &[u8],
    bulkhead: &str,
    icon_dir: &Path,
) -> Result<MenuEntry, AppMenuError> {
    if !valid_id(id) {
        return Err(AppMenuError::BadId(id.to_owned()));
    }
    let icon_file = icon_file(&domain.name, id);
    let png = encode_icon(&domain_icon(
        icon,
        label_rgb(&domain.label),
        &domain.name,
        id,
    ))?;
    let icon_path = escape_value(&icon_dir.join(&icon_file).to_string_lossy());
    let dispvm = domain.class == "disposable-template";
    let (title, target) = if dispvm {
        (
            format!("[disposable from {}]", domain.name),
            format!("@dispvm:{}", domain.name),
        )
    } else {
        (format!("[{}]", domain.name), domain.name.clone())
    };
    let name = clean_name(name);
    let text = format!(
        "[Desktop Entry]\n\
         Type=Application\n\
         Name={title} {name}\n\
         Comment={name} in domain {}, {} label\n\
         Exec={bulkhead} app {target} {id}\n\
         Icon={icon_path}\n\
         Categories=X-Bulkhead;X-Bulkhead-{};\n\
         X-Bulkhead-Domain={}\n\
         {GENERATED_KEY}=true\n",
        domain.name, domain.label, domain.name, domain.name
    );
    Ok(MenuEntry {
        // '+' is in neither a domain name nor a desktop id: no two entries share a file.
        file: format!("{FILE_PREFIX}{}+{id}", domain.name),
        text,
        icon_file,
        icon: png,
    })
}

/// The entries of every domain: `chosen` (domain -> its `menu-items`), `apps` (domain ->
/// the applications its template provides), icons in `icon_dir`. A chosen id the template
/// does not provide is skipped (reported in the second list).
pub fn plan(
    domains: &[DomainInfo],
    chosen: &BTreeMap<String, Vec<String>>,
    apps: &BTreeMap<String, Vec<App>>,
    bulkhead: &str,
    icon_dir: &Path,
) -> (Vec<MenuEntry>, Vec<String>) {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for d in domains.iter().filter(|d| has_menu(&d.class)) {
        let Some(ids) = chosen.get(&d.name) else {
            continue;
        };
        let provided = apps.get(&d.name).map(Vec::as_slice).unwrap_or(&[]);
        for id in ids {
            match provided.iter().find(|a| &a.id == id) {
                Some(app) => match render(d, id, &app.name, &app.icon, bulkhead, icon_dir) {
                    Ok(e) => out.push(e),
                    Err(e) => missing.push(format!("{}: {e}", d.name)),
                },
                None => missing.push(format!(
                    "{}: {id} is not an application of its template",
                    d.name
                )),
            }
        }
    }
    (out, missing)
}

/// What [`apply`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Entries written.
    pub written: Vec<String>,
    /// Entries removed.
    pub removed: Vec<String>,
    /// Icons written.
    pub icons_written: Vec<String>,
    /// Icons removed.
    pub icons_removed: Vec<String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AppMenuError + '_ {
    move |source| AppMenuError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to `dir/file` atomically when it does not hold them already; whether it
/// wrote.
fn write_if_changed(dir: &Path, file: &str, bytes: &[u8]) -> Result<bool, AppMenuError> {
    let path = dir.join(file);
    if std::fs::read(&path).ok().as_deref() == Some(bytes) {
        return Ok(false);
    }
    // per process: dom0-ui and the CLI may rewrite the menu at the same moment
    let tmp = dir.join(format!(".{file}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(true)
}

/// Writes `entries` into `dir` and their icons into `icon_dir` (each atomically, only when
/// changed; an icon before its entry) and removes every other generated entry and icon there
/// (ours only: the prefix and the generated key, in an icon its PNG text marker).
pub fn apply(dir: &Path, icon_dir: &Path, entries: &[MenuEntry]) -> Result<Applied, AppMenuError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    std::fs::create_dir_all(icon_dir).map_err(io(icon_dir))?;
    let mut done = Applied::default();
    for e in entries {
        if write_if_changed(icon_dir, &e.icon_file, &e.icon)? {
            done.icons_written.push(e.icon_file.clone());
        }
        if write_if_changed(dir, &e.file, e.text.as_bytes())? {
            done.written.push(e.file.clone());
        }
    }
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(FILE_PREFIX) || entries.iter().any(|e| e.file == name) {
            continue;
        }
        let path = entry.path();
        let generated = std::fs::read_to_string(&path)
            .is_ok_and(|t| t.lines().any(|l| l == format!("{GENERATED_KEY}=true")));
        if generated {
            std::fs::remove_file(&path).map_err(io(&path))?;
            done.removed.push(name);
        }
    }
    // the icons of the entries just removed, and any other of ours without an entry
    for entry in std::fs::read_dir(icon_dir).map_err(io(icon_dir))? {
        let entry = entry.map_err(io(icon_dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(FILE_PREFIX)
            || !name.ends_with(".png")
            || entries.iter().any(|e| e.icon_file == name)
        {
            continue;
        }
        let path = entry.path();
        if icon::is_generated_icon(&path) {
            std::fs::remove_file(&path).map_err(io(&path))?;
            done.icons_removed.push(name);
        }
    }
    Ok(done)
}

/// `features.menu-items` of `name` as desktop ids.
pub async fn menu_items(
    proxy: &bulkhead_api::Domaind1Proxy<'_>,
    name: &str,
) -> Result<Vec<String>, AppMenuError> {
    let props = proxy.get_properties(name).await?;
    Ok(props
        .get(&format!("features.{FEATURE}"))
        .map(|v| v.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default())
}

/// Rewrites this user's menu entries of every domain from what domaind says now; entries
/// run `bulkhead` (the CLI's path). Returns what changed and the chosen ids that could not
/// be shown (reasons, one per id).
pub async fn sync(
    proxy: &bulkhead_api::Domaind1Proxy<'_>,
    bulkhead: &str,
) -> Result<(Applied, Vec<String>), AppMenuError> {
    let dir = menu_dir().ok_or(AppMenuError::NoMenuDir)?;
    let icons = icon_dir().ok_or(AppMenuError::NoMenuDir)?;
    let domains = proxy.list().await?;
    let mut chosen = BTreeMap::new();
    let mut apps = BTreeMap::new();
    let mut missing = Vec::new();
    for d in domains.iter().filter(|d| has_menu(&d.class)) {
        // a domain removed since the list has no menu; anything else is a failure
        let ids = match menu_items(proxy, &d.name).await {
            Ok(ids) => ids,
            Err(AppMenuError::Domaind(bulkhead_api::Error::NoSuchDomain(_))) => continue,
            Err(e) => return Err(e),
        };
        if ids.is_empty() {
            continue;
        }
        let mut provided = Vec::new();
        match proxy.list_applications(&d.name).await {
            Ok(list) => {
                for (id, name, icon_name) in list {
                    let mut app = App {
                        id,
                        name,
                        icon: Vec::new(),
                    };
                    // only the chosen ones with an icon are asked for
                    if !icon_name.is_empty() && valid_id(&app.id) && ids.contains(&app.id) {
                        app.icon = fetch_icon(proxy, &d.name, &app.id).await;
                    }
                    provided.push(app);
                }
            }
            Err(e) => missing.push(format!("{}: no applications listed: {e}", d.name)),
        }
        chosen.insert(d.name.clone(), ids);
        apps.insert(d.name.clone(), provided);
    }
    let (entries, more) = plan(&domains, &chosen, &apps, bulkhead, &icons);
    missing.extend(more);
    Ok((apply(&dir, &icons, &entries)?, missing))
}

/// The template's icon of `id` in `domain`'s menu; empty (a plain square is drawn) when it
/// has none or it cannot be had (logged).
async fn fetch_icon(proxy: &bulkhead_api::Domaind1Proxy<'_>, domain: &str, id: &str) -> Vec<u8> {
    match proxy.get_application_icon(domain, id).await {
        Ok(png) => png,
        // removed meanwhile: its entry goes with the next sync
        Err(bulkhead_api::Error::NoSuchDomain(_)) => Vec::new(),
        Err(e) => {
            tracing::warn!(domain, id, error = %e, "no icon from domaind; a plain square is drawn");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgba, RgbaImage};

    fn dom(name: &str, class: &str) -> DomainInfo {
        DomainInfo {
            name: name.into(),
            class: class.into(),
            state: "halted".into(),
            label: "blue".into(),
            isolation: "sandbox".into(),
            memory_mib: 400,
            vcpus: 2,
            template: "debian-12".into(),
            netvm: String::new(),
        }
    }

    fn app(id: &str, name: &str, icon: &[u8]) -> App {
        App {
            id: id.into(),
            name: name.into(),
            icon: icon.to_vec(),
        }
    }

    /// A `w`x`h` PNG: red left half, green right half, opaque.
    fn test_png(w: u32, h: u32) -> Vec<u8> {
        let img = RgbaImage::from_fn(w, h, |x, _| {
            if x < w / 2 {
                Rgba([255, 0, 0, 255])
            } else {
                Rgba([0, 255, 0, 255])
            }
        });
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn decoded(png: &[u8]) -> RgbaImage {
        icon::decode_icon(png).unwrap()
    }

    fn is_plain(img: &RgbaImage, rgb: [u8; 3]) -> bool {
        let [r, g, b] = rgb;
        img.dimensions() == (icon::ICON_SIZE, icon::ICON_SIZE)
            && img.pixels().all(|p| *p == Rgba([r, g, b, 255]))
    }

    #[test]
    fn entries_run_only_the_domains_own_applications() {
        let domains = [
            dom("work", "app"),
            dom("dvm", "disposable-template"),
            dom("disp1", "disposable"),
        ];
        let chosen = BTreeMap::from([
            (
                "work".to_owned(),
                vec!["foot.desktop".to_owned(), "gone.desktop".to_owned()],
            ),
            ("dvm".to_owned(), vec!["foot.desktop".to_owned()]),
            ("disp1".to_owned(), vec!["foot.desktop".to_owned()]),
        ]);
        let foot = vec![app("foot.desktop", "Foot\nExec=rm -rf ~", b"")];
        let apps = BTreeMap::from([("work".to_owned(), foot.clone()), ("dvm".to_owned(), foot)]);
        let icons = Path::new("/home/u/.local/share/icons/bulkhead");
        let (entries, missing) = plan(&domains, &chosen, &apps, "/usr/local/bin/bulkhead", icons);
        assert_eq!(entries.len(), 2, "{entries:?}");
        assert_eq!(
            missing,
            vec!["work: gone.desktop is not an application of its template"]
        );
        let work = &entries[0];
        assert_eq!(work.file, "bulkhead-work+foot.desktop");
        assert_eq!(work.icon_file, "bulkhead-work+foot.png");
        assert!(
            work.text.contains("\nName=[work] FootExec=rm -rf ~\n"),
            "{}",
            work.text
        );
        assert!(work
            .text
            .contains("\nExec=/usr/local/bin/bulkhead app work foot.desktop\n"));
        assert!(work
            .text
            .contains("\nIcon=/home/u/.local/share/icons/bulkhead/bulkhead-work+foot.png\n"));
        assert_eq!(
            work.text.lines().filter(|l| l.starts_with("Exec=")).count(),
            1,
            "one Exec line: the name stays on its own line"
        );
        assert!(entries[1]
            .text
            .contains("Exec=/usr/local/bin/bulkhead app @dispvm:dvm foot.desktop"));
        assert!(entries[1].text.contains("Name=[disposable from dvm] Foot"));
        assert!(matches!(
            render(&dom("work", "app"), "../x.desktop", "x", b"", "b", icons),
            Err(AppMenuError::BadId(_))
        ));
        // no icon from the template: a plain square of the label's colour (blue)
        assert!(is_plain(&decoded(&work.icon), label_rgb("blue")));
        assert_eq!(label_rgb("blue"), [0x34, 0x65, 0xa4]);
        assert_eq!(label_rgb("no-such-label"), label_rgb("gray"));
    }

    /// An opaque pixel `src` as the tint for label colour `label` makes it.
    fn tinted(src: [u8; 3], label: [u8; 3]) -> Rgba<u8> {
        let [r, g, b] = src;
        let mut one = image::RgbaImage::from_pixel(1, 1, Rgba([r, g, b, 255]));
        icon::tint(&mut one, label);
        *one.get_pixel(0, 0)
    }

    #[test]
    fn icons_are_framed_in_the_domains_colour() {
        let rgb = label_rgb("orange");
        let [r, g, b] = rgb;
        let frame = Rgba([r, g, b, 255]);
        let (n, f) = (icon::ICON_SIZE, icon::ICON_FRAME);
        // smaller than the frame's inside (scaled up), larger (down), and not square
        for (w, h) in [(16, 16), (256, 256), (64, 32), (7, 300)] {
            let img = framed_icon(&test_png(w, h), rgb).unwrap();
            assert_eq!(img.dimensions(), (n, n), "{w}x{h}");
            for (x, y, p) in img.enumerate_pixels() {
                let border = x < f || y < f || x >= n - f || y >= n - f;
                if border {
                    assert_eq!(*p, frame, "{w}x{h}: frame pixel {x},{y}");
                }
            }
        }
        // the picture itself is inside, tinted: its red left half and green right half both
        // come out in the label's colour (pure red and green have the same lightness)
        let img = framed_icon(&test_png(16, 16), rgb).unwrap();
        let left = *img.get_pixel(f + 2, n / 2);
        assert_eq!(left, *img.get_pixel(n - f - 3, n / 2));
        assert_eq!(left, tinted([255, 0, 0], rgb));
        // every pixel of the picture has the label's hue: no other domain's colour shows
        for label in ["red", "green", "blue", "purple", "black"] {
            let want = label_rgb(label);
            let img = framed_icon(&test_png(16, 16), want).unwrap();
            for p in img.pixels().filter(|p| p[3] > 0) {
                let mut got = icon::test_support::hue([p[0], p[1], p[2]]);
                let expect = icon::test_support::hue(want);
                if let (Some(g), Some(e)) = (&mut got, expect) {
                    assert!((*g - e).abs() < 0.05, "{label}: {p:?}");
                } else {
                    assert_eq!(got.is_none(), expect.is_none(), "{label}: {p:?}");
                }
            }
        }
        // a wide one is centred between transparent bands
        let img = framed_icon(&test_png(64, 32), rgb).unwrap();
        assert_eq!(img.get_pixel(n / 2, f + 1)[3], 0);
        assert_eq!(img.get_pixel(n / 2, n / 2)[3], 255);
        // what is written is a PNG of that image, with the generated marker
        let png = encode_icon(&img).unwrap();
        assert_eq!(decoded(&png), img);
        assert_eq!(encode_icon(&img).unwrap(), png, "the same bytes every time");
    }

    #[test]
    fn bad_icons_give_the_plain_square() {
        let rgb = label_rgb("red");
        let too_big = test_png(icon::MAX_ICON_SIDE + 1, 1);
        let mut truncated = test_png(32, 32);
        truncated.truncate(truncated.len() / 2);
        let oversize_file = vec![0u8; icon::MAX_ICON_BYTES + 1];
        let cases: [(&str, &[u8]); 6] = [
            ("garbage", b"not a png at all"),
            ("svg", b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>"),
            ("too wide", &too_big),
            ("truncated", &truncated),
            ("over the byte limit", &oversize_file),
            ("png signature only", b"\x89PNG\r\n\x1a\n"),
        ];
        for (what, bytes) in cases {
            assert!(framed_icon(bytes, rgb).is_err(), "{what}");
            assert!(
                is_plain(&domain_icon(bytes, rgb, "work", "x.desktop"), rgb),
                "{what}"
            );
        }
        assert!(matches!(
            framed_icon(&oversize_file, rgb),
            Err(IconError::TooLarge(_))
        ));
        assert!(is_plain(&domain_icon(b"", rgb, "work", "x.desktop"), rgb));
        // the largest allowed decodes, also with 16 bits a channel
        let side = icon::MAX_ICON_SIDE;
        assert!(framed_icon(&test_png(side, side), rgb).is_ok());
        let deep = image::ImageBuffer::<Rgba<u16>, Vec<u16>>::from_pixel(
            side,
            side,
            Rgba([0, 65535, 0, 65535]),
        );
        let mut png = std::io::Cursor::new(Vec::new());
        deep.write_to(&mut png, image::ImageFormat::Png).unwrap();
        let img = framed_icon(png.get_ref(), rgb).unwrap();
        assert_eq!(*img.get_pixel(24, 24), tinted([0, 255, 0], rgb));
    }

    #[test]
    fn apply_writes_and_removes_only_generated_entries() {
        let d = tempfile::tempdir().unwrap();
        let icons = d.path().join("icons");
        let (entries, _) = plan(
            &[dom("work", "app")],
            &BTreeMap::from([("work".to_owned(), vec!["a.desktop".to_owned()])]),
            &BTreeMap::from([(
                "work".to_owned(),
                vec![app("a.desktop", "A", &test_png(8, 8))],
            )]),
            "bulkhead",
            &icons,
        );
        std::fs::write(
            d.path().join("bulkhead-old-b.desktop"),
            format!("[Desktop Entry]\n{GENERATED_KEY}=true\n"),
        )
        .unwrap();
        std::fs::write(
            d.path().join("bulkhead-mine.desktop"),
            "[Desktop Entry]\nName=mine\n",
        )
        .unwrap();
        std::fs::write(d.path().join("firefox.desktop"), "[Desktop Entry]\n").unwrap();
        std::fs::create_dir_all(&icons).unwrap();
        // an icon of ours whose entry is gone, and icons that are not ours
        std::fs::write(
            icons.join("bulkhead-old+b.png"),
            encode_icon(&plain_icon([0, 0, 0])).unwrap(),
        )
        .unwrap();
        std::fs::write(icons.join("bulkhead-mine.png"), test_png(4, 4)).unwrap();
        std::fs::write(
            icons.join("other.png"),
            encode_icon(&plain_icon([0, 0, 0])).unwrap(),
        )
        .unwrap();

        let done = apply(d.path(), &icons, &entries).unwrap();
        assert_eq!(done.written, vec!["bulkhead-work+a.desktop"]);
        assert_eq!(done.removed, vec!["bulkhead-old-b.desktop"]);
        assert_eq!(done.icons_written, vec!["bulkhead-work+a.png"]);
        assert_eq!(done.icons_removed, vec!["bulkhead-old+b.png"]);
        assert!(
            d.path().join("bulkhead-mine.desktop").exists(),
            "not ours: kept"
        );
        assert!(d.path().join("firefox.desktop").exists());
        assert!(icons.join("bulkhead-mine.png").exists(), "no marker: kept");
        assert!(icons.join("other.png").exists(), "not our prefix: kept");
        // the entry names its icon by its absolute path; the icon is blue-framed
        let text = std::fs::read_to_string(d.path().join("bulkhead-work+a.desktop")).unwrap();
        let icon_path = icons.join("bulkhead-work+a.png");
        assert!(
            text.contains(&format!("\nIcon={}\n", icon_path.display())),
            "{text}"
        );
        let img = decoded(&std::fs::read(&icon_path).unwrap());
        assert_eq!(*img.get_pixel(0, 0), Rgba([0x34, 0x65, 0xa4, 255]));
        assert_eq!(
            *img.get_pixel(icon::ICON_FRAME + 1, 24),
            tinted([255, 0, 0], label_rgb("blue"))
        );
        assert!(icon::is_generated_icon(&icon_path));

        assert_eq!(
            apply(d.path(), &icons, &entries).unwrap(),
            Applied::default(),
            "nothing to do twice"
        );
        let done = apply(d.path(), &icons, &[]).unwrap();
        assert_eq!(done.removed, vec!["bulkhead-work+a.desktop"]);
        assert_eq!(done.icons_removed, vec!["bulkhead-work+a.png"]);
        assert!(!icon_path.exists());
    }

    #[test]
    fn icon_paths_are_escaped_in_the_entry() {
        let e = render(
            &dom("work", "app"),
            "a.desktop",
            "A",
            b"",
            "bulkhead",
            Path::new("/home/odd\\dir\nx"),
        )
        .unwrap();
        assert!(
            e.text
                .contains("\nIcon=/home/odd\\\\dir\\nx/bulkhead-work+a.png\n"),
            "{}",
            e.text
        );
    }
}
