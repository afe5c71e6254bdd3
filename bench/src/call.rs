//! `bulkhead-bench call`: the round trip of a service call from dom0 into a running domain
//! whose service echoes a byte (D-Bus `Call`, policy decision, `Service` stream to the
//! domain's agent, the service process started, one byte in and back, exit status), median
//! of many, next to a plain unix-socket echo between two processes measured in the same run,
//! and the byte round trip through an open call (caller -> domaind -> agent -> `cat` and
//! back) for the relay's own share.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bulkhead_api::Domaind1Proxy;
use zbus::zvariant::Fd;

use crate::{median, ms};

const TARGET: &str = "bench-call-target";
const SERVICE: &str = "bench.Echo";

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// One call: write a byte, read it back, wait for the exit status.
async fn one_call(proxy: &Domaind1Proxy<'_>) -> Result<()> {
    let (in_r, in_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let null = std::fs::File::options().write(true).open("/dev/null")?;
    let echo = std::thread::spawn(move || -> std::io::Result<u8> {
        let mut w = std::fs::File::from(in_w);
        w.write_all(b"x")?;
        drop(w);
        let mut r = std::fs::File::from(out_r);
        let mut b = [0u8; 1];
        r.read_exact(&mut b)?;
        Ok(b[0])
    });
    let status = proxy
        .call(
            TARGET,
            SERVICE,
            Fd::from(&in_r),
            Fd::from(&out_w),
            Fd::from(&null),
        )
        .await
        .map_err(|e| anyhow::anyhow!("Call {TARGET} {SERVICE}: {}", e.message()))?;
    drop((in_r, out_w));
    let byte = echo
        .join()
        .map_err(|_| anyhow::anyhow!("echo thread panicked"))??;
    if status != 0 || byte != b'x' {
        bail!("the echo service exited {status} and sent {byte:#04x}");
    }
    Ok(())
}

/// Byte round trips through one open call whose service is `cat`.
async fn open_call_round_trips(proxy: &Domaind1Proxy<'_>, runs: usize) -> Result<Vec<Duration>> {
    let (in_r, in_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let null = std::fs::File::options().write(true).open("/dev/null")?;
    let pinger = std::thread::spawn(move || -> std::io::Result<Vec<Duration>> {
        let mut w = std::fs::File::from(in_w);
        let mut r = std::fs::File::from(out_r);
        let mut times = Vec::with_capacity(runs);
        let mut b = [0u8; 1];
        // one warm-up
        for i in 0..=runs {
            let t = Instant::now();
            w.write_all(b"y")?;
            r.read_exact(&mut b)?;
            if i > 0 {
                times.push(t.elapsed());
            }
        }
        drop(w);
        times.sort();
        Ok(times)
    });
    let status = proxy
        .call(
            TARGET,
            SERVICE,
            Fd::from(&in_r),
            Fd::from(&out_w),
            Fd::from(&null),
        )
        .await
        .map_err(|e| anyhow::anyhow!("Call {TARGET} {SERVICE}: {}", e.message()))?;
    drop((in_r, out_w));
    let times = pinger
        .join()
        .map_err(|_| anyhow::anyhow!("pinger thread panicked"))??;
    if status != 0 {
        bail!("cat exited {status}");
    }
    Ok(times)
}

/// The peer: a child process echoing bytes on a unix socket; one byte there and back.
fn unix_socket_echo(runs: usize) -> Result<Vec<Duration>> {
    let (mut ours, theirs) = UnixStream::pair()?;
    // `cat` with the socket as stdin and stdout echoes every byte it reads.
    let theirs2 = theirs.try_clone()?;
    let mut child = Command::new("cat")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::from(OwnedFd::from(theirs2)))
        .spawn()
        .context("cannot run cat")?;
    let mut times = Vec::with_capacity(runs);
    let mut b = [0u8; 1];
    for i in 0..=runs {
        let t = Instant::now();
        ours.write_all(b"z")?;
        ours.read_exact(&mut b)?;
        if i > 0 {
            times.push(t.elapsed());
        }
    }
    drop(ours);
    let _ = child.kill();
    let _ = child.wait();
    times.sort();
    Ok(times)
}

pub async fn bench(
    runs: usize,
    cache: PathBuf,
    template: String,
    bus_address: Option<String>,
) -> Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let (connection, _private) = crate::domaind_for_bench(
        bus_address,
        &cache,
        &format!("{SERVICE}  *  @adminvm  {TARGET}  allow\n"),
    )
    .await?;
    let proxy = Domaind1Proxy::new(&connection).await?;
    let null = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    proxy
        .build_template(&template, Fd::from(&null))
        .await
        .map_err(|e| anyhow::anyhow!("BuildTemplate {template}: {}", e.message()))?;
    let _ = proxy.kill(TARGET).await;
    let _ = proxy.remove(TARGET).await;
    proxy
        .create(
            TARGET,
            "app",
            &template,
            "gray",
            std::collections::HashMap::new(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("Create {TARGET}: {}", e.message()))?;
    // The service: /etc/bulkhead/rpc/bench.Echo -> cat (in the domain's writable /etc).
    let code = proxy
        .run(
            TARGET,
            &[
                "sh",
                "-c",
                &format!(
                    "mkdir -p /etc/bulkhead/rpc && ln -sf /bin/cat /etc/bulkhead/rpc/{SERVICE}"
                ),
            ],
            "root",
            Fd::from(&null),
            Fd::from(&null),
            Fd::from(&null),
        )
        .await
        .map_err(|e| anyhow::anyhow!("Run in {TARGET}: {}", e.message()))?;
    if code != 0 {
        bail!("installing the echo service in {TARGET} failed ({code})");
    }

    let result = async {
        let calls = crate::measure(runs, || one_call(&proxy)).await?;
        let open = open_call_round_trips(&proxy, runs).await?;
        let peer = unix_socket_echo(runs)?;
        Ok::<_, anyhow::Error>((calls, open, peer))
    }
    .await;
    let _ = proxy.kill(TARGET).await;
    let _ = proxy.remove(TARGET).await;
    let (calls, open, peer) = result?;

    let (c, o, p) = (median(&calls), median(&open), median(&peer));
    println!(
        "call into a running domain, echo one byte, exit status ({runs} runs): median {:.3} ms, min {:.3} ms, max {:.3} ms",
        ms(c),
        ms(calls[0]),
        ms(calls[calls.len() - 1])
    );
    println!(
        "one byte through an open call and back ({runs} runs):               median {:.3} ms",
        ms(o)
    );
    println!(
        "plain unix-socket echo between two processes ({runs} runs):          median {:.3} ms",
        ms(p)
    );
    println!(
        "ratio call/unix-socket echo: {:.0}; open call/unix-socket echo: {:.1} (target: a call under 2 ms; Qubes: 25-60 ms)",
        c.as_secs_f64() / p.as_secs_f64(),
        o.as_secs_f64() / p.as_secs_f64()
    );
    Ok(())
}
