//! dom0's side: a uinput device with exactly the restricted capabilities, into which the
//! validated events are written.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::evdev::INPUT_EVENT_SIZE;
use crate::proto::{sanitize_name, Caps, Event, EV_KEY, EV_REL};

/// The uinput control node.
pub const UINPUT_PATH: &str = "/dev/uinput";
/// BUS_VIRTUAL (linux/input.h).
pub const BUS_VIRTUAL: u16 = 0x06;
/// UINPUT_MAX_NAME_SIZE, the NUL included.
const NAME_SIZE: usize = 80;

/// `struct uinput_setup` (linux/uinput.h).
#[repr(C)]
pub struct UinputSetup {
    pub bustype: u16,
    pub vendor: u16,
    pub product: u16,
    pub version: u16,
    pub name: [u8; NAME_SIZE],
    pub ff_effects_max: u32,
}

mod ioctl {
    use super::UinputSetup;
    use nix::{ioctl_none, ioctl_read_buf, ioctl_write_int, ioctl_write_ptr};
    // linux/uinput.h
    ioctl_none!(ui_dev_create, b'U', 1);
    ioctl_none!(ui_dev_destroy, b'U', 2);
    ioctl_write_ptr!(ui_dev_setup, b'U', 3, UinputSetup);
    ioctl_read_buf!(ui_get_sysname, b'U', 44, u8);
    ioctl_write_int!(ui_set_evbit, b'U', 100);
    ioctl_write_int!(ui_set_keybit, b'U', 101);
    ioctl_write_int!(ui_set_relbit, b'U', 102);
}

#[derive(Debug, thiserror::Error)]
pub enum UinputError {
    #[error("open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Ioctl {
        what: &'static str,
        source: nix::Error,
    },
    #[error("UI_GET_SYSNAME gave a name that is not UTF-8")]
    SysName,
    #[error("write events: {0}")]
    Write(std::io::Error),
}

fn ioctl_err(what: &'static str) -> impl FnOnce(nix::Error) -> UinputError {
    move |source| UinputError::Ioctl { what, source }
}

/// The name dom0's device gets: `bulkhead: <name> (from <domain>)`, printable ASCII, cut to
/// what uinput takes.
pub fn device_name(name: &str, domain: &str) -> String {
    let full = format!("bulkhead: {name} (from {domain})");
    let mut s = sanitize_name(full.as_bytes());
    s.truncate(NAME_SIZE - 1);
    s
}

/// A created uinput device; destroyed on drop.
#[derive(Debug)]
pub struct UinputDevice {
    file: File,
    name: String,
    sysname: String,
    caps: Caps,
}

impl UinputDevice {
    /// Creates a virtual device (BUS_VIRTUAL) named [`device_name`] with exactly `caps`
    /// (event types, keys, relative axes) through [`UINPUT_PATH`].
    pub fn create(caps: &Caps, name: &str, domain: &str) -> Result<Self, UinputError> {
        Self::create_at(Path::new(UINPUT_PATH), caps, name, domain)
    }

    /// [`create`](Self::create) through another uinput node.
    pub fn create_at(
        uinput: &Path,
        caps: &Caps,
        name: &str,
        domain: &str,
    ) -> Result<Self, UinputError> {
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(uinput)
            .map_err(|source| UinputError::Open {
                path: uinput.to_owned(),
                source,
            })?;
        let fd = file.as_raw_fd();
        let name = device_name(name, domain);
        for t in caps.types.iter() {
            // SAFETY: UI_SET_EVBIT takes its argument by value; fd is open for the call.
            unsafe { ioctl::ui_set_evbit(fd, t.into()) }.map_err(ioctl_err("UI_SET_EVBIT"))?;
        }
        if caps.types.contains(EV_KEY) {
            for k in caps.keys.iter() {
                // SAFETY: as for UI_SET_EVBIT.
                unsafe { ioctl::ui_set_keybit(fd, k.into()) }
                    .map_err(ioctl_err("UI_SET_KEYBIT"))?;
            }
        }
        if caps.types.contains(EV_REL) {
            for r in caps.rels.iter() {
                // SAFETY: as for UI_SET_EVBIT.
                unsafe { ioctl::ui_set_relbit(fd, r.into()) }
                    .map_err(ioctl_err("UI_SET_RELBIT"))?;
            }
        }
        let mut setup = UinputSetup {
            bustype: BUS_VIRTUAL,
            vendor: 0,
            product: 0,
            version: 1,
            name: [0; NAME_SIZE],
            ff_effects_max: 0,
        };
        // device_name is at most NAME_SIZE - 1 bytes: the NUL stays.
        setup.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: setup is a live, initialised struct uinput_setup (repr(C), the kernel's
        // layout) that the kernel only reads during the call.
        unsafe { ioctl::ui_dev_setup(fd, &setup) }.map_err(ioctl_err("UI_DEV_SETUP"))?;
        // SAFETY: UI_DEV_CREATE takes no argument; fd is open for the call.
        unsafe { ioctl::ui_dev_create(fd) }.map_err(ioctl_err("UI_DEV_CREATE"))?;
        let mut buf = [0u8; 64];
        // SAFETY: a live 64-byte buffer whose length the macro passes as the ioctl's size.
        let got = unsafe { ioctl::ui_get_sysname(fd, &mut buf) };
        let sysname = match got {
            Ok(_) => {
                let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                std::str::from_utf8(&buf[..end])
                    .map_err(|_| UinputError::SysName)?
                    .to_owned()
            }
            Err(e) => {
                // Dropping the file destroys the device.
                return Err(UinputError::Ioctl {
                    what: "UI_GET_SYSNAME",
                    source: e,
                });
            }
        };
        tracing::info!(%name, %sysname, "created uinput device");
        Ok(UinputDevice {
            file,
            name,
            sysname,
            caps: caps.clone(),
        })
    }

    /// The device's name as the kernel has it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kernel's name for the input device (`inputN`, UI_GET_SYSNAME).
    pub fn sysname(&self) -> &str {
        &self.sysname
    }

    /// The capabilities it was created with.
    pub fn caps(&self) -> &Caps {
        &self.caps
    }

    /// Its directory in sysfs (`/sys/devices/virtual/input/inputN`).
    pub fn sys_path(&self) -> PathBuf {
        Path::new("/sys/devices/virtual/input").join(&self.sysname)
    }

    /// Its evdev node (`/dev/input/eventM`), when the evdev handler is bound to it.
    pub fn event_node(&self) -> Option<PathBuf> {
        event_node_of(&self.sys_path())
    }

    /// Writes events (one write; the kernel passes them on at each SYN_REPORT).
    pub fn write_events(&mut self, events: &[Event]) -> Result<(), UinputError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut buf = vec![0u8; events.len() * INPUT_EVENT_SIZE];
        for (chunk, e) in buf.chunks_exact_mut(INPUT_EVENT_SIZE).zip(events) {
            let t = INPUT_EVENT_SIZE - 8;
            chunk[t..t + 2].copy_from_slice(&e.type_.to_ne_bytes());
            chunk[t + 2..t + 4].copy_from_slice(&e.code.to_ne_bytes());
            chunk[t + 4..].copy_from_slice(&e.value.to_ne_bytes());
        }
        self.file.write_all(&buf).map_err(UinputError::Write)
    }
}

/// The `/dev/input/eventM` of the input device at `sys_path` (its `eventM` child).
pub fn event_node_of(sys_path: &Path) -> Option<PathBuf> {
    std::fs::read_dir(sys_path)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("event"))
        .map(|n| Path::new("/dev/input").join(n))
}

impl Drop for UinputDevice {
    fn drop(&mut self) {
        // SAFETY: UI_DEV_DESTROY takes no argument; the fd is still open here.
        if let Err(e) = unsafe { ioctl::ui_dev_destroy(self.file.as_raw_fd()) } {
            tracing::warn!(sysname = %self.sysname, "UI_DEV_DESTROY: {e}");
        } else {
            tracing::info!(sysname = %self.sysname, "destroyed uinput device");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_has_the_kernels_layout() {
        assert_eq!(std::mem::size_of::<UinputSetup>(), 92);
    }

    #[test]
    fn names_fit_and_are_printable() {
        assert_eq!(
            device_name("USB Keyboard", "usb"),
            "bulkhead: USB Keyboard (from usb)"
        );
        let long = device_name(&"k".repeat(80), "work\n");
        assert_eq!(long.len(), NAME_SIZE - 1);
        assert!(long.bytes().all(|b| (0x20..=0x7e).contains(&b)));
    }
}
