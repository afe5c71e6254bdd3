//! Screenshot test support (feature `testing`), shared by dom0-manager's and dom0-ui's tests.
//!
//! - [`Xvfb`]: a private X server (`Xvfb -displayfd`), its own display number, stopped on drop.
//! - [`screenshot`]: the root window of a display as an [`image::RgbaImage`] (x11rb `GetImage`).
//! - [`save_artifact`]: keep a screenshot as a PNG for a person to look at.
//! - [`count_color`], [`color_bbox`]: simple pixel checks.
//!
//! ```no_run
//! let x = dom0_manager::testing::Xvfb::start().unwrap();
//! std::env::set_var("DISPLAY", x.display());
//! // ... show windows ...
//! let img = dom0_manager::testing::screenshot(x.display()).unwrap();
//! dom0_manager::testing::save_artifact("desktop", &img).unwrap();
//! ```

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use image::{Rgba, RgbaImage};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use x11rb::connection::Connection as _;
use x11rb::protocol::xproto::{ConnectionExt as _, ImageFormat, ImageOrder};

/// Environment variable naming the directory screenshots are saved into.
pub const ENV_ARTIFACTS: &str = "BULKHEAD_TEST_ARTIFACTS";
/// Screen geometry of the test X server.
pub const SCREEN_WIDTH: u32 = 1280;
pub const SCREEN_HEIGHT: u32 = 800;

/// Errors of the screenshot test support.
#[derive(Debug, thiserror::Error)]
pub enum TestingError {
    #[error("cannot start Xvfb (apt install xvfb): {0}")]
    XvfbSpawn(#[source] std::io::Error),
    #[error("Xvfb did not report its display number: {0}")]
    XvfbDisplay(String),
    #[error("cannot connect to X display {display}: {source}")]
    Connect {
        display: String,
        #[source]
        source: x11rb::errors::ConnectError,
    },
    #[error("X request on display {display} failed: {message}")]
    X11 { display: String, message: String },
    #[error("unsupported X pixel format on {display}: {what}")]
    PixelFormat { display: String, what: String },
    #[error("cannot save artefact {path}: {message}")]
    Save { path: PathBuf, message: String },
}

/// A private Xvfb server; killed (SIGTERM, then SIGKILL) and reaped on drop.
pub struct Xvfb {
    child: Child,
    display: String,
    // Kept open so Xvfb never writes into a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl Xvfb {
    /// Start `Xvfb -displayfd 1 -screen 0 1280x800x24 -nolisten tcp` and wait until it
    /// reports the display number it picked (a free one: tests may run side by side).
    pub fn start() -> Result<Self, TestingError> {
        let geometry = format!("{SCREEN_WIDTH}x{SCREEN_HEIGHT}x24");
        let mut child = Command::new("Xvfb")
            .args([
                "-displayfd",
                "1",
                "-screen",
                "0",
                &geometry,
                "-nolisten",
                "tcp",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(TestingError::XvfbSpawn)?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(TestingError::XvfbDisplay("no stdout pipe".into()));
        };
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        let number = line.trim();
        let ok = matches!(read, Ok(n) if n > 0)
            && !number.is_empty()
            && number.bytes().all(|b| b.is_ascii_digit());
        if !ok {
            let _ = child.kill();
            let status = child.wait();
            return Err(TestingError::XvfbDisplay(format!(
                "read {read:?}, line {line:?}, Xvfb exit {status:?}"
            )));
        }
        let display = format!(":{number}");
        Ok(Self {
            child,
            display,
            _stdout: stdout,
        })
    }

    /// The display name, e.g. `:3`, for `DISPLAY`.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// Process id of the server.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        if let Ok(raw) = i32::try_from(self.child.id()) {
            // SIGTERM lets Xvfb remove its lock file and socket.
            let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The whole root window of `display` as RGBA (alpha 255).
///
/// Supports the 24/32-bit TrueColor layouts Xvfb uses (32 bits per pixel, 8 bits per
/// channel); anything else is [`TestingError::PixelFormat`].
pub fn screenshot(display: &str) -> Result<RgbaImage, TestingError> {
    let x11 = |e: &dyn std::fmt::Display| TestingError::X11 {
        display: display.to_owned(),
        message: e.to_string(),
    };
    let (conn, screen_num) = x11rb::connect(Some(display)).map_err(|e| TestingError::Connect {
        display: display.to_owned(),
        source: e,
    })?;
    let setup = conn.setup();
    let screen = setup
        .roots
        .get(screen_num)
        .ok_or_else(|| x11(&format!("no screen {screen_num}")))?;
    let (w, h) = (screen.width_in_pixels, screen.height_in_pixels);
    let reply = conn
        .get_image(ImageFormat::Z_PIXMAP, screen.root, 0, 0, w, h, !0)
        .map_err(|e| x11(&e))?
        .reply()
        .map_err(|e| x11(&e))?;
    let fmt_err = |what: String| TestingError::PixelFormat {
        display: display.to_owned(),
        what,
    };
    let bpp = setup
        .pixmap_formats
        .iter()
        .find(|f| f.depth == reply.depth)
        .map(|f| f.bits_per_pixel)
        .ok_or_else(|| fmt_err(format!("no pixmap format for depth {}", reply.depth)))?;
    if bpp != 32 || reply.depth < 24 {
        return Err(fmt_err(format!(
            "depth {} at {bpp} bits per pixel",
            reply.depth
        )));
    }
    let visual = screen
        .allowed_depths
        .iter()
        .flat_map(|d| d.visuals.iter())
        .find(|v| v.visual_id == reply.visual)
        .ok_or_else(|| fmt_err(format!("unknown visual {}", reply.visual)))?;
    let shift = |mask: u32| -> Result<u32, TestingError> {
        if mask.count_ones() != 8 || (mask >> mask.trailing_zeros()) != 0xff {
            return Err(fmt_err(format!("channel mask {mask:#x}")));
        }
        Ok(mask.trailing_zeros())
    };
    let (rs, gs, bs) = (
        shift(visual.red_mask)?,
        shift(visual.green_mask)?,
        shift(visual.blue_mask)?,
    );
    let need = usize::from(w) * usize::from(h) * 4;
    if reply.data.len() < need {
        return Err(fmt_err(format!(
            "image has {} bytes, {need} expected",
            reply.data.len()
        )));
    }
    let lsb = setup.image_byte_order == ImageOrder::LSB_FIRST;
    let mut img = RgbaImage::new(u32::from(w), u32::from(h));
    for (px, chunk) in img.pixels_mut().zip(reply.data.chunks_exact(4)) {
        let bytes = [chunk[0], chunk[1], chunk[2], chunk[3]];
        let v = if lsb {
            u32::from_le_bytes(bytes)
        } else {
            u32::from_be_bytes(bytes)
        };
        let c = |s: u32| ((v >> s) & 0xff) as u8;
        *px = Rgba([c(rs), c(gs), c(bs), 255]);
    }
    Ok(img)
}

/// The directory artefacts go to: `$BULKHEAD_TEST_ARTIFACTS`, else `<target dir>/test-artifacts`
/// (`$CARGO_TARGET_DIR`, else the target dir the running test executable lives in, else
/// `target`).
pub fn artifacts_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(ENV_ARTIFACTS).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("test-artifacts");
    }
    // <target>/debug/deps/<test-exe> or <target>/debug/<bin>
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        exe.ancestors()
            .skip(1)
            .find(|p| p.join("CACHEDIR.TAG").is_file())
            .map(Path::to_owned)
    });
    from_exe
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("test-artifacts")
}

/// Save `img` as `<artifacts dir>/<name>.png` (dir created); returns the path.
pub fn save_artifact(name: &str, img: &RgbaImage) -> Result<PathBuf, TestingError> {
    let dir = artifacts_dir();
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = dir.join(format!("{safe}.png"));
    std::fs::create_dir_all(&dir).map_err(|e| TestingError::Save {
        path: path.clone(),
        message: e.to_string(),
    })?;
    img.save(&path).map_err(|e| TestingError::Save {
        path: path.clone(),
        message: e.to_string(),
    })?;
    Ok(path)
}

/// How many pixels of `img` are `rgb` (0xRRGGBB) within `tolerance` per channel.
pub fn count_color(img: &RgbaImage, rgb: u32, tolerance: u8) -> usize {
    img.pixels().filter(|p| matches(p, rgb, tolerance)).count()
}

/// How many pixels inside the rectangle `(x, y, width, height)` (clipped to the image) are
/// `rgb` within `tolerance`.
pub fn count_color_in(
    img: &RgbaImage,
    rect: (u32, u32, u32, u32),
    rgb: u32,
    tolerance: u8,
) -> usize {
    let (x0, y0, w, h) = rect;
    let x1 = x0.saturating_add(w).min(img.width());
    let y1 = y0.saturating_add(h).min(img.height());
    let mut n = 0;
    for y in y0.min(y1)..y1 {
        for x in x0.min(x1)..x1 {
            if matches(img.get_pixel(x, y), rgb, tolerance) {
                n += 1;
            }
        }
    }
    n
}

/// Top-left corner of the first solid `w`×`h` block of `rgb` (within `tolerance`), scanning
/// rows top to bottom: finds a swatch or badge even where text pixels share its colour.
pub fn find_block(img: &RgbaImage, rgb: u32, w: u32, h: u32, tolerance: u8) -> Option<(u32, u32)> {
    if w == 0 || h == 0 || w > img.width() || h > img.height() {
        return None;
    }
    for y in 0..=img.height() - h {
        for x in 0..=img.width() - w {
            if matches(img.get_pixel(x, y), rgb, tolerance)
                && count_color_in(img, (x, y, w, h), rgb, tolerance) == (w * h) as usize
            {
                return Some((x, y));
            }
        }
    }
    None
}

/// Bounding box `(x, y, width, height)` of the pixels matching `rgb` within `tolerance`,
/// `None` when there are none.
pub fn color_bbox(img: &RgbaImage, rgb: u32, tolerance: u8) -> Option<(u32, u32, u32, u32)> {
    let mut bbox: Option<(u32, u32, u32, u32)> = None;
    for (x, y, p) in img.enumerate_pixels() {
        if matches(p, rgb, tolerance) {
            bbox = Some(match bbox {
                None => (x, y, x, y),
                Some((x0, y0, x1, y1)) => (x0.min(x), y0.min(y), x1.max(x), y1.max(y)),
            });
        }
    }
    bbox.map(|(x0, y0, x1, y1)| (x0, y0, x1 - x0 + 1, y1 - y0 + 1))
}

/// Run the GTK main loop of this thread (the default main context) until `done()` holds or
/// `timeout` passes; returns whether it held. For tests that drive GTK on their main thread.
pub fn pump_gtk_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let ctx = relm4::gtk::glib::MainContext::default();
    let deadline = Instant::now() + timeout;
    loop {
        while ctx.iteration(false) {}
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// Screenshots of `display` until `check` accepts one (returns it) or `timeout` passes
/// (returns the last one as the error, for an artefact), pumping the GTK main loop between
/// tries.
pub fn wait_for_screen(
    display: &str,
    timeout: Duration,
    mut check: impl FnMut(&RgbaImage) -> bool,
) -> Result<RgbaImage, Box<RgbaImage>> {
    let mut last = RgbaImage::new(1, 1);
    let ok = pump_gtk_until(timeout, || match screenshot(display) {
        Ok(img) => {
            let good = check(&img);
            last = img;
            good
        }
        Err(e) => {
            eprintln!("screenshot failed: {e}");
            false
        }
    });
    if ok {
        Ok(last)
    } else {
        Err(Box::new(last))
    }
}

fn matches(p: &Rgba<u8>, rgb: u32, tolerance: u8) -> bool {
    let want = [(rgb >> 16) as u8, (rgb >> 8) as u8, rgb as u8];
    p.0[..3]
        .iter()
        .zip(want)
        .all(|(&have, want)| have.abs_diff(want) <= tolerance)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn color_checks() {
        let mut img = RgbaImage::from_pixel(10, 8, Rgba([0, 0, 0, 255]));
        for x in 2..5 {
            for y in 3..7 {
                img.put_pixel(x, y, Rgba([0x12, 0xab, 0x35, 255]));
            }
        }
        assert_eq!(count_color(&img, 0x12ab34, 1), 12);
        assert_eq!(count_color(&img, 0x12ab34, 0), 0);
        assert_eq!(color_bbox(&img, 0x12ab34, 1), Some((2, 3, 3, 4)));
        assert_eq!(color_bbox(&img, 0xffffff, 0), None);
        assert_eq!(count_color_in(&img, (0, 0, 3, 4), 0x12ab34, 1), 1);
        assert_eq!(count_color_in(&img, (4, 6, 100, 100), 0x12ab34, 1), 1);
        assert_eq!(count_color_in(&img, (20, 20, 5, 5), 0x12ab34, 1), 0);
        assert_eq!(find_block(&img, 0x12ab34, 3, 4, 1), Some((2, 3)));
        assert_eq!(find_block(&img, 0x12ab34, 2, 2, 1), Some((2, 3)));
        assert_eq!(find_block(&img, 0x12ab34, 4, 4, 1), None);
    }
}
