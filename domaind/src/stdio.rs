//! Turning the file descriptors a D-Bus caller passes (`h` arguments) into tokio streams.
//!
//! The caller's fd shares its open file description with us, so we must not set O_NONBLOCK on
//! it (that would make the caller's own stdout non-blocking). Instead:
//! - pipes, FIFOs and character devices (ttys, /dev/null) are re-opened through
//!   `/proc/self/fd/N`, which gives us a new open file description of the same object that we
//!   can make non-blocking and drive with [`AsyncFd`];
//! - regular files (where re-opening would lose the caller's offset / O_APPEND), sockets, and
//!   anything that cannot be re-opened use the original fd through `tokio::fs::File`, which
//!   does blocking I/O on tokio's blocking pool.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use nix::fcntl::OFlag;
use nix::sys::stat::{fstat, SFlag};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An async byte source/sink for a caller's fd.
pub type BoxRead = Pin<Box<dyn AsyncRead + Send>>;
pub type BoxWrite = Pin<Box<dyn AsyncWrite + Send>>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    Read,
    Write,
}

fn kind(fd: &OwnedFd) -> io::Result<SFlag> {
    let st = fstat(fd.as_raw_fd()).map_err(io::Error::from)?;
    Ok(SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()))
}

/// Re-open a pipe/FIFO/char device as a fresh non-blocking description.
fn reopen_nonblocking(fd: &OwnedFd, dir: Dir) -> io::Result<OwnedFd> {
    // Re-opening happens with domaind's (root's) rights, so it must never give more access
    // than the caller's own descriptor had: a read-only fd of a device the caller cannot
    // write must not come back writable.
    let access = OFlag::from_bits_truncate(
        nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)
            .map_err(io::Error::from)?,
    ) & OFlag::O_ACCMODE;
    let allowed = match dir {
        Dir::Read => access == OFlag::O_RDONLY || access == OFlag::O_RDWR,
        Dir::Write => access == OFlag::O_WRONLY || access == OFlag::O_RDWR,
    };
    if !allowed {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the caller's descriptor is not open for this direction",
        ));
    }
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let mode = match dir {
        Dir::Read => OFlag::O_RDONLY,
        Dir::Write => OFlag::O_WRONLY,
    };
    let flags = mode | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    let raw = nix::fcntl::open(path.as_str(), flags, nix::sys::stat::Mode::empty())
        .map_err(io::Error::from)?;
    // SAFETY: `open` just returned this fd and nothing else owns it.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
}

fn pollable(fd: &OwnedFd, dir: Dir) -> Option<AsyncFd<OwnedFd>> {
    let k = kind(fd).ok()?;
    if k != SFlag::S_IFIFO && k != SFlag::S_IFCHR {
        return None;
    }
    let new = reopen_nonblocking(fd, dir).ok()?;
    // Regular character devices such as /dev/null cannot be registered with epoll (EPERM);
    // those fall back to the blocking path.
    // SAFETY: `new` is an OwnedFd moved into the AsyncFd: it stays open and refers to the same
    // description until the AsyncFd drops it, and `as_raw_fd` always returns that fd.
    unsafe { AsyncFd::register(new) }.ok()
}

/// The caller's stdin as an async reader.
pub fn reader(fd: OwnedFd) -> BoxRead {
    match pollable(&fd, Dir::Read) {
        Some(a) => Box::pin(PollFd(a)),
        None => Box::pin(tokio::fs::File::from_std(std::fs::File::from(fd))),
    }
}

/// The caller's stdout/stderr as an async writer.
pub fn writer(fd: OwnedFd) -> BoxWrite {
    match pollable(&fd, Dir::Write) {
        Some(a) => Box::pin(PollFd(a)),
        None => Box::pin(tokio::fs::File::from_std(std::fs::File::from(fd))),
    }
}

/// A non-blocking fd driven by the tokio reactor.
struct PollFd(AsyncFd<OwnedFd>);

impl AsyncRead for PollFd {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|inner| {
                nix::unistd::read(inner.get_ref().as_fd().as_raw_fd(), unfilled)
                    .map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // A tty whose other side hung up reads as EIO: treat it as end of input.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PollFd {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard
                .try_io(|inner| nix::unistd::write(inner.get_ref(), buf).map_err(io::Error::from))
            {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn pipe_roundtrip_leaves_caller_blocking() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let caller_w = w.try_clone().unwrap();
        let mut wr = writer(w);
        wr.write_all(b"hello").await.unwrap();
        drop(wr);
        // The caller's description is still blocking.
        let fl = nix::fcntl::fcntl(caller_w.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert_eq!(fl & libc::O_NONBLOCK, 0);
        drop(caller_w);
        let mut rd = reader(r);
        let mut s = String::new();
        rd.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "hello");
    }

    /// A caller hands a read-only descriptor as "stdout": domaind must not turn it into a
    /// writable one by re-opening it with root's rights.
    #[tokio::test]
    async fn a_read_only_descriptor_never_becomes_writable() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let read_only: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap()
            .into();
        let keep_reading = read_only.try_clone().unwrap();
        let mut wr = writer(read_only);
        let wrote = async {
            wr.write_all(b"should not arrive").await?;
            wr.flush().await
        }
        .await;
        assert!(wrote.is_err(), "a read-only descriptor was written through");
        let mut buf = [0u8; 32];
        let n = nix::unistd::read(keep_reading.as_raw_fd(), &mut buf).unwrap_or(0);
        assert_eq!(
            n, 0,
            "bytes reached the FIFO through a re-opened descriptor"
        );
    }

    #[tokio::test]
    async fn dev_null_and_regular_file() {
        let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let mut rd = reader(null);
        let mut v = Vec::new();
        rd.read_to_end(&mut v).await.unwrap();
        assert!(v.is_empty());

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out");
        std::fs::write(&p, b"keep:").unwrap();
        let f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        let mut wr = writer(f.into());
        wr.write_all(b"more").await.unwrap();
        wr.flush().await.unwrap();
        drop(wr);
        assert_eq!(std::fs::read(&p).unwrap(), b"keep:more");
    }
}
