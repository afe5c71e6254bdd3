//! `GuestView`: the widget that shows one guest window's pixels inside a frame in its
//! domain's label colour. The frame is drawn on every side by dom0 and the guest's pixels are
//! clipped to the inside, so a guest can never paint over it.
//!
//! Pixels are kept as a grid of [`crate::tiles::TILE`]-sized `gdk::MemoryTexture`s: a damage
//! rectangle rebuilds only the tiles it touches, and GTK's renderers keep an uploaded texture
//! per texture object, so unchanged tiles are not uploaded again.

use std::cell::RefCell;

use bulkhead_wire::gui::Rect;
use gtk4::prelude::*;
use gtk4::subclass::prelude::*;
use gtk4::{gdk, glib, graphene};

use crate::tiles::TileGrid;

/// Width of the coloured frame around guest pixels, in pixels.
pub const FRAME: u32 = 3;

/// Colour behind guest pixels the guest has not drawn yet (and where a smaller guest buffer
/// leaves the view uncovered).
const BACKGROUND: u32 = 0x202020;

/// `0xRRGGBB` as an opaque GDK colour.
pub fn rgba(rgb: u32) -> gdk::RGBA {
    let c = |shift: u32| ((rgb >> shift) & 0xff) as f32 / 255.0;
    gdk::RGBA::new(c(16), c(8), c(0), 1.0)
}

type SizeCallback = Box<dyn Fn(u32, u32)>;

#[derive(Default)]
pub struct ViewState {
    frame: u32,
    grid: Option<TileGrid>,
    tiles: Vec<Option<gdk::MemoryTexture>>,
    /// Called with the inside size when GTK gives the view a new size.
    on_resize: Option<SizeCallback>,
    allocated: (u32, u32),
}

mod imp {
    use super::*;

    #[derive(Default)]
    pub struct GuestView {
        pub state: RefCell<ViewState>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for GuestView {
        const NAME: &'static str = "BulkheadGuestView";
        type Type = super::GuestView;
        type ParentType = gtk4::Widget;
    }

    impl ObjectImpl for GuestView {}

    impl WidgetImpl for GuestView {
        fn measure(&self, orientation: gtk4::Orientation, _for_size: i32) -> (i32, i32, i32, i32) {
            let st = self.state.borrow();
            let (w, h) = st.grid.map(|g| (g.width, g.height)).unwrap_or((1, 1));
            let n = if orientation == gtk4::Orientation::Horizontal {
                w
            } else {
                h
            };
            let natural = i32::try_from(n + 2 * FRAME).unwrap_or(i32::MAX);
            let min = i32::try_from(2 * FRAME + 1).unwrap_or(1);
            (min, natural.max(min), -1, -1)
        }

        fn size_allocate(&self, width: i32, height: i32, baseline: i32) {
            self.parent_size_allocate(width, height, baseline);
            let inside = (
                u32::try_from(width).unwrap_or(0).saturating_sub(2 * FRAME),
                u32::try_from(height).unwrap_or(0).saturating_sub(2 * FRAME),
            );
            let st = self.state.borrow();
            let changed = st.allocated != inside;
            drop(st);
            if changed {
                self.state.borrow_mut().allocated = inside;
                if inside.0 > 0 && inside.1 > 0 {
                    if let Some(cb) = self.state.borrow().on_resize.as_ref() {
                        cb(inside.0, inside.1);
                    }
                }
            }
        }

        fn snapshot(&self, snapshot: &gtk4::Snapshot) {
            let widget = self.obj();
            let (w, h) = (widget.width() as f32, widget.height() as f32);
            let st = self.state.borrow();
            let f = st.frame;
            snapshot.append_color(&rgba(f), &graphene::Rect::new(0.0, 0.0, w, h));
            let b = FRAME as f32;
            let (iw, ih) = (w - 2.0 * b, h - 2.0 * b);
            if iw <= 0.0 || ih <= 0.0 {
                return;
            }
            let inside = graphene::Rect::new(b, b, iw, ih);
            snapshot.push_clip(&inside);
            snapshot.append_color(&rgba(BACKGROUND), &inside);
            if let Some(grid) = st.grid {
                for row in 0..grid.rows() {
                    for col in 0..grid.cols() {
                        let Some(Some(tex)) = st.tiles.get(grid.index(col, row)) else {
                            continue;
                        };
                        let r = grid.tile_rect(col, row);
                        snapshot.append_texture(
                            tex,
                            &graphene::Rect::new(
                                b + r.x as f32,
                                b + r.y as f32,
                                r.width as f32,
                                r.height as f32,
                            ),
                        );
                    }
                }
            }
            snapshot.pop();
        }
    }
}

glib::wrapper! {
    /// A guest window's pixels in a coloured frame.
    pub struct GuestView(ObjectSubclass<imp::GuestView>) @extends gtk4::Widget;
}

impl GuestView {
    /// An empty view framed in `frame_rgb` (`0xRRGGBB`).
    pub fn new(frame_rgb: u32) -> Self {
        let v: Self = glib::Object::new();
        v.imp().state.borrow_mut().frame = frame_rgb;
        v.set_focusable(true);
        v.set_can_focus(true);
        v
    }

    /// Calls `f(width, height)` when GTK gives the inside of the frame a new size.
    pub fn on_resize(&self, f: impl Fn(u32, u32) + 'static) {
        self.imp().state.borrow_mut().on_resize = Some(Box::new(f));
    }

    /// The size GTK gave the inside of the frame.
    pub fn allocated(&self) -> (u32, u32) {
        self.imp().state.borrow().allocated
    }

    /// The guest buffer size shown.
    pub fn guest_size(&self) -> Option<(u32, u32)> {
        self.imp().state.borrow().grid.map(|g| (g.width, g.height))
    }

    /// Shows a `width` x `height` buffer: on a new size every tile is rebuilt (and the view
    /// asks for a new size); otherwise only tiles touched by `damage`. `pixels` is the
    /// window's packed B,G,R,A buffer (premultiplied, as wl_shm).
    pub fn update(&self, pixels: &[u8], width: u32, height: u32, damage: &[Rect]) {
        let mut st = self.imp().state.borrow_mut();
        let grid = TileGrid::new(width, height);
        let resized = st.grid != Some(grid);
        let dirty: Vec<usize> = if resized {
            st.grid = Some(grid);
            st.tiles = vec![None; grid.len()];
            (0..grid.len()).collect()
        } else {
            let mut v: Vec<usize> = damage.iter().flat_map(|r| grid.touched(*r)).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        if dirty.is_empty() {
            return;
        }
        for i in dirty {
            let cols = grid.cols().max(1);
            let (col, row) = (i as u32 % cols, i as u32 / cols);
            let r = grid.tile_rect(col, row);
            if r.width == 0 || r.height == 0 {
                continue;
            }
            let bytes = glib::Bytes::from_owned(grid.copy_tile(pixels, r));
            let tex = gdk::MemoryTexture::new(
                r.width as i32,
                r.height as i32,
                gdk::MemoryFormat::B8g8r8a8Premultiplied,
                &bytes,
                r.width as usize * 4,
            );
            if let Some(slot) = st.tiles.get_mut(i) {
                *slot = Some(tex);
            }
        }
        drop(st);
        if resized {
            self.queue_resize();
        }
        self.queue_draw();
    }

    /// Guest coordinates of a point in the view (the frame is subtracted).
    pub fn to_guest(&self, x: f64, y: f64) -> (i32, i32) {
        let f = f64::from(FRAME);
        let clamp = |v: f64| v.clamp(-16384.0, 16384.0) as i32;
        (clamp(x - f), clamp(y - f))
    }
}
