//! Menu icons in the domain's colour (as Qubes tints its menu icons): the PNG a template
//! gives for an application (`GetApplicationIcon`, hostile bytes) decoded with limits, fitted
//! into [`ICON_SIZE`] pixels, tinted ([`tint`]: every pixel takes the label's hue and
//! saturation and keeps its own lightness, so no part of the picture can show another
//! domain's colour) inside a [`ICON_FRAME`]-pixel frame of the domain's label colour;
//! without a usable icon, a plain square of that colour. Every icon written carries
//! the tEXt marker `X-Bulkhead-Generated: true` ([`is_generated_icon`]): only such files
//! are ever removed.

use std::io::Cursor;

use bulkhead_domain::Label;
use image::{imageops, ImageFormat, ImageReader, Limits, Rgba, RgbaImage};

use crate::GENERATED_KEY;

/// Width and height of every generated icon, in pixels.
pub const ICON_SIZE: u32 = 48;
/// Width of the frame in the domain's colour, in pixels.
pub const ICON_FRAME: u32 = 3;
/// The largest icon file decoded (domaind returns at most 256 KiB).
pub const MAX_ICON_BYTES: usize = 256 * 1024;
/// The widest and highest icon decoded.
pub const MAX_ICON_SIDE: u32 = 512;
/// The most the decoder may allocate: a 512x512 icon of 16-bit RGBA is 2 MiB.
pub const MAX_DECODE_ALLOC: u64 = 4 << 20;
/// The largest file [`is_generated_icon`] looks into (ours are a few KiB).
const MAX_GENERATED_BYTES: u64 = 1 << 20;

/// Why a template's icon is not used (the plain square is drawn instead).
#[derive(Debug, thiserror::Error)]
pub enum IconError {
    #[error("{0} bytes, more than the {MAX_ICON_BYTES} an icon may have")]
    TooLarge(usize),
    #[error("not a PNG within the limits ({MAX_ICON_SIDE}x{MAX_ICON_SIDE}): {0}")]
    Decode(#[from] image::ImageError),
    #[error("the image has no pixels")]
    Empty,
}

/// The colour of label `label` (`red`, `blue`, ...) as RGB; gray for an unknown one.
pub fn label_rgb(label: &str) -> [u8; 3] {
    let l = Label::ALL
        .into_iter()
        .find(|l| l.as_str() == label)
        .unwrap_or(Label::Gray);
    let [_, r, g, b] = l.color_rgb().to_be_bytes();
    [r, g, b]
}

fn opaque([r, g, b]: [u8; 3]) -> Rgba<u8> {
    Rgba([r, g, b, 255])
}

/// The icon of an application without a usable one: a square of the domain's colour.
pub fn plain_icon(rgb: [u8; 3]) -> RgbaImage {
    RgbaImage::from_pixel(ICON_SIZE, ICON_SIZE, opaque(rgb))
}

/// Decodes `png` (a template's, hostile) within the limits: at most [`MAX_ICON_BYTES`],
/// [`MAX_ICON_SIDE`] pixels wide and high, [`MAX_DECODE_ALLOC`] bytes allocated; PNG only.
pub fn decode_icon(png: &[u8]) -> Result<RgbaImage, IconError> {
    if png.len() > MAX_ICON_BYTES {
        return Err(IconError::TooLarge(png.len()));
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_ICON_SIDE);
    limits.max_image_height = Some(MAX_ICON_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    let mut reader = ImageReader::with_format(Cursor::new(png), ImageFormat::Png);
    reader.limits(limits);
    let img = reader.decode()?.into_rgba8();
    if img.width() == 0 || img.height() == 0 {
        return Err(IconError::Empty);
    }
    Ok(img)
}

/// `png` decoded ([`decode_icon`]), scaled to fit inside the frame (aspect kept, centred on
/// a transparent background) and framed in `rgb`: [`ICON_SIZE`] square.
pub fn framed_icon(png: &[u8], rgb: [u8; 3]) -> Result<RgbaImage, IconError> {
    let src = decode_icon(png)?;
    let inner = ICON_SIZE - 2 * ICON_FRAME;
    let (w, h) = (src.width(), src.height());
    // the longer side becomes `inner`; the other at least one pixel
    let (sw, sh) = if w >= h {
        (inner, scaled_side(h, inner, w))
    } else {
        (scaled_side(w, inner, h), inner)
    };
    let scaled = if (sw, sh) == (w, h) {
        src
    } else {
        imageops::resize(&src, sw, sh, imageops::FilterType::Triangle)
    };
    let mut out = RgbaImage::new(ICON_SIZE, ICON_SIZE);
    let x = ICON_FRAME + (inner - sw) / 2;
    let y = ICON_FRAME + (inner - sh) / 2;
    imageops::replace(&mut out, &scaled, i64::from(x), i64::from(y));
    tint(&mut out, rgb);
    draw_frame(&mut out, rgb);
    Ok(out)
}

/// Gives every pixel the hue and saturation of `rgb`, keeping its lightness and alpha (HSL).
pub fn tint(img: &mut RgbaImage, rgb: [u8; 3]) {
    for p in img.pixels_mut() {
        let [r, g, b] = tint_rgb([p[0], p[1], p[2]], rgb);
        *p = Rgba([r, g, b, p[3]]);
    }
}

/// `src` with the hue and saturation of `label`, its own lightness kept.
pub fn tint_rgb(src: [u8; 3], label: [u8; 3]) -> [u8; 3] {
    let (h, s, _) = hsl(label);
    let (_, _, l) = hsl(src);
    from_hsl(h, s, l)
}

/// Hue (0..6), saturation and lightness (0..1) of `rgb`.
fn hsl([r, g, b]: [u8; 3]) -> (f32, f32, f32) {
    let [r, g, b] = [r, g, b].map(|c| f32::from(c) / 255.0);
    let (max, min) = (r.max(g).max(b), r.min(g).min(b));
    let l = (max + min) / 2.0;
    let d = max - min;
    if d <= f32::EPSILON {
        return (0.0, 0.0, l);
    }
    let s = d / (1.0 - (2.0 * l - 1.0).abs()).max(f32::EPSILON);
    let h = if max == r {
        ((g - b) / d).rem_euclid(6.0)
    } else if max == g {
        (b - r) / d + 2.0
    } else {
        (r - g) / d + 4.0
    };
    (h, s.min(1.0), l)
}

fn from_hsl(h: f32, s: f32, l: f32) -> [u8; 3] {
    let c = (1.0 - (2.0 * l - 1.0).abs()) * s;
    let x = c * (1.0 - (h.rem_euclid(2.0) - 1.0).abs());
    let (r, g, b) = match h {
        h if h < 1.0 => (c, x, 0.0),
        h if h < 2.0 => (x, c, 0.0),
        h if h < 3.0 => (0.0, c, x),
        h if h < 4.0 => (0.0, x, c),
        h if h < 5.0 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = l - c / 2.0;
    [r, g, b].map(|v| ((v + m) * 255.0).round().clamp(0.0, 255.0) as u8)
}

/// `side * inner / longer`, rounded, at least 1 and at most `inner`.
fn scaled_side(side: u32, inner: u32, longer: u32) -> u32 {
    let v = (u64::from(side) * u64::from(inner) + u64::from(longer) / 2) / u64::from(longer.max(1));
    u32::try_from(v).unwrap_or(inner).clamp(1, inner)
}

fn draw_frame(img: &mut RgbaImage, rgb: [u8; 3]) {
    let (w, h) = img.dimensions();
    let px = opaque(rgb);
    for (x, y, p) in img.enumerate_pixels_mut() {
        if x < ICON_FRAME || y < ICON_FRAME || x >= w - ICON_FRAME || y >= h - ICON_FRAME {
            *p = px;
        }
    }
}

/// The menu icon of application `id` of `domain` from the template's `png` (empty: none):
/// [`framed_icon`], or [`plain_icon`] when there is none or it is not usable (logged with
/// the domain and id; nothing else stops).
pub fn domain_icon(png: &[u8], rgb: [u8; 3], domain: &str, id: &str) -> RgbaImage {
    if png.is_empty() {
        return plain_icon(rgb);
    }
    framed_icon(png, rgb).unwrap_or_else(|e| {
        tracing::warn!(domain, id, error = %e, "the template's icon is not used; a plain square is drawn");
        plain_icon(rgb)
    })
}

/// `img` as a PNG file with the generated marker (the same bytes for the same image).
pub fn encode_icon(img: &RgbaImage) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, img.width(), img.height());
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    enc.add_text_chunk(GENERATED_KEY.to_owned(), "true".to_owned())?;
    let mut w = enc.write_header()?;
    w.write_image_data(img.as_raw())?;
    w.finish()?;
    Ok(out)
}

/// Whether the file at `path` is an icon this crate wrote (a PNG with the marker tEXt chunk
/// of [`encode_icon`]), read without following a symbolic link.
pub fn is_generated_icon(path: &std::path::Path) -> bool {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return false;
    };
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut bytes = Vec::new();
    if f.take(MAX_GENERATED_BYTES).read_to_end(&mut bytes).is_err() {
        return false;
    }
    let marker = format!("tEXt{GENERATED_KEY}\0true");
    bytes.starts_with(b"\x89PNG\r\n\x1a\n")
        && bytes.windows(marker.len()).any(|w| w == marker.as_bytes())
}

/// For tests of the tint.
#[cfg(test)]
pub(crate) mod test_support {
    /// The hue (0..6) of `rgb`; `None` for a gray (no hue).
    pub fn hue(rgb: [u8; 3]) -> Option<f32> {
        let (h, s, _) = super::hsl(rgb);
        (s > 0.05).then_some(h)
    }
}
