//! Stable client addresses: each domain keeps the address it got first (10.137.x.y), recorded
//! in one small file so it survives restarts of the domain, of net and of domaind.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::{NetError, GATEWAY};

/// Largest address book accepted.
pub const MAX_BOOK: u64 = 1 << 20;

/// `name = "10.137.x.y"` lines (TOML).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressBook {
    pub entries: BTreeMap<String, Ipv4Addr>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> NetError + '_ {
    move |e| NetError::Io {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

impl AddressBook {
    /// Load `path` (empty if missing).
    pub fn load(path: &Path) -> Result<AddressBook, NetError> {
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(io(path)(e)),
        };
        let mut text = String::new();
        f.take(MAX_BOOK)
            .read_to_string(&mut text)
            .map_err(io(path))?;
        let entries: BTreeMap<String, String> =
            toml::from_str(&text).map_err(|e| NetError::Io {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        let mut out = BTreeMap::new();
        for (k, v) in entries {
            match v.parse::<Ipv4Addr>() {
                Ok(ip) if is_client_addr(ip) => {
                    out.insert(k, ip);
                }
                _ => {
                    tracing::warn!(path = %path.display(), domain = %k, "ignoring a bad address entry")
                }
            }
        }
        Ok(AddressBook { entries: out })
    }

    /// Save atomically.
    pub fn save(&self, path: &Path) -> Result<(), NetError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut text =
            String::from("# Client addresses of netvm links (domaind keeps this file)\n");
        for (k, v) in &self.entries {
            text.push_str(&format!("{k:?} = \"{v}\"\n"));
        }
        let tmp: PathBuf = dir.join(format!(".addresses.{}", std::process::id()));
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(text.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))
    }

    /// The address of `name`, assigning the lowest free one first. Entries of domains for
    /// which `exists` is false are dropped first (their addresses become free again).
    /// Returns the address and whether the book changed.
    pub fn get_or_assign(
        &mut self,
        name: &str,
        exists: impl Fn(&str) -> bool,
    ) -> Result<(Ipv4Addr, bool), NetError> {
        let before = self.entries.len();
        self.entries.retain(|k, _| k == name || exists(k));
        let mut changed = before != self.entries.len();
        if let Some(ip) = self.entries.get(name) {
            return Ok((*ip, changed));
        }
        let used: std::collections::BTreeSet<Ipv4Addr> = self.entries.values().copied().collect();
        let base = u32::from(Ipv4Addr::new(10, 137, 0, 0));
        let ip = (2..0xFFFFu32)
            .map(|i| Ipv4Addr::from(base + i))
            .find(|ip| is_client_addr(*ip) && !used.contains(ip))
            .ok_or(NetError::Exhausted)?;
        self.entries.insert(name.to_owned(), ip);
        changed = true;
        Ok((ip, changed))
    }
}

/// 10.137.0.0/16 without the gateway and the .0/.255 host parts (avoided for old tools).
pub fn is_client_addr(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    o[0] == 10 && o[1] == 137 && ip != GATEWAY && o[3] != 0 && o[3] != 255
}

/// The net-side interface name of a client with address `ip`: `vif<x>.<y>` (at most 11
/// bytes, below IFNAMSIZ).
pub fn vif_name(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("vif{}.{}", o[2], o[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_reused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/addresses.toml");
        let mut b = AddressBook::load(&p).unwrap();
        let (a1, _) = b.get_or_assign("work", |_| true).unwrap();
        let (a2, _) = b.get_or_assign("web", |_| true).unwrap();
        assert_eq!(a1, Ipv4Addr::new(10, 137, 0, 2));
        assert_eq!(a2, Ipv4Addr::new(10, 137, 0, 3));
        b.save(&p).unwrap();
        let mut b = AddressBook::load(&p).unwrap();
        assert_eq!(b.get_or_assign("web", |_| true).unwrap(), (a2, false));
        // "work" was removed: its address is free again.
        let (a3, changed) = b.get_or_assign("new", |n| n != "work").unwrap();
        assert_eq!((a3, changed), (a1, true));
        assert_eq!(vif_name(a3), "vif0.2");
    }
}
