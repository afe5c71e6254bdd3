//! A small wl_shm Wayland client that draws a known pattern: used by the integration tests
//! (pixels received by dom0 are compared with [`pattern`]) and by the benchmark.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Instant;

use wayland_client::globals::{registry_queue_init, GlobalListContents};
use wayland_client::protocol::{
    wl_buffer, wl_callback, wl_compositor, wl_registry, wl_shm, wl_shm_pool, wl_surface,
};
use wayland_client::{Connection, Dispatch, EventQueue, QueueHandle};
use wayland_protocols::xdg::shell::client::{xdg_surface, xdg_toplevel, xdg_wm_base};

/// The colour the test client gives pixel (x, y) of frame `frame` (XRGB8888 as a u32).
pub fn pattern(frame: u32, x: u32, y: u32) -> u32 {
    0xff00_0000
        | ((x.wrapping_add(frame) & 0xff) << 16)
        | ((y.wrapping_mul(3).wrapping_add(frame) & 0xff) << 8)
        | ((x ^ y) & 0xff)
}

/// Frame number (mod 256) encoded at (x, y) by [`pattern`].
pub fn frame_of(pixel: u32, x: u32) -> u32 {
    (((pixel >> 16) & 0xff).wrapping_sub(x & 0xff)) & 0xff
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {0}: {1}")]
    Connect(String, String),
    #[error("Wayland: {0}")]
    Wayland(String),
    #[error("shared memory: {0}")]
    Shm(String),
    #[error("the compositor closed the window")]
    Closed,
}

fn wl<E: std::fmt::Display>(e: E) -> ClientError {
    ClientError::Wayland(e.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cb {
    Frame,
    Sync,
}

struct Buf {
    buffer: wl_buffer::WlBuffer,
    busy: bool,
    drawn: bool,
}

#[derive(Default)]
struct State {
    _wm_base: Option<xdg_wm_base::XdgWmBase>,
    configured: bool,
    /// Size from the last toplevel configure (0 = client's choice).
    requested: (i32, i32),
    closed: bool,
    frame_done: bool,
    sync_done: bool,
    released: Vec<usize>,
}

/// A window drawing [`pattern`] frames through wl_shm.
pub struct TestClient {
    _conn: Connection,
    queue: EventQueue<State>,
    qh: QueueHandle<State>,
    state: State,
    shm: wl_shm::WlShm,
    surface: wl_surface::WlSurface,
    _xdg_surface: xdg_surface::XdgSurface,
    _toplevel: xdg_toplevel::XdgToplevel,
    file: File,
    bufs: Vec<Buf>,
    /// The buffer's size (the window's plus [`TestClient::shadow`] on every side).
    pub width: u32,
    pub height: u32,
    /// A margin drawn around the window, outside its xdg window geometry, as clients draw
    /// their shadows (0: none, no window geometry set).
    pub shadow: u32,
    frame: Vec<u8>,
}

/// How much of the window a frame changes.
#[derive(Debug, Clone, Copy)]
pub enum DamageKind {
    Full,
    /// A square of this side at (side, side).
    Square(u32),
}

const NBUF: usize = 3;

impl TestClient {
    /// Connects to the compositor socket at `socket` and maps a `width`x`height` window.
    pub fn connect(
        socket: &Path,
        title: &str,
        width: u32,
        height: u32,
    ) -> Result<Self, ClientError> {
        Self::connect_with_shadow(socket, title, width, height, 0)
    }

    /// [`TestClient::connect`], the buffer having `shadow` pixels around the window, outside
    /// the window geometry it sets.
    pub fn connect_with_shadow(
        socket: &Path,
        title: &str,
        width: u32,
        height: u32,
        shadow: u32,
    ) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(socket)
            .map_err(|e| ClientError::Connect(socket.display().to_string(), e.to_string()))?;
        let conn = Connection::from_socket(stream).map_err(wl)?;
        let (globals, mut queue) = registry_queue_init::<State>(&conn).map_err(wl)?;
        let qh = queue.handle();
        let compositor: wl_compositor::WlCompositor = globals.bind(&qh, 1..=4, ()).map_err(wl)?;
        let shm: wl_shm::WlShm = globals.bind(&qh, 1..=1, ()).map_err(wl)?;
        let wm_base: xdg_wm_base::XdgWmBase = globals.bind(&qh, 1..=2, ()).map_err(wl)?;
        let surface = compositor.create_surface(&qh, ());
        let xdg_surface = wm_base.get_xdg_surface(&surface, &qh, ());
        let toplevel = xdg_surface.get_toplevel(&qh, ());
        toplevel.set_title(title.to_string());
        toplevel.set_app_id("bulkhead-gui-testclient".to_string());
        surface.commit();
        let mut state = State {
            _wm_base: Some(wm_base),
            ..State::default()
        };
        while !state.configured {
            queue.blocking_dispatch(&mut state).map_err(wl)?;
        }
        let fd = nix::sys::memfd::memfd_create(
            c"bulkhead-testclient",
            nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
        )
        .map_err(|e| ClientError::Shm(e.to_string()))?;
        let mut c = TestClient {
            _conn: conn,
            queue,
            qh,
            state,
            shm,
            surface,
            _xdg_surface: xdg_surface,
            _toplevel: toplevel,
            file: File::from(fd),
            bufs: Vec::new(),
            width: 0,
            height: 0,
            shadow,
            frame: Vec::new(),
        };
        let (w, h) = c.state.requested;
        let (w, h) = if w > 0 && h > 0 {
            (w as u32, h as u32)
        } else {
            (width, height)
        };
        c.resize(w, h)?;
        Ok(c)
    }

    /// A `width` x `height` window: its buffer is that plus the shadow on every side.
    fn resize(&mut self, width: u32, height: u32) -> Result<(), ClientError> {
        for b in self.bufs.drain(..) {
            b.buffer.destroy();
        }
        if self.shadow > 0 {
            let s = self.shadow as i32;
            self._xdg_surface
                .set_window_geometry(s, s, width as i32, height as i32);
        }
        let (width, height) = (width + 2 * self.shadow, height + 2 * self.shadow);
        let size = width as usize * height as usize * 4;
        self.file
            .set_len((size * NBUF) as u64)
            .map_err(|e| ClientError::Shm(e.to_string()))?;
        let pool = self.shm.create_pool(
            std::os::fd::AsFd::as_fd(&self.file),
            (size * NBUF) as i32,
            &self.qh,
            (),
        );
        for i in 0..NBUF {
            let buffer = pool.create_buffer(
                (i * size) as i32,
                width as i32,
                height as i32,
                width as i32 * 4,
                wl_shm::Format::Xrgb8888,
                &self.qh,
                i,
            );
            self.bufs.push(Buf {
                buffer,
                busy: false,
                drawn: false,
            });
        }
        pool.destroy();
        self.width = width;
        self.height = height;
        self.frame = vec![0; size];
        self.state.released.clear();
        Ok(())
    }

    /// Size the compositor asked for in its last configure, if any and different.
    pub fn requested_resize(&self) -> Option<(u32, u32)> {
        let (w, h) = self.state.requested;
        let window = (
            self.width.saturating_sub(2 * self.shadow),
            self.height.saturating_sub(2 * self.shadow),
        );
        (w > 0 && h > 0 && (w as u32, h as u32) != window).then_some((w as u32, h as u32))
    }

    pub fn closed(&self) -> bool {
        self.state.closed
    }

    fn pump(&mut self) -> Result<(), ClientError> {
        self.queue.blocking_dispatch(&mut self.state).map_err(wl)?;
        for i in self.state.released.drain(..) {
            if let Some(b) = self.bufs.get_mut(i) {
                b.busy = false;
            }
        }
        if self.state.closed {
            return Err(ClientError::Closed);
        }
        Ok(())
    }

    /// Draws frame `n` (whole window or a square), commits it and returns the commit time.
    /// Follows a pending configure size first. With `want_frame`, asks for a frame callback.
    pub fn draw(
        &mut self,
        n: u32,
        damage: DamageKind,
        want_frame: bool,
    ) -> Result<Instant, ClientError> {
        if let Some((w, h)) = self.requested_resize() {
            self.resize(w, h)?;
        }
        self.queue.dispatch_pending(&mut self.state).map_err(wl)?;
        let idx = loop {
            for i in self.state.released.drain(..) {
                if let Some(b) = self.bufs.get_mut(i) {
                    b.busy = false;
                }
            }
            if let Some(i) = self.bufs.iter().position(|b| !b.busy) {
                break i;
            }
            self.pump()?;
        };
        let (w, h) = (self.width, self.height);
        let (x0, y0, dw, dh) = match damage {
            DamageKind::Full => (0, 0, w, h),
            DamageKind::Square(s) => (
                s.min(w),
                s.min(h),
                s.min(w.saturating_sub(s)),
                s.min(h.saturating_sub(s)),
            ),
        };
        let full = !self.bufs[idx].drawn;
        let stride = w as usize * 4;
        if full && !matches!(damage, DamageKind::Full) {
            // background of a fresh buffer: frame 0
            for y in 0..h {
                for x in 0..w {
                    let o = y as usize * stride + x as usize * 4;
                    self.frame[o..o + 4].copy_from_slice(&pattern(0, x, y).to_le_bytes());
                }
            }
        }
        for y in y0..y0 + dh {
            for x in x0..x0 + dw {
                let o = y as usize * stride + x as usize * 4;
                self.frame[o..o + 4].copy_from_slice(&pattern(n, x, y).to_le_bytes());
            }
        }
        let base = idx * stride * h as usize;
        let io = |e: std::io::Error| ClientError::Shm(e.to_string());
        if full || matches!(damage, DamageKind::Full) {
            self.file
                .write_all_at(&self.frame, base as u64)
                .map_err(io)?;
        } else {
            for y in y0..y0 + dh {
                let o = y as usize * stride + x0 as usize * 4;
                self.file
                    .write_all_at(&self.frame[o..o + dw as usize * 4], (base + o) as u64)
                    .map_err(io)?;
            }
        }
        let b = &mut self.bufs[idx];
        b.busy = true;
        b.drawn = true;
        self.surface.attach(Some(&b.buffer), 0, 0);
        if full {
            self.surface.damage_buffer(0, 0, w as i32, h as i32);
        } else {
            self.surface
                .damage_buffer(x0 as i32, y0 as i32, dw as i32, dh as i32);
        }
        if want_frame {
            self.state.frame_done = false;
            self.surface.frame(&self.qh, Cb::Frame);
        }
        self.surface.commit();
        let t = Instant::now();
        self.queue.flush().map_err(wl)?;
        Ok(t)
    }

    /// Waits for the frame callback requested by the last `draw`.
    pub fn wait_frame(&mut self) -> Result<(), ClientError> {
        while !self.state.frame_done {
            self.pump()?;
        }
        Ok(())
    }

    /// A wl_display.sync round trip: the compositor has processed everything sent so far.
    pub fn roundtrip(&mut self) -> Result<(), ClientError> {
        self.state.sync_done = false;
        self._conn.display().sync(&self.qh, Cb::Sync);
        self.queue.flush().map_err(wl)?;
        while !self.state.sync_done {
            self.pump()?;
        }
        Ok(())
    }

    /// Processes events without waiting.
    pub fn poll(&mut self) -> Result<(), ClientError> {
        self.queue.dispatch_pending(&mut self.state).map_err(wl)?;
        if let Some(guard) = self.queue.prepare_read() {
            let _ = guard.read();
        }
        self.queue.dispatch_pending(&mut self.state).map_err(wl)?;
        if self.state.closed {
            return Err(ClientError::Closed);
        }
        Ok(())
    }
}

impl Dispatch<wl_registry::WlRegistry, GlobalListContents> for State {
    fn event(
        _: &mut Self,
        _: &wl_registry::WlRegistry,
        _: wl_registry::Event,
        _: &GlobalListContents,
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
    }
}
impl Dispatch<wl_compositor::WlCompositor, ()> for State {
    fn event(
        _: &mut Self,
        _: &wl_compositor::WlCompositor,
        _: wl_compositor::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
    }
}
impl Dispatch<wl_shm::WlShm, ()> for State {
    fn event(
        _: &mut Self,
        _: &wl_shm::WlShm,
        _: wl_shm::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
    }
}
impl Dispatch<wl_shm_pool::WlShmPool, ()> for State {
    fn event(
        _: &mut Self,
        _: &wl_shm_pool::WlShmPool,
        _: wl_shm_pool::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
    }
}
impl Dispatch<wl_surface::WlSurface, ()> for State {
    fn event(
        _: &mut Self,
        _: &wl_surface::WlSurface,
        _: wl_surface::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
    }
}
impl Dispatch<wl_buffer::WlBuffer, usize> for State {
    fn event(
        state: &mut Self,
        _: &wl_buffer::WlBuffer,
        event: wl_buffer::Event,
        idx: &usize,
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        if let wl_buffer::Event::Release = event {
            state.released.push(*idx);
        }
    }
}
impl Dispatch<wl_callback::WlCallback, Cb> for State {
    fn event(
        state: &mut Self,
        _: &wl_callback::WlCallback,
        event: wl_callback::Event,
        kind: &Cb,
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        if let wl_callback::Event::Done { .. } = event {
            match kind {
                Cb::Frame => state.frame_done = true,
                Cb::Sync => state.sync_done = true,
            }
        }
    }
}
impl Dispatch<xdg_wm_base::XdgWmBase, ()> for State {
    fn event(
        _: &mut Self,
        base: &xdg_wm_base::XdgWmBase,
        event: xdg_wm_base::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        if let xdg_wm_base::Event::Ping { serial } = event {
            base.pong(serial);
        }
    }
}
impl Dispatch<xdg_surface::XdgSurface, ()> for State {
    fn event(
        state: &mut Self,
        s: &xdg_surface::XdgSurface,
        event: xdg_surface::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        if let xdg_surface::Event::Configure { serial } = event {
            s.ack_configure(serial);
            state.configured = true;
        }
    }
}
impl Dispatch<xdg_toplevel::XdgToplevel, ()> for State {
    fn event(
        state: &mut Self,
        _: &xdg_toplevel::XdgToplevel,
        event: xdg_toplevel::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        match event {
            xdg_toplevel::Event::Configure { width, height, .. } => {
                state.requested = (width, height)
            }
            xdg_toplevel::Event::Close => state.closed = true,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_number_is_recoverable() {
        for f in [0u32, 1, 77, 255, 256, 1000] {
            for x in [0u32, 5, 300, 1919] {
                assert_eq!(frame_of(pattern(f, x, 11), x), f & 0xff);
            }
        }
    }
}
