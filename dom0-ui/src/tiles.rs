//! Damage to tiles: a guest window's pixels are shown as a grid of square tiles, each its own
//! GPU/cairo texture, so a damage rectangle re-uploads only the tiles it touches (GTK 4.8 has
//! no `MemoryTextureBuilder::set_update_region`, which came with 4.16). This module is the
//! geometry and the copying, without GTK.

use bulkhead_wire::gui::Rect;

/// Edge of a tile in pixels.
pub const TILE: u32 = 128;

/// Damage rectangles kept per window between two redraws; more are merged into their
/// bounding box.
pub const MAX_RECTS: usize = 32;

/// The tile grid of a `width` x `height` window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileGrid {
    /// Window width.
    pub width: u32,
    /// Window height.
    pub height: u32,
}

impl TileGrid {
    /// The grid of a window of this size.
    pub fn new(width: u32, height: u32) -> Self {
        Self { width, height }
    }

    /// Tile columns.
    pub fn cols(&self) -> u32 {
        self.width.div_ceil(TILE)
    }

    /// Tile rows.
    pub fn rows(&self) -> u32 {
        self.height.div_ceil(TILE)
    }

    /// Number of tiles.
    pub fn len(&self) -> usize {
        self.cols() as usize * self.rows() as usize
    }

    /// Whether the window has no pixels.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Index of tile (col, row).
    pub fn index(&self, col: u32, row: u32) -> usize {
        row as usize * self.cols() as usize + col as usize
    }

    /// The pixels tile (col, row) covers (edge tiles are smaller).
    pub fn tile_rect(&self, col: u32, row: u32) -> Rect {
        let x = col * TILE;
        let y = row * TILE;
        Rect {
            x,
            y,
            width: TILE.min(self.width.saturating_sub(x)),
            height: TILE.min(self.height.saturating_sub(y)),
        }
    }

    /// Indices of the tiles `rect` touches (clipped to the window; empty when outside).
    pub fn touched(&self, rect: Rect) -> Vec<usize> {
        let x0 = rect.x.min(self.width);
        let y0 = rect.y.min(self.height);
        let x1 = rect.x.saturating_add(rect.width).min(self.width);
        let y1 = rect.y.saturating_add(rect.height).min(self.height);
        if x0 >= x1 || y0 >= y1 {
            return Vec::new();
        }
        let mut out = Vec::new();
        for row in y0 / TILE..=(y1 - 1) / TILE {
            for col in x0 / TILE..=(x1 - 1) / TILE {
                out.push(self.index(col, row));
            }
        }
        out
    }

    /// Copies tile `rect` out of a packed `width * height * 4` buffer (rows of `rect.width *
    /// 4` bytes). A buffer of the wrong size (never from gui-host) gives a zeroed tile.
    pub fn copy_tile(&self, pixels: &[u8], rect: Rect) -> Vec<u8> {
        let row_len = rect.width as usize * 4;
        let stride = self.width as usize * 4;
        let mut out = vec![0u8; row_len * rect.height as usize];
        for (i, dst) in out.chunks_exact_mut(row_len.max(1)).enumerate() {
            let start = (rect.y as usize + i) * stride + rect.x as usize * 4;
            if let Some(src) = pixels.get(start..start + row_len) {
                dst.copy_from_slice(src);
            }
        }
        out
    }
}

/// Adds `rect` to a window's pending damage, merging everything into one bounding box once
/// there are more than [`MAX_RECTS`].
pub fn add_damage(list: &mut Vec<Rect>, rect: Rect) {
    list.push(rect);
    if list.len() > MAX_RECTS {
        let b = bounding(list);
        list.clear();
        list.push(b);
    }
}

/// The bounding box of `rects` (a zero rectangle for none).
pub fn bounding(rects: &[Rect]) -> Rect {
    let Some(first) = rects.first() else {
        return Rect {
            x: 0,
            y: 0,
            width: 0,
            height: 0,
        };
    };
    let (mut x0, mut y0) = (first.x, first.y);
    let (mut x1, mut y1) = (
        first.x.saturating_add(first.width),
        first.y.saturating_add(first.height),
    );
    for r in &rects[1..] {
        x0 = x0.min(r.x);
        y0 = y0.min(r.y);
        x1 = x1.max(r.x.saturating_add(r.width));
        y1 = y1.max(r.y.saturating_add(r.height));
    }
    Rect {
        x: x0,
        y: y0,
        width: x1 - x0,
        height: y1 - y0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(x: u32, y: u32, width: u32, height: u32) -> Rect {
        Rect {
            x,
            y,
            width,
            height,
        }
    }

    #[test]
    fn grid_covers_the_window_with_smaller_edge_tiles() {
        let g = TileGrid::new(300, 130);
        assert_eq!((g.cols(), g.rows(), g.len()), (3, 2, 6));
        assert_eq!(g.tile_rect(2, 1), r(256, 128, 44, 2));
        assert_eq!(g.tile_rect(0, 0), r(0, 0, 128, 128));
        assert!(TileGrid::new(0, 10).is_empty());
    }

    #[test]
    fn damage_touches_only_its_tiles() {
        let g = TileGrid::new(300, 300);
        // One pixel: one tile.
        assert_eq!(g.touched(r(130, 5, 1, 1)), vec![1]);
        // On a tile edge: the rectangle ends before x=128.
        assert_eq!(g.touched(r(0, 0, 128, 128)), vec![0]);
        assert_eq!(g.touched(r(127, 127, 2, 2)), vec![0, 1, 3, 4]);
        // Clipped to the window; outside it: nothing.
        assert_eq!(g.touched(r(290, 290, 50, 50)), vec![8]);
        assert!(g.touched(r(300, 0, 5, 5)).is_empty());
        assert!(g.touched(r(5, 5, 0, 5)).is_empty());
        assert!(g.touched(r(u32::MAX, u32::MAX, u32::MAX, 9)).is_empty());
        // Whole window: every tile once.
        assert_eq!(g.touched(r(0, 0, 300, 300)), (0..9).collect::<Vec<_>>());
    }

    #[test]
    fn copy_tile_takes_the_right_rows() {
        let g = TileGrid::new(3, 2);
        let px: Vec<u8> = (0..3 * 2 * 4).map(|i| i as u8).collect();
        assert_eq!(
            g.copy_tile(&px, r(1, 1, 2, 1)),
            (16..24).collect::<Vec<u8>>()
        );
        // A short buffer never panics.
        assert_eq!(g.copy_tile(&px[..4], r(1, 1, 2, 1)), vec![0; 8]);
    }

    #[test]
    fn damage_lists_are_bounded() {
        let mut l = Vec::new();
        for i in 0..MAX_RECTS as u32 {
            add_damage(&mut l, r(i, i, 1, 1));
        }
        assert_eq!(l.len(), MAX_RECTS);
        add_damage(&mut l, r(100, 50, 10, 10));
        assert_eq!(l, vec![r(0, 0, 110, 60)]);
    }
}
