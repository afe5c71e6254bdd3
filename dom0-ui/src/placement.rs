//! Where a new window goes when no window manager places it (a bare X server such as the test
//! Xvfb): the first spot on a grid, scanned row by row, that overlaps no window already
//! shown; if none is free, a cascade from the top left.

/// A rectangle on the screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Area {
    /// Left.
    pub x: i32,
    /// Top.
    pub y: i32,
    /// Width.
    pub width: i32,
    /// Height.
    pub height: i32,
}

impl Area {
    fn overlaps(&self, o: &Area) -> bool {
        self.x < o.x + o.width
            && o.x < self.x + self.width
            && self.y < o.y + o.height
            && o.y < self.y + self.height
    }
}

/// Grid step of the scan.
const STEP: i32 = 16;
/// Gap kept between windows.
const GAP: i32 = 8;

/// Position for a `width` x `height` window on a `screen` sized screen next to `taken`.
pub fn place(screen: (i32, i32), taken: &[Area], width: i32, height: i32) -> (i32, i32) {
    let fits = |x: i32, y: i32| {
        let a = Area {
            x,
            y,
            width: width + GAP,
            height: height + GAP,
        };
        !taken.iter().any(|t| a.overlaps(t))
    };
    let max_x = screen.0 - width;
    let max_y = screen.1 - height;
    let mut y = 0;
    while y <= max_y {
        let mut x = 0;
        while x <= max_x {
            if fits(x, y) {
                return (x, y);
            }
            x += STEP;
        }
        y += STEP;
    }
    // Screen full (or the window is bigger than it): cascade.
    let n = i32::try_from(taken.len()).unwrap_or(0) % 10;
    ((n * 32).min(max_x.max(0)), (n * 32).min(max_y.max(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_window_top_left_next_ones_beside_or_below() {
        assert_eq!(place((1280, 1024), &[], 400, 300), (0, 0));
        let a = Area {
            x: 0,
            y: 0,
            width: 400,
            height: 300,
        };
        let (x, y) = place((1280, 1024), &[a], 400, 300);
        assert_eq!(y, 0);
        assert!(x >= 400, "{x}");
        // A wide window that does not fit beside goes below.
        let (x, y) = place((1280, 1024), &[a], 1000, 300);
        assert_eq!(x, 0);
        assert!(y >= 300, "{y}");
    }

    #[test]
    fn full_screen_cascades_and_stays_on_screen() {
        let full = Area {
            x: 0,
            y: 0,
            width: 1280,
            height: 1024,
        };
        let (x, y) = place((1280, 1024), &[full, full], 400, 300);
        assert_eq!((x, y), (64, 64));
        assert_eq!(place((1280, 1024), &[full], 2000, 2000), (0, 0));
    }
}
