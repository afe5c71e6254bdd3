//! `bulkhead-bench open-in-dvm`: `bulkhead-open-in-dvm FILE` run in an app domain, timed
//! from the request to run the command to the moment the disposable's default application
//! has started (it prints a marker on stderr, which reaches us through the service's and
//! the command's stderr), and to the command's end (edited copy written back; domaind
//! removes the disposable once the call has ended). Printed with the cold disposable start (`RunDisposable true`, request to
//! removal) and a plain `Run true` in the running app domain, measured in the same run.
//!
//! Then the same with a warm pool (`dispvm_pool_size` on the disposable template): before
//! each measured request the bench waits until the pool is full, so every request finds a
//! paused member; printed next to the cold figures with the ratio warm / cold.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bulkhead_api::Domaind1Proxy;
use zbus::zvariant::Fd;

use crate::{measure, median, ms};

const DVM: &str = "bench-open-dvm";
const SRC: &str = "bench-open-src";
const MARKER: &str = "BENCH-APP-STARTED";

/// Makes the disposable template's default application for text/plain a script that prints
/// the marker and edits the file (run as the user in the disposable template).
pub const EDITOR_SETUP: &str = r#"set -e
mkdir -p "$HOME/.config" "$HOME/.local/share/applications" "$HOME/bin"
printf '#!/bin/sh\necho BENCH-APP-STARTED >&2\necho "edited in $(uname -n)" >> "$1"\n' > "$HOME/bin/bench-editor"
chmod 755 "$HOME/bin/bench-editor"
printf '[Default Applications]\ntext/plain=bench-editor.desktop\n' > "$HOME/.config/mimeapps.list"
printf '[Desktop Entry]\nType=Application\nName=Bench editor\nExec=%s/bin/bench-editor %%f\n' "$HOME" > "$HOME/.local/share/applications/bench-editor.desktop"
"#;

fn null() -> Result<std::fs::File> {
    Ok(std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")?)
}

async fn run_in(proxy: &Domaind1Proxy<'_>, name: &str, argv: &[&str], user: &str) -> Result<i32> {
    let n = null()?;
    proxy
        .run(name, argv, user, Fd::from(&n), Fd::from(&n), Fd::from(&n))
        .await
        .map_err(|e| anyhow::anyhow!("Run in {name}: {}", e.message()))
}

pub async fn bench(
    runs: usize,
    cache: PathBuf,
    template: String,
    bus_address: Option<String>,
    pool_size: u32,
) -> Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    if pool_size == 0 {
        bail!("--pool-size must be at least 1 (the warm half of the comparison)");
    }
    let (connection, _private) = crate::domaind_for_bench(
        bus_address,
        &cache,
        "bulkhead.OpenInVM  *  @anyvm  @dispvm  allow\n",
    )
    .await?;
    let proxy = Domaind1Proxy::new(&connection).await?;
    let n = null()?;
    proxy
        .build_template(&template, Fd::from(&n))
        .await
        .map_err(|e| anyhow::anyhow!("BuildTemplate {template}: {}", e.message()))?;

    // The disposable template with the test application, then the caller.
    let no_props = std::collections::HashMap::new();
    proxy
        .create(
            DVM,
            "disposable-template",
            &template,
            "red",
            no_props.clone(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("Create {DVM}: {}", e.message()))?;
    let status = run_in(&proxy, DVM, &["sh", "-c", EDITOR_SETUP], "").await?;
    if status != 0 {
        bail!("setting up the application in {DVM} failed ({status})");
    }
    proxy
        .shutdown(DVM, 10)
        .await
        .map_err(|e| anyhow::anyhow!("Shutdown {DVM}: {}", e.message()))?;
    let mut props = std::collections::HashMap::new();
    props.insert("default_dispvm", DVM);
    proxy
        .create(SRC, "app", &template, "blue", props)
        .await
        .map_err(|e| anyhow::anyhow!("Create {SRC}: {}", e.message()))?;
    proxy
        .start(SRC)
        .await
        .map_err(|e| anyhow::anyhow!("Start {SRC}: {}", e.message()))?;

    let result = measure_all(&proxy, runs).await;
    let warm = match &result {
        Ok(_) => measure_warm(&proxy, runs, pool_size).await,
        Err(_) => Err(anyhow::anyhow!("not measured")),
    };

    // Leave nothing behind on an installed domaind.
    let _ = proxy
        .set_property(DVM, "dispvm_pool_size", "0")
        .await
        .map_err(|e| eprintln!("cannot empty the pool of {DVM}: {}", e.message()));
    let _ = proxy.shutdown(SRC, 10).await;
    let _ = proxy.remove(SRC).await;
    let _ = proxy.remove(DVM).await;
    let (started, done, cold, plain) = result?;
    let (warm_started, warm_done, warm_true) = warm?;
    spread(
        &format!("open-in-dvm, command to application started ({runs} runs)"),
        &started,
    );
    println!(
        "open-in-dvm, whole command (edit written back; domaind removes the disposable after the call): median {:.1} ms",
        ms(median(&done))
    );
    println!(
        "cold disposable `true`, request to removal ({runs} runs): median {:.1} ms",
        ms(median(&cold))
    );
    println!(
        "plain Run `true` in the running caller: median {:.1} ms",
        ms(median(&plain))
    );
    println!(
        "ratio open-to-app-started / cold disposable: {:.2} (Qubes: qvm-open-in-dvm takes seconds)",
        median(&started).as_secs_f64() / median(&cold).as_secs_f64()
    );
    spread(
        &format!("open-in-dvm with a warm pool (size {pool_size}), command to application started"),
        &warm_started,
    );
    println!(
        "open-in-dvm with a warm pool, whole command: median {:.1} ms",
        ms(median(&warm_done))
    );
    println!(
        "warm disposable `true` (pool member), request to removal: median {:.1} ms",
        ms(median(&warm_true))
    );
    println!(
        "ratio warm / cold, open-in-dvm to application started: {:.3} ({:.1}x faster)",
        median(&warm_started).as_secs_f64() / median(&started).as_secs_f64(),
        median(&started).as_secs_f64() / median(&warm_started).as_secs_f64()
    );
    println!(
        "ratio warm / cold, disposable `true`: {:.3}",
        median(&warm_true).as_secs_f64() / median(&cold).as_secs_f64()
    );
    Ok(())
}

/// `LABEL: median, min, max` of sorted figures.
fn spread(label: &str, sorted: &[Duration]) {
    println!(
        "{label}: median {:.1} ms, min {:.1} ms, max {:.1} ms",
        ms(median(sorted)),
        ms(sorted[0]),
        ms(sorted[sorted.len() - 1])
    );
}

/// `runs` opens (after one warm-up), sorted: (to the marker, to the end). With a pool size,
/// each waits until the pool is full first.
async fn open_runs(
    proxy: &Domaind1Proxy<'_>,
    runs: usize,
    pool: Option<u32>,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let mut started = Vec::new();
    let mut done = Vec::new();
    for i in 0..=runs {
        if let Some(size) = pool {
            wait_full(proxy, size).await?;
        }
        let (s, d) = open_once(proxy).await?;
        if i > 0 {
            started.push(s);
            done.push(d);
        }
    }
    started.sort();
    done.sort();
    Ok((started, done))
}

/// The pool's ready members (GetProperties `pool_members`).
async fn pool_members(proxy: &Domaind1Proxy<'_>) -> Result<Vec<String>> {
    let props = proxy
        .get_properties(DVM)
        .await
        .map_err(|e| anyhow::anyhow!("GetProperties {DVM}: {}", e.message()))?;
    Ok(props
        .get("pool_members")
        .map(|m| m.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default())
}

/// Wait until the pool holds `size` members (bounded; says why when it does not fill).
async fn wait_full(proxy: &Domaind1Proxy<'_>, size: u32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if pool_members(proxy).await?.len() >= size as usize {
            return Ok(());
        }
        if Instant::now() > deadline {
            let note = proxy
                .get_properties(DVM)
                .await
                .ok()
                .and_then(|p| p.get("pool_note").cloned())
                .unwrap_or_default();
            bail!("the pool of {DVM} did not fill to {size} within 120 s: {note}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

type WarmFigures = (Vec<Duration>, Vec<Duration>, Vec<Duration>);

/// Open-in-dvm and `true` in a disposable with a full warm pool before each request.
async fn measure_warm(proxy: &Domaind1Proxy<'_>, runs: usize, size: u32) -> Result<WarmFigures> {
    proxy
        .set_property(DVM, "dispvm_pool_size", &size.to_string())
        .await
        .map_err(|e| anyhow::anyhow!("SetProperty {DVM} dispvm_pool_size: {}", e.message()))?;
    let (started, done) = open_runs(proxy, runs, Some(size)).await?;
    let mut warm_true = Vec::new();
    for i in 0..=runs {
        wait_full(proxy, size).await?;
        let before = pool_members(proxy).await?;
        let t0 = Instant::now();
        let name = crate::disposable_true(proxy, DVM).await?;
        let took = t0.elapsed();
        if !before.contains(&name) {
            bail!("RunDisposable used {name}, not a pool member ({before:?})");
        }
        if i > 0 {
            warm_true.push(took);
        }
    }
    warm_true.sort();
    Ok((started, done, warm_true))
}

type Figures = (Vec<Duration>, Vec<Duration>, Vec<Duration>, Vec<Duration>);

async fn measure_all(proxy: &Domaind1Proxy<'_>, runs: usize) -> Result<Figures> {
    let (started, done) = open_runs(proxy, runs, None).await?;
    let cold = measure(runs, || async {
        crate::disposable_true(proxy, DVM).await.map(drop)
    })
    .await?;
    let plain = measure(runs, || async {
        let status = run_in(proxy, SRC, &["true"], "").await?;
        if status != 0 {
            bail!("`true` exited {status}");
        }
        Ok(())
    })
    .await?;
    Ok((started, done, cold, plain))
}

/// One `bulkhead-open-in-dvm` in the caller: (to the marker, to the end).
async fn open_once(proxy: &Domaind1Proxy<'_>) -> Result<(Duration, Duration)> {
    let (reader, writer) = std::io::pipe().context("pipe")?;
    let n = null()?;
    let script = "printf 'bench\\n' > /tmp/bench-doc.txt && \
                  /usr/lib/bulkhead/bulkhead-open-in-dvm /tmp/bench-doc.txt && \
                  grep -q 'edited in' /tmp/bench-doc.txt";
    let t0 = Instant::now();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let watcher = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut at = None;
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if at.is_none() && line.contains(MARKER) {
                at = Some(t0.elapsed());
            } else {
                seen.push(line);
            }
        }
        let _ = tx.send((at, seen));
    });
    let status = proxy
        .run(
            SRC,
            &["sh", "-c", script],
            "",
            Fd::from(&n),
            Fd::from(&n),
            Fd::from(&writer),
        )
        .await
        .map_err(|e| anyhow::anyhow!("Run in {SRC}: {}", e.message()))?;
    let total = t0.elapsed();
    drop(writer);
    let (at, other) = rx.await.context("stderr watcher")?;
    let _ = watcher.join();
    if status != 0 {
        bail!(
            "bulkhead-open-in-dvm in {SRC} exited {status}: {}",
            other.join("\n")
        );
    }
    let at = at.with_context(|| format!("the application never started: {}", other.join("\n")))?;
    Ok((at, total))
}
