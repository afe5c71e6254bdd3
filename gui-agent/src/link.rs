//! The dom0 link: one peer at a time on a unix socket. Writes go through a writer thread
//! (so a slow dom0 never blocks the compositor; the compositor watches the backlog),
//! reads are decoded on the event loop.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use smithay::reexports::calloop::generic::Generic;
use smithay::reexports::calloop::ping::Ping;
use smithay::reexports::calloop::{Interest, LoopHandle, Mode, PostAction, RegistrationToken};
use tracing::{info, warn};

use bulkhead_wire::gui::{decode_one, HostMsg};

use crate::compositor::Agent;

/// The sending half of a connected dom0 peer.
pub struct Link {
    tx: mpsc::Sender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    alive: Arc<AtomicBool>,
    read_token: Option<RegistrationToken>,
    handle: LoopHandle<'static, Agent>,
    stream: UnixStream,
}

impl Link {
    /// Queues bytes for dom0.
    pub fn send(&self, bytes: Vec<u8>) {
        let n = bytes.len();
        self.queued.fetch_add(n, Ordering::SeqCst);
        if self.tx.send(bytes).is_err() {
            self.queued.fetch_sub(n, Ordering::SeqCst);
            self.alive.store(false, Ordering::SeqCst);
        }
    }
    /// Bytes queued but not yet written to the socket.
    pub fn backlog(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }
    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(t) = self.read_token.take() {
            self.handle.remove(t);
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// Listens for dom0 on `listener`; a new peer replaces the old one and gets the full state.
pub fn listen(
    handle: &LoopHandle<'static, Agent>,
    listener: UnixListener,
    wake: Ping,
) -> Result<RegistrationToken, crate::Error> {
    listener
        .set_nonblocking(true)
        .map_err(|e| crate::Error::Io("dom0 socket", e))?;
    handle
        .insert_source(
            Generic::new(listener, Interest::READ, Mode::Level),
            move |_, listener, agent: &mut Agent| {
                loop {
                    match listener.accept() {
                        Ok((stream, _)) => connect(agent, stream, wake.clone()),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            warn!(error = %e, "accepting dom0");
                            break;
                        }
                    }
                }
                Ok(PostAction::Continue)
            },
        )
        .map_err(|e| crate::Error::Loop(e.to_string()))
}

fn connect(agent: &mut Agent, stream: UnixStream, wake: Ping) {
    if agent.link.take().is_some() {
        info!("new dom0 peer replaces the previous one");
    } else {
        info!("dom0 connected");
    }
    let (writer, reader) = match (stream.try_clone(), stream.try_clone()) {
        (Ok(w), Ok(r)) => (w, r),
        (Err(e), _) | (_, Err(e)) => {
            warn!(error = %e, "dom0 socket");
            return;
        }
    };
    if let Err(e) = reader.set_nonblocking(true) {
        warn!(error = %e, "dom0 socket");
        return;
    }
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let queued = Arc::new(AtomicUsize::new(0));
    let alive = Arc::new(AtomicBool::new(true));
    {
        let (queued, alive) = (queued.clone(), alive.clone());
        let spawned = std::thread::Builder::new()
            .name("dom0-writer".into())
            .spawn(move || write_loop(writer, rx, queued, alive, wake));
        if let Err(e) = spawned {
            warn!(error = %e, "dom0 writer thread");
            return;
        }
    }
    let alive_r = alive.clone();
    let mut buf: Vec<u8> = Vec::new();
    let mut hello_seen = false;
    let token = agent.handle.insert_source(
        Generic::new(reader, Interest::READ, Mode::Level),
        move |_, reader, agent: &mut Agent| {
            let mut chunk = [0u8; 65536];
            // SAFETY: only reads; the stream stays owned by the Generic source.
            let stream = unsafe { reader.get_mut() };
            loop {
                match stream.read(&mut chunk) {
                    Ok(0) => {
                        info!("dom0 closed the link");
                        alive_r.store(false, Ordering::SeqCst);
                        return Ok(PostAction::Remove);
                    }
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        warn!(error = %e, "reading from dom0");
                        alive_r.store(false, Ordering::SeqCst);
                        return Ok(PostAction::Remove);
                    }
                }
            }
            let mut used = 0;
            loop {
                match decode_one::<HostMsg>(&buf[used..]) {
                    Ok(Some((msg, n))) => {
                        used += n;
                        if let Err(error) = usable(&msg) {
                            warn!(error, "protocol violation from dom0; dropping the link");
                            alive_r.store(false, Ordering::SeqCst);
                            return Ok(PostAction::Remove);
                        }
                        let is_hello = matches!(msg, HostMsg::Hello(_));
                        if is_hello == hello_seen {
                            warn!(
                                "protocol violation from dom0: HELLO must come first, once; dropping the link"
                            );
                            alive_r.store(false, Ordering::SeqCst);
                            return Ok(PostAction::Remove);
                        }
                        hello_seen = true;
                        agent.handle_host(msg);
                        if !alive_r.load(Ordering::SeqCst) || agent.link.is_none() {
                            return Ok(PostAction::Remove);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        warn!(error = %e, "protocol violation from dom0; dropping the link");
                        alive_r.store(false, Ordering::SeqCst);
                        return Ok(PostAction::Remove);
                    }
                }
            }
            buf.drain(..used);
            Ok(PostAction::Continue)
        },
    );
    let token = match token {
        Ok(t) => t,
        Err(e) => {
            warn!(error = %e, "registering the dom0 socket");
            return;
        }
    };
    agent.link = Some(Link {
        tx,
        queued,
        alive,
        read_token: Some(token),
        handle: agent.handle.clone(),
        stream,
    });
    agent.announce_all();
    agent.flush();
}

/// What the wire decoder accepts but the agent cannot use, which drops the link like any
/// protocol violation: a keymap that is not UTF-8 text.
fn usable(msg: &HostMsg) -> Result<(), &'static str> {
    match msg {
        HostMsg::Keymap { keymap } if std::str::from_utf8(keymap).is_err() => {
            Err("keymap is not UTF-8 text")
        }
        _ => Ok(()),
    }
}

fn write_loop(
    mut stream: UnixStream,
    rx: mpsc::Receiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    alive: Arc<AtomicBool>,
    wake: Ping,
) {
    while let Ok(bytes) = rx.recv() {
        if let Err(e) = write_all_nonblocking(&mut stream, &bytes) {
            info!(error = %e, "writing to dom0 failed; link closed");
            alive.store(false, Ordering::SeqCst);
            wake.ping();
            return;
        }
        queued.fetch_sub(bytes.len(), Ordering::SeqCst);
        wake.ping();
    }
}

/// `write_all` on a socket whose file description is non-blocking (shared with the reader):
/// waits for POLLOUT on EAGAIN.
fn write_all_nonblocking(stream: &mut UnixStream, mut bytes: &[u8]) -> std::io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut fds = [PollFd::new(
                    std::os::fd::AsFd::as_fd(&*stream),
                    PollFlags::POLLOUT,
                )];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn keymap_must_be_text() {
        let keymap = |b: &'static [u8]| HostMsg::Keymap {
            keymap: Bytes::from_static(b),
        };
        assert_eq!(usable(&keymap(b"xkb_keymap {};")), Ok(()));
        assert_eq!(
            usable(&keymap(b"xkb_keymap \xff")),
            Err("keymap is not UTF-8 text")
        );
        assert_eq!(usable(&HostMsg::ClipboardRequest), Ok(()));
    }
}
