//! Looking up the account an exec request runs as.

use std::ffi::CString;
use std::path::PathBuf;

use nix::unistd::{Gid, Uid, User};

/// The domain's default user name.
pub const DEFAULT_USER: &str = "user";
/// uid/gid used for the default user when /etc/passwd lacks it.
pub const DEFAULT_UID: u32 = 1000;

/// Errors looking up an account.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// No such user in the domain's /etc/passwd.
    #[error("no user named {0:?} in this domain")]
    NoSuchUser(String),
    /// The lookup itself failed.
    #[error("looking up user {name:?}: {source}")]
    Lookup {
        /// User name.
        name: String,
        /// Error from the C library.
        #[source]
        source: nix::Error,
    },
}

/// Everything needed to start a process as a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: Uid,
    /// Primary group id.
    pub gid: Gid,
    /// Supplementary groups (including the primary group).
    pub groups: Vec<Gid>,
    /// Home directory.
    pub home: PathBuf,
    /// Login shell.
    pub shell: PathBuf,
}

impl Account {
    /// PATH suitable for this account.
    pub fn path_env(&self) -> &'static str {
        if self.uid.is_root() {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        } else {
            "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games"
        }
    }
}

/// Looks `name` up (None = the default user). The default user falls back to uid/gid 1000
/// with home /home/user when the domain's passwd does not list it.
pub fn lookup(name: Option<&str>) -> Result<Account, AccountError> {
    let name = name.unwrap_or(DEFAULT_USER);
    let user = User::from_name(name).map_err(|source| AccountError::Lookup {
        name: name.to_string(),
        source,
    })?;
    let Some(user) = user else {
        if name == DEFAULT_USER {
            tracing::debug!("no {DEFAULT_USER:?} in passwd, using uid {DEFAULT_UID}");
            return Ok(Account {
                name: name.to_string(),
                uid: Uid::from_raw(DEFAULT_UID),
                gid: Gid::from_raw(DEFAULT_UID),
                groups: vec![Gid::from_raw(DEFAULT_UID)],
                home: PathBuf::from("/home/user"),
                shell: PathBuf::from("/bin/sh"),
            });
        }
        return Err(AccountError::NoSuchUser(name.to_string()));
    };
    let groups = CString::new(user.name.as_bytes())
        .ok()
        .and_then(|c| nix::unistd::getgrouplist(&c, user.gid).ok())
        .unwrap_or_else(|| vec![user.gid]);
    Ok(Account {
        name: user.name,
        uid: user.uid,
        gid: user.gid,
        groups,
        home: user.dir,
        shell: user.shell,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_found() {
        let a = lookup(Some("root")).unwrap();
        assert!(a.uid.is_root());
        assert!(a.path_env().contains("sbin"));
    }

    #[test]
    fn unknown_user_is_an_error() {
        assert!(matches!(
            lookup(Some("no-such-user-bh")),
            Err(AccountError::NoSuchUser(_))
        ));
    }

    #[test]
    fn default_user_always_resolves() {
        let a = lookup(None).unwrap();
        assert_eq!(a.name, DEFAULT_USER);
        assert!(!a.uid.is_root());
    }
}
