//! Measures the exec protocol over a UnixStream pair with real processes:
//! median round trip of `true`, and stdout / stdin throughput through the stream.
//!
//! `cargo run --release -p bulkhead-wire --example exec_bench`

use std::process::Stdio;
use std::time::{Duration, Instant};

use bulkhead_wire::{
    exec, Connection, ExecRequest, ExitStatus, IncomingEvent, Limits, OpenRequest,
};
use tokio::io::AsyncReadExt as _;
use tokio::net::UnixStream;

async fn agent(mut incoming: bulkhead_wire::Incoming) {
    while let Some(IncomingEvent::Stream(s)) = incoming.next().await {
        tokio::spawn(async move {
            let OpenRequest::Exec(req) = s.request else {
                let _ = exec::reject(s.stream, "only exec here").await;
                return;
            };
            let mut child = match tokio::process::Command::new(&req.argv[0])
                .args(&req.argv[1..])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
            {
                Ok(c) => c,
                Err(e) => {
                    let _ = exec::reject(s.stream, &e.to_string()).await;
                    return;
                }
            };
            let (i, o, e) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
            let (Some(o), Some(e)) = (o, e) else { return };
            let wait = async move {
                let st = child.wait().await?;
                Ok(ExitStatus::Code(st.code().unwrap_or(-1)))
            };
            let _ = exec::serve(s.stream, i, o, e, wait).await;
        });
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (a, b) = UnixStream::pair()?;
    let (c, s) = tokio::join!(
        Connection::client(a, Limits::default()),
        Connection::server(b, Limits::default())
    );
    let (conn, _ci) = c?;
    let (_sc, si) = s?;
    tokio::spawn(agent(si));

    let mut lat = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        exec::run(
            &conn,
            ExecRequest::new(["true"]),
            &b""[..],
            tokio::io::sink(),
            tokio::io::sink(),
        )
        .await?;
        lat.push(t.elapsed());
    }
    println!(
        "exec `true` round trip: median {:?} over 200 runs",
        median(lat)
    );

    let bytes: u64 = 1 << 30;
    let t = Instant::now();
    exec::run(
        &conn,
        ExecRequest::new(["head", "-c", &bytes.to_string(), "/dev/zero"]),
        &b""[..],
        tokio::io::sink(),
        tokio::io::sink(),
    )
    .await?;
    let el = t.elapsed();
    println!(
        "stdout 1 GiB: {:?} = {:.0} MiB/s",
        el,
        1024.0 / el.as_secs_f64()
    );

    let input = tokio::io::repeat(0).take(bytes);
    let t = Instant::now();
    exec::run(
        &conn,
        ExecRequest::new(["sh", "-c", "cat >/dev/null"]),
        input,
        tokio::io::sink(),
        tokio::io::sink(),
    )
    .await?;
    let el = t.elapsed();
    println!(
        "stdin 1 GiB: {:?} = {:.0} MiB/s",
        el,
        1024.0 / el.as_secs_f64()
    );
    Ok(())
}
