//! The usb domain's side: reads a grabbed `/dev/input/eventN` and yields the [`Hello`] and
//! the event batches to send.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::proto::{
    sanitize_name, Caps, Event, Hello, KeySet, Kind, RelSet, TypeSet, BTN_LEFT, EV_KEY, EV_REL,
    EV_SYN, KEY_A, REL_X, REL_Y, SYN_DROPPED, SYN_REPORT,
};
use crate::proto::{EV_MAX, KEY_MAX, MAX_EVENTS, REL_MAX};

mod ioctl {
    use nix::{ioctl_read_buf, ioctl_write_int};
    // linux/input.h: EVIOCGNAME(len) = _IOC(_IOC_READ, 'E', 0x06, len),
    // EVIOCGBIT(ev, len) = _IOC(_IOC_READ, 'E', 0x20 + ev, len), EVIOCGRAB = _IOW('E', 0x90, int).
    ioctl_read_buf!(eviocgname, b'E', 0x06, u8);
    ioctl_read_buf!(eviocgbit_types, b'E', 0x20, u8);
    ioctl_read_buf!(eviocgbit_key, b'E', 0x21, u8);
    ioctl_read_buf!(eviocgbit_rel, b'E', 0x22, u8);
    ioctl_read_buf!(eviocgbit_abs, b'E', 0x23, u8);
    ioctl_write_int!(eviocgrab, b'E', 0x90);
}

/// The size of `struct input_event` here; its last 8 bytes are type, code and value.
pub(crate) const INPUT_EVENT_SIZE: usize = std::mem::size_of::<libc::input_event>();

#[derive(Debug, thiserror::Error)]
pub enum EvdevError {
    #[error("open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} on {path}: {source}")]
    Ioctl {
        what: &'static str,
        path: PathBuf,
        source: nix::Error,
    },
    #[error("{path} is neither a keyboard nor a mouse")]
    NotKeyboardOrMouse { path: PathBuf },
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("read {path}: {got} bytes, not a whole number of input events")]
    ShortRead { path: PathBuf, got: usize },
}

/// What an evdev node says it has (EVIOCGBIT), within the protocol's ranges.
pub fn read_caps(file: &File) -> Result<Caps, nix::Error> {
    let fd = file.as_raw_fd();
    let mut types = [0u8; (EV_MAX as usize + 1) / 8];
    let mut keys = [0u8; (KEY_MAX as usize + 1) / 8];
    let mut rels = [0u8; (REL_MAX as usize + 1) / 8];
    // SAFETY: fd is an open file for the call; each buffer is a live, writable byte slice
    // whose length the macro passes as the ioctl's size, so the kernel writes within it.
    unsafe {
        ioctl::eviocgbit_types(fd, &mut types)?;
        ioctl::eviocgbit_key(fd, &mut keys)?;
        ioctl::eviocgbit_rel(fd, &mut rels)?;
    }
    Ok(Caps {
        types: TypeSet::from_bytes(&types),
        keys: KeySet::from_bytes(&keys),
        rels: RelSet::from_bytes(&rels),
    })
}

/// The absolute axes an evdev node has (EVIOCGBIT(EV_ABS)), as a bitmap over ABS_* (0..=0x3f).
pub fn read_abs_bits(file: &File) -> Result<u64, nix::Error> {
    let mut abs = [0u8; 8];
    // SAFETY: as in read_caps: a live 8-byte buffer whose length bounds the kernel's write.
    unsafe { ioctl::eviocgbit_abs(file.as_raw_fd(), &mut abs)? };
    Ok(u64::from_le_bytes(abs))
}

/// The device's name (EVIOCGNAME), raw.
pub fn read_name(file: &File) -> Result<Vec<u8>, nix::Error> {
    let mut buf = [0u8; 256];
    // SAFETY: a live 256-byte buffer whose length the macro passes as the ioctl's size.
    let n = unsafe { ioctl::eviocgname(file.as_raw_fd(), &mut buf)? };
    let n = usize::try_from(n).unwrap_or(0).min(buf.len());
    let raw = &buf[..n];
    // The kernel counts the terminating NUL.
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    Ok(raw[..end].to_vec())
}

/// Grabs (or releases) the device: while grabbed, no other reader in this kernel gets its
/// events.
pub fn grab(file: &File, on: bool) -> Result<(), nix::Error> {
    // SAFETY: EVIOCGRAB takes its argument by value; fd is open for the call.
    unsafe { ioctl::eviocgrab(file.as_raw_fd(), libc::c_ulong::from(on))? };
    Ok(())
}

/// What a device with `caps` is: a mouse with REL_X, REL_Y and BTN_LEFT, a keyboard with
/// KEY_A, else neither.
pub fn classify(caps: &Caps) -> Option<Kind> {
    if caps.types.contains(EV_REL)
        && caps.rels.contains(REL_X)
        && caps.rels.contains(REL_Y)
        && caps.keys.contains(BTN_LEFT)
    {
        Some(Kind::Mouse)
    } else if caps.types.contains(EV_KEY) && caps.keys.contains(KEY_A) {
        Some(Kind::Keyboard)
    } else {
        None
    }
}

/// Parses a buffer of whole `struct input_event`s (native layout).
pub(crate) fn parse_events(buf: &[u8]) -> impl Iterator<Item = Event> + '_ {
    buf.chunks_exact(INPUT_EVENT_SIZE).map(|c| {
        let t = &c[INPUT_EVENT_SIZE - 8..];
        Event {
            type_: u16::from_ne_bytes([t[0], t[1]]),
            code: u16::from_ne_bytes([t[2], t[3]]),
            value: i32::from_ne_bytes([t[4], t[5], t[6], t[7]]),
        }
    })
}

/// A grabbed evdev device and the batches read from it.
#[derive(Debug)]
pub struct EvdevReader {
    file: File,
    path: PathBuf,
    hello: Hello,
    pending: Vec<Event>,
    /// Keys this reader has passed on as down, released after a SYN_DROPPED.
    down: KeySet,
    /// After SYN_DROPPED: events are discarded until the next SYN_REPORT.
    dropping: bool,
    buf: Vec<u8>,
    ready: std::collections::VecDeque<Vec<Event>>,
}

impl EvdevReader {
    /// Opens and grabs `path`; its kind is `kind` or, when `None`, what [`classify`] says.
    pub fn open(path: &Path, kind: Option<Kind>) -> Result<Self, EvdevError> {
        let file = OpenOptions::new()
            .read(true)
            .open(path)
            .map_err(|source| EvdevError::Open {
                path: path.to_owned(),
                source,
            })?;
        let ioctl_err = |what| {
            let path = path.to_owned();
            move |source| EvdevError::Ioctl { what, path, source }
        };
        let name = read_name(&file).map_err(ioctl_err("EVIOCGNAME"))?;
        let caps = read_caps(&file).map_err(ioctl_err("EVIOCGBIT"))?;
        let kind =
            kind.or_else(|| classify(&caps))
                .ok_or_else(|| EvdevError::NotKeyboardOrMouse {
                    path: path.to_owned(),
                })?;
        grab(&file, true).map_err(ioctl_err("EVIOCGRAB"))?;
        let hello = Hello {
            name: sanitize_name(&name),
            kind,
            caps,
        };
        tracing::info!(path = %path.display(), name = %hello.name, ?kind, "grabbed input device");
        Ok(EvdevReader {
            file,
            path: path.to_owned(),
            hello,
            pending: Vec::new(),
            down: KeySet::default(),
            dropping: false,
            buf: vec![0; INPUT_EVENT_SIZE * MAX_EVENTS],
            ready: Default::default(),
        })
    }

    /// The Hello to send first.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// The open device (e.g. to poll it).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Blocks for the next batch: the events up to and including a SYN_REPORT (a batch longer
    /// than [`MAX_EVENTS`] is split). `None` when the device is gone (unplugged).
    ///
    /// After a SYN_DROPPED (the kernel's buffer overflowed) the events up to the next
    /// SYN_REPORT are discarded and the batch after it releases every key this reader had
    /// passed on as pressed, so that no key stays down on the other side.
    pub fn next_batch(&mut self) -> Result<Option<Vec<Event>>, EvdevError> {
        loop {
            if let Some(b) = self.ready.pop_front() {
                return Ok(Some(b));
            }
            let n = match self.file.read(&mut self.buf) {
                Ok(0) => return Ok(None),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // ENODEV: unplugged.
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(None),
                Err(source) => {
                    return Err(EvdevError::Read {
                        path: self.path.clone(),
                        source,
                    })
                }
            };
            if n % INPUT_EVENT_SIZE != 0 {
                return Err(EvdevError::ShortRead {
                    path: self.path.clone(),
                    got: n,
                });
            }
            let events: Vec<Event> = parse_events(&self.buf[..n]).collect();
            for e in events {
                self.push(e);
            }
        }
    }

    fn push(&mut self, e: Event) {
        if e.type_ == EV_SYN && e.code == SYN_DROPPED {
            tracing::warn!(path = %self.path.display(), "events dropped by the kernel");
            self.pending.clear();
            self.dropping = true;
            return;
        }
        if self.dropping {
            if e.type_ == EV_SYN && e.code == SYN_REPORT {
                self.dropping = false;
                let mut release: Vec<Event> =
                    self.down.iter().map(|k| Event::new(EV_KEY, k, 0)).collect();
                self.down = KeySet::default();
                if !release.is_empty() {
                    release.push(Event::syn_report());
                    self.queue(release);
                }
            }
            return;
        }
        self.pending.push(e);
        if e.type_ == EV_SYN && e.code == SYN_REPORT || self.pending.len() == MAX_EVENTS {
            let batch = std::mem::take(&mut self.pending);
            // Passed on: what is down on the other side now.
            for k in batch.iter().filter(|k| k.type_ == EV_KEY) {
                if k.value == 0 {
                    self.down.remove(k.code);
                } else {
                    self.down.insert(k.code);
                }
            }
            self.queue(batch);
        }
    }

    fn queue(&mut self, batch: Vec<Event>) {
        for c in batch.chunks(MAX_EVENTS) {
            self.ready.push_back(c.to_vec());
        }
    }
}

impl Drop for EvdevReader {
    fn drop(&mut self) {
        // Closing the file releases the grab too; this says so in the log when it fails.
        if let Err(e) = grab(&self.file, false) {
            tracing::debug!(path = %self.path.display(), "EVIOCGRAB release: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{EV_MSC, KEY_ESC};

    fn raw(events: &[Event]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in events {
            let mut b = vec![0u8; INPUT_EVENT_SIZE];
            let t = INPUT_EVENT_SIZE - 8;
            b[t..t + 2].copy_from_slice(&e.type_.to_ne_bytes());
            b[t + 2..t + 4].copy_from_slice(&e.code.to_ne_bytes());
            b[t + 4..].copy_from_slice(&e.value.to_ne_bytes());
            out.extend(b);
        }
        out
    }

    fn reader() -> EvdevReader {
        // A reader on /dev/null: push() and the queue only.
        EvdevReader {
            file: File::open("/dev/null").unwrap(),
            path: "/dev/null".into(),
            hello: Hello {
                name: "x".into(),
                kind: Kind::Keyboard,
                caps: Caps::default(),
            },
            pending: Vec::new(),
            down: KeySet::default(),
            dropping: false,
            buf: vec![0; INPUT_EVENT_SIZE * MAX_EVENTS],
            ready: Default::default(),
        }
    }

    #[test]
    fn parses_native_input_events() {
        let evs = [
            Event::new(EV_MSC, 4, 0x70004),
            Event::new(EV_KEY, KEY_A, 1),
            Event::syn_report(),
        ];
        assert_eq!(parse_events(&raw(&evs)).collect::<Vec<_>>(), evs);
    }

    #[test]
    fn batches_end_at_syn_report_and_long_ones_split() {
        let mut r = reader();
        for e in [Event::new(EV_KEY, KEY_A, 1), Event::syn_report()] {
            r.push(e);
        }
        for _ in 0..70 {
            r.push(Event::new(EV_REL, REL_X, 1));
        }
        r.push(Event::syn_report());
        let b: Vec<usize> = r.ready.iter().map(Vec::len).collect();
        assert_eq!(b, [2, 64, 7]);
    }

    #[test]
    fn syn_dropped_discards_and_releases_keys() {
        let mut r = reader();
        for e in [
            Event::new(EV_KEY, KEY_A, 1),
            Event::syn_report(),
            Event::new(EV_KEY, KEY_ESC, 1),
            Event::new(EV_SYN, SYN_DROPPED, 0),
            Event::new(EV_KEY, KEY_ESC, 0),
            Event::syn_report(),
            Event::new(EV_REL, REL_X, 1),
            Event::syn_report(),
        ] {
            r.push(e);
        }
        let batches: Vec<_> = r.ready.drain(..).collect();
        assert_eq!(
            batches,
            [
                vec![Event::new(EV_KEY, KEY_A, 1), Event::syn_report()],
                vec![Event::new(EV_KEY, KEY_A, 0), Event::syn_report()],
                vec![Event::new(EV_REL, REL_X, 1), Event::syn_report()],
            ]
        );
    }

    #[test]
    fn classifies() {
        let mut c = Caps::default();
        assert_eq!(classify(&c), None);
        c.types = [EV_SYN, EV_KEY].into_iter().collect();
        c.keys = [KEY_A].into_iter().collect();
        assert_eq!(classify(&c), Some(Kind::Keyboard));
        c.types.insert(EV_REL);
        c.keys.insert(BTN_LEFT);
        c.rels = [REL_X, REL_Y].into_iter().collect();
        assert_eq!(classify(&c), Some(Kind::Mouse));
    }
}
