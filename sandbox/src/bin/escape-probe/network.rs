//! Sockets: raw and packet sockets, vsock to the host, AF_ALG, the network namespace's
//! interfaces and a host abstract unix socket.

use std::fs;
use std::os::fd::AsRawFd;

use nix::errno::Errno;

use crate::report::{close_if, sys, Report};
use crate::BatteryArgs;

pub(crate) fn sockets(r: &mut Report, a: &BatteryArgs) {
    let eth_p_all = (libc::ETH_P_ALL as u16).to_be() as libc::c_int;
    // SAFETY: socket takes integers; a returned fd is closed below.
    let s =
        sys(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, eth_p_all) } as libc::c_long);
    close_if(&s);
    r.call("raw-socket-packet", s);
    // SAFETY: as above.
    let s = sys(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) } as libc::c_long,
    );
    close_if(&s);
    r.call("raw-socket-inet", s);
    // SAFETY: as above.
    let s = sys(
        unsafe { libc::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6) }
            as libc::c_long,
    );
    close_if(&s);
    r.call("raw-socket-inet6", s);
    // vsock is not network-namespaced: a connection to the host's CID would reach host
    // listeners (the VM channel). Try the socket and a connect to the host (CID 2) and to the
    // local loopback CID (1).
    // SAFETY: socket takes integers; a returned fd is used for connect below, then closed.
    let v = sys(
        unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) }
            as libc::c_long,
    );
    let v = v.and_then(|fd| {
        let mut last = Errno::UnknownErrno;
        for cid in [libc::VMADDR_CID_HOST, 1] {
            // SAFETY: sockaddr_vm is plain old data; all-zero is valid.
            let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
            addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
            addr.svm_cid = cid;
            addr.svm_port = 1024;
            // SAFETY: addr is a valid sockaddr_vm of the given size; fd is ours.
            let c = unsafe {
                libc::connect(
                    fd as i32,
                    (&addr as *const libc::sockaddr_vm).cast(),
                    std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
                )
            };
            if c == 0 {
                return Ok(fd);
            }
            last = Errno::last();
        }
        close_if(&Ok(fd));
        Err(last)
    });
    close_if(&v);
    r.call("vsock-socket", v);
    // AF_ALG: the kernel crypto API, a recurring source of kernel bugs.
    // SAFETY: socket takes integers; a returned fd is closed below.
    let alg =
        sys(
            unsafe { libc::socket(libc::AF_ALG, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) }
                as libc::c_long,
        );
    close_if(&alg);
    r.call("af-alg-socket", alg);
    let ifaces = fs::read_to_string("/proc/net/dev").unwrap_or_default();
    let names: Vec<&str> = ifaces
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(str::trim))
        .collect();
    r.line(
        "network-namespace",
        names.iter().all(|n| *n == "lo"),
        format!("interfaces: {names:?}"),
    );
    if let Some(name) = &a.host_abstract {
        use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
        let res = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .and_then(|fd| {
            let addr = UnixAddr::new_abstract(name.as_bytes())?;
            connect(fd.as_raw_fd(), &addr).map(|()| fd)
        });
        r.call("host-abstract-socket", res.map(|_| "connected"));
    }
}
