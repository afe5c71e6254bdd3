//! Who may call domaind: uid 0 or a member of the `bulkhead-admin` group.
//!
//! The bus policy file is the first fence; this is the second. The caller's uid comes from
//! the bus daemon (`GetConnectionUnixUser` of the message's sender), never from the message.

use bulkhead_api::Error;
use nix::unistd::{Gid, Group, Uid, User};
use zbus::message::Header;
use zbus::names::BusName;

/// The group whose members may administer domains.
pub const ADMIN_GROUP: &str = "bulkhead-admin";

/// Whether `uid` may call domaind.
pub fn uid_allowed(uid: u32) -> bool {
    if uid == 0 {
        return true;
    }
    let Ok(Some(group)) = Group::from_name(ADMIN_GROUP) else {
        return false;
    };
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
        return false;
    };
    if user.gid == group.gid || group.mem.contains(&user.name) {
        return true;
    }
    let Ok(cname) = std::ffi::CString::new(user.name.as_str()) else {
        return false;
    };
    nix::unistd::getgrouplist(&cname, user.gid)
        .map(|gs: Vec<Gid>| gs.contains(&group.gid))
        .unwrap_or(false)
}

/// Most callers remembered; the cache is emptied when it is full.
const MAX_CACHED_CALLERS: usize = 4096;

/// Checks callers, remembering each unique bus name's uid (unique names are never reused on
/// a bus, so the answer cannot go stale).
#[derive(Default)]
pub struct CallerCheck {
    proxy: tokio::sync::OnceCell<zbus::fdo::DBusProxy<'static>>,
    known: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

impl CallerCheck {
    async fn proxy(
        &self,
        conn: &zbus::Connection,
    ) -> Result<&zbus::fdo::DBusProxy<'static>, Error> {
        self.proxy
            .get_or_try_init(|| async {
                zbus::fdo::DBusProxy::builder(conn)
                    .cache_properties(zbus::proxy::CacheProperties::No)
                    .build()
                    .await
            })
            .await
            .map_err(Error::ZBus)
    }

    /// Check the sender of `hdr` on `conn`; returns its uid.
    pub async fn check(&self, conn: &zbus::Connection, hdr: &Header<'_>) -> Result<u32, Error> {
        let sender = hdr
            .sender()
            .ok_or_else(|| Error::AccessDenied("the call carries no sender name".into()))?;
        let cached = self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sender.as_str())
            .copied();
        let uid = match cached {
            Some(uid) => uid,
            None => {
                let uid = self
                    .proxy(conn)
                    .await?
                    .get_connection_unix_user(BusName::Unique(sender.to_owned()))
                    .await
                    .map_err(|e| {
                        Error::AccessDenied(format!("cannot identify the caller {sender}: {e}"))
                    })?;
                let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
                if known.len() >= MAX_CACHED_CALLERS {
                    known.clear();
                }
                known.insert(sender.to_string(), uid);
                uid
            }
        };
        if uid_allowed(uid) {
            Ok(uid)
        } else {
            tracing::warn!(uid, %sender, "refused a call from a user outside {ADMIN_GROUP}");
            Err(Error::AccessDenied(format!(
                "uid {uid} may not manage domains; only root and members of the '{ADMIN_GROUP}' group may"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_allowed_nobody_not() {
        assert!(uid_allowed(0));
        // 65534 (nobody) is never in bulkhead-admin on a test machine; if the group does not
        // exist the answer is no as well.
        assert!(!uid_allowed(65534));
        // a uid with no passwd entry
        assert!(!uid_allowed(3_999_999));
    }
}
