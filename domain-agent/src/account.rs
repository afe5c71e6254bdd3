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

/// The command init runs a helper with (the gui-agent, the update proxy forwarder): `bin` as
/// `acct` with a clean environment (HOME, USER, LOGNAME, PATH, and BULKHEAD_LOG when init has
/// one), in `/`, stdin from /dev/null, and the empty signal mask a program expects (init
/// blocks the signals it reads from its signalfd).
pub fn helper_command(bin: &std::path::Path, acct: &Account) -> std::process::Command {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = std::process::Command::new(bin);
    cmd.env_clear()
        .env("HOME", &acct.home)
        .env("USER", &acct.name)
        .env("LOGNAME", &acct.name)
        .env("PATH", acct.path_env())
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .uid(acct.uid.as_raw())
        .gid(acct.gid.as_raw());
    if let Ok(level) = std::env::var("BULKHEAD_LOG") {
        cmd.env("BULKHEAD_LOG", level);
    }
    // SAFETY: runs in the forked child before exec and only calls pthread_sigmask
    // (async-signal-safe) to clear the mask init set up for its signalfd.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::signal::SigSet::empty()
                .thread_set_mask()
                .map_err(std::io::Error::from)
        });
    }
    cmd
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
