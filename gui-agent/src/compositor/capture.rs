//! Capture: the damaged parts of each committed wl_shm buffer are copied into the window's
//! own pixels; pending damage is encoded into DAMAGE messages when the dom0 link has room,
//! and frame callbacks fire when it has gone out.

use std::time::Instant;

use bulkhead_wire::gui::{self as wire, AgentMsg, PixelFormat, Rect, MAX_HEIGHT, MAX_WIDTH};
use smithay::reexports::wayland_server::protocol::wl_buffer::WlBuffer;
use smithay::reexports::wayland_server::protocol::wl_output::Transform as WlTransform;
use smithay::reexports::wayland_server::protocol::wl_shm;
use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
use smithay::wayland::compositor::{with_states, BufferAssignment, Damage, SurfaceAttributes};
use smithay::wayland::shell::xdg::SurfaceCachedState;
use smithay::wayland::shm::with_buffer_contents;
use tracing::{info, warn};

use super::state::{surface_title, window_intro, Agent, Role, Window};

/// Stop encoding new damage while this many bytes wait for dom0.
const HIGH_WATER: usize = 24 << 20;
/// Frame callbacks are held while more than this waits for dom0 (clients pace to the link).
const LOW_WATER: usize = 4 << 20;
/// More damage rectangles than this in one pending set are merged into their bounding box.
const MAX_RECTS: usize = 16;
/// Damage messages carry at most this many pixel bytes (large rectangles go in bands).
const MAX_DAMAGE_BYTES: usize = 4 << 20;
/// Room reserved for one damage message's header (frame header + damage fields).
const DAMAGE_HEADER_ROOM: usize = 64;

/// Why a committed buffer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("buffer is not a wl_shm buffer (only wl_shm is offered)")]
    NotShm,
    #[error("wl_shm pool is unreadable (client truncated it)")]
    BadPool,
    #[error("unsupported wl_shm format {0:?} (argb8888/xrgb8888 only)")]
    Format(wl_shm::Format),
    #[error("buffer geometry {width}x{height} stride {stride} offset {offset} does not fit a pool of {pool} bytes or the size limit")]
    Geometry {
        width: i32,
        height: i32,
        stride: i32,
        offset: i32,
        pool: usize,
    },
}

impl Agent {
    /// Sends pending damage while the link has room and fires frame callbacks that are due.
    pub fn flush(&mut self) {
        let now = Instant::now();
        let backlog = match &self.link {
            Some(link) if link.alive() => Some(link.backlog()),
            Some(_) => {
                info!("dom0 link closed");
                self.link = None;
                None
            }
            None => None,
        };
        match (&self.link, backlog) {
            (Some(link), Some(mut backlog)) => {
                for (&id, w) in self.windows.iter_mut() {
                    if backlog > HIGH_WATER {
                        break;
                    }
                    if !w.announced || w.pending.is_empty() {
                        continue;
                    }
                    let buf = encode_damage(id, w);
                    backlog += buf.len();
                    link.send(buf);
                }
            }
            _ => {
                for w in self.windows.values_mut() {
                    w.pending.clear();
                }
            }
        }
        let backlog = self.link.as_ref().map_or(0, |l| l.backlog());
        if backlog > LOW_WATER {
            return;
        }
        let time = self.now_ms();
        for w in self.windows.values_mut() {
            if w.pending.is_empty()
                && !w.callbacks.is_empty()
                && now.duration_since(w.last_frame) >= self.opts.frame_interval
            {
                w.last_frame = now;
                for cb in w.callbacks.drain(..) {
                    cb.done(time);
                }
            }
        }
        for cb in self.other_callbacks.drain(..) {
            cb.done(time);
        }
    }

    /// Reads the committed state of a window's surface: new buffer, damage, frame callbacks.
    pub(super) fn commit_window(&mut self, id: u32, surface: &WlSurface) {
        let (buffer, damage, callbacks, scale, transform, geometry) =
            with_states(surface, |states| {
                let geometry = states
                    .cached_state
                    .get::<SurfaceCachedState>()
                    .current()
                    .geometry
                    .map(|g| (g.loc.x, g.loc.y, g.size.w, g.size.h));
                let mut guard = states.cached_state.get::<SurfaceAttributes>();
                let attrs = guard.current();
                (
                    attrs.buffer.take(),
                    std::mem::take(&mut attrs.damage),
                    std::mem::take(&mut attrs.frame_callbacks),
                    attrs.buffer_scale,
                    attrs.buffer_transform,
                    geometry,
                )
            });
        let (title, app_id) = surface_title(surface);
        let mut msgs = Vec::new();
        let Some(w) = self.windows.get_mut(&id) else {
            return;
        };
        w.callbacks.extend(callbacks);
        match buffer {
            Some(BufferAssignment::NewBuffer(buf)) => {
                let res = capture(w, &buf, &damage, scale, transform, geometry);
                buf.release();
                match res {
                    Ok(resized) => {
                        if !w.announced {
                            w.announced = true;
                            w.mapped = true;
                            w.title = title;
                            w.app_id = app_id;
                            msgs = window_intro(id, w);
                        } else {
                            if resized {
                                msgs.push(AgentMsg::Configure {
                                    window: id,
                                    x: w.pos.0,
                                    y: w.pos.1,
                                    width: w.width,
                                    height: w.height,
                                });
                            }
                            if !w.mapped {
                                w.mapped = true;
                                msgs.push(AgentMsg::Map { window: id });
                            }
                        }
                    }
                    Err(e) => warn!(window = id, error = %e, "committed buffer ignored"),
                }
                self.output.enter(surface);
            }
            Some(BufferAssignment::Removed) => {
                if w.mapped {
                    w.mapped = false;
                    w.pending.clear();
                    msgs.push(AgentMsg::Unmap { window: id });
                }
                // an unmapped toplevel gets a new initial configure when it maps again
                if let Role::Toplevel(t) = &w.role {
                    t.reset_initial_configure_sent();
                }
            }
            None => {}
        }
        for m in msgs {
            self.send(&m);
        }
    }
}

/// Encodes a window's pending damage from its pixel copy and clears it.
fn encode_damage(id: u32, w: &mut Window) -> Vec<u8> {
    let mut rects = std::mem::take(&mut w.pending);
    if rects.len() > MAX_RECTS {
        let first = rects[0];
        rects = vec![rects[1..].iter().fold(first, |a, r| a.union(*r))];
    }
    let stride = w.width as usize * 4;
    // One allocation for the whole message: growing it by doubling cost a full-frame copy
    // or two per frame.
    let pixel_bytes: usize = rects
        .iter()
        .map(|r| r.width as usize * 4 * r.height as usize)
        .sum();
    let bands: usize = rects
        .iter()
        .map(|r| {
            let band = (MAX_DAMAGE_BYTES / (r.width as usize * 4).max(1)).max(1);
            (r.height as usize).div_ceil(band)
        })
        .sum();
    let mut out = Vec::with_capacity(pixel_bytes + bands * DAMAGE_HEADER_ROOM);
    for r in rects {
        let row_bytes = r.width as usize * 4;
        let band = (MAX_DAMAGE_BYTES / row_bytes.max(1)).max(1) as u32;
        let mut y = r.y;
        while y < r.y + r.height {
            let h = band.min(r.y + r.height - y);
            let rect = Rect {
                x: r.x,
                y,
                width: r.width,
                height: h,
            };
            out.extend_from_slice(&wire::damage_prefix(id, rect, w.format));
            for row in y..y + h {
                let start = row as usize * stride + r.x as usize * 4;
                out.extend_from_slice(&w.pixels[start..start + row_bytes]);
            }
            y += h;
        }
    }
    out
}

/// The part of a `width` x `height` buffer that is the window: the client's xdg window
/// geometry (`x, y, w, h` in surface coordinates, times `scale`), clipped to the buffer, or
/// the whole buffer without one (or with a transform, which the crop does not follow).
fn window_crop(
    geometry: Option<(i32, i32, i32, i32)>,
    scale: i32,
    transform: WlTransform,
    width: u32,
    height: u32,
) -> Rect {
    let full = Rect {
        x: 0,
        y: 0,
        width,
        height,
    };
    let s = i64::from(scale.max(1));
    geometry
        .filter(|_| transform == WlTransform::Normal)
        .and_then(|(x, y, w, h)| {
            Rect::clipped(
                i64::from(x) * s,
                i64::from(y) * s,
                i64::from(w) * s,
                i64::from(h) * s,
                width,
                height,
            )
        })
        .unwrap_or(full)
}

/// Copies the damaged parts of a committed wl_shm buffer that lie in the window (its
/// geometry, [`window_crop`]) into the window's pixel copy. Returns whether the window's
/// size changed.
fn capture(
    w: &mut Window,
    buf: &WlBuffer,
    damage: &[Damage],
    scale: i32,
    transform: WlTransform,
    geometry: Option<(i32, i32, i32, i32)>,
) -> Result<bool, CaptureError> {
    let res = with_buffer_contents(buf, |ptr, pool_len, data| {
        let format = match data.format {
            wl_shm::Format::Argb8888 => PixelFormat::Argb8888,
            wl_shm::Format::Xrgb8888 => PixelFormat::Xrgb8888,
            other => return Err(CaptureError::Format(other)),
        };
        let geometry_err = || CaptureError::Geometry {
            width: data.width,
            height: data.height,
            stride: data.stride,
            offset: data.offset,
            pool: pool_len,
        };
        let (width, height) = (data.width, data.height);
        if width <= 0
            || height <= 0
            || width as u32 > MAX_WIDTH
            || height as u32 > MAX_HEIGHT
            || data.offset < 0
            || (data.stride as i64) < width as i64 * 4
        {
            return Err(geometry_err());
        }
        let (width, height, stride, offset) = (
            width as usize,
            height as usize,
            data.stride as usize,
            data.offset as usize,
        );
        let end = stride
            .checked_mul(height - 1)
            .and_then(|n| n.checked_add(width * 4))
            .and_then(|n| n.checked_add(offset));
        if end.is_none_or(|end| end > pool_len) {
            return Err(geometry_err());
        }
        // SAFETY: smithay maps the pool for `pool_len` bytes and keeps it mapped for the
        // duration of this closure; a concurrent truncation by the client raises SIGBUS, which
        // smithay's pool guard turns into an error for this call.
        let pool = unsafe { std::slice::from_raw_parts(ptr, pool_len) };
        let crop = window_crop(geometry, scale, transform, width as u32, height as u32);
        let resized = crop.width != w.width || crop.height != w.height;
        let moved = (crop.x, crop.y) != w.crop;
        // The window's own pixels, in the window's coordinates.
        let full = Rect {
            x: 0,
            y: 0,
            width: crop.width,
            height: crop.height,
        };
        let mut rects: Vec<Rect> = Vec::new();
        if resized || moved || w.pending.len() > MAX_RECTS || transform != WlTransform::Normal {
            rects.push(full);
        } else {
            let s = scale.max(1) as i64;
            let (cx, cy) = (i64::from(crop.x), i64::from(crop.y));
            for d in damage {
                let (x, y, dw, dh) = match d {
                    Damage::Buffer(r) => (
                        r.loc.x as i64,
                        r.loc.y as i64,
                        r.size.w as i64,
                        r.size.h as i64,
                    ),
                    Damage::Surface(r) => (
                        r.loc.x as i64 * s,
                        r.loc.y as i64 * s,
                        r.size.w as i64 * s,
                        r.size.h as i64 * s,
                    ),
                };
                rects.extend(Rect::clipped(
                    x - cx,
                    y - cy,
                    dw,
                    dh,
                    full.width,
                    full.height,
                ));
            }
            if rects.len() > MAX_RECTS {
                let first = rects[0];
                rects = vec![rects[1..].iter().fold(first, |a, r| a.union(*r))];
            }
        }
        if resized {
            w.width = crop.width;
            w.height = crop.height;
            w.pixels = vec![0; crop.width as usize * crop.height as usize * 4];
            w.pending.clear();
        }
        w.crop = (crop.x, crop.y);
        w.scale = scale.max(1);
        w.format = format;
        let dst_stride = crop.width as usize * 4;
        for r in &rects {
            let n = r.width as usize * 4;
            for row in r.y as usize..(r.y + r.height) as usize {
                let src = offset + (row + crop.y as usize) * stride + (r.x + crop.x) as usize * 4;
                let dst = row * dst_stride + r.x as usize * 4;
                w.pixels[dst..dst + n].copy_from_slice(&pool[src..src + n]);
            }
        }
        w.pending.extend(rects);
        Ok(resized)
    });
    match res {
        Ok(r) => r,
        Err(smithay::wayland::shm::BufferAccessError::NotManaged) => Err(CaptureError::NotShm),
        Err(_) => Err(CaptureError::BadPool),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_its_geometry_within_the_buffer() {
        let n = WlTransform::Normal;
        let r = |x, y, width, height| Rect {
            x,
            y,
            width,
            height,
        };
        assert_eq!(window_crop(None, 1, n, 340, 260), r(0, 0, 340, 260));
        assert_eq!(
            window_crop(Some((10, 10, 320, 240)), 1, n, 340, 260),
            r(10, 10, 320, 240),
            "shadows cropped"
        );
        assert_eq!(
            window_crop(Some((10, 10, 320, 240)), 2, n, 680, 520),
            r(20, 20, 640, 480),
            "scaled"
        );
        assert_eq!(
            window_crop(Some((-5, 250, 400, 100)), 1, n, 340, 260),
            r(0, 250, 340, 10),
            "clipped to the buffer"
        );
        assert_eq!(
            window_crop(Some((400, 0, 10, 10)), 1, n, 340, 260),
            r(0, 0, 340, 260),
            "outside the buffer: the whole buffer"
        );
        assert_eq!(
            window_crop(Some((10, 10, 20, 20)), 1, WlTransform::_90, 340, 260),
            r(0, 0, 340, 260),
            "not with a transform"
        );
    }
}
