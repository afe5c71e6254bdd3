//! The agent link: the domain's channel socket, accepting its agent, and running commands
//! through the agent connection.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bulkhead_api::Error;
use bulkhead_domain::DomainName;
use bulkhead_wire::{Connection, ExecRequest};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::state::DomainState;
use crate::stdio;

use super::{io_err, CallerGone, Instance, Manager, Stdio};

/// A channel peer must finish the wire handshake within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

impl Manager {
    /// The agent connection of a running instance (waits for a reconnect, e.g. after a
    /// domaind restart).
    pub(crate) async fn agent_conn(
        &self,
        inst: &Instance,
        name: &DomainName,
    ) -> Result<Connection, Error> {
        let mut agent = inst.agent.clone();
        let mut exited = inst.exited.clone();
        tokio::select! {
            r = agent.wait_for(|c| c.is_some()) => r
                .map(|c| c.clone().unwrap_or_else(|| unreachable!()))
                .map_err(|_| Error::Agent(format!("domain '{name}' stopped"))),
            _ = exited.wait_for(|e| *e) => Err(Error::Agent(format!("domain '{name}' stopped"))),
            _ = tokio::time::sleep(self.cfg.agent_timeout) => Err(Error::Agent(format!(
                "the agent of domain '{name}' is not connected (waited {} s); see bulkhead log or restart the domain",
                self.cfg.agent_timeout.as_secs()
            ))),
        }
    }

    /// The agent connection of a domain that is running now (no start): for `OpenGui`.
    pub(crate) async fn running_agent_conn(&self, dn: &DomainName) -> Result<Connection, Error> {
        let name = dn.as_str();
        self.known(dn)?;
        let rt = self.runtime(dn);
        let inst = match (rt.state(), rt.instance()) {
            (DomainState::Running, Some(i)) => i,
            (st, _) => {
                return Err(Error::InvalidState(format!(
                    "{name} is {}; start it first (bulkhead start {name})",
                    st.as_str()
                )))
            }
        };
        self.agent_conn(&inst, dn).await
    }

    pub(super) async fn exec_in(
        &self,
        inst: &Instance,
        name: &DomainName,
        argv: Vec<String>,
        user: &str,
        io: Stdio,
    ) -> Result<i32, Error> {
        if argv.is_empty() {
            return Err(Error::InvalidProperty("no command given".into()));
        }
        let conn = self.agent_conn(inst, name).await?;
        let req = ExecRequest {
            argv,
            user: (!user.is_empty()).then(|| user.to_owned()),
            env: Vec::new(),
            cwd: None,
        };
        let stdin = stdio::reader(io.stdin);
        let stdout = stdio::writer(io.stdout);
        let stderr = stdio::writer(io.stderr);
        let status = bulkhead_wire::exec::run(&conn, req, stdin, stdout, stderr)
            .await
            .map_err(|e| Error::Agent(format!("running the command in '{name}' failed: {e}")))?;
        Ok(exit_code(status))
    }

    /// `Run`: start if halted, run, return the exit code.
    pub async fn run(
        self: &Arc<Self>,
        dn: &DomainName,
        argv: Vec<String>,
        user: &str,
        io: Stdio,
        caller_gone: CallerGone,
    ) -> Result<i32, Error> {
        let name = dn.as_str();
        let inst = self.ensure_running(dn).await?;
        tokio::select! {
            r = self.exec_in(&inst, dn, argv, user, io) => r,
            _ = caller_gone => {
                info!(domain = name, "caller went away; run abandoned");
                Err(Error::Agent("the caller disconnected".into()))
            }
        }
    }
}

/// Exit code of a finished command: the code, or 128 + signal (saturating, so an
/// out-of-range signal number from a domain cannot overflow).
pub fn exit_code(status: bulkhead_wire::ExitStatus) -> i32 {
    match status {
        bulkhead_wire::ExitStatus::Code(c) => c,
        bulkhead_wire::ExitStatus::Signal(s) => 128i32.saturating_add(s),
    }
}

/// Bind the listening socket of a domain's channel (replacing a stale one), owned by the
/// domain's root uid, mode 0600; the channel dir is 0700 and owned by the same uid.
///
/// The channel dir is writable by that uid (a VM's VMM creates `vsock.sock` there), so
/// whatever is in it may be a symlink planted to make us chown or chmod a file elsewhere.
/// Nothing here resolves a path inside it: the dir is opened with `O_NOFOLLOW` (its parent,
/// `<runtime>/domains/<name>`, is root's) and changed through that descriptor; the socket is
/// bound, chowned and chmodded in a fresh root-only staging dir next to it and then renamed
/// into the channel dir relative to the descriptor, replacing (never following) whatever the
/// domain put under that name.
pub(super) fn bind_channel(dir: &Path, sock: &Path, uid_base: u32) -> Result<UnixListener, Error> {
    use rustix::fs::{
        fchmod, fchown, fstat, openat, renameat, unlinkat, AtFlags, FileType, Gid, Mode, OFlags,
        Uid, CWD,
    };
    let shown = dir.display().to_string();
    let errno = |what: &str| {
        let what = what.to_owned();
        move |e: rustix::io::Errno| Error::Io(format!("{what}: {}", std::io::Error::from(e)))
    };
    let name = match (sock.parent(), sock.file_name()) {
        (Some(p), Some(n)) if p == dir => n.to_owned(),
        _ => {
            return Err(Error::Io(format!(
                "internal error: the channel socket {} is not directly in {shown}",
                sock.display()
            )))
        }
    };
    let parent = dir.parent().ok_or_else(|| {
        Error::Io(format!(
            "internal error: the channel dir {shown} has no parent"
        ))
    })?;
    std::fs::create_dir_all(dir).map_err(io_err(&shown))?;
    let open_dir = || {
        openat(
            CWD,
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno(&format!(
            "{shown} (must be a directory, not a symlink)"
        )))
    };
    // The channel dir is a tmpfs of its own: bound into a sandbox, its mountinfo line then
    // shows "/" instead of the host path of the dir. It is already one when a domain is
    // adopted after a domaind restart (a different device than its parent's).
    let dfd = open_dir()?;
    let parent_dev = std::fs::metadata(parent)
        .map_err(io_err(&parent.display().to_string()))?
        .dev();
    if fstat(&dfd).map_err(errno(&shown))?.st_dev == parent_dev {
        nix::mount::mount(
            Some("tmpfs"),
            &PathBuf::from(format!("/proc/self/fd/{}", dfd.as_raw_fd())),
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            Some("size=64k,nr_inodes=256,mode=0700"),
        )
        .map_err(|e| Error::Io(format!("cannot mount the channel tmpfs on {shown}: {e}")))?;
    }
    let dfd = open_dir()?;
    let st = fstat(&dfd).map_err(errno(&shown))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory
        || (st.st_uid != 0 && st.st_uid != uid_base)
    {
        return Err(Error::Io(format!(
            "{shown} is owned by uid {} (expected root or the domain's uid {uid_base}); remove it and start the domain again",
            st.st_uid
        )));
    }
    let (uid, gid) = (Uid::from_raw(uid_base), Gid::from_raw(uid_base));
    fchown(&dfd, Some(uid), Some(gid)).map_err(errno(&format!("chown {shown}")))?;
    fchmod(&dfd, Mode::from_raw_mode(0o700)).map_err(errno(&format!("chmod {shown}")))?;

    // Staging: a root-owned 0700 dir in the channel dir (the same file system, for the
    // rename), used only through its fd: if the domain's uid (owner of the channel dir)
    // swaps the name for something of its own, the fstat below or the fd path notices.
    let stage_name = format!(
        ".bind-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    rustix::fs::mkdirat(&dfd, stage_name.as_str(), Mode::from_raw_mode(0o700))
        .map_err(errno(&format!("staging dir in {shown}")))?;
    let sfd = openat(
        &dfd,
        stage_name.as_str(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno(&format!("staging dir in {shown}")))?;
    let sst = fstat(&sfd).map_err(errno(&format!("staging dir in {shown}")))?;
    if sst.st_uid != 0 || sst.st_mode & 0o777 != 0o700 {
        return Err(Error::Io(format!(
            "the staging dir in {shown} was replaced (owner {}); not binding there",
            sst.st_uid
        )));
    }
    let remove_stage = || {
        let _ = unlinkat(&dfd, stage_name.as_str(), AtFlags::REMOVEDIR);
    };
    let staged = PathBuf::from(format!("/proc/self/fd/{}/s", sfd.as_raw_fd()));
    let l = std::os::unix::net::UnixListener::bind(&staged).map_err(|e| {
        remove_stage();
        Error::Io(format!("cannot bind a socket in {shown}: {e}"))
    })?;
    rustix::fs::chownat(&sfd, "s", Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(errno(&format!("chown {}", staged.display())))?;
    rustix::fs::chmodat(&sfd, "s", Mode::from_raw_mode(0o600), AtFlags::empty())
        .map_err(errno(&format!("chmod {}", staged.display())))?;
    // A stale socket (or anything the domain put there) goes; a directory under that name
    // is not emptied for the domain: the rename below then fails with a message.
    match unlinkat(&dfd, name.as_os_str(), AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::ISDIR) => {}
        Err(e) => return Err(errno(&format!("remove {}", sock.display()))(e)),
    }
    let moved = renameat(&sfd, "s", &dfd, name.as_os_str());
    let _ = unlinkat(&sfd, "s", AtFlags::empty());
    remove_stage();
    moved.map_err(errno(&format!(
        "cannot move the bound socket to {}",
        sock.display()
    )))?;
    l.set_nonblocking(true)
        .map_err(io_err(&sock.display().to_string()))?;
    UnixListener::from_std(l).map_err(io_err(&sock.display().to_string()))
}

/// Wait until a pidfd is readable (the process exited).
pub(super) async fn wait_pidfd(fd: OwnedFd) {
    // SAFETY: the pidfd is an OwnedFd moved into the AsyncFd, open and unchanged until the
    // AsyncFd drops it; `as_raw_fd` always returns it.
    match unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) } {
        Ok(afd) => {
            let _ = afd.readable().await;
        }
        Err(e) => {
            warn!(error = %e, "cannot poll a pidfd; assuming the process is gone");
        }
    }
}

/// Accept the domain's agent on `listener`, hand out the connection, accept it again after it
/// drops (the agent reconnects forever). Peers whose uid is outside `range` (the sandbox's uid
/// range, or a VM's VMM uid) are
/// dropped at once, and so is any second peer while an agent is connected.
pub(super) async fn agent_link(
    name: DomainName,
    listener: UnixListener,
    range: std::ops::Range<u32>,
    tx: watch::Sender<Option<Connection>>,
    mgr: std::sync::Weak<Manager>,
) {
    let mut current: Option<Connection> = None;
    loop {
        let closed = {
            let c = current.clone();
            async move {
                match c {
                    Some(c) => c.closed().await,
                    None => std::future::pending().await,
                }
            }
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!(domain = %name, error = %e, "accept on the channel failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = closed => {
                info!(domain = %name, "agent disconnected");
                current = None;
                let _ = tx.send(None);
                continue;
            }
        };
        match stream.peer_cred() {
            Ok(c) if range.contains(&c.uid()) => {}
            Ok(c) => {
                warn!(domain = %name, uid = c.uid(), "refused a channel peer outside the domain's uid range");
                continue;
            }
            Err(e) => {
                warn!(domain = %name, error = %e, "cannot read channel peer credentials");
                continue;
            }
        }
        if current.is_some() {
            warn!(domain = %name, "refused a second channel peer while the agent is connected");
            continue;
        }
        let handshake = Connection::client(stream, bulkhead_wire::Limits::default());
        let (conn, incoming) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                warn!(domain = %name, error = %e, "agent handshake failed; dropping the peer");
                continue;
            }
            Err(_) => {
                warn!(domain = %name, "agent handshake timed out; dropping the peer");
                continue;
            }
        };
        info!(domain = %name, "agent connected");
        // Streams the agent opens towards dom0: service calls, with this domain as source.
        tokio::spawn(super::calls::serve_incoming(
            mgr.clone(),
            name.clone(),
            incoming,
        ));
        current = Some(conn.clone());
        let _ = tx.send(Some(conn));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::Ordering;

    use bulkhead_wire::ExitStatus;

    use crate::{fsutil, vm};

    /// A channel dir as domaind makes it: `<tmp>/domains/x/channel`, plus a file outside
    /// that a planted symlink points at.
    /// A temp dir that unmounts the channel tmpfs `bind_channel` put in it.
    struct ChannelTmp(tempfile::TempDir);

    impl ChannelTmp {
        fn path(&self) -> &Path {
            self.0.path()
        }
    }

    impl Drop for ChannelTmp {
        fn drop(&mut self) {
            let _ = fsutil::unmount_channel(&self.0.path().join("domains/x/channel"));
        }
    }

    fn channel_fixture() -> (ChannelTmp, PathBuf, PathBuf, PathBuf) {
        let tmp = ChannelTmp(tempfile::tempdir().unwrap());
        let dir = tmp.path().join("domains/x/channel");
        let sock = vm::agent_socket(&dir);
        let outside = tmp.path().join("outside.txt");
        std::fs::write(&outside, "host file\n").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o644)).unwrap();
        (tmp, dir, sock, outside)
    }

    fn owner_mode(p: &Path) -> (u32, u32) {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(p).unwrap();
        (m.uid(), m.mode() & 0o7777)
    }

    const DOMAIN_UID: u32 = 0x6000_0000;

    #[test]
    fn bind_channel_replaces_a_planted_symlink_without_following_it() {
        if !nix::unistd::geteuid().is_root() {
            bulkhead_test_skip::skip("bind_channel chowns to the domain's uid: needs root");
            return;
        }
        let (_tmp, dir, sock, outside) = channel_fixture();
        let before = owner_mode(&outside);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _g = rt.enter();
        drop(bind_channel(&dir, &sock, DOMAIN_UID).unwrap());
        assert_eq!(owner_mode(&dir), (DOMAIN_UID, 0o700));
        // What the VMM (the domain's uid, owner of the dir) could leave there.
        std::fs::remove_file(&sock).unwrap();
        std::os::unix::fs::symlink(&outside, &sock).unwrap();
        let l = bind_channel(&dir, &sock, DOMAIN_UID).unwrap();
        assert_eq!(
            owner_mode(&outside),
            before,
            "the symlink's target was changed"
        );
        let m = std::fs::symlink_metadata(&sock).unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(m.file_type().is_socket(), "{m:?}");
        assert_eq!(owner_mode(&sock), (DOMAIN_UID, 0o600));
        drop(l);
        // No staging dir is left next to the channel dir.
        let left: Vec<_> = std::fs::read_dir(dir.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("channel")]);
    }

    #[test]
    fn bind_channel_never_follows_a_symlink_swapped_in_while_it_runs() {
        if !nix::unistd::geteuid().is_root() {
            bulkhead_test_skip::skip("bind_channel chowns to the domain's uid: needs root");
            return;
        }
        let (_tmp, dir, sock, outside) = channel_fixture();
        let before = owner_mode(&outside);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _g = rt.enter();
        drop(bind_channel(&dir, &sock, DOMAIN_UID).unwrap());
        // The "VMM": as the domain's uid, swap the socket's name for a symlink to the file
        // outside, over and over, while domaind binds.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let planter = {
            let (stop, dir, sock, outside) =
                (stop.clone(), dir.clone(), sock.clone(), outside.clone());
            std::thread::spawn(move || {
                // SAFETY: setfsuid changes only this thread's filesystem uid (a raw syscall,
                // not broadcast to other threads); it takes and returns plain integers.
                unsafe { libc::setfsuid(DOMAIN_UID) };
                let tmp = dir.join(".planted");
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let _ = std::fs::remove_file(&tmp);
                    if std::os::unix::fs::symlink(&outside, &tmp).is_ok()
                        && std::fs::rename(&tmp, &sock).is_ok()
                    {
                        n += 1;
                    }
                }
                n
            })
        };
        let mut bound = 0;
        for _ in 0..2000 {
            // Failing is fine (the domain only hurts itself); following the symlink is not.
            if bind_channel(&dir, &sock, DOMAIN_UID).is_ok() {
                bound += 1;
            }
            assert_eq!(
                owner_mode(&outside),
                before,
                "the planted symlink was followed"
            );
        }
        stop.store(true, Ordering::Relaxed);
        let planted = planter.join().unwrap();
        assert!(planted > 100, "the planter did not run ({planted})");
        assert!(bound > 0);
        assert_eq!(owner_mode(&outside), before);
    }

    #[test]
    fn bind_channel_refuses_a_channel_dir_that_is_a_symlink() {
        if !nix::unistd::geteuid().is_root() {
            bulkhead_test_skip::skip("bind_channel chowns to the domain's uid: needs root");
            return;
        }
        let (tmp, dir, sock, _outside) = channel_fixture();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
        let e = bind_channel(&dir, &sock, DOMAIN_UID).unwrap_err();
        assert!(e.message().contains("not a symlink"), "{}", e.message());
        assert_eq!(owner_mode(&elsewhere), (0, 0o755));
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[test]
    fn exit_code_maps_signals_and_saturates() {
        assert_eq!(exit_code(ExitStatus::Code(3)), 3);
        assert_eq!(exit_code(ExitStatus::Signal(9)), 137);
        // a hostile agent's value must not overflow (a panic in debug, a wrap in release)
        assert_eq!(exit_code(ExitStatus::Signal(i32::MAX)), i32::MAX);
        assert_eq!(exit_code(ExitStatus::Signal(i32::MIN)), 128 + i32::MIN);
    }
}
